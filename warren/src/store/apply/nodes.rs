//! Nodes: joining (with a /24 of the cluster CIDR each), what an agent reports about
//! its node, availability and labels, and removal (which orphans the node's tasks).

use super::{change, Versioned};
use crate::model::{Availability, Labels, Node, NodeState, Platform, Resources, TaskState};
use crate::store::state::{Action, Change, ObjectKind, State};
use crate::store::ApplyError;
use std::collections::BTreeMap;

impl State {
    pub(super) fn add_node(&mut self, node: &Node, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        if self.nodes.contains_key(&node.id) {
            return Err(ApplyError::AlreadyExists(format!("node {} already exists", node.id)));
        }
        if let Some(other) = self.nodes.values().find(|n| n.name == node.name) {
            return Err(ApplyError::AlreadyExists(format!(
                "node name {:?} is already used by node {}: remove it with `warren node rm {}` or pick another --node-name",
                node.name, other.id, other.name
            )));
        }
        if let Some(i) = &node.ingress {
            self.check_ingress_ports(i)?;
        }
        let mut node = node.clone();
        if let Some(meta) = &self.meta {
            node.subnet = Some(allocate_subnet(&meta.pod_cidr, &self.nodes, &node.name)?);
        }
        changes.push(change(ObjectKind::Node, Action::Created, &node.id, &node.name));
        self.nodes.insert(node.id.clone(), node);
        Ok(())
    }

    pub(super) fn node_hello(
        &mut self,
        id: &str,
        resources: Resources,
        platform: &Platform,
        warren_version: &str,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let node = self.node_mut(id)?;
        node.resources = resources;
        node.platform = platform.clone();
        node.warren_version = warren_version.to_string();
        node.state = NodeState::Ready;
        node.message.clear();
        node.touch(at_ms);
        changes.push(change(ObjectKind::Node, Action::Updated, id, &node.name));
        Ok(())
    }

    pub(super) fn set_node_state(
        &mut self,
        id: &str,
        state: NodeState,
        message: &str,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let node = self.node_mut(id)?;
        if node.state == state && node.message == message {
            return Ok(());
        }
        node.state = state;
        node.message = message.to_string();
        node.touch(at_ms);
        changes.push(change(ObjectKind::Node, Action::Updated, id, &node.name));
        Ok(())
    }

    pub(super) fn update_node(
        &mut self,
        id: &str,
        availability: Option<Availability>,
        label_add: &Labels,
        label_rm: &[String],
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let node = self.node_mut(id)?;
        if let Some(a) = availability {
            node.availability = a;
        }
        for k in label_rm {
            node.labels.remove(k);
        }
        for (k, v) in label_add {
            node.labels.insert(k.clone(), v.clone());
        }
        node.touch(at_ms);
        changes.push(change(ObjectKind::Node, Action::Updated, id, &node.name));
        Ok(())
    }

    pub(super) fn remove_node(&mut self, id: &str, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let node = self
            .nodes
            .remove(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Node, id))?;
        changes.push(change(ObjectKind::Node, Action::Removed, id, &node.name));
        for t in self.tasks.values_mut() {
            if t.node_id.as_deref() == Some(id) && !t.status.state.is_terminal() {
                t.status.state = TaskState::Orphaned;
                t.status.message = format!("node {} was removed", node.name);
                // No proposer clock in this command: the task keeps its update time.
                t.bump();
                changes.push(change(ObjectKind::Task, Action::Updated, &t.id, ""));
            }
        }
        Ok(())
    }
}

/// The first /24 of `cidr` no node uses yet. Deterministic, so every manager
/// applying the same command picks the same subnet.
pub(super) fn allocate_subnet(
    cidr: &str,
    nodes: &BTreeMap<String, Node>,
    node_name: &str,
) -> Result<String, ApplyError> {
    let invalid = || ApplyError::Invalid(format!("the cluster CIDR {cidr:?} is not a valid IPv4 CIDR"));
    let (ip, len) = cidr.split_once('/').ok_or_else(invalid)?;
    let base = u32::from(ip.parse::<std::net::Ipv4Addr>().map_err(|_| invalid())?);
    let len: u32 = len.parse().map_err(|_| invalid())?;
    if len > 24 {
        return Err(invalid());
    }
    let used: std::collections::BTreeSet<&str> = nodes.values().filter_map(|n| n.subnet.as_deref()).collect();
    for i in 0..(1u32 << (24 - len)) {
        let subnet = format!("{}/24", std::net::Ipv4Addr::from(base + (i << 8)));
        if !used.contains(subnet.as_str()) {
            return Ok(subnet);
        }
    }
    Err(ApplyError::Invalid(format!(
        "no free /24 left in the cluster CIDR {cidr} for node {node_name}: remove nodes that are gone, or re-create the cluster with a larger --pod-cidr"
    )))
}

#[cfg(test)]
mod tests {
    use crate::model::ClusterMeta;
    use crate::store::fixtures::node;
    use crate::store::{Command, State};

    #[test]
    fn nodes_get_distinct_subnets_of_the_cluster_cidr_and_reuse_freed_ones() {
        let mut s = State::default();
        let mut ch = vec![];
        let meta = ClusterMeta {
            pod_cidr: "10.88.0.0/23".into(),
            ..Default::default()
        };
        s.apply(
            &Command::Bootstrap {
                meta,
                node: node("n1", "one"),
            },
            &mut ch,
        )
        .unwrap();
        s.apply(
            &Command::AddNode {
                node: node("n2", "two"),
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.nodes["n1"].subnet.as_deref(), Some("10.88.0.0/24"));
        assert_eq!(s.nodes["n2"].subnet.as_deref(), Some("10.88.1.0/24"));
        let err = s
            .apply(
                &Command::AddNode {
                    node: node("n3", "three"),
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(err.to_string().contains("no free /24 left"), "{err}");
        assert!(!s.nodes.contains_key("n3"));
        s.apply(&Command::RemoveNode { id: "n1".into() }, &mut ch).unwrap();
        s.apply(
            &Command::AddNode {
                node: node("n3", "three"),
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.nodes["n3"].subnet.as_deref(), Some("10.88.0.0/24"));
    }

    #[test]
    fn duplicate_node_names_are_refused_with_a_hint() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::AddNode {
                node: node("n1", "edge"),
            },
            &mut ch,
        )
        .unwrap();
        let err = s
            .apply(
                &Command::AddNode {
                    node: node("n2", "edge"),
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(err.to_string().contains("warren node rm edge"), "{err}");
    }
}
