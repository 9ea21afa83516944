//! A private containerd for one test (own root, state, socket and config in a temp
//! dir, CRI disabled), torn down on drop: its containers deleted through the API, the
//! daemon and any leftover shim and container processes killed, mounts under its root
//! unmounted, the dir removed. Also the harness's error type, binary checks, unique
//! names and a cgroup-parent guard. Not images or registries.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use warren::runtime::supervisor::ManagedLayout;
use warren::runtime::{ContainerRuntime, Containerd, RuntimeConfig};

/// Why the harness could not set something up. A missing binary names its package.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{binary} is not installed (Debian package: {package})")]
    MissingBinary { binary: String, package: &'static str },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{0}")]
    Timeout(String),
}

/// Finds `binary` on PATH (and the sbin dirs), or names the package that has it.
pub fn require(binary: &str, package: &'static str) -> Result<PathBuf, HarnessError> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.is_file());
    found.ok_or_else(|| HarnessError::MissingBinary {
        binary: binary.to_string(),
        package,
    })
}

/// A name unique in this machine for this test run: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A running private containerd.
pub struct PrivateContainerd {
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    layout: ManagedLayout,
}

impl PrivateContainerd {
    /// Starts containerd and waits until its socket accepts connections.
    pub fn start() -> Result<PrivateContainerd, HarnessError> {
        let bin = require("containerd", "containerd")?;
        require("containerd-shim-runc-v2", "containerd")?;
        require("runc", "runc")?;
        // Short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("warren-rt-ctd-")
            .tempdir_in("/tmp")
            .map_err(|e| io("create containerd temp dir", e))?;
        let layout = ManagedLayout::new(dir.path());
        layout.prepare().map_err(|e| io("write containerd config", e))?;
        let log = std::fs::File::create(layout.log()).map_err(|e| io("create containerd log", e))?;
        let child = Command::new(&bin)
            .arg("--config")
            .arg(layout.config())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| io("dup log", e))?)
            .stderr(log)
            .spawn()
            .map_err(|e| io(format!("run {}", bin.display()), e))?;
        let mut me = PrivateContainerd {
            dir: Some(dir),
            child: Some(child),
            layout,
        };
        let deadline = Instant::now() + Duration::from_secs(30) * crate::cluster::time_scale();
        loop {
            if std::os::unix::net::UnixStream::connect(me.layout.socket()).is_ok() {
                return Ok(me);
            }
            if let Some(Ok(Some(status))) = me.child.as_mut().map(|c| c.try_wait()) {
                return Err(HarnessError::Command {
                    command: "containerd".into(),
                    status: status.to_string(),
                    output: me.log_tail(),
                });
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!(
                    "containerd socket {} did not come up: {}",
                    me.layout.socket().display(),
                    me.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.layout.socket()
    }

    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A runtime config for this containerd: given namespace and cgroup parent, logs
    /// and exec FIFOs under its dir, never starting another containerd.
    pub fn runtime_config(&self, namespace: &str, cgroup_parent: &str) -> RuntimeConfig {
        let mut c = RuntimeConfig::new(&self.layout.dir.join("warren"));
        c.socket = self.socket();
        c.namespace = namespace.to_string();
        c.managed_dir = None;
        c.cgroup_parent = cgroup_parent.to_string();
        c
    }

    /// The last lines of containerd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.layout.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

fn io(context: impl Into<String>, source: std::io::Error) -> HarnessError {
    HarnessError::Io {
        context: context.into(),
        source,
    }
}

/// Deletes every container in every namespace through the API; returns the
/// namespaces.
fn delete_everything(socket: PathBuf, scratch: PathBuf) -> Vec<String> {
    let work = move || -> Result<Vec<String>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let ch = containerd_client::connect(&socket).await.map_err(|e| e.to_string())?;
            let namespaces = containerd_client::services::v1::namespaces_client::NamespacesClient::new(ch)
                .list(containerd_client::services::v1::ListNamespacesRequest { filter: String::new() })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .namespaces;
            let names = namespaces.iter().map(|n| n.name.clone()).collect();
            for ns in namespaces {
                let mut cfg = RuntimeConfig::new(&scratch);
                cfg.socket = socket.clone();
                cfg.namespace = ns.name.clone();
                cfg.managed_dir = None;
                let c = Containerd::connect(cfg).await.map_err(|e| e.to_string())?;
                for container in c.list(&BTreeMap::new()).await.map_err(|e| e.to_string())? {
                    match tokio::time::timeout(Duration::from_secs(40), c.delete(&container.id)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("harness: delete container {}: {e}", container.id),
                        Err(_) => eprintln!("harness: delete container {} timed out", container.id),
                    }
                }
            }
            Ok(names)
        })
    };
    // Drop may run inside a test's tokio runtime, which cannot block on another.
    match std::thread::spawn(work).join() {
        Ok(Ok(names)) => names,
        Ok(Err(e)) => {
            eprintln!("harness: cleaning containerd through its API: {e}");
            vec![]
        }
        Err(_) => {
            eprintln!("harness: cleanup thread panicked");
            vec![]
        }
    }
}

