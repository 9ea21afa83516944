//! The node agent: holds one session stream to the leading manager (`session`,
//! over a `Link`: mutual TLS in production), sends heartbeats and task status
//! reports, hands each assignment set to the node's `Executor`, follows
//! `NotLeader` redirects at once and otherwise retries every known manager with
//! exponential backoff (`run`). It keeps running its tasks while cut off; the
//! executor, not the link, owns them. Also the node's side of what managers ask of
//! it (`node_service`) and the followers of the cluster's endpoints
//! (`node_dataplane`, `node_dns`).

pub mod autonomy;
pub mod executor;
mod fake;
pub mod link;
pub mod node_dataplane;
pub mod node_dns;
pub mod node_ingress;
pub mod node_mesh;
pub mod node_service;
mod session;

use crate::model::Resources;
use executor::{Executor, Report};
use session::SessionEnd;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub use fake::{FakeLink, FakeSession};
pub use link::{Link, SessionError, TlsLink};

/// What the leader announces when a session starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub managers: Vec<String>,
    pub network: Option<executor::NodeNetwork>,
}

/// Called with what the leader announced, so that it can be kept for restarts.
pub type SessionCallback = Box<dyn Fn(&SessionInfo) + Send + Sync>;

/// A node component that follows the cluster's services (DNS, data plane).
pub trait EndpointsListener: Send + Sync {
    fn configure(&self, network: &executor::NodeNetwork);
    /// What the node's ingress serves (None: it runs none), told before the
    /// endpoints of the same assignment set; only the ingress listens.
    fn ingress(&self, _view: Option<&crate::wire::convert::IngressView>) {}
    fn endpoints(&self, services: &[crate::model::ServiceEndpoints]);
    /// How this node's connections to each task ended, by task ID, for the
    /// heartbeat; only a listener that balances connections counts them.
    fn outcomes(&self) -> Vec<(String, crate::model::Outcomes)> {
        Vec::new()
    }
}

impl EndpointsListener for node_dns::NodeDns {
    fn configure(&self, network: &executor::NodeNetwork) {
        node_dns::NodeDns::configure(self, network)
    }

    fn endpoints(&self, services: &[crate::model::ServiceEndpoints]) {
        self.update(services)
    }
}

pub struct AgentConfig {
    pub node_id: String,
    pub hostname: String,
    pub managers: Vec<String>,
    /// How sessions reach a manager (`TlsLink` with the node's certificate).
    pub link: Arc<dyn Link>,
    pub resources: Resources,
    /// Called when the leader sends a new list of managers, so that it can be kept.
    pub on_session: SessionCallback,
    /// Told about every endpoints change before the executor sees the tasks, so that
    /// a stopping task leaves the node's data plane before its container stops.
    pub listeners: Vec<std::sync::Arc<dyn EndpointsListener>>,
    /// The node's mesh component (wireguard overlay): its end goes out with the
    /// hello and on every change, and it gets every peer list.
    pub mesh: Option<std::sync::Arc<node_mesh::NodeMesh>>,
    /// The metrics listener's port, reported so that no service publishes it.
    pub metrics_port: u16,
    /// `warren daemon --ingress`: asked of the managers if the node's record has no
    /// ingress.
    pub ingress_seed: Option<crate::model::ingress::NodeIngress>,
    /// What the node keeps to run on its own while cut off (None: it does not).
    pub autonomy: Option<Arc<autonomy::Autonomy>>,
    /// The node's network as kept from the last session, for a restart while cut off.
    pub known_network: Option<executor::NodeNetwork>,
}

/// How long no manager may answer before the node runs on its own: longer than a
/// leader election, so that a failover does not narrow the data plane to local tasks.
pub const CUT_OFF_AFTER: Duration = Duration::from_secs(3);

/// While cut off: tells the executor and feeds the listeners the local view of the
/// endpoints whenever what runs here changes.
async fn watch_cut_off(
    autonomy: Arc<autonomy::Autonomy>,
    executor: Arc<dyn Executor>,
    listeners: Vec<Arc<dyn EndpointsListener>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last: Option<Vec<crate::model::ServiceEndpoints>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !autonomy.is_cut_off() {
            if autonomy.silent_for() < CUT_OFF_AFTER || !autonomy.has_assignment() {
                last = None;
                continue;
            }
            let since = crate::model::now_ms() - autonomy.silent_for().as_millis() as i64;
            autonomy.cut_off(since);
            tracing::warn!(
                silent_ms = autonomy.silent_for().as_millis() as u64,
                "no manager answers: the node runs on its own"
            );
        }
        let statuses = executor.statuses().into_iter().collect();
        let view = autonomy.local_view(&statuses);
        if last.as_ref() != Some(&view) {
            tracing::info!(
                backends = view.iter().map(|s| s.endpoints.len()).sum::<usize>(),
                "serving the local view of the endpoints"
            );
            for l in &listeners {
                l.endpoints(&view);
            }
            last = Some(view);
        }
    }
}

/// Total memory and CPUs of this machine, the capacity a node reports by default.
pub fn detect_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64;
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<i64>().ok()))
        })
        .unwrap_or(0)
        * 1024;
    Resources {
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: mem,
    }
}

pub async fn run(
    cfg: AgentConfig,
    executor: Arc<dyn Executor>,
    mut reports: mpsc::UnboundedReceiver<Report>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut managers = cfg.managers.clone();
    let mut hint: Option<String> = None;
    let mut turn = 0usize;
    let mut backoff = Duration::from_millis(100);
    if let Some(au) = &cfg.autonomy {
        // A restart while cut off: what the node ran before, until a leader says.
        match au.load() {
            Ok(Some(a)) => {
                tracing::info!(tasks = a.tasks.len(), "resuming the last assignment set kept");
                if let Some(n) = &cfg.known_network {
                    for l in &cfg.listeners {
                        l.configure(n);
                    }
                    executor.configure(n.clone());
                }
                session::assign(&cfg, executor.as_ref(), a);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the assignment set kept"),
        }
        tokio::spawn(watch_cut_off(
            au.clone(),
            executor.clone(),
            cfg.listeners.clone(),
            shutdown.clone(),
        ));
    }
    loop {
        if *shutdown.borrow() {
            return;
        }
        let addr = match hint.take() {
            Some(a) => a,
            None => {
                if managers.is_empty() {
                    tracing::error!("the agent knows no manager to connect to");
                    return;
                }
                turn += 1;
                managers[turn % managers.len()].clone()
            }
        };
        let span = tracing::info_span!("agent", manager = %addr);
        let result = tracing::Instrument::instrument(
            session::session(
                &cfg,
                &addr,
                &mut managers,
                executor.as_ref(),
                &mut reports,
                &mut shutdown,
            ),
            span,
        )
        .await;
        if let Some(au) = &cfg.autonomy {
            au.session(false);
        }
        match result {
            Ok(SessionEnd::Redirect(leader)) => {
                tracing::debug!(from = %addr, to = %leader, "following the leader");
                if leader.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                } else {
                    hint = Some(leader);
                }
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok(SessionEnd::Closed) => {
                if *shutdown.borrow() {
                    return;
                }
            }
            Err(e) => tracing::warn!(manager = %addr, error = %e, "agent session failed"),
        }
        // Jitter keeps a fleet of agents from reconnecting in lockstep.
        let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests;
