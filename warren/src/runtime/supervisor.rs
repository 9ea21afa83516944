//! A containerd that Warren runs itself when no socket answers: its config (own
//! root, state, sockets under one directory, CRI disabled), starting it, restarting
//! it when it dies, and stopping it on shutdown. Containers survive a containerd
//! restart (their shims are separate processes). Not talking to it (client.rs).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::RuntimeError;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The files of a containerd living under one directory.
#[derive(Debug, Clone)]
pub struct ManagedLayout {
    pub dir: PathBuf,
}

impl ManagedLayout {
    pub fn new(dir: impl Into<PathBuf>) -> ManagedLayout {
        ManagedLayout { dir: dir.into() }
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// containerd's config: everything under `dir`, no CRI plugin.
    pub fn config_toml(&self) -> String {
        let q = |p: PathBuf| toml_string(&p.to_string_lossy());
        format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             \n\
             [grpc]\n  address = {sock}\n\
             \n\
             [ttrpc]\n  address = {ttrpc}\n\
             \n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
            root = q(self.root()),
            state = q(self.state()),
            sock = q(self.socket()),
            ttrpc = q(self.dir.join("containerd.sock.ttrpc")),
            opt = q(self.dir.join("opt")),
        )
    }

    /// Writes the config and creates the directories.
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::create_dir_all(self.root())?;
        std::fs::create_dir_all(self.state())?;
        std::fs::write(self.config(), self.config_toml())
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Finds an executable on PATH.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running, supervised containerd.
pub struct Supervisor {
    layout: ManagedLayout,
    pid: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Supervisor {
    /// Starts `binary` with its config under `layout` and waits until its socket
    /// answers.
    pub async fn start(binary: &Path, layout: ManagedLayout) -> Result<Supervisor, RuntimeError> {
        layout
            .prepare()
            .map_err(|e| RuntimeError::io(format!("prepare containerd dir {}", layout.dir.display()), e))?;
        let pid = Arc::new(AtomicU32::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, mut ready_rx) = watch::channel::<Option<String>>(None);
        let task = tokio::spawn(supervise(
            binary.to_path_buf(),
            layout.clone(),
            pid.clone(),
            stop_rx,
            ready_tx,
        ));
        let sup = Supervisor {
            layout: layout.clone(),
            pid,
            stop,
            task: Mutex::new(Some(task)),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(err) = ready_rx.borrow_and_update().clone() {
                sup.shutdown().await;
                return Err(RuntimeError::NoContainerd(err));
            }
            if super::client::probe(&layout.socket()).await.is_ok() {
                tracing::info!(socket = %layout.socket().display(), pid = sup.pid().unwrap_or(0), "started containerd");
                return Ok(sup);
            }
            if Instant::now() > deadline {
                sup.shutdown().await;
                return Err(RuntimeError::NoContainerd(format!(
                    "started {} but its socket {} did not answer within {READY_TIMEOUT:?} (see {})",
                    binary.display(),
                    layout.socket().display(),
                    layout.log().display()
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = ready_rx.changed() => {}
            }
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.layout.socket()
    }

    pub fn layout(&self) -> &ManagedLayout {
        &self.layout
    }

    /// Pid of the current containerd process.
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::SeqCst) {
            0 => None,
            p => Some(p),
        }
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s) and the supervision.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // Without a runtime to await the task, at least do not leave containerd behind.
        if let Some(pid) = self.pid() {
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
}

async fn supervise(
    binary: PathBuf,
    layout: ManagedLayout,
    pid: Arc<AtomicU32>,
    mut stop: watch::Receiver<bool>,
    ready: watch::Sender<Option<String>>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(layout.log());
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let spawned = Command::new(&binary)
            .arg("--config")
            .arg(layout.config())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(false)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot run {}: {e}", binary.display());
                if first {
                    let _ = ready.send(Some(msg));
                    return;
                }
                tracing::error!(error = %msg, "containerd restart failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        first = false;
        let started = Instant::now();
        pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
        tokio::select! {
            status = child.wait() => {
                pid.store(0, Ordering::SeqCst);
                if *stop.borrow() {
                    return;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(status = ?status.ok(), restart_in = ?backoff, "containerd exited; restarting it");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            _ = stop.changed() => {
                if let Some(p) = child.id() {
                    unsafe { libc::kill(p as i32, libc::SIGTERM); }
                }
                if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                pid.store(0, Ordering::SeqCst);
                tracing::info!("stopped containerd");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_under_dir_and_disables_cri() {
        let l = ManagedLayout::new("/var/lib/warren/containerd");
        let c = l.config_toml();
        assert!(c.contains("root = \"/var/lib/warren/containerd/root\""), "{c}");
        assert!(c.contains("state = \"/var/lib/warren/containerd/state\""));
        assert!(c.contains("address = \"/var/lib/warren/containerd/containerd.sock\""));
        assert!(c.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        assert!(c.starts_with("version = 2\n"));
    }

    #[test]
    fn finds_binaries_on_path() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("warren-no-such-binary").is_none());
    }
}
