//! The openraft state machine: applies committed `Command`s to the shared `State`
//! and persists every touched object to redb (`raft-state.redb`), one table per
//! object kind. Snapshots are the serialized `State`; the latest one is kept in redb
//! so that it survives restarts. Nothing here does I/O besides redb.
//!
//! Applied batches are committed without fsync: the Raft log (fsynced) can replay
//! them. Before a snapshot is handed to openraft, which then purges the log it
//! covers, a durable commit makes every earlier batch durable.

// openraft's storage traits return its own (large) StorageError; boxing it here
// would only move the allocation.
#![allow(clippy::result_large_err)]

use super::state::{Action, Change, ObjectKind, State};
use super::types::{Entry, LogId, StorageError, StoredMembership, TypeConfig};
use super::{Applied, Response, Store};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");
const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("configs");
const INGRESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("ingresses");
const CERTIFICATES: TableDefinition<&str, &[u8]> = TableDefinition::new("certificates");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_CLUSTER: &str = "cluster";
const KEY_ACME: &str = "acme";
/// The services removed while their tasks drain, as one row: a restarted manager
/// must keep their VIPs until those tasks have exited, and the set is small.
const KEY_REMOVED_SERVICES: &str = "removed_services";

fn table_of(kind: ObjectKind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match kind {
        ObjectKind::Node => NODES,
        ObjectKind::Service => SERVICES,
        ObjectKind::Task => TASKS,
        ObjectKind::Secret => SECRETS,
        ObjectKind::Volume => VOLUMES,
        ObjectKind::Config => CONFIGS,
        ObjectKind::Ingress => INGRESSES,
        ObjectKind::Certificate => CERTIFICATES,
        ObjectKind::Cluster | ObjectKind::Acme => META,
    }
}

fn sm_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: Vec<u8>,
}

pub struct StateMachine {
    store: Arc<Store>,
    db: Arc<Database>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    snapshot_seq: u64,
}

/// A pending write to one table row: `None` deletes it.
type Row = (ObjectKind, String, Option<Vec<u8>>);

