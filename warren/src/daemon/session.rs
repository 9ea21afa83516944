//! What the daemon keeps of each agent session: the managers the leader announced
//! and this node's task subnet go into node.json, so that a restarted node reaches
//! the managers and runs its tasks before it has a session again.

use crate::agent::{SessionCallback, SessionInfo};
use crate::config::{ConfigError, NodeConfig};
use std::path::{Path, PathBuf};

/// Writes what the leader announced into `data_dir`'s node.json, only when it
/// changes something; true when it did. A node.json that cannot be read is
/// rewritten from `fallback`, the settings the daemon started with.
pub(super) fn remember(data_dir: &Path, fallback: &NodeConfig, info: &SessionInfo) -> Result<bool, ConfigError> {
    let mut c = NodeConfig::load(data_dir).unwrap_or_else(|_| fallback.clone());
    let before = c.clone();
    c.managers = info.managers.clone();
    if let Some(n) = &info.network {
        c.subnet = Some(n.subnet.clone());
        c.cluster_cidr = Some(n.cluster_cidr.clone());
    }
    if c == before {
        return Ok(false);
    }
    c.save(data_dir)?;
    Ok(true)
}

/// The agent's `on_session`: `remember`, with a failure logged (the session goes on).
pub(super) fn callback(data_dir: PathBuf, fallback: NodeConfig) -> SessionCallback {
    Box::new(move |info| {
        if let Err(e) = remember(&data_dir, &fallback, info) {
            tracing::warn!(error = %e, "could not save what the leader announced");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::executor::NodeNetwork;

    fn node() -> NodeConfig {
        NodeConfig {
            cluster_id: "c".into(),
            node_id: "n".into(),
            node_name: "edge".into(),
            role: crate::model::NodeRole::Worker,
            raft_id: 0,
            listen_addr: "127.0.0.1:2377".parse().unwrap(),
            advertise_addr: "127.0.0.1:2377".parse().unwrap(),
            socket: "/tmp/w.sock".into(),
            metrics_addr: "127.0.0.1:9090".parse().unwrap(),
            managers: vec!["10.0.0.1:2377".into()],
            capacity: None,
            raft_member: false,
            subnet: None,
            cluster_cidr: None,
            runtime: Default::default(),
            overlay: Default::default(),
        }
    }

    #[test]
    fn the_announced_managers_and_subnet_are_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        node().save(dir.path()).unwrap();
        let info = SessionInfo {
            managers: vec!["10.0.0.1:2377".into(), "10.0.0.2:2377".into()],
            network: Some(NodeNetwork {
                subnet: "10.88.3.0/24".into(),
                cluster_cidr: "10.88.0.0/16".into(),
            }),
        };
        assert!(remember(dir.path(), &node(), &info).unwrap());
        let saved = NodeConfig::load(dir.path()).unwrap();
        assert_eq!(saved.managers, info.managers);
        assert_eq!(saved.subnet.as_deref(), Some("10.88.3.0/24"));
        assert_eq!(saved.cluster_cidr.as_deref(), Some("10.88.0.0/16"));
        assert!(
            !remember(dir.path(), &node(), &info).unwrap(),
            "nothing changed: no rewrite"
        );

        // A session without a subnet keeps the one known.
        let info = SessionInfo {
            managers: vec!["10.0.0.2:2377".into()],
            network: None,
        };
        assert!(remember(dir.path(), &node(), &info).unwrap());
        let saved = NodeConfig::load(dir.path()).unwrap();
        assert_eq!(saved.managers, vec!["10.0.0.2:2377".to_string()]);
        assert_eq!(saved.subnet.as_deref(), Some("10.88.3.0/24"));
    }

    #[test]
    fn an_unreadable_node_json_is_rewritten_from_the_start_settings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(NodeConfig::path(dir.path()), "not json").unwrap();
        let info = SessionInfo {
            managers: vec!["10.0.0.9:2377".into()],
            network: None,
        };
        assert!(remember(dir.path(), &node(), &info).unwrap());
        let saved = NodeConfig::load(dir.path()).unwrap();
        assert_eq!((saved.node_id.as_str(), saved.managers.clone()), ("n", info.managers));
    }
}
