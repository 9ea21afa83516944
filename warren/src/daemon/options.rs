//! What the daemon is started with: the options common to `cluster init`,
//! `cluster join` and `daemon` (as the CLI parsed them), the changes to the
//! persisted runtime settings, the defaults, and what the daemon reports once the
//! node is up.

use crate::config::RuntimeSettings;
use crate::manager::ManagerSettings;
use crate::model::{NodeRole, Resources};
use crate::raft::node::RaftTuning;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/warren";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:2377";
pub const DEFAULT_SOCKET: &str = "/run/warren/warren.sock";
pub const DEFAULT_METRICS: &str = "0.0.0.0:9090";
pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";

/// Settings common to init, join and daemon; `None` means "the default" for init
/// and join, and "as persisted" for daemon.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    pub listen_addr: Option<SocketAddr>,
    pub advertise_addr: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub node_name: Option<String>,
    pub capacity: Option<Resources>,
    pub raft: RaftTuning,
    pub manager: ManagerSettings,
    /// Changes to the runtime settings (persisted ones, or the defaults, otherwise).
    pub runtime: RuntimeOverrides,
    /// `cluster init --overlay` (None: wireguard); join and daemon ignore it.
    pub overlay: Option<crate::model::Overlay>,
    /// `cluster init --cert-expiry` (None: 90 days); join and daemon ignore it.
    pub cert_expiry: Option<std::time::Duration>,
    /// `--ingress` on init and join: seeds the node's ingress record.
    pub ingress: Option<crate::model::ingress::NodeIngress>,
}

#[derive(Clone, Debug, Default)]
pub struct RuntimeOverrides {
    pub containerd: Option<bool>,
    pub containerd_socket: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub cgroup_parent: Option<String>,
    pub bridge: Option<String>,
    pub insecure_registries: Vec<String>,
    pub dataplane: Option<bool>,
    pub bpffs: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub dataplane_ifaces: Vec<String>,
    pub mesh_interface: Option<String>,
    pub mesh_port: Option<u16>,
    pub mesh_run_dir: Option<PathBuf>,
    pub wireguard_go: Option<PathBuf>,
}

impl RuntimeOverrides {
    pub fn apply(&self, base: &RuntimeSettings) -> RuntimeSettings {
        let mut r = base.clone();
        if let Some(v) = self.containerd {
            r.containerd = v;
        }
        if let Some(v) = &self.containerd_socket {
            r.containerd_socket = v.clone();
        }
        if let Some(v) = &self.containerd_namespace {
            r.containerd_namespace = v.clone();
        }
        if let Some(v) = &self.cgroup_parent {
            r.cgroup_parent = v.clone();
        }
        if let Some(v) = &self.bridge {
            r.bridge = v.clone();
        }
        if !self.insecure_registries.is_empty() {
            r.insecure_registries = self.insecure_registries.clone();
        }
        if let Some(v) = self.dataplane {
            r.dataplane = v;
        }
        if self.bpffs.is_some() {
            r.bpffs = self.bpffs.clone();
        }
        if self.cgroup_root.is_some() {
            r.cgroup_root = self.cgroup_root.clone();
        }
        if !self.dataplane_ifaces.is_empty() {
            r.dataplane_ifaces = self.dataplane_ifaces.clone();
        }
        if let Some(v) = &self.mesh_interface {
            r.mesh.interface = v.clone();
        }
        if let Some(v) = self.mesh_port {
            r.mesh.listen_port = v;
        }
        if let Some(v) = &self.mesh_run_dir {
            r.mesh.run_dir = v.clone();
        }
        if let Some(v) = &self.wireguard_go {
            r.mesh.wireguard_go = v.clone();
        }
        r
    }
}

/// What `init` and `join` report once the node is up, for the CLI to print.
#[derive(Clone, Debug)]
pub struct Ready {
    pub node_id: String,
    pub node_name: String,
    pub cluster_id: String,
    pub role: NodeRole,
    pub advertise_addr: SocketAddr,
    pub socket: PathBuf,
    /// Set on `init` only.
    pub tokens: Option<(String, String)>,
}