impl StateMachine {
    /// Opens (or creates) the state database and loads it into `store`.
    pub fn open(path: &Path, store: Arc<Store>) -> Result<StateMachine, StorageError> {
        let db = Database::create(path).map_err(sm_read)?;
        {
            let txn = db.begin_write().map_err(sm_write)?;
            for t in [
                META,
                NODES,
                SERVICES,
                TASKS,
                SECRETS,
                VOLUMES,
                INGRESSES,
                CERTIFICATES,
                CONFIGS,
                SNAPSHOT,
            ] {
                txn.open_table(t).map_err(sm_write)?;
            }
            txn.commit().map_err(sm_write)?;
        }
        let mut state = State::default();
        let (last_applied, membership);
        {
            let txn = db.begin_read().map_err(sm_read)?;
            let meta = txn.open_table(META).map_err(sm_read)?;
            last_applied = match meta.get(KEY_APPLIED).map_err(sm_read)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(sm_read)?,
                None => None,
            };
            membership = match meta.get(KEY_MEMBERSHIP).map_err(sm_read)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(sm_read)?,
                None => StoredMembership::default(),
            };
            state.meta = match meta.get(KEY_CLUSTER).map_err(sm_read)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(sm_read)?),
                None => None,
            };
            load(&txn, NODES, &mut state.nodes)?;
            load(&txn, SERVICES, &mut state.services)?;
            load(&txn, TASKS, &mut state.tasks)?;
            load(&txn, SECRETS, &mut state.secrets)?;
            load(&txn, VOLUMES, &mut state.volumes)?;
            load(&txn, CONFIGS, &mut state.configs)?;
            load(&txn, INGRESSES, &mut state.ingresses)?;
            load(&txn, CERTIFICATES, &mut state.certificates)?;
            state.acme = match meta.get(KEY_ACME).map_err(sm_read)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(sm_read)?,
                None => Default::default(),
            };
            state.removed_services = match meta.get(KEY_REMOVED_SERVICES).map_err(sm_read)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(sm_read)?,
                None => Default::default(),
            };
        }
        store.write(|s| *s = state);
        store.publish(Applied {
            index: last_applied.map(|l: LogId| l.index).unwrap_or(0),
            changes: vec![],
            reset: true,
        });
        Ok(StateMachine {
            store,
            db: Arc::new(db),
            last_applied,
            membership,
            snapshot_seq: 0,
        })
    }

    /// Serializes the rows `changes` touched, as they are now in `state`.
    fn rows(state: &State, changes: &[Change]) -> Result<Vec<Row>, StorageError> {
        let mut seen = BTreeSet::new();
        let mut rows = Vec::new();
        for c in changes {
            if !seen.insert((c.kind, c.id.clone())) {
                continue;
            }
            let value = match c.kind {
                ObjectKind::Cluster => state.meta.as_ref().map(serde_json::to_vec),
                ObjectKind::Node => state.nodes.get(&c.id).map(serde_json::to_vec),
                ObjectKind::Service => state.services.get(&c.id).map(serde_json::to_vec),
                ObjectKind::Task => state.tasks.get(&c.id).map(serde_json::to_vec),
                ObjectKind::Secret => state.secrets.get(&c.id).map(serde_json::to_vec),
                ObjectKind::Volume => state.volumes.get(&c.id).map(serde_json::to_vec),
                ObjectKind::Config => state.configs.get(&c.id).map(serde_json::to_vec),
                ObjectKind::Ingress => state.ingresses.get(&c.id).map(serde_json::to_vec),
                ObjectKind::Certificate => state.certificates.get(&c.id).map(serde_json::to_vec),
                ObjectKind::Acme => Some(serde_json::to_vec(&state.acme)),
            }
            .transpose()
            .map_err(sm_write)?;
            let key = match c.kind {
                ObjectKind::Cluster => KEY_CLUSTER.to_string(),
                ObjectKind::Acme => KEY_ACME.to_string(),
                _ => c.id.clone(),
            };
            rows.push((c.kind, key, value));
        }
        // A service removal adds to the draining set and a task change can empty it
        // (`State::apply` prunes it), so either rewrites that row.
        if changes
            .iter()
            .any(|c| matches!(c.kind, ObjectKind::Service | ObjectKind::Task))
        {
            let removed = serde_json::to_vec(&state.removed_services).map_err(sm_write)?;
            rows.push((ObjectKind::Cluster, KEY_REMOVED_SERVICES.to_string(), Some(removed)));
        }
        Ok(rows)
    }

    async fn persist(&self, rows: Vec<Row>, durable: bool) -> Result<(), StorageError> {
        let applied = serde_json::to_vec(&self.last_applied).map_err(sm_write)?;
        let membership = serde_json::to_vec(&self.membership).map_err(sm_write)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let mut txn = db.begin_write().map_err(sm_write)?;
            if !durable {
                txn.set_durability(Durability::None).map_err(sm_write)?;
            }
            {
                let mut meta = txn.open_table(META).map_err(sm_write)?;
                meta.insert(KEY_APPLIED, applied.as_slice()).map_err(sm_write)?;
                meta.insert(KEY_MEMBERSHIP, membership.as_slice()).map_err(sm_write)?;
            }
            for (kind, key, value) in &rows {
                let mut t = txn.open_table(table_of(*kind)).map_err(sm_write)?;
                match value {
                    Some(v) => {
                        t.insert(key.as_str(), v.as_slice()).map_err(sm_write)?;
                    }
                    None => {
                        t.remove(key.as_str()).map_err(sm_write)?;
                    }
                }
            }
            txn.commit().map_err(sm_write)
        })
        .await
        .map_err(sm_write)?
    }

    fn snapshot_data(&self) -> Result<Vec<u8>, StorageError> {
        self.store
            .read(|state| {
                serde_json::to_vec(&SnapshotData {
                    state: state.clone(),
                    last_applied: self.last_applied,
                    membership: self.membership.clone(),
                })
            })
            .map_err(sm_read)
    }
}

