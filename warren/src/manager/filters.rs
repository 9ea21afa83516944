//! Placement filters: pure functions that say whether a node can take a task, and
//! why not. The scheduler runs them in order and reports the reasons when no node
//! is left; the global orchestrator uses the same ones to choose nodes.

use crate::model::{Availability, Constraint, ConstraintKey, ConstraintOp, Node, NodeState, Resources, ServiceSpec};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    NotReady(NodeState),
    Unavailable(Availability),
    Constraint(String),
    InsufficientCpu,
    InsufficientMemory,
    /// A local volume the task mounts lives on another node (or does not exist).
    VolumeElsewhere(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotReady(s) => write!(f, "node is {}", s.as_str()),
            Rejection::Unavailable(Availability::Drain) => f.write_str("node is drained"),
            Rejection::Unavailable(Availability::Pause) => f.write_str("node is paused"),
            Rejection::Unavailable(Availability::Active) => f.write_str("node is unavailable"),
            Rejection::Constraint(c) => write!(f, "constraint {c} not met"),
            Rejection::InsufficientCpu => f.write_str("insufficient cpu"),
            Rejection::InsufficientMemory => f.write_str("insufficient memory"),
            Rejection::VolumeElsewhere(v) => write!(f, "volume {v} is on another node"),
        }
    }
}

pub fn ready(node: &Node) -> Result<(), Rejection> {
    if node.state == NodeState::Ready {
        Ok(())
    } else {
        Err(Rejection::NotReady(node.state))
    }
}

pub fn active(node: &Node) -> Result<(), Rejection> {
    if node.availability == Availability::Active {
        Ok(())
    } else {
        Err(Rejection::Unavailable(node.availability))
    }
}

pub fn constraint_matches(node: &Node, c: &Constraint) -> bool {
    let actual: Option<&str> = match &c.key {
        ConstraintKey::Id => Some(&node.id),
        ConstraintKey::Hostname => Some(&node.name),
        ConstraintKey::Role => Some(node.role.as_str()),
        ConstraintKey::Label(k) => node.labels.get(k).map(String::as_str),
        ConstraintKey::PlatformOs => Some(&node.platform.os),
        ConstraintKey::PlatformArch => Some(&node.platform.arch),
    };
    let equal = actual == Some(c.value.as_str());
    match c.op {
        ConstraintOp::Eq => equal,
        ConstraintOp::Ne => !equal,
    }
}

pub fn constraints(node: &Node, spec: &ServiceSpec) -> Result<(), Rejection> {
    match spec.constraints.iter().find(|c| !constraint_matches(node, c)) {
        None => Ok(()),
        Some(c) => Err(Rejection::Constraint(c.to_string())),
    }
}

/// `reserved` is what the node's live tasks already reserve.
pub fn resources(node: &Node, spec: &ServiceSpec, reserved: Resources) -> Result<(), Rejection> {
    let want = spec.reservations;
    if want.nano_cpus > 0 && reserved.nano_cpus.saturating_add(want.nano_cpus) > node.resources.nano_cpus {
        return Err(Rejection::InsufficientCpu);
    }
    if want.memory_bytes > 0 && reserved.memory_bytes.saturating_add(want.memory_bytes) > node.resources.memory_bytes {
        return Err(Rejection::InsufficientMemory);
    }
    Ok(())
}

/// Where each local volume lives: volume name to node ID (None: not placed yet).
pub type VolumeHomes = std::collections::HashMap<String, Option<String>>;

/// A task that mounts a local volume runs where the volume's data is.
pub fn volumes(node: &Node, spec: &ServiceSpec, homes: &VolumeHomes) -> Result<(), Rejection> {
    for name in spec.volume_names() {
        match homes.get(name) {
            Some(None) => {}
            Some(Some(home)) if *home == node.id => {}
            _ => return Err(Rejection::VolumeElsewhere(name.to_string())),
        }
    }
    Ok(())
}

