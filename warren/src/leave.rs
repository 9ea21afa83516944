//! `warren cluster leave`: stops this node's daemon and removes everything the node
//! left on the host — its containers and their (empty) cgroup parent, task
//! namespaces, bridge and nft table, pinned eBPF programs and maps, secrets mounts
//! and its data dir (local volumes are kept).
//! The cluster's record of the node is not touched here: as in Swarm, the node shows
//! as down until a manager runs `warren node rm`.

use crate::config::{ConfigError, InterfaceError, NodeConfig};
use crate::dataplane::DataplaneError;
use crate::model::NodeRole;
use crate::network::NetworkError;
use crate::runtime::{ContainerRuntime, RuntimeError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error("no warren node in {dir}: nothing to leave")]
    NoNode { dir: String },
    #[error("reading the node in {dir}: {source}")]
    Config { dir: String, source: ConfigError },
    #[error(
        "node {name} is a manager: leaving takes one member out of the Raft group, which a cluster \
         of fewer than three managers cannot survive; pass --force to leave anyway"
    )]
    Manager { name: String },
    #[error("the daemon (pid {pid}) did not stop: {source}")]
    Stop { pid: i32, source: nix::Error },
    #[error("the daemon (pid {pid}) did not stop: still running 30 s after SIGTERM and after SIGKILL")]
    StillRunning { pid: i32 },
    #[error("the node's containerd (pid {pid}) is still running after SIGTERM and SIGKILL")]
    ContainerdRunning { pid: i32 },
    /// Boxed: the runtime's and the data plane's errors are large.
    #[error("removing the node's {what}: {source}")]
    Cleanup {
        what: &'static str,
        source: Box<CleanupError>,
    },
}

