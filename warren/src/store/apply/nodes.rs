//! Nodes: joining (with a /24 of the cluster CIDR each), what an agent reports about
//! its node, availability and labels, and removal (which orphans the node's tasks).

use super::{change, Versioned};
use crate::model::{Availability, Labels, Node, NodeMesh, NodeState, Overlay, Platform, Resources, TaskState};
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
        node.last_contact_ms = at_ms;
        node.touch(at_ms);
        changes.push(change(ObjectKind::Node, Action::Updated, id, &node.name));
        Ok(())
    }

    /// What a hello says the node did on its own; the last such report stays.
    pub(super) fn node_autonomy(&mut self, id: &str, autonomy: &str) {
        if let (Some(node), false) = (self.nodes.get_mut(id), autonomy.is_empty()) {
            node.autonomy = autonomy.to_string();
        }
    }

    /// The metrics port a hello reports (0: an agent from before it says none).
    pub(super) fn node_metrics_port(&mut self, id: &str, port: u16) {
        if let (Some(node), true) = (self.nodes.get_mut(id), port != 0) {
            node.metrics_port = port;
        }
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
        // A node marked away was last heard from at `at_ms`: its tasks' grace
        // (`reschedule_after_ms`) runs from there.
        if state.is_away() && !node.state.is_away() {
            node.last_contact_ms = at_ms;
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

    pub(super) fn set_node_mesh(
        &mut self,
        id: &str,
        mesh: &NodeMesh,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let node = self.node_mut(id)?;
        let rotation = node.mesh.as_ref().map_or(0, |m| m.rotation);
        let new = NodeMesh {
            rotation,
            ..mesh.clone()
        };
        if node.mesh.as_ref() == Some(&new) {
            return Ok(());
        }
        node.mesh = Some(new);
        node.touch(at_ms);
        changes.push(change(ObjectKind::Node, Action::Updated, id, &node.name));
        Ok(())
    }

    pub(super) fn rotate_node_key(
        &mut self,
        id: &str,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let overlay = self.meta.as_ref().map(|m| m.overlay).unwrap_or_default();
        if overlay != Overlay::Wireguard {
            return Err(ApplyError::Invalid(format!(
                "rotate-key: the cluster's overlay is {}; only a wireguard cluster has node keys",
                overlay.as_str()
            )));
        }
        let node = self.node_mut(id)?;
        let Some(mesh) = node.mesh.as_mut() else {
            return Err(ApplyError::Invalid(format!(
                "rotate-key: node {} has not published a mesh key yet (is its daemon running?)",
                node.name
            )));
        };
        mesh.rotation += 1;
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
        if let Some(meta) = self.meta.as_mut() {
            if !meta.removed_nodes.iter().any(|r| r == id) {
                meta.removed_nodes.push(id.to_string());
                changes.push(change(ObjectKind::Cluster, Action::Updated, &meta.cluster_id, ""));
            }
        }
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
        // Its certificate is revoked: the list every manager's call layer consults.
        assert_eq!(s.meta.as_ref().unwrap().removed_nodes, vec!["n1".to_string()]);
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

    #[test]
    fn a_nodes_mesh_end_is_published_rotations_are_counted_and_old_state_is_native() {
        use crate::model::{NodeMesh, Overlay};
        // State written before the mesh: no overlay in the meta, no mesh on nodes.
        let meta: ClusterMeta = serde_json::from_str(
            r#"{"cluster_id":"c","created_ms":0,"ca_cert_pem":"","ca_key_sealed":[],
                "worker_token_secret":"w","manager_token_secret":"m","pod_cidr":"10.88.0.0/16"}"#,
        )
        .unwrap();
        assert_eq!(meta.overlay, Overlay::Native);
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::Bootstrap {
                meta: meta.clone(),
                node: node("n1", "one"),
            },
            &mut ch,
        )
        .unwrap();
        let end = NodeMesh {
            public_key: "k1".into(),
            next_public_key: None,
            endpoint: "192.0.2.1:51820".into(),
            rotation: 9,
        };
        let set = |m: &NodeMesh| Command::SetNodeMesh {
            id: "n1".into(),
            mesh: m.clone(),
            at_ms: 1,
        };
        s.apply(&set(&end), &mut ch).unwrap();
        assert_eq!(
            s.nodes["n1"].mesh.as_ref().unwrap().rotation,
            0,
            "the counter is not the node's to set"
        );
        let rotate = Command::RotateNodeKey {
            id: "n1".into(),
            at_ms: 2,
        };
        let e = s.apply(&rotate, &mut ch).unwrap_err().to_string();
        assert!(e.contains("the cluster's overlay is native"), "{e}");
        s.meta.as_mut().unwrap().overlay = Overlay::Wireguard;
        s.apply(&rotate, &mut ch).unwrap();
        let next = NodeMesh {
            next_public_key: Some("k2".into()),
            ..end.clone()
        };
        s.apply(&set(&next), &mut ch).unwrap();
        let m = s.nodes["n1"].mesh.clone().unwrap();
        assert_eq!((m.rotation, m.next_public_key.as_deref()), (1, Some("k2")));
        let version = s.nodes["n1"].version;
        s.apply(&set(&next), &mut ch).unwrap();
        assert_eq!(s.nodes["n1"].version, version, "the same end again changes nothing");
    }
}
