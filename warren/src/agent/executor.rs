//! The seam between the agent and whatever runs tasks on the node. The agent hands
//! over the node's complete assignment set; the executor converges on it and reports
//! task states. `Unavailable` is the executor of a node without a container runtime:
//! it never pretends to run anything (tasks stay `assigned`) and only acknowledges
//! stops, since there is nothing to stop.

use crate::model::{now_ms, Task, TaskState, TaskStatus};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// A task state change for the dispatcher.
pub type Report = (String, TaskStatus);

/// Everything the leader says this node must run, in one consistent set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assignment {
    pub tasks: Vec<Task>,
    /// Plaintext of the secrets these tasks use, by name. Kept in memory only.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Other nodes' task subnets and the address to route each through.
    pub peers: Vec<(String, Ipv4Addr)>,
    /// Local volumes whose data lives on this node.
    pub volumes: Vec<String>,
    /// Every service's reachable tasks.
    pub services: Vec<crate::model::ServiceEndpoints>,
    /// Content of the config objects these tasks use, by name.
    pub configs: BTreeMap<String, Vec<u8>>,
}

/// Where this node's tasks get their addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    /// This node's /24, e.g. `10.88.3.0/24`.
    pub subnet: String,
    /// The whole cluster CIDR, e.g. `10.88.0.0/16`.
    pub cluster_cidr: String,
}

pub trait Executor: Send + Sync + 'static {
    /// This node's task subnet; called on every session and at start-up with the
    /// last one known, before any assignment.
    fn configure(&self, network: NodeNetwork);
    /// The complete set of tasks placed on this node; idempotent.
    fn assign(&self, assignment: Assignment);
    /// The last known status of every task the executor holds (sent on reconnect).
    fn statuses(&self) -> Vec<Report>;
}

/// No container runtime: nothing runs, and nothing is said to run.
pub struct Unavailable {
    reports: mpsc::UnboundedSender<Report>,
    known: Mutex<HashMap<String, TaskStatus>>,
}

impl Unavailable {
    pub fn new(reports: mpsc::UnboundedSender<Report>) -> Unavailable {
        Unavailable {
            reports,
            known: Mutex::new(HashMap::new()),
        }
    }
}

impl Executor for Unavailable {
    fn configure(&self, _: NodeNetwork) {}

    fn assign(&self, assignment: Assignment) {
        let tasks = assignment.tasks;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|id, _| tasks.iter().any(|t| &t.id == id));
        for t in tasks {
            if t.desired_state >= TaskState::Shutdown && !t.status.state.is_terminal() {
                let status = TaskStatus {
                    state: TaskState::Shutdown,
                    message: "stopped before it ran (this node has no container runtime)".into(),
                    timestamp_ms: now_ms(),
                    ..Default::default()
                };
                if known.get(&t.id).map(|s| s.state) != Some(TaskState::Shutdown) {
                    known.insert(t.id.clone(), status.clone());
                    let _ = self.reports.send((t.id.clone(), status));
                }
            }
        }
    }

    fn statuses(&self) -> Vec<Report> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn task(id: &str, desired: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s".into(),
            service_name: "s".into(),
            slot: 1,
            node_id: Some("n".into()),
            desired_state: desired,
            status: TaskStatus {
                state: TaskState::Assigned,
                ..Default::default()
            },
            spec: ServiceSpec::default(),
            spec_version: 1,
            attempt: 0,
            canary: false,
            created_ms: 0,
            updated_ms: 0,
            version: 1,
        }
    }

    #[test]
    fn never_reports_running_and_acknowledges_stops_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ex = Unavailable::new(tx);
        let with = |t: Task| Assignment {
            tasks: vec![t],
            ..Default::default()
        };
        ex.assign(with(task("a", TaskState::Running)));
        assert!(rx.try_recv().is_err(), "a task must stay assigned without a runtime");
        ex.assign(with(task("a", TaskState::Shutdown)));
        let (id, st) = rx.try_recv().unwrap();
        assert_eq!((id.as_str(), st.state), ("a", TaskState::Shutdown));
        ex.assign(with(task("a", TaskState::Shutdown)));
        assert!(rx.try_recv().is_err());
    }
}
