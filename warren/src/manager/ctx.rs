//! What a manager's API, membership service, dispatcher and leader duties share:
//! the store, the Raft member behind the `Proposer` seam, the channels to other
//! nodes, the secrets key, the metrics and the settings. Not the work itself.

use super::orchestrator;
use crate::metrics::Metrics;
use crate::model::NodeRole;
use crate::raft::network::Peers;
use crate::secrets::SecretsKey;
use crate::store::{Proposer, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ManagerSettings {
    /// How often agents send heartbeats.
    pub heartbeat_period: Duration,
    /// A node is down after this long without a heartbeat.
    pub heartbeat_grace: Duration,
    /// Safety-net reconciliation interval; changes normally wake the loops at once.
    pub resync: Duration,
    pub orchestrator: orchestrator::Settings,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        ManagerSettings {
            heartbeat_period: Duration::from_secs(1),
            heartbeat_grace: Duration::from_secs(5),
            resync: Duration::from_secs(30),
            orchestrator: orchestrator::Settings::default(),
        }
    }
}

/// What a manager's API, dispatcher and leader duties share.
pub struct ManagerCtx {
    pub node_id: String,
    /// This node's data dir (uploads are staged under it).
    pub data_dir: std::path::PathBuf,
    pub advertise_addr: String,
    /// This manager's Raft member: every write goes through it.
    pub raft: Arc<dyn Proposer>,
    /// Channels to other managers and nodes, with this manager's certificate.
    pub peers: Peers,
    pub store: Arc<Store>,
    pub secrets_key: SecretsKey,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    pub settings: ManagerSettings,
}

impl ManagerCtx {
    /// Addresses of every manager node, for agents and join commands.
    pub fn manager_addrs(&self) -> Vec<String> {
        self.store.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .map(|n| n.addr.clone())
                .collect()
        })
    }
}

/// Last heartbeat per node, on this manager, and the connection outcomes per task
/// that each node's data plane last reported with it (cumulative counters, kept
/// in memory: a new leader has them again within a heartbeat).
#[derive(Default)]
pub struct Sessions {
    last_seen: Mutex<HashMap<String, Instant>>,
    outcomes: Mutex<HashMap<String, HashMap<String, crate::model::Outcomes>>>,
}

impl Sessions {
    /// Replaces what `node_id` reported before (a task it no longer counts is gone).
    pub fn report_outcomes(&self, node_id: &str, by_task: HashMap<String, crate::model::Outcomes>) {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), by_task);
    }

    /// Every task's outcomes, summed over the nodes that counted connections to it.
    pub fn outcomes_by_task(&self) -> super::updater::TaskOutcomes {
        let mut out = super::updater::TaskOutcomes::new();
        for by_task in self.outcomes.lock().unwrap_or_else(|e| e.into_inner()).values() {
            for (task, o) in by_task {
                out.entry(task.clone()).or_default().add(o);
            }
        }
        out
    }

    pub fn seen(&self, node_id: &str) {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), Instant::now());
    }

    pub(super) fn last(&self, node_id: &str) -> Option<Instant> {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .copied()
    }
}

#[cfg(test)]
impl ManagerCtx {
    /// Manager `m1` over a `FakeProposer` (which leads a group of one), with a fresh
    /// store, for unit tests of the API and the dispatcher. Its agents' heartbeat
    /// period is 100 ms.
    pub(crate) fn fake() -> (Arc<ManagerCtx>, Arc<crate::store::FakeProposer>) {
        let store = Store::new();
        let raft = crate::store::FakeProposer::new(store.clone());
        let ctx = ManagerCtx {
            node_id: "m1".into(),
            data_dir: std::env::temp_dir().join(format!("warren-unit-{}", std::process::id())),
            advertise_addr: "127.0.0.1:2377".into(),
            raft: raft.clone(),
            peers: Peers::new(tonic::transport::ClientTlsConfig::new()),
            store,
            secrets_key: SecretsKey::generate(),
            metrics: Metrics::new(),
            sessions: Arc::default(),
            settings: ManagerSettings {
                heartbeat_period: Duration::from_millis(100),
                ..Default::default()
            },
        };
        (Arc::new(ctx), raft)
    }
}