/// Pids of processes whose command line mentions `needle`, and all their descendants.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut parent: HashMap<i32, i32> = HashMap::new();
    let mut roots = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
            // Field 4 (ppid) follows the parenthesized command name.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                    parent.insert(pid, ppid);
                }
            }
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                roots.push(pid);
            }
        }
    }
    let mut out = roots.clone();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for (c, pp) in &parent {
            if *pp == p && !out.contains(c) {
                out.push(*c);
            }
        }
        i += 1;
    }
    out
}

/// Unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let prefix = dir.to_string_lossy().to_string();
    for _ in 0..3 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if let Ok(c) = std::ffi::CString::new(p) {
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let socket = self.socket();
        let namespaces = delete_everything(socket.clone(), self.layout.dir.join("cleanup"));
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims (their command line names our socket) and their containers.
        for pid in processes_mentioning(&socket.to_string_lossy()).into_iter().rev() {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        unmount_below(&self.layout.dir);
        // runc's state root per namespace is shared by all containerds; remove it
        // only when empty (no other test's container is in it).
        for ns in namespaces {
            let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(ns));
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                eprintln!("harness: remove {}: {e}", self.layout.dir.display());
            }
        }
    }
}

/// A cgroup parent for a test's containers (`/<name>` in every hierarchy), removed
/// on drop once its containers are gone.
pub struct CgroupParent {
    pub path: String,
}

impl CgroupParent {
    pub fn new(prefix: &str) -> CgroupParent {
        CgroupParent {
            path: format!("/{}", unique(prefix)),
        }
    }

    /// The directories of this cgroup: the v2 one, plus one per v1 hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        crate::cgroups::dirs(&self.path)
    }
}

/// Every cgroup directory at or below `dir`, deepest first.
fn cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree(&e.path()));
            }
        }
    }
    if dir.exists() {
        out.push(dir.to_path_buf());
    }
    out
}

/// Kills what is still in `dir`'s tree (processes a killed shim left: the
/// containers of this test's node) and removes the tree, waiting until the
/// kernel lets go of each cgroup; what stays is named.
fn remove_cgroup_tree(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = vec![];
        for d in cgroup_tree(dir) {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a pid read from this test's own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => left.push(format!("{}: {e} (procs: {:?})", d.display(), procs.trim())),
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(left.join("; "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for d in self.dirs() {
            if let Err(e) = remove_cgroup_tree(&d) {
                // A second panic while unwinding would abort and hide the first.
                if std::thread::panicking() {
                    eprintln!("harness: cgroup left behind: {e}");
                } else {
                    panic!("cgroup left behind: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_parent_kills_its_stragglers_and_goes() {
        crate::netns::require_root();
        let parent = CgroupParent::new("wrn-straggler");
        let leaf = crate::cgroups::v2_root()
            .join(parent.path.trim_start_matches('/'))
            .join("task");
        std::fs::create_dir_all(&leaf).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {}/cgroup.procs && exec sleep 600", leaf.display()))
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(leaf.join("cgroup.procs"))
            .unwrap_or_default()
            .contains(&pid.to_string())
        {
            assert!(Instant::now() < deadline, "sleep never joined {}", leaf.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        let dirs = parent.dirs();
        drop(parent);
        for d in dirs {
            assert!(!d.exists(), "{} is still there", d.display());
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "the straggler was killed: {status}");
    }
}
