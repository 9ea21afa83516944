//! A node's persisted settings (`<data-dir>/node.json`): everything `cluster init`
//! or `cluster join` decided, so that `warren daemon --data-dir DIR` resumes the
//! node with no other input. Flags given to `daemon` override the addresses.

use crate::model::{NodeRole, Resources};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const FILE: &str = "node.json";

/// How the node runs containers (`--runtime`, `--containerd-socket`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeSettings {
    /// false: `--runtime none`, a node that runs no tasks.
    pub containerd: bool,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub cgroup_parent: String,
    pub bridge: String,
    pub insecure_registries: Vec<String>,
    /// false: `--dataplane none` (no eBPF programs on this node).
    #[serde(default = "yes")]
    pub dataplane: bool,
    /// bpffs directory for the pinned maps and links; None: `/sys/fs/bpf/warren/<node name>`.
    #[serde(default)]
    pub bpffs: Option<PathBuf>,
    /// cgroup v2 directory whose processes get socket load balancing; None: the root.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
    /// Interfaces carrying published-port traffic; empty: the advertise address's.
    #[serde(default)]
    pub dataplane_ifaces: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            containerd: true,
            containerd_socket: "/run/containerd/containerd.sock".into(),
            containerd_namespace: "warren".into(),
            cgroup_parent: "/warren".into(),
            bridge: "warren0".into(),
            insecure_registries: vec![],
            dataplane: true,
            bpffs: None,
            cgroup_root: None,
            dataplane_ifaces: vec![],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub cluster_id: String,
    pub node_id: String,
    pub node_name: String,
    pub role: NodeRole,
    /// Raft member ID (managers only).
    pub raft_id: u64,
    pub listen_addr: SocketAddr,
    pub advertise_addr: SocketAddr,
    pub socket: PathBuf,
    pub metrics_addr: SocketAddr,
    /// Known manager addresses; kept current by the agent.
    pub managers: Vec<String>,
    /// Capacity to report instead of the machine's (`--capacity-cpus`, `--capacity-memory`).
    pub capacity: Option<Resources>,
    /// A manager that has entered the Raft group (false between `join` and the
    /// leader accepting it, so that a restart in between finishes the job).
    #[serde(default)]
    pub raft_member: bool,
    /// This node's task subnet and the cluster CIDR, as the leader last announced
    /// them, so that a restarted node can run its tasks before it reaches a manager.
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub cluster_cidr: Option<String>,
    #[serde(default)]
    pub runtime: RuntimeSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid node configuration: {reason}")]
    Parse { path: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error(
        "{dir} holds no Warren node (no {FILE}): run `warren cluster init` or `warren cluster join` with --data-dir {dir} first"
    )]
    Missing { dir: String },
    #[error(
        "{dir} already holds node {name} ({id}) of cluster {cluster}: start it with `warren daemon --data-dir {dir}`, or choose another --data-dir"
    )]
    AlreadyInitialized {
        dir: String,
        name: String,
        id: String,
        cluster: String,
    },
    #[error(
        "{dir} holds an incomplete node (left by an interrupted init or join): remove {dir} and run the command again"
    )]
    Incomplete { dir: String },
}

impl NodeConfig {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    pub fn load(data_dir: &Path) -> Result<NodeConfig, ConfigError> {
        let path = Self::path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing {
                    dir: data_dir.display().to_string(),
                })
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes atomically (temp file + rename), so a crash never leaves half a file.
    pub fn save(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!(".{FILE}.tmp"));
        let werr = |p: &Path, source| ConfigError::Write {
            path: p.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).expect("config serializes");
        std::fs::create_dir_all(data_dir).map_err(|e| werr(data_dir, e))?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| werr(&tmp, e))?;
            std::io::Write::write_all(&mut f, &bytes).map_err(|e| werr(&tmp, e))?;
            f.sync_all().map_err(|e| werr(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| werr(&path, e))
    }

    /// Refuses a data dir that already holds a node (or the remains of one).
    pub fn ensure_fresh(data_dir: &Path) -> Result<(), ConfigError> {
        match Self::load(data_dir) {
            Ok(c) => Err(ConfigError::AlreadyInitialized {
                dir: data_dir.display().to_string(),
                name: c.node_name,
                id: c.node_id,
                cluster: c.cluster_id,
            }),
            Err(ConfigError::Missing { .. }) => {
                let leftovers = ["raft", "certs"].iter().any(|d| data_dir.join(d).exists());
                if leftovers {
                    Err(ConfigError::Incomplete {
                        dir: data_dir.display().to_string(),
                    })
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig {
            cluster_id: "c".into(),
            node_id: "n".into(),
            node_name: "edge".into(),
            role: NodeRole::Manager,
            raft_id: 7,
            listen_addr: "127.0.0.1:2377".parse().unwrap(),
            advertise_addr: "127.0.0.1:2377".parse().unwrap(),
            socket: "/tmp/w.sock".into(),
            metrics_addr: "127.0.0.1:9090".parse().unwrap(),
            managers: vec!["127.0.0.1:2377".into()],
            capacity: None,
            raft_member: true,
            subnet: None,
            cluster_cidr: None,
            runtime: RuntimeSettings::default(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        NodeConfig::ensure_fresh(dir.path()).unwrap();
        assert!(matches!(NodeConfig::load(dir.path()), Err(ConfigError::Missing { .. })));
        config().save(dir.path()).unwrap();
        assert_eq!(NodeConfig::load(dir.path()).unwrap(), config());
        let err = NodeConfig::ensure_fresh(dir.path()).unwrap_err();
        assert!(err.to_string().contains("warren daemon --data-dir"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("raft")).unwrap();
        assert!(matches!(
            NodeConfig::ensure_fresh(dir.path()),
            Err(ConfigError::Incomplete { .. })
        ));
    }
}
