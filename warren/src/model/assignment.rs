//! What the leader tells one node: the node's share of the cluster state, before
//! its secrets are unsealed and it goes on the wire.

use super::{ServiceEndpoints, Task};
use std::collections::BTreeMap;

/// What one node must know: the tasks placed there that have not finished (it
/// stops anything else it runs), the secrets those tasks use, and the other nodes'
/// task subnets for routing.
#[derive(Debug, Default, PartialEq)]
pub struct NodeAssignment {
    pub tasks: Vec<Task>,
    /// Secret IDs, by name, that the tasks reference.
    pub secrets: BTreeMap<String, String>,
    /// (node ID, subnet, address to route through).
    pub peers: Vec<(String, String, String)>,
    /// Names of the local volumes that live on this node.
    pub volumes: Vec<String>,
    /// Every service's reachable tasks (the same for every node).
    pub services: Vec<ServiceEndpoints>,
    /// For a node that runs an ingress: what it serves.
    pub ingress: Option<super::ingress::IngressAssignment>,
}
