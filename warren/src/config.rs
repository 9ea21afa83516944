//! A node's persisted settings (`<data-dir>/node.json`): everything `cluster init`
//! or `cluster join` decided, so that `warren daemon --data-dir DIR` resumes the
//! node with no other input (flags given to `daemon` override the addresses), and
//! what follows from them: how the node reaches containerd, where its data plane
//! and task network live, its pid file. The daemon and `cluster leave` both read
//! them from here. Not the starting of anything.

use crate::dataplane::DataplaneConfig;
use crate::model::{NodeRole, Resources};
use crate::network::{NetworkConfig, NetworkError};
use crate::runtime::RuntimeConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    /// The WireGuard mesh's interface, port and userspace implementation (used
    /// only in a wireguard cluster).
    #[serde(default)]
    pub mesh: MeshSettings,
}

/// `--mesh-interface`, `--mesh-port`, `--mesh-run-dir`, `--wireguard-go`: distinct
/// values let several nodes share one machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshSettings {
    pub interface: String,
    pub listen_port: u16,
    pub run_dir: PathBuf,
    pub wireguard_go: PathBuf,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            interface: crate::mesh::DEFAULT_INTERFACE.into(),
            listen_port: crate::mesh::DEFAULT_LISTEN_PORT,
            run_dir: crate::mesh::DEFAULT_RUN_DIR.into(),
            wireguard_go: "wireguard-go".into(),
        }
    }
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
            mesh: MeshSettings::default(),
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
    /// The cluster's overlay, as init chose it or join learned it; a node.json
    /// written before the mesh has none: native.
    #[serde(default)]
    pub overlay: crate::model::Overlay,
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

/// Why the data plane's settings could not be derived from the node's.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("dataplane-iface: no interface named {0:?}")]
    Unknown(String),
    #[error("listing the node's interfaces for the data plane: {0}")]
    List(#[from] nix::Error),
}

impl NodeConfig {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// The file holding the running daemon's process ID, for `warren cluster leave`.
    pub fn pid_file(data_dir: &Path) -> PathBuf {
        data_dir.join("warren.pid")
    }

    /// How this node reaches containerd (or starts its own under the data dir).
    pub fn runtime_config(&self, data_dir: &Path) -> RuntimeConfig {
        let rs = &self.runtime;
        let mut rc = RuntimeConfig::new(data_dir);
        rc.socket = rs.containerd_socket.clone();
        rc.namespace = rs.containerd_namespace.clone();
        rc.cgroup_parent = rs.cgroup_parent.clone();
        rc.registry.insecure = rs.insecure_registries.clone();
        rc
    }

    /// Where this node's data plane lives: pin directory, cgroup, interfaces.
    pub fn dataplane_config(&self) -> Result<DataplaneConfig, InterfaceError> {
        let rs = &self.runtime;
        let mut dc = DataplaneConfig::new(&self.node_name);
        if let Some(b) = &rs.bpffs {
            dc.bpffs_dir = b.clone();
        }
        if let Some(c) = &rs.cgroup_root {
            dc.cgroup_root = c.clone();
        }
        let (ifaces, addrs) = dataplane_interfaces(self.advertise_addr.ip(), &rs.dataplane_ifaces)?;
        dc.ifaces = ifaces;
        dc.node_addrs = addrs;
        Ok(dc)
    }

    /// The node network in `subnet` (the one the managers gave this node) of the
    /// cluster CIDR, with its state under the data dir.
    pub fn network_config(
        &self,
        data_dir: &Path,
        subnet: &str,
        cluster_cidr: &str,
    ) -> Result<NetworkConfig, NetworkError> {
        let invalid = |field, value: &str, e: ipnet::AddrParseError| NetworkError::Invalid {
            field,
            reason: format!("{value:?}: {e}"),
        };
        let net = subnet.parse().map_err(|e| invalid("node subnet", subnet, e))?;
        let cidr = cluster_cidr
            .parse()
            .map_err(|e| invalid("cluster CIDR", cluster_cidr, e))?;
        let mut nc = NetworkConfig::new(&self.node_id, net, cidr, data_dir.join("network"));
        nc.bridge = self.runtime.bridge.clone();
        Ok(nc)
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

/// The interfaces whose published-port traffic the data plane translates (given,
/// or the one holding the advertise address; none for loopback), and the node's
/// IPv4 addresses on them.
fn dataplane_interfaces(advertise: IpAddr, given: &[String]) -> Result<(Vec<String>, Vec<Ipv4Addr>), InterfaceError> {
    let mut addrs_of: BTreeMap<String, Vec<Ipv4Addr>> = Default::default();
    for ifa in nix::ifaddrs::getifaddrs()? {
        if let Some(a) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            addrs_of.entry(ifa.interface_name.clone()).or_default().push(a.ip());
        }
    }
    let ifaces: Vec<String> = if given.is_empty() {
        addrs_of
            .iter()
            .filter(|(name, addrs)| *name != "lo" && addrs.iter().any(|a| IpAddr::V4(*a) == advertise))
            .map(|(name, _)| name.clone())
            .collect()
    } else {
        for i in given {
            if !addrs_of.contains_key(i) && !Path::new("/sys/class/net").join(i).exists() {
                return Err(InterfaceError::Unknown(i.clone()));
            }
        }
        given.to_vec()
    };
    let mut addrs: Vec<Ipv4Addr> = ifaces
        .iter()
        .flat_map(|i| addrs_of.get(i).cloned().unwrap_or_default())
        .collect();
    if let IpAddr::V4(a) = advertise {
        if !a.is_unspecified() && !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    Ok((ifaces, addrs))
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
            overlay: Default::default(),
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

    #[test]
    fn derived_settings_follow_the_node() {
        let mut c = config();
        c.runtime.bridge = "br-test".into();
        c.runtime.insecure_registries = vec!["127.0.0.1:5000".into()];
        let dir = Path::new("/var/lib/w");
        let rc = c.runtime_config(dir);
        assert_eq!(rc.namespace, "warren");
        assert_eq!(rc.registry.insecure, vec!["127.0.0.1:5000".to_string()]);
        let nc = c.network_config(dir, "10.88.3.0/24", "10.88.0.0/16").unwrap();
        assert_eq!(
            (nc.bridge.as_str(), nc.state_dir.as_path()),
            ("br-test", Path::new("/var/lib/w/network"))
        );
        let e = c.network_config(dir, "10.88.3.0", "10.88.0.0/16").unwrap_err();
        assert!(e.to_string().starts_with("invalid node subnet: \"10.88.3.0\""), "{e}");
        assert_eq!(NodeConfig::pid_file(dir), Path::new("/var/lib/w/warren.pid"));

        // Loopback advertises no interface, but its address is the node's.
        let dc = c.dataplane_config().unwrap();
        assert!(dc.ifaces.is_empty(), "{:?}", dc.ifaces);
        assert_eq!(dc.node_addrs, vec![Ipv4Addr::LOCALHOST]);
        c.runtime.dataplane_ifaces = vec!["no-such-if0".into()];
        let e = c.dataplane_config().unwrap_err();
        assert_eq!(e.to_string(), "dataplane-iface: no interface named \"no-such-if0\"");
    }
}
