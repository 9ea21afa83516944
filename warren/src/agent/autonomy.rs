//! Edge autonomy: what the agent keeps so that its node runs on its own while cut
//! off from every manager. The last assignment set is kept in `DATA_DIR/agent.redb`
//! (without the secrets' content: the node holds that on tmpfs only, and a restart
//! reads it back from there), so that a daemon restarted while cut off adopts its
//! tasks again. While cut off, the node's data plane and DNS are fed the local view
//! (`local_endpoints`): only this node's tasks, as they run and pass their health
//! checks here, since the other nodes' tasks are out of reach. The summary of what
//! the node did goes out with the next hello.

use crate::model::{ServiceEndpoints, TaskState, TaskStatus};
use prost::Message;
use redb::{Database, ReadableDatabase, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use warren_proto::v1 as pb;

/// The agent's store, in the node's data dir.
pub const AGENT_DB: &str = "agent.redb";
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("agent");
const LAST_ASSIGNMENTS: &str = "assignments";

#[derive(Debug, thiserror::Error)]
pub enum AutonomyError {
    #[error("agent store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("agent store {path}: unreadable assignment set: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
}

/// Where the node stands with the managers.
#[derive(Debug, Default)]
struct Cut {
    /// Since when no manager answers (ms since the epoch); None: connected.
    since_ms: Option<i64>,
    /// Tasks this node restarted on its own while cut off.
    restarts: u64,
}

pub struct Autonomy {
    db: Database,
    path: PathBuf,
    node_id: String,
    /// The services' endpoints of the last assignment set, as the managers sent them.
    services: Mutex<Vec<ServiceEndpoints>>,
    cut: Mutex<Cut>,
    /// When a manager last answered this agent.
    contact: Mutex<std::time::Instant>,
    assigned: std::sync::atomic::AtomicBool,
    connected: std::sync::atomic::AtomicBool,
}

impl Autonomy {
    /// Opens (or creates) `data_dir/agent.redb`.
    pub fn open(data_dir: &Path, node_id: &str) -> Result<Autonomy, AutonomyError> {
        let path = data_dir.join(AGENT_DB);
        let err = |e: redb::Error| AutonomyError::Store {
            path: path.clone(),
            source: e,
        };
        let db = Database::create(&path).map_err(|e| err(e.into()))?;
        Ok(Autonomy {
            db,
            path,
            node_id: node_id.to_string(),
            services: Mutex::new(Vec::new()),
            cut: Mutex::new(Cut::default()),
            contact: Mutex::new(std::time::Instant::now()),
            assigned: std::sync::atomic::AtomicBool::new(false),
            connected: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> AutonomyError {
        AutonomyError::Store {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Keeps an assignment set for a restart while cut off; secrets lose their content
    /// and ingress certificates their private keys (both exist on disk only sealed,
    /// in the Raft state: a node restarted while cut off serves its HTTP routes and
    /// its tasks, not TLS with keys it no longer holds).
    pub fn save(&self, a: &pb::Assignments) -> Result<(), AutonomyError> {
        let mut kept = a.clone();
        for s in &mut kept.secrets {
            s.data.clear();
        }
        if let Some(ing) = &mut kept.ingress {
            ing.certificates.clear();
        }
        let bytes = kept.encode_to_vec();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(STATE).map_err(|e| self.err(e))?;
            t.insert(LAST_ASSIGNMENTS, bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The last assignment set kept, with each secret's content read back from the
    /// tmpfs where this node's tasks have it (a secret no task holds stays empty).
    pub fn load(&self) -> Result<Option<pb::Assignments>, AutonomyError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match txn.open_table(STATE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(v) = t.get(LAST_ASSIGNMENTS).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let mut a = pb::Assignments::decode(v.value()).map_err(|source| AutonomyError::Decode {
            path: self.path.clone(),
            source,
        })?;
        let dir = crate::worker::node_secrets_dir(&self.node_id);
        for s in &mut a.secrets {
            if let Some(data) = held_secret(&dir, &s.name) {
                s.data = data;
            }
        }
        Ok(Some(a))
    }

    /// Remembers the endpoints the managers sent, for the local view.
    pub fn endpoints(&self, services: &[ServiceEndpoints]) {
        *self.services.lock().unwrap_or_else(|e| e.into_inner()) = services.to_vec();
        self.assigned.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the node has had an assignment set (from a leader, or kept): a node
    /// that never had one has nothing to run on its own, and a slow first
    /// connection is no cut.
    pub fn has_assignment(&self) -> bool {
        self.assigned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the node's data plane and DNS serve while cut off.
    pub fn local_view(&self, statuses: &HashMap<String, TaskStatus>) -> Vec<ServiceEndpoints> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        local_endpoints(&services, &self.node_id, statuses)
    }

    /// A leader accepted a session (true), or the session ended (false): the
    /// silence runs from there. A leader sends only on changes, so an open session
    /// is the contact, not its messages.
    pub fn session(&self, up: bool) {
        *self.contact.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        self.connected.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long no session with a leader has been up (zero while one is).
    pub fn silent_for(&self) -> std::time::Duration {
        if self.connected.load(std::sync::atomic::Ordering::Relaxed) {
            return std::time::Duration::ZERO;
        }
        self.contact.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    /// No manager answers: the node is on its own from `at_ms` (if not already).
    pub fn cut_off(&self, at_ms: i64) -> bool {
        let mut c = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        let first = c.since_ms.is_none();
        c.since_ms.get_or_insert(at_ms);
        first
    }

    pub fn is_cut_off(&self) -> bool {
        self.cut.lock().unwrap_or_else(|e| e.into_inner()).since_ms.is_some()
    }

    /// A task restarted here while cut off.
    pub fn restarted(&self) {
        self.cut.lock().unwrap_or_else(|e| e.into_inner()).restarts += 1;
    }

    /// What the node did on its own until `now_ms`, for the hello (empty if it was
    /// not cut off).
    pub fn report(&self, now_ms: i64) -> String {
        let c = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        c.since_ms
            .map(|since| summary(now_ms - since, c.restarts))
            .unwrap_or_default()
    }

    /// A leader accepted the node: it is no longer on its own.
    pub fn healed(&self) {
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = Cut::default();
    }
}

/// What the hello says about a time cut off.
pub fn summary(cut_ms: i64, restarts: u64) -> String {
    let d = crate::model::human_duration(u64::try_from(cut_ms.max(0) / 1000 * 1000).unwrap_or(0));
    format!("ran on its own for {d}; restarted {restarts} task(s) locally")
}

fn held_secret(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|task| std::fs::read(task.path().join(name)).ok())
}

/// The endpoints as this node alone can serve them: only its own tasks, each where
/// it runs now, taking connections only while running and healthy here.
pub fn local_endpoints(
    services: &[ServiceEndpoints],
    node_id: &str,
    statuses: &HashMap<String, TaskStatus>,
) -> Vec<ServiceEndpoints> {
    services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.endpoints.retain_mut(|e| {
                if e.node_id != node_id {
                    return false;
                }
                let Some(st) = statuses.get(&e.task_id) else {
                    return false;
                };
                if st.state != TaskState::Running {
                    return false;
                }
                if let Ok(addr) = st.addr.parse() {
                    e.addr = addr;
                }
                e.ready = st.health.is_empty() || st.health == "healthy";
                e.ready
            });
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, EndpointMode};

    fn endpoint(task: &str, node: &str) -> Endpoint {
        Endpoint {
            task_id: task.into(),
            slot: 1,
            addr: "10.88.1.2".parse().unwrap(),
            node_id: node.into(),
            canary: false,
            ready: true,
            draining: false,
        }
    }

    fn running(health: &str, addr: &str) -> TaskStatus {
        TaskStatus {
            state: TaskState::Running,
            health: health.into(),
            addr: addr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn cut_off_a_node_serves_only_its_own_running_healthy_tasks() {
        let svc = ServiceEndpoints {
            id: "s".into(),
            name: "web".into(),
            dp_id: 1,
            vip: Some("10.99.0.2".parse().unwrap()),
            endpoint_mode: EndpointMode::Vip,
            ports: vec![],
            canary_weight: 0,
            rate_limit: None,
            endpoint_locality: Default::default(),
            endpoints: vec![
                endpoint("here", "n1"),
                endpoint("sick", "n1"),
                endpoint("crashed", "n1"),
                endpoint("there", "n2"),
            ],
            stack: String::new(),
            removed: false,
        };
        let mut st = HashMap::new();
        st.insert("here".to_string(), running("healthy", "10.88.1.7"));
        st.insert("sick".to_string(), running("unhealthy", "10.88.1.8"));
        st.insert(
            "crashed".to_string(),
            TaskStatus {
                state: TaskState::Failed,
                ..Default::default()
            },
        );
        st.insert("there".to_string(), running("", "10.88.2.2"));
        let got = local_endpoints(&[svc], "n1", &st);
        let ids: Vec<(&str, String)> = got[0]
            .endpoints
            .iter()
            .map(|e| (e.task_id.as_str(), e.addr.to_string()))
            .collect();
        assert_eq!(ids, vec![("here", "10.88.1.7".to_string())]);
    }

    #[test]
    fn the_last_assignment_set_survives_a_reopen_without_secret_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = pb::Assignments {
            index: 7,
            secrets: vec![pb::SecretData {
                name: "db".into(),
                data: b"hunter2".to_vec(),
            }],
            ingress: Some(pb::IngressAssignment {
                certificates: vec![pb::IngressCertificateData {
                    name: "shop".into(),
                    cert_pem: "CERT".into(),
                    key_pem: "PRIVATEKEYBODY".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        {
            let au = Autonomy::open(dir.path(), "no-such-node").unwrap();
            assert_eq!(au.load().unwrap(), None);
            au.save(&a).unwrap();
        }
        let au = Autonomy::open(dir.path(), "no-such-node").unwrap();
        let got = au.load().unwrap().unwrap();
        assert_eq!(got.index, 7);
        assert_eq!(got.secrets[0].name, "db");
        assert!(got.secrets[0].data.is_empty(), "no secret content reaches the disk");
        assert!(got.ingress.unwrap().certificates.is_empty());
        let raw = std::fs::read(dir.path().join(AGENT_DB)).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        assert!(
            !raw.windows(14).any(|w| w == b"PRIVATEKEYBODY"),
            "no private key reaches the disk"
        );
    }

    #[test]
    fn the_heal_summary_counts_the_local_restarts_once() {
        let dir = tempfile::tempdir().unwrap();
        let au = Autonomy::open(dir.path(), "n").unwrap();
        assert_eq!(au.report(10), "", "never cut off: nothing to report");
        assert!(au.cut_off(1_000));
        assert!(!au.cut_off(2_000), "the first cut counts");
        au.restarted();
        assert_eq!(au.report(13_500), "ran on its own for 12s; restarted 1 task(s) locally");
        au.healed();
        assert!(!au.is_cut_off());
        assert_eq!(au.report(20_000), "");
    }
}
