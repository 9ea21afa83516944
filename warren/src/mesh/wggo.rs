//! Userspace WireGuard as a process Warren starts and supervises: Debian's
//! `wireguard-go` in the foreground, inside the node's network namespace (where it
//! creates the mesh's TUN interface and UDP socket), restarted when it dies,
//! stopped on shutdown. Not the UAPI protocol (`uapi`), not what is configured.
//!
//! wireguard-go puts its UAPI socket in the compiled-in `/var/run/wireguard`. So
//! that several nodes share a machine, each is started in a private mount
//! namespace where its own run dir is bind-mounted over that path: the socket
//! appears in the run dir, and the host's mounts are untouched. With the default
//! run dir (`/run/wireguard`) there is no bind, and `wg show` finds the socket.
//!
//! A pid file beside the socket lets a restarted daemon adopt a wireguard-go left
//! running (`detach`), so a restart in place keeps the tunnel and its sessions.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use super::error::WgError;
use super::uapi;

/// wireguard-go's compiled-in socket directory.
const WG_SOCKET_DIR: &str = "/var/run/wireguard";
/// How long a fresh process may take to open its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Restart delays: doubled after each quick death, up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A process that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// How to run one node's wireguard-go.
#[derive(Clone, Debug)]
pub struct WgGoConfig {
    pub binary: PathBuf,
    pub iface: String,
    pub run_dir: PathBuf,
    pub node_ns: Arc<OwnedFd>,
}

