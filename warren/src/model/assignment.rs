//! What the leader tells one node: the node's share of the cluster state, before
//! its secrets are unsealed and it goes on the wire.

use super::{NodeMesh, ServiceEndpoints, Task};
use std::collections::BTreeMap;

/// What one node must know: the tasks placed there that have not finished (it
/// stops anything else it runs), the secrets those tasks use, and the other nodes'
/// task subnets for routing.
#[derive(Debug, Default, PartialEq)]
pub struct NodeAssignment {
    pub tasks: Vec<Task>,
    /// Secret IDs, by name, that the tasks reference.
    pub secrets: BTreeMap<String, String>,
    pub peers: Vec<NodePeer>,
    /// Names of the local volumes that live on this node.
    pub volumes: Vec<String>,
    /// Every service's reachable tasks (the same for every node).
    pub services: Vec<ServiceEndpoints>,
    /// For a node that runs an ingress: what it serves.
    pub ingress: Option<super::ingress::IngressAssignment>,
    /// The content of the config objects the tasks use, by name.
    pub configs: BTreeMap<String, Vec<u8>>,
    /// The rotations asked of this node's mesh key so far.
    pub mesh_rotation: u64,
    /// This node's own mesh entry in the Raft state.
    pub own_mesh: Option<NodeMesh>,
}

/// Another node, as this one reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePeer {
    pub node_id: String,
    pub subnet: String,
    /// The node's address for a native route; None in a wireguard cluster.
    pub via: Option<String>,
    /// The node's end of the mesh; None in a native cluster.
    pub mesh: Option<NodeMesh>,
}