/// What removing one part of the node failed on.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Interfaces(#[from] InterfaceError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Mesh(#[from] crate::mesh::MeshError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn cleanup<E: Into<CleanupError>>(what: &'static str) -> impl Fn(E) -> LeaveError + Copy {
    move |e| LeaveError::Cleanup {
        what,
        source: Box::new(e.into()),
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LeaveError {
    let path = path.to_path_buf();
    move |source| LeaveError::Cleanup {
        what,
        source: Box::new(CleanupError::Io { path, source }),
    }
}

/// What was removed, for the CLI to tell.
#[derive(Debug, Default)]
pub struct LeaveReport {
    pub node_name: String,
    pub stopped_pid: Option<i32>,
    pub containers: usize,
    pub network: bool,
    /// A mesh interface (or its routes, or its wireguard-go) was left to remove.
    pub mesh: bool,
    pub dataplane: Option<PathBuf>,
    pub kept_volumes: Option<PathBuf>,
}

/// A manager leaves only when forced.
pub fn check_role(cfg: &NodeConfig, force: bool) -> Result<(), LeaveError> {
    if cfg.role == NodeRole::Manager && !force {
        return Err(LeaveError::Manager {
            name: cfg.node_name.clone(),
        });
    }
    Ok(())
}

pub async fn leave(data_dir: &Path, force: bool) -> Result<LeaveReport, LeaveError> {
    let cfg = NodeConfig::load(data_dir).map_err(|e| match e {
        ConfigError::Missing { dir } => LeaveError::NoNode { dir },
        source => LeaveError::Config {
            dir: data_dir.display().to_string(),
            source,
        },
    })?;
    check_role(&cfg, force)?;
    let mut report = LeaveReport {
        node_name: cfg.node_name.clone(),
        ..Default::default()
    };
    report.stopped_pid = stop_daemon(data_dir)?;

    if cfg.runtime.containerd {
        report.containers = remove_containers(&cfg, data_dir).await?;
        // A daemon killed with SIGKILL leaves the containerd it started running; the
        // next daemon uses it without owning it. Its state is in the data dir,
        // which goes below: stop it first.
        if let Some(dir) = cfg.runtime_config(data_dir).managed_dir {
            stop_managed_containerd(&dir)?;
        }
    }
    if let (Some(subnet), Some(cidr)) = (&cfg.subnet, &cfg.cluster_cidr) {
        let nc = cfg.network_config(data_dir, subnet, cidr).map_err(cleanup("network"))?;
        let net = crate::network::NetlinkNetwork::open(nc).map_err(cleanup("network"))?;
        net.cleanup_node().await.map_err(cleanup("network"))?;
        report.network = true;
    }
    if cfg.overlay == crate::model::Overlay::Wireguard {
        let m = &cfg.runtime.mesh;
        report.mesh = crate::mesh::leave(&m.interface, &m.run_dir, crate::mesh::RTPROT_WARREN_MESH)
            .await
            .map_err(cleanup("mesh"))?;
    }
    if cfg.runtime.dataplane {
        let dc = cfg.dataplane_config().map_err(cleanup("data plane"))?;
        crate::dataplane::EbpfDataplane::cleanup(&dc).map_err(cleanup("data plane"))?;
        // The shared parent (`/sys/fs/bpf/warren`) goes with its last node.
        if let Some(parent) = dc.bpffs_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        report.dataplane = Some(dc.bpffs_dir.clone());
    }
    if cfg.runtime.containerd {
        // After the data plane: its programs may be attached to this very cgroup.
        remove_cgroup_parent(&cfg.runtime.cgroup_parent);
    }
    let secrets = crate::worker::node_secrets_dir(&cfg.node_id);
    unmount_under(&secrets);
    let _ = std::fs::remove_dir_all(&secrets);
    report.kept_volumes = remove_data_dir(data_dir)?;
    Ok(report)
}

/// SIGTERM to the daemon of this data dir, if one runs; SIGKILL after 30 s.
fn stop_daemon(data_dir: &Path) -> Result<Option<i32>, LeaveError> {
    let Ok(text) = std::fs::read_to_string(NodeConfig::pid_file(data_dir)) else {
        return Ok(None);
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(None);
    };
    // A stale file (the daemon was killed) may name an unrelated process by now.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let ours = std::env::current_exe().ok();
    let is_warren = exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("warren"))
        || ours.as_deref().is_some_and(|o| o == exe);
    if !alive(pid) || !is_warren {
        return Ok(None);
    }
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    signal(nix::sys::signal::Signal::SIGTERM).map_err(|source| LeaveError::Stop { pid, source })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        if Instant::now() > deadline {
            let _ = signal(nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(500));
            if alive(pid) {
                return Err(LeaveError::StillRunning { pid });
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(pid))
}

/// Running, and not a zombie waiting for its parent.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Stops every containerd running with the config under `dir` (the node's own,
/// whoever started it), SIGTERM then SIGKILL after 10 s.
fn stop_managed_containerd(dir: &Path) -> Result<(), LeaveError> {
    let config = crate::runtime::supervisor::ManagedLayout::new(dir).config();
    let config = config.as_os_str().as_encoded_bytes();
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == config))
        })
        .collect();
    for pid in pids {
        let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        let _ = signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            let _ = signal(nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(200));
        }
        if alive(pid) {
            return Err(LeaveError::ContainerdRunning { pid });
        }
        tracing::info!(pid, "stopped the node's containerd");
    }
    Ok(())
}

/// Every container of this node, stopped and deleted (with its snapshot).
async fn remove_containers(cfg: &NodeConfig, data_dir: &Path) -> Result<usize, LeaveError> {
    let err = cleanup::<RuntimeError>("containers");
    let rt = crate::runtime::Containerd::connect(cfg.runtime_config(data_dir))
        .await
        .map_err(err)?;
    let labels = BTreeMap::from([(crate::runtime::LABEL_NODE.to_string(), cfg.node_id.clone())]);
    let result = async {
        let containers = rt.list(&labels).await.map_err(err)?;
        for c in &containers {
            rt.stop(&c.id, libc::SIGTERM, Duration::from_secs(5))
                .await
                .map_err(err)?;
            rt.delete(&c.id).await.map_err(err)?;
            tracing::info!(container = %c.id, "removed a container of the leaving node");
        }
        Ok(containers.len())
    }
    .await;
    rt.shutdown().await;
    result
}

