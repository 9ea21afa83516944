//! The snapshot a backup carries (`warren cluster backup`): the whole replicated
//! `State` as one consistent read, with what it was read at. Encoded as JSON, the
//! shape the state machine's own snapshots have, so that the serde defaults that
//! let an older Raft snapshot load also let an older backup load. Secrets stay
//! sealed by the secrets key as the store holds them. Pure: bytes in, bytes out
//! (the sealing by a passphrase is `crate::backup_seal`'s).

use super::State;
use serde::{Deserialize, Serialize};

/// Version of this encoding, inside the sealed body (the file has its own).
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    /// Unix ms when the leader read it.
    pub taken_ms: i64,
    /// The Raft index the state includes.
    pub applied_index: u64,
    /// The warren that wrote it.
    pub warren_version: String,
    pub state: State,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the backup's snapshot does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the backup's snapshot has format {0}: this warren reads format {FORMAT}")]
    Format(u32),
    #[error("the backup holds no cluster (it was taken before the cluster was initialized)")]
    NoCluster,
}

impl Snapshot {
    pub fn new(state: State, applied_index: u64, taken_ms: i64) -> Snapshot {
        Snapshot {
            format: FORMAT,
            taken_ms,
            applied_index,
            warren_version: crate::VERSION.to_string(),
            state,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state serializes: every map key is a string")
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        // The format first: a later one may not have the fields this one needs.
        let head: Head = serde_json::from_slice(bytes)?;
        if head.format != FORMAT {
            return Err(SnapshotError::Format(head.format));
        }
        let s: Snapshot = serde_json::from_slice(bytes)?;
        if s.state.meta.is_none() {
            return Err(SnapshotError::NoCluster);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterMeta, NodeRole, TaskState};
    use crate::store::fixtures::{node, secret, service, task, volume};
    use crate::store::Command;
    use crate::store::ObjectKind;

    #[test]
    fn a_snapshot_round_trips_and_refuses_what_it_cannot_restore() {
        let mut state = State {
            meta: Some(Default::default()),
            ..Default::default()
        };
        state.services.insert("s1".into(), service("s1", "web"));
        let snap = Snapshot::new(state, 42, 7);
        let back = Snapshot::decode(&snap.encode()).unwrap();
        assert_eq!(back, snap);

        let mut later = serde_json::to_value(&snap).unwrap();
        later["format"] = 2.into();
        let err = Snapshot::decode(&serde_json::to_vec(&later).unwrap()).unwrap_err();
        assert!(matches!(err, SnapshotError::Format(2)), "{err}");

        let empty = Snapshot::new(State::default(), 0, 0);
        assert!(matches!(
            Snapshot::decode(&empty.encode()),
            Err(SnapshotError::NoCluster)
        ));
        assert!(matches!(Snapshot::decode(b"{"), Err(SnapshotError::Decode(_))));
    }

    #[test]
    fn a_restore_keeps_the_objects_and_replaces_the_nodes() {
        let meta = ClusterMeta {
            cluster_id: "c1".into(),
            pod_cidr: "10.88.0.0/16".into(),
            ..Default::default()
        };
        let mut old = State::default();
        let mut ch = vec![];
        let mut m1 = node("n1", "m1");
        m1.role = NodeRole::Manager;
        old.apply(&Command::Bootstrap { meta, node: m1 }, &mut ch).unwrap();
        old.apply(&Command::AddNode { node: node("n2", "w1") }, &mut ch)
            .unwrap();
        let svc = service("s1", "web");
        old.services.insert(svc.id.clone(), svc.clone());
        let mut t = task("t1", &svc);
        t.node_id = Some("n2".into());
        t.status.state = TaskState::Running;
        old.tasks.insert(t.id.clone(), t);
        old.secrets.insert("x1".into(), secret("x1", "pw"));
        let mut v = volume("v1", "data");
        v.node_id = Some("n2".into());
        old.volumes.insert(v.id.clone(), v);

        let mut me = node("n9", "fresh");
        me.role = NodeRole::Manager;
        let cmd = Command::Restore {
            state: Box::new(old.clone()),
            node: me.clone(),
        };
        let mut new = State::default();
        let mut ch = vec![];
        new.apply(&cmd, &mut ch).unwrap();
        assert_eq!(new.nodes.keys().collect::<Vec<_>>(), ["n9"]);
        assert_eq!(new.nodes["n9"].subnet.as_deref(), Some("10.88.0.0/24"));
        assert_eq!(new.meta.as_ref().unwrap().removed_nodes, ["n1", "n2"]);
        assert_eq!(new.tasks["t1"].status.state, TaskState::Orphaned);
        assert_eq!(new.volumes["v1"].node_id, None);
        assert_eq!(new.services, old.services);
        assert_eq!(new.secrets, old.secrets);
        // Every restored object is among the changes, so the state machine writes it.
        for (kind, id) in [
            (ObjectKind::Service, "s1"),
            (ObjectKind::Secret, "x1"),
            (ObjectKind::Volume, "v1"),
            (ObjectKind::Task, "t1"),
            (ObjectKind::Node, "n9"),
        ] {
            assert!(ch.iter().any(|c| c.kind == kind && c.id == id), "{kind} {id}");
        }
        // Only a fresh state machine takes one; a refusal changes nothing.
        let before = new.clone();
        assert!(new.apply(&cmd, &mut vec![]).is_err());
        assert_eq!(new, before);
    }
}
