//! Nodes: every machine in the cluster, manager or worker, with its capacity,
//! labels, availability and last known state.

use super::{Labels, Resources};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    #[default]
    Worker,
    Manager,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move away.
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, super::ValidationError> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(super::ValidationError::new(
                field,
                format!("invalid availability {s:?}: expected active, pause or drain"),
            )),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeState {
    #[default]
    Unknown,
    Ready,
    /// Missed its heartbeats.
    Down,
    /// Missed its heartbeats; its agent keeps its tasks running on its own, and
    /// each service's `reschedule_after_ms` says when they are placed elsewhere.
    Unreachable,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
            NodeState::Unreachable => "unreachable",
        }
    }

    /// Down or unreachable: nothing the managers send reaches it.
    pub fn is_away(self) -> bool {
        matches!(self, NodeState::Down | NodeState::Unreachable)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
}

impl Platform {
    pub fn current() -> Platform {
        Platform {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub labels: Labels,
    /// IP:PORT other nodes reach this one on.
    pub addr: String,
    pub resources: Resources,
    pub platform: Platform,
    pub state: NodeState,
    pub message: String,
    /// The node's Raft member ID; 0 for workers.
    pub raft_id: u64,
    /// The node's /24 of the cluster CIDR, for its tasks' addresses.
    #[serde(default)]
    pub subnet: Option<String>,
    /// What the other nodes need to reach this one over the WireGuard mesh; None
    /// for a node of a `native` cluster, or one that has not said yet.
    #[serde(default)]
    pub mesh: Option<NodeMesh>,
    pub warren_version: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub version: u64,
    /// The ingress this node runs, with the ports it listens on (`--ingress`);
    /// None: no ingress. The daemon follows this, not its flags.
    #[serde(default)]
    pub ingress: Option<super::ingress::NodeIngress>,
    /// The port of the node's metrics listener, as its agent reports it; 0: not
    /// reported yet.
    #[serde(default)]
    pub metrics_port: u16,
    /// When a manager last heard from the node, set when it is marked unreachable
    /// (ms since the epoch); 0: not recorded.
    #[serde(default)]
    pub last_contact_ms: i64,
    /// What the node's agent did on its own while cut off, as reported on heal.
    #[serde(default)]
    pub autonomy: String,
    /// When the node's current certificate expires (ms since the epoch), as the
    /// manager that issued it recorded; 0: not recorded (issued before renewal).
    #[serde(default)]
    pub cert_expires_ms: i64,
}

/// The DNS port every node's resolver answers on.
pub const DNS_PORT: u16 = 53;

/// A port one of a node's own listeners uses, which no service may publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DaemonPort {
    /// The cluster port (API, Raft, dispatcher, node agent): `--listen-addr`.
    Cluster,
    Metrics,
    Dns,
    /// The WireGuard mesh's UDP port.
    Mesh,
}

impl DaemonPort {
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonPort::Cluster => "cluster port (--listen-addr)",
            DaemonPort::Metrics => "metrics port (--metrics-addr)",
            DaemonPort::Dns => "DNS resolver",
            DaemonPort::Mesh => "WireGuard mesh port (--mesh-port)",
        }
    }
}

impl Node {
    /// The node's own listeners: which ports, protocols and what for.
    pub fn daemon_ports(&self) -> Vec<(u16, super::Protocol, DaemonPort)> {
        use super::Protocol::{Tcp, Udp};
        let port_of = |addr: &str| addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
        let mut out = vec![(DNS_PORT, Tcp, DaemonPort::Dns), (DNS_PORT, Udp, DaemonPort::Dns)];
        if let Some(p) = port_of(&self.addr) {
            out.push((p, Tcp, DaemonPort::Cluster));
        }
        if self.metrics_port != 0 {
            out.push((self.metrics_port, Tcp, DaemonPort::Metrics));
        }
        if let Some(p) = self.mesh.as_ref().and_then(|m| port_of(&m.endpoint)) {
            out.push((p, Udp, DaemonPort::Mesh));
        }
        out
    }
}

impl Node {
    /// Can take new tasks.
    pub fn is_schedulable(&self) -> bool {
        self.state == NodeState::Ready && self.availability == Availability::Active
    }
}

/// A node's end of the WireGuard mesh, as it publishes it (never the private key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMesh {
    /// The node's WireGuard public key, base64.
    pub public_key: String,
    /// The key the node rotates to, published before it switches (see `mesh`).
    #[serde(default)]
    pub next_public_key: Option<String>,
    /// Where the node's WireGuard listens (IP:PORT on the underlay).
    pub endpoint: String,
    /// Counts the rotations asked of the node (`warren node update --rotate-key`);
    /// the node starts one when it sees a value it has not acted on.
    #[serde(default)]
    pub rotation: u64,
}