/// Mounts at or below `dir`, deepest first, lazily detached.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %m.display(), error = %e, "unmounting");
        }
    }
}

/// The node's `--cgroup-parent` in every cgroup hierarchy. rmdir removes only an
/// empty cgroup, so one that still holds processes or other cgroups stays.
fn remove_cgroup_parent(parent: &str) {
    let rel = parent.trim_matches('/');
    // Empty is the root itself; a ':' is systemd's slice notation, not a path.
    if rel.is_empty() || rel.contains(':') {
        return;
    }
    for mount in crate::cgroups::Hierarchies::current().mounts() {
        let dir = mount.join(rel);
        match std::fs::remove_dir(&dir) {
            Ok(()) => tracing::info!(cgroup = %dir.display(), "removed the node's cgroup parent"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(cgroup = %dir.display(), error = %e, "keeping the node's cgroup parent"),
        }
    }
}

/// Everything in the data dir but non-empty local volumes, which hold user data.
fn remove_data_dir(data_dir: &Path) -> Result<Option<PathBuf>, LeaveError> {
    unmount_under(data_dir);
    let volumes = data_dir.join("volumes");
    let keep = std::fs::read_dir(&volumes).is_ok_and(|mut d| d.next().is_some());
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("data dir", data_dir)(e)),
    };
    for e in entries.flatten() {
        let p = e.path();
        if keep && p == volumes {
            continue;
        }
        let r = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(io("data dir", &p))?;
    }
    if keep {
        return Ok(Some(volumes));
    }
    std::fs::remove_dir(data_dir).map_err(io("data dir", data_dir))?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(role: NodeRole) -> NodeConfig {
        NodeConfig {
            cluster_id: "c".into(),
            node_id: "n".into(),
            node_name: "edge-1".into(),
            role,
            raft_id: 0,
            listen_addr: "127.0.0.1:2377".parse().unwrap(),
            advertise_addr: "127.0.0.1:2377".parse().unwrap(),
            socket: "/run/warren/warren.sock".into(),
            metrics_addr: "127.0.0.1:9090".parse().unwrap(),
            managers: vec![],
            capacity: None,
            raft_member: false,
            subnet: None,
            cluster_cidr: None,
            runtime: Default::default(),
            overlay: Default::default(),
        }
    }

    #[test]
    fn a_manager_leaves_only_with_force() {
        let e = check_role(&cfg(NodeRole::Manager), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node edge-1 is a manager: leaving takes one member out of the Raft group, which a cluster of \
             fewer than three managers cannot survive; pass --force to leave anyway"
        );
        assert!(check_role(&cfg(NodeRole::Manager), true).is_ok());
        assert!(check_role(&cfg(NodeRole::Worker), false).is_ok());
    }

    #[test]
    fn the_data_dir_goes_but_volumes_with_data_stay() {
        let dir = std::env::temp_dir().join(format!("warren-leave-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("raft")).unwrap();
        std::fs::write(dir.join("node.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.join("volumes/db")).unwrap();
        std::fs::write(dir.join("volumes/db/data"), "x").unwrap();
        assert_eq!(remove_data_dir(&dir).unwrap(), Some(dir.join("volumes")));
        assert!(!dir.join("raft").exists() && !dir.join("node.json").exists());
        assert!(dir.join("volumes/db/data").exists());
        std::fs::remove_dir_all(dir.join("volumes")).unwrap();
        assert_eq!(remove_data_dir(&dir).unwrap(), None);
        assert!(!dir.exists());
    }

    #[test]
    fn a_missing_process_is_not_alive() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(i32::MAX));
    }
}
