//! A node's assignment set on the wire: what the dispatcher pushes to an agent.

use super::{endpoints_to_pb, task_to_pb};
use crate::model::{NodeAssignment, NodeMesh, NodePeer};
use warren_proto::v1 as pb;

/// `secrets` is the plaintext of the assignment's secrets, by name, unsealed by the
/// dispatcher; `index` the Raft index the set was computed at.
/// `certificates` the plaintext of the ingress's certificates, unsealed likewise.
pub fn assignment_to_pb(
    a: &NodeAssignment,
    secrets: Vec<(String, Vec<u8>)>,
    certificates: Vec<crate::ingress::CertificatePem>,
    index: u64,
) -> pb::Assignments {
    pb::Assignments {
        tasks: a.tasks.iter().map(task_to_pb).collect(),
        index,
        secrets: secrets
            .into_iter()
            .map(|(name, data)| pb::SecretData { name, data })
            .collect(),
        peers: a
            .peers
            .iter()
            .map(|p| pb::NodeRoute {
                node_id: p.node_id.clone(),
                subnet: p.subnet.clone(),
                via: p.via.clone().unwrap_or_default(),
                mesh: p.mesh.as_ref().map(mesh_to_pb),
            })
            .collect(),
        volumes: a.volumes.clone(),
        services: a.services.iter().map(endpoints_to_pb).collect(),
        configs: a
            .configs
            .iter()
            .map(|(name, data)| pb::ConfigData {
                name: name.clone(),
                data: data.clone(),
            })
            .collect(),
        mesh_rotation: a.mesh_rotation,
        own_mesh: a.own_mesh.as_ref().map(mesh_to_pb),
        ingress: a
            .ingress
            .as_ref()
            .map(|i| super::ingress_assignment_to_pb(i, certificates)),
    }
}

pub fn mesh_to_pb(m: &NodeMesh) -> pb::NodeMeshInfo {
    pb::NodeMeshInfo {
        public_key: m.public_key.clone(),
        next_public_key: m.next_public_key.clone().unwrap_or_default(),
        endpoint: m.endpoint.clone(),
    }
}

/// The rotation counter is the managers' (it is not on the wire): 0 here.
pub fn mesh_from_pb(m: pb::NodeMeshInfo) -> NodeMesh {
    NodeMesh {
        public_key: m.public_key,
        next_public_key: (!m.next_public_key.is_empty()).then_some(m.next_public_key),
        endpoint: m.endpoint,
        rotation: 0,
    }
}

/// A peer from the wire; one without a subnet is of no use and left out.
pub fn peer_from_pb(p: pb::NodeRoute) -> Option<NodePeer> {
    if p.subnet.is_empty() {
        return None;
    }
    Some(NodePeer {
        node_id: p.node_id,
        subnet: p.subnet,
        via: (!p.via.is_empty()).then_some(p.via),
        mesh: p.mesh.map(mesh_from_pb),
    })
}
