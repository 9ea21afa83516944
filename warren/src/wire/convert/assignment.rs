//! A node's assignment set on the wire: what the dispatcher pushes to an agent.

use super::{endpoints_to_pb, task_to_pb};
use crate::model::NodeAssignment;
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
            .map(|(node_id, subnet, via)| pb::NodeRoute {
                node_id: node_id.clone(),
                subnet: subnet.clone(),
                via: via.clone(),
            })
            .collect(),
        volumes: a.volumes.clone(),
        services: a.services.iter().map(endpoints_to_pb).collect(),
        ingress: a
            .ingress
            .as_ref()
            .map(|i| super::ingress_assignment_to_pb(i, certificates)),
    }
}