impl WgGoConfig {
    pub fn socket(&self) -> PathBuf {
        uapi::socket_path(&self.run_dir, &self.iface)
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.iface))
    }

    /// Whether the run dir is wireguard-go's own, so no bind mount is needed.
    fn is_default_dir(&self) -> bool {
        match (
            std::fs::canonicalize(&self.run_dir),
            std::fs::canonicalize(WG_SOCKET_DIR),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// The supervisor of one wireguard-go process.
pub struct WireguardGo {
    stop: watch::Sender<Stop>,
    ready: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    Terminate,
    Detach,
}

/// The process being supervised: started here, or adopted from a previous daemon.
enum Running {
    Child(tokio::process::Child),
    Adopted(i32),
}

impl Running {
    fn pid(&self) -> Option<i32> {
        match self {
            Running::Child(c) => c.id().map(|p| p as i32),
            Running::Adopted(p) => Some(*p),
        }
    }

    async fn wait(&mut self) -> String {
        match self {
            Running::Child(c) => match c.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            },
            Running::Adopted(pid) => loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !alive(*pid) {
                    return "exited (adopted process)".into();
                }
            },
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

impl WireguardGo {
    /// Checks the binary and starts supervising (adopting a live process of a
    /// previous daemon for the same interface, run dir and namespace).
    pub fn spawn(cfg: WgGoConfig) -> Result<WireguardGo, WgError> {
        check_binary(&cfg.binary)?;
        std::fs::create_dir_all(&cfg.run_dir).map_err(|source| WgError::Spawn {
            path: cfg.run_dir.clone(),
            iface: cfg.iface.clone(),
            source,
        })?;
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let (ready_tx, ready) = watch::channel(0u64);
        let task = tokio::spawn(supervise(cfg, stop_rx, ready_tx));
        Ok(WireguardGo { stop, ready, task })
    }

    /// Bumped each time a process (re)opens its socket: its interface is new and
    /// empty, and must be configured again.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.ready.clone()
    }

    /// Stops the process (SIGTERM; wireguard-go removes its interface and socket).
    pub async fn stop(self) {
        let _ = self.stop.send(Stop::Terminate);
        let _ = self.task.await;
    }

    /// Stops supervising but leaves the process running for the next daemon.
    pub async fn detach(self) {
        let _ = self.stop.send(Stop::Detach);
        let _ = self.task.await;
    }
}

/// Fails unless `binary` (a path, or a name on the PATH) is an installed file.
pub fn check_binary(binary: &Path) -> Result<(), WgError> {
    let found = if binary.components().count() > 1 {
        binary.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(WgError::NotInstalled {
            path: binary.to_path_buf(),
        })
    }
}

async fn supervise(cfg: WgGoConfig, mut stop: watch::Receiver<Stop>, ready: watch::Sender<u64>) {
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        let mut proc = match adopt(&cfg) {
            Some(pid) => {
                tracing::info!(iface = %cfg.iface, pid, "adopted a running wireguard-go");
                Running::Adopted(pid)
            }
            None => match start(&cfg) {
                Ok(c) => Running::Child(c),
                Err(e) => {
                    tracing::warn!(iface = %cfg.iface, error = %e, "wireguard-go did not start");
                    if pause(&mut stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let socket = cfg.socket();
        let became_ready = tokio::select! {
            r = wait_ready(&socket) => r,
            why = proc.wait() => {
                tracing::warn!(iface = %cfg.iface, status = %why, "wireguard-go exited before opening its socket");
                false
            }
            _ = stop.changed() => false,
        };
        if became_ready {
            if let Some(pid) = proc.pid() {
                let _ = std::fs::write(cfg.pid_file(), format!("{pid}\n"));
            }
            ready.send_modify(|g| *g += 1);
            tracing::info!(iface = %cfg.iface, pid = ?proc.pid(), socket = %socket.display(), "wireguard-go ready");
            tokio::select! {
                why = proc.wait() => {
                    tracing::warn!(iface = %cfg.iface, status = %why, "wireguard-go died; restarting it");
                }
                _ = stop.changed() => {}
            }
        }
        let how = *stop.borrow();
        match how {
            Stop::Run => {}
            Stop::Detach => {
                tracing::info!(iface = %cfg.iface, pid = ?proc.pid(), "leaving wireguard-go running");
                if let Running::Child(c) = proc {
                    // Dropping a tokio Child does not kill it (kill_on_drop is off).
                    drop(c);
                }
                return;
            }
            Stop::Terminate => {
                terminate(&cfg, proc).await;
                return;
            }
        }
        if started.elapsed() > HEALTHY_AFTER {
            backoff = BACKOFF_START;
        }
        if pause(&mut stop, backoff).await {
            let how = *stop.borrow();
            if how == Stop::Terminate {
                clean_files(&cfg);
            }
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Sleeps `d`; true when asked to stop meanwhile.
async fn pause(stop: &mut watch::Receiver<Stop>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow() != Stop::Run,
        _ = stop.changed() => true,
    }
}

async fn wait_ready(socket: &Path) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        let s = socket.to_path_buf();
        if tokio::task::spawn_blocking(move || uapi::answers(&s))
            .await
            .unwrap_or(false)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(socket = %socket.display(), "wireguard-go did not open its socket in time");
    false
}

async fn terminate(cfg: &WgGoConfig, mut proc: Running) {
    if let Some(pid) = proc.pid() {
        // SAFETY: plain kill(2) on the supervised process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if tokio::time::timeout(STOP_TIMEOUT, proc.wait()).await.is_err() {
            tracing::warn!(iface = %cfg.iface, pid, "wireguard-go ignored SIGTERM; killing it");
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = tokio::time::timeout(STOP_TIMEOUT, proc.wait()).await;
        }
    }
    clean_files(cfg);
    tracing::info!(iface = %cfg.iface, "wireguard-go stopped");
}

fn clean_files(cfg: &WgGoConfig) {
    let _ = std::fs::remove_file(cfg.pid_file());
    let _ = std::fs::remove_file(cfg.socket());
}

/// A wireguard-go left by a previous daemon: named in the pid file, alive, running
/// wireguard-go for this interface, in this namespace, and answering on the socket.
fn adopt(cfg: &WgGoConfig) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(cfg.pid_file()).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_ours = args.first().is_some_and(|a| a.ends_with(b"wireguard-go")) && args.contains(&cfg.iface.as_bytes());
    let ns_of = |p: &str| {
        std::fs::metadata(p)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let same_ns = ns_of(&format!("/proc/{pid}/ns/net")) == ns_of(&format!("/proc/self/fd/{}", cfg.node_ns.as_raw_fd()));
    (is_ours && same_ns && uapi::answers(&cfg.socket())).then_some(pid)
}

fn start(cfg: &WgGoConfig) -> Result<tokio::process::Child, WgError> {
    let err = |source| WgError::Spawn {
        path: cfg.binary.clone(),
        iface: cfg.iface.clone(),
        source,
    };
    let _ = std::fs::remove_file(cfg.pid_file());
    let bind = if cfg.is_default_dir() {
        None
    } else {
        // The mount point must exist; it is wireguard's usual directory anyway.
        std::fs::create_dir_all(WG_SOCKET_DIR).map_err(err)?;
        let src = CString::new(cfg.run_dir.as_os_str().as_bytes()).map_err(|e| err(std::io::Error::other(e)))?;
        let dst = CString::new(WG_SOCKET_DIR).expect("no NUL");
        Some((src, dst))
    };
    let ns_fd = cfg.node_ns.as_raw_fd();
    let mut cmd = tokio::process::Command::new(&cfg.binary);
    cmd.arg("-f")
        .arg(&cfg.iface)
        .env("WG_PROCESS_FOREGROUND", "1")
        .env("LOG_LEVEL", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group: a Ctrl-C meant for the daemon's terminal does not
        // take the tunnel down behind the daemon's back.
        .process_group(0);
    // SAFETY: between fork and exec only async-signal-safe system calls run, on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((src, dst)) = &bind {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let root = b"/\0";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr().cast(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(err)?;
    let iface = cfg.iface.clone();
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let iface = iface.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = line.trim();
                // The box wireguard-go prints about the kernel module is noise here.
                if !line.is_empty() && !line.starts_with(['┌', '│', '└']) {
                    tracing::info!(iface = %iface, "wireguard-go: {line}");
                }
            }
        });
    }
    tracing::info!(iface = %cfg.iface, pid = ?child.id(), run_dir = %cfg.run_dir.display(), "started wireguard-go");
    Ok(child)
}
