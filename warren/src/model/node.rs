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
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
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
