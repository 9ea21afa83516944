//! Nodes on the wire: roles, availability, states, resources and platforms.

use crate::model::{self, Availability, Node, NodeRole, NodeState, Resources, ValidationError};
use warren_proto::v1 as pb;

pub fn resources_to_pb(r: Resources) -> pb::Resources {
    pb::Resources {
        nano_cpus: r.nano_cpus,
        memory_bytes: r.memory_bytes,
    }
}

pub fn resources_from_pb(r: Option<pb::Resources>) -> Resources {
    r.map(|r| Resources {
        nano_cpus: r.nano_cpus,
        memory_bytes: r.memory_bytes,
    })
    .unwrap_or_default()
}

pub fn platform_to_pb(p: &model::Platform) -> pb::Platform {
    pb::Platform {
        os: p.os.clone(),
        arch: p.arch.clone(),
    }
}

pub fn platform_from_pb(p: Option<pb::Platform>) -> model::Platform {
    p.map(|p| model::Platform { os: p.os, arch: p.arch })
        .unwrap_or_default()
}

pub fn role_to_pb(r: NodeRole) -> pb::NodeRole {
    match r {
        NodeRole::Worker => pb::NodeRole::Worker,
        NodeRole::Manager => pb::NodeRole::Manager,
    }
}

pub fn role_from_pb(v: i32) -> NodeRole {
    match pb::NodeRole::try_from(v) {
        Ok(pb::NodeRole::Manager) => NodeRole::Manager,
        _ => NodeRole::Worker,
    }
}

pub fn availability_to_pb(a: Availability) -> pb::Availability {
    match a {
        Availability::Active => pb::Availability::Active,
        Availability::Pause => pb::Availability::Pause,
        Availability::Drain => pb::Availability::Drain,
    }
}

pub fn availability_from_pb(v: i32) -> Result<Availability, ValidationError> {
    match pb::Availability::try_from(v) {
        Ok(pb::Availability::Active) => Ok(Availability::Active),
        Ok(pb::Availability::Pause) => Ok(Availability::Pause),
        Ok(pb::Availability::Drain) => Ok(Availability::Drain),
        Err(_) => Err(ValidationError::new(
            "availability",
            format!("unknown availability {v}"),
        )),
    }
}

fn node_state_to_pb(s: NodeState) -> pb::NodeState {
    match s {
        NodeState::Unknown => pb::NodeState::Unknown,
        NodeState::Ready => pb::NodeState::Ready,
        NodeState::Down => pb::NodeState::Down,
        NodeState::Unreachable => pb::NodeState::Unreachable,
    }
}

fn node_state_from_pb(v: i32) -> NodeState {
    match pb::NodeState::try_from(v) {
        Ok(pb::NodeState::Ready) => NodeState::Ready,
        Ok(pb::NodeState::Down) => NodeState::Down,
        Ok(pb::NodeState::Unreachable) => NodeState::Unreachable,
        _ => NodeState::Unknown,
    }
}

pub fn node_to_pb(n: &Node, reserved: Resources, manager: Option<pb::ManagerStatus>) -> pb::Node {
    pb::Node {
        id: n.id.clone(),
        name: n.name.clone(),
        role: role_to_pb(n.role) as i32,
        availability: availability_to_pb(n.availability) as i32,
        labels: n.labels.clone().into_iter().collect(),
        addr: n.addr.clone(),
        resources: Some(resources_to_pb(n.resources)),
        state: node_state_to_pb(n.state) as i32,
        message: n.message.clone(),
        platform: Some(platform_to_pb(&n.platform)),
        manager,
        created_ms: n.created_ms,
        updated_ms: n.updated_ms,
        version: n.version,
        reserved: Some(resources_to_pb(reserved)),
        warren_version: n.warren_version.clone(),
        subnet: n.subnet.clone().unwrap_or_default(),
        mesh: n.mesh.as_ref().map(super::mesh_to_pb),
        ingress: super::node_ingress_to_pb(n.ingress),
        last_contact_ms: n.last_contact_ms,
        autonomy: n.autonomy.clone(),
        cert_expires_ms: n.cert_expires_ms,
    }
}

/// For clients: the node back from the wire, with what only the API adds.
pub fn node_from_pb(n: pb::Node) -> (Node, Resources, Option<pb::ManagerStatus>) {
    let node = Node {
        id: n.id,
        name: n.name,
        role: role_from_pb(n.role),
        availability: availability_from_pb(n.availability).unwrap_or_default(),
        labels: n.labels.into_iter().collect(),
        addr: n.addr,
        resources: resources_from_pb(n.resources),
        platform: platform_from_pb(n.platform),
        state: node_state_from_pb(n.state),
        message: n.message,
        raft_id: n.manager.as_ref().map(|m| m.raft_id).unwrap_or(0),
        subnet: (!n.subnet.is_empty()).then_some(n.subnet),
        mesh: n.mesh.map(super::mesh_from_pb),
        warren_version: n.warren_version,
        created_ms: n.created_ms,
        updated_ms: n.updated_ms,
        version: n.version,
        ingress: super::node_ingress_from_pb(n.ingress),
        metrics_port: 0,
        last_contact_ms: n.last_contact_ms,
        autonomy: n.autonomy,
        cert_expires_ms: n.cert_expires_ms,
    };
    (node, resources_from_pb(n.reserved), n.manager)
}