fn load<K>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    into: &mut std::collections::BTreeMap<String, K>,
) -> Result<(), StorageError>
where
    K: serde::de::DeserializeOwned,
{
    let t = txn.open_table(table).map_err(sm_read)?;
    for item in t.iter().map_err(sm_read)? {
        let (k, v) = item.map_err(sm_read)?;
        into.insert(
            k.value().to_string(),
            serde_json::from_slice(v.value()).map_err(sm_read)?,
        );
    }
    Ok(())
}

pub struct SnapshotBuilder {
    data: Vec<u8>,
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    db: Arc<Database>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let stored = StoredSnapshot {
            meta: self.meta.clone(),
            data: std::mem::take(&mut self.data),
        };
        write_snapshot(self.db.clone(), &stored).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let mut changes = Vec::new();
        let mut membership_changed = false;
        let rows = self.store.write(|state| -> Result<Vec<Row>, StorageError> {
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response::ok()),
                    EntryPayload::Normal(cmd) => {
                        let result = state.apply(&cmd, &mut changes);
                        if let Err(e) = &result {
                            tracing::debug!(index = entry.log_id.index, command = cmd.kind(), error = %e, "command refused");
                        }
                        responses.push(Response { error: result.err() });
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        membership_changed = true;
                        responses.push(Response::ok());
                    }
                }
            }
            Self::rows(state, &changes)
        })?;
        self.persist(rows, false).await?;
        if membership_changed {
            changes.push(Change {
                kind: ObjectKind::Cluster,
                action: Action::Updated,
                id: String::new(),
                name: "membership".into(),
                message: String::new(),
            });
        }
        if let Some(last) = self.last_applied {
            self.store.publish(Applied {
                index: last.index,
                changes,
                reset: false,
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let data = self.snapshot_data().unwrap_or_default();
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_seq),
            None => format!("0-0-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            data,
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            db: self.db.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = serde_json::from_slice(&bytes).map_err(sm_read)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let state = data.state;
        // Rewrite every table from the snapshot, durably.
        let mut rows: Vec<Row> = Vec::new();
        let old_keys = self.store.read(|s| {
            let mut keys = Vec::new();
            keys.extend(s.nodes.keys().map(|k| (ObjectKind::Node, k.clone())));
            keys.extend(s.services.keys().map(|k| (ObjectKind::Service, k.clone())));
            keys.extend(s.tasks.keys().map(|k| (ObjectKind::Task, k.clone())));
            keys.extend(s.secrets.keys().map(|k| (ObjectKind::Secret, k.clone())));
            keys.extend(s.volumes.keys().map(|k| (ObjectKind::Volume, k.clone())));
            keys.extend(s.configs.keys().map(|k| (ObjectKind::Config, k.clone())));
            keys.extend(s.ingresses.keys().map(|k| (ObjectKind::Ingress, k.clone())));
            keys.extend(s.certificates.keys().map(|k| (ObjectKind::Certificate, k.clone())));
            keys
        });
        for (kind, key) in old_keys {
            rows.push((kind, key, None));
        }
        for (k, v) in &state.nodes {
            rows.push((ObjectKind::Node, k.clone(), Some(enc(v)?)));
        }
        for (k, v) in &state.services {
            rows.push((ObjectKind::Service, k.clone(), Some(enc(v)?)));
        }
        for (k, v) in &state.tasks {
            rows.push((ObjectKind::Task, k.clone(), Some(enc(v)?)));
        }
        for (k, v) in &state.secrets {
            rows.push((ObjectKind::Secret, k.clone(), Some(enc(v)?)));
        }
        for (k, v) in &state.volumes {
            rows.push((ObjectKind::Volume, k.clone(), Some(enc(v)?)));
        }
        for (k, v) in &state.configs {
            rows.push((ObjectKind::Config, k.clone(), Some(enc(v)?)));
        }
        for (k, v) in &state.ingresses {
            rows.push((ObjectKind::Ingress, k.clone(), Some(enc(v)?)));
        }
        for (k, v) in &state.certificates {
            rows.push((ObjectKind::Certificate, k.clone(), Some(enc(v)?)));
        }
        rows.push((ObjectKind::Acme, KEY_ACME.into(), Some(enc(&state.acme)?)));
        rows.push((
            ObjectKind::Cluster,
            KEY_REMOVED_SERVICES.into(),
            Some(enc(&state.removed_services)?),
        ));
        if let Some(m) = &state.meta {
            rows.push((ObjectKind::Cluster, KEY_CLUSTER.into(), Some(enc(m)?)));
        }
        self.persist(rows, true).await?;
        write_snapshot(
            self.db.clone(),
            &StoredSnapshot {
                meta: meta.clone(),
                data: bytes,
            },
        )
        .await?;
        self.store.write(|s| *s = state);
        self.store.publish(Applied {
            index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            changes: vec![],
            reset: true,
        });
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let txn = self.db.begin_read().map_err(sm_read)?;
        let t = txn.open_table(SNAPSHOT).map_err(sm_read)?;
        let Some(v) = t.get("current").map_err(sm_read)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = serde_json::from_slice(v.value()).map_err(sm_read)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

fn enc<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(sm_write)
}

/// Stores `stored` as the current snapshot, durably: the commit also makes every
/// earlier non-durable apply durable, which must happen before openraft purges the
/// log the snapshot covers.
async fn write_snapshot(db: Arc<Database>, stored: &StoredSnapshot) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec(stored).map_err(sm_write)?;
    tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
        let txn = db.begin_write().map_err(sm_write)?;
        {
            let mut t = txn.open_table(SNAPSHOT).map_err(sm_write)?;
            t.insert("current", bytes.as_slice()).map_err(sm_write)?;
        }
        txn.commit().map_err(sm_write)
    })
    .await
    .map_err(sm_write)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Rules};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn svc(id: &str, name: &str) -> crate::model::Service {
        crate::model::Service {
            id: id.into(),
            name: name.into(),
            spec: crate::model::ServiceSpec {
                image: "x".into(),
                ..Default::default()
            },
            version: 1,
            spec_version: 1,
            created_ms: 1,
            updated_ms: 1,
            vip: None,
            dp_id: 0,
            canary: None,
            previous_spec: None,
            update_status: None,
        }
    }

    #[tokio::test]
    async fn applied_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::new();
            let mut sm = StateMachine::open(&path, store.clone()).unwrap();
            let r = sm
                .apply(vec![
                    entry(
                        1,
                        Command::CreateService {
                            service: svc("a", "web"),
                            rules: Rules::CURRENT,
                        },
                    ),
                    entry(
                        2,
                        Command::CreateService {
                            service: svc("b", "web"),
                            rules: Rules::CURRENT,
                        },
                    ),
                ])
                .await
                .unwrap();
            assert!(r[0].error.is_none());
            assert!(r[1].error.is_some(), "duplicate name must be refused");
            // Make the non-durable commits durable, as a snapshot would.
            let mut b = sm.get_snapshot_builder().await;
            b.build_snapshot().await.unwrap();
            assert_eq!(store.applied_index(), 2);
        }
        let store = Store::new();
        let mut sm = StateMachine::open(&path, store.clone()).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 2);
        store.read(|s| {
            assert_eq!(s.services.len(), 1);
            assert_eq!(s.services["a"].name, "web");
        });
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
    }

    /// A manager restarted while a removed service drains still knows it, so the
    /// data plane keeps that service's flows until its tasks have exited.
    #[tokio::test]
    async fn a_draining_removed_service_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let reopen = || {
            let store = Store::new();
            let sm = StateMachine::open(&path, store.clone()).unwrap();
            (store, sm)
        };
        let service = svc("a", "web");
        let mut task = crate::store::fixtures::task("t1", &service);
        task.status.state = crate::model::TaskState::Running;
        {
            let (_, mut sm) = reopen();
            sm.apply(vec![
                entry(
                    1,
                    Command::CreateService {
                        service,
                        rules: Rules::CURRENT,
                    },
                ),
                entry(2, Command::CreateTasks { tasks: vec![task] }),
                entry(
                    3,
                    Command::RemoveService {
                        id: "a".into(),
                        at_ms: 5,
                    },
                ),
            ])
            .await
            .unwrap();
            // Make the non-durable commits durable, as a snapshot would.
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        }
        {
            let (store, mut sm) = reopen();
            store.read(|s| {
                assert!(s.services.is_empty());
                assert_eq!(s.removed_services.keys().collect::<Vec<_>>(), vec!["a"]);
            });
            sm.apply(vec![entry(4, Command::RemoveTasks { ids: vec!["t1".into()] })])
                .await
                .unwrap();
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        }
        let (store, _) = reopen();
        store.read(|s| assert!(s.removed_services.is_empty()));
    }

    #[tokio::test]
    async fn installing_a_snapshot_replaces_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let store_a = Store::new();
        let mut a = StateMachine::open(&dir.path().join("a.redb"), store_a.clone()).unwrap();
        a.apply(vec![entry(
            1,
            Command::CreateService {
                service: svc("a", "one"),
                rules: Rules::CURRENT,
            },
        )])
        .await
        .unwrap();
        let snap = a.get_snapshot_builder().await.build_snapshot().await.unwrap();

        let store_b = Store::new();
        let path_b = dir.path().join("b.redb");
        let mut b = StateMachine::open(&path_b, store_b.clone()).unwrap();
        b.apply(vec![entry(
            1,
            Command::CreateService {
                service: svc("z", "stale"),
                rules: Rules::CURRENT,
            },
        )])
        .await
        .unwrap();
        let mut events = store_b.subscribe();
        b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert!(events.recv().await.unwrap().reset);
        store_b.read(|s| {
            assert_eq!(s.services.keys().collect::<Vec<_>>(), vec!["a"]);
        });
        drop(b);
        let store_c = Store::new();
        let _c = StateMachine::open(&path_b, store_c.clone()).unwrap();
        store_c.read(|s| assert_eq!(s.services.keys().collect::<Vec<_>>(), vec!["a"]));
    }

    /// Log entries as the previous version wrote them (commands without `rules`)
    /// apply as they did then, and what they applied survives a reopen.
    #[tokio::test]
    async fn entries_logged_by_the_previous_version_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut web = svc("a", "web");
        web.spec.ports = vec![crate::model::parse_publish("publish", "8080:80").unwrap()];
        let mut api = svc("b", "api");
        api.spec.ports = web.spec.ports.clone();
        // The log's own encoding of an entry, with the payload in the old shape.
        let old_entry = |index: u64, payload: serde_json::Value| -> Entry {
            let mut e = serde_json::to_value(entry(index, Command::Batch(vec![]))).unwrap();
            e["payload"]["Normal"] = payload;
            serde_json::from_value(e).unwrap()
        };
        {
            let store = Store::new();
            let mut sm = StateMachine::open(&path, store.clone()).unwrap();
            let r = sm
                .apply(vec![
                    old_entry(1, serde_json::json!({ "CreateService": { "service": web } })),
                    old_entry(2, serde_json::json!({ "CreateService": { "service": api } })),
                ])
                .await
                .unwrap();
            assert_eq!((&r[0].error, &r[1].error), (&None, &None), "{r:?}");
            let mut b = sm.get_snapshot_builder().await;
            b.build_snapshot().await.unwrap();
        }
        let store = Store::new();
        let mut sm = StateMachine::open(&path, store.clone()).unwrap();
        store.read(|s| assert_eq!(s.services.len(), 2));
        // A new write on the same port is refused.
        let mut late = svc("c", "late");
        late.spec.ports = vec![crate::model::parse_publish("publish", "8080:80").unwrap()];
        let r = sm
            .apply(vec![entry(
                3,
                Command::CreateService {
                    service: late,
                    rules: Rules::CURRENT,
                },
            )])
            .await
            .unwrap();
        assert!(
            matches!(r[0].error, Some(crate::store::ApplyError::PortTaken { port: 8080, .. })),
            "{r:?}"
        );
    }
}