/// Every filter, in the order the scheduler applies them.
pub fn check(node: &Node, spec: &ServiceSpec, reserved: Resources, homes: &VolumeHomes) -> Result<(), Rejection> {
    ready(node)?;
    active(node)?;
    constraints(node, spec)?;
    volumes(node, spec, homes)?;
    resources(node, spec, reserved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn node() -> Node {
        Node {
            ingress: Default::default(),
            id: "n1".into(),
            name: "edge-1".into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: [("zone".to_string(), "a".to_string())].into_iter().collect(),
            addr: String::new(),
            resources: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            },
            platform: Platform {
                os: "linux".into(),
                arch: "x86_64".into(),
            },
            state: NodeState::Ready,
            message: String::new(),
            raft_id: 0,
            subnet: None,
            mesh: None,
            warren_version: String::new(),
            created_ms: 0,
            updated_ms: 0,
            version: 1,
            metrics_port: 0,
            last_contact_ms: 0,
            cert_expires_ms: 0,
            autonomy: String::new(),
        }
    }

    fn spec(constraints: &[&str]) -> ServiceSpec {
        ServiceSpec {
            image: "x".into(),
            constraints: constraints.iter().map(|c| Constraint::parse("c", c).unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ready_and_active() {
        let mut n = node();
        assert!(check(&n, &spec(&[]), Resources::default(), &VolumeHomes::new()).is_ok());
        n.state = NodeState::Down;
        assert_eq!(ready(&n), Err(Rejection::NotReady(NodeState::Down)));
        assert_eq!(Rejection::NotReady(NodeState::Down).to_string(), "node is down");
        let mut n = node();
        n.availability = Availability::Drain;
        assert_eq!(
            check(&n, &spec(&[]), Resources::default(), &VolumeHomes::new())
                .unwrap_err()
                .to_string(),
            "node is drained"
        );
        n.availability = Availability::Pause;
        assert_eq!(active(&n).unwrap_err().to_string(), "node is paused");
    }

    #[test]
    fn label_role_hostname_and_platform_constraints() {
        let n = node();
        assert!(constraints(&n, &spec(&["node.labels.zone==a"])).is_ok());
        assert_eq!(
            constraints(&n, &spec(&["node.labels.zone==b"]))
                .unwrap_err()
                .to_string(),
            "constraint node.labels.zone==b not met"
        );
        assert!(constraints(&n, &spec(&["node.labels.missing!=x"])).is_ok());
        assert!(constraints(&n, &spec(&["node.labels.missing==x"])).is_err());
        assert!(constraints(&n, &spec(&["node.role==worker"])).is_ok());
        assert!(constraints(&n, &spec(&["node.role==manager"])).is_err());
        assert!(constraints(&n, &spec(&["node.role!=manager", "node.hostname==edge-1"])).is_ok());
        assert!(constraints(&n, &spec(&["node.hostname!=edge-1"])).is_err());
        assert!(constraints(&n, &spec(&["node.id==n1", "node.platform.os==linux"])).is_ok());
        assert!(constraints(&n, &spec(&["node.platform.arch==arm64"])).is_err());
    }

    #[test]
    fn volume_affinity() {
        let n = node();
        let mut s = spec(&[]);
        s.mounts = vec![Mount::parse("m", "type=volume,source=data,target=/d").unwrap()];
        let mut homes = VolumeHomes::new();
        homes.insert("data".into(), None);
        assert!(volumes(&n, &s, &homes).is_ok());
        homes.insert("data".into(), Some("n1".into()));
        assert!(volumes(&n, &s, &homes).is_ok());
        homes.insert("data".into(), Some("n2".into()));
        assert_eq!(
            volumes(&n, &s, &homes).unwrap_err().to_string(),
            "volume data is on another node"
        );
        homes.clear();
        assert!(volumes(&n, &s, &homes).is_err(), "a missing volume cannot be mounted");
    }

    #[test]
    fn reservations_against_capacity() {
        let n = node();
        let mut s = spec(&[]);
        s.reservations.memory_bytes = 512 << 20;
        assert!(resources(&n, &s, Resources::default()).is_ok());
        let used = Resources {
            nano_cpus: 0,
            memory_bytes: 600 << 20,
        };
        assert_eq!(resources(&n, &s, used), Err(Rejection::InsufficientMemory));
        let mut s = spec(&[]);
        s.reservations.nano_cpus = 3_000_000_000;
        assert_eq!(resources(&n, &s, Resources::default()), Err(Rejection::InsufficientCpu));
        // No reservation always fits, even on a full node.
        let full = Resources {
            nano_cpus: i64::MAX,
            memory_bytes: i64::MAX,
        };
        assert!(resources(&n, &spec(&[]), full).is_ok());
    }
}
