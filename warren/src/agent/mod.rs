//! The node agent: holds one session stream to the leading manager (mutual TLS),
//! sends heartbeats and task status reports, hands each assignment set to the
//! node's `Executor`, follows `NotLeader` redirects at once and otherwise retries
//! every known manager with exponential backoff. It keeps running its tasks while
//! cut off; the executor, not the link, owns them.

pub mod executor;
pub mod node_dataplane;
pub mod node_dns;
pub mod node_service;

use crate::model::{Platform, Resources};
use crate::pki::NodeCredentials;
use crate::wire::channel::{self, Dial};
use crate::wire::convert;
use executor::{Executor, Report};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use warren_proto::v1 as pb;
use warren_proto::v1::agent_message::Msg as AgentMsg;
use warren_proto::v1::dispatcher_message::Msg as DispatcherMsg;

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
    fn endpoints(&self, services: &[crate::model::ServiceEndpoints]);
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
    pub credentials: NodeCredentials,
    pub resources: Resources,
    /// Called when the leader sends a new list of managers, so that it can be kept.
    pub on_session: SessionCallback,
    /// Told about every endpoints change before the executor sees the tasks, so that
    /// a stopping task leaves the node's data plane before its container stops.
    pub listeners: Vec<std::sync::Arc<dyn EndpointsListener>>,
}

enum SessionEnd {
    /// The manager is not the leader; this one is (may be empty mid-election).
    Redirect(String),
    Closed,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("session refused: {0}")]
    Refused(String),
    #[error("stream broke: {0}")]
    Stream(String),
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
            session(
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

async fn session(
    cfg: &AgentConfig,
    addr: &str,
    managers: &mut Vec<String>,
    executor: &dyn Executor,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let dial = Dial::new(Duration::from_secs(2)).keepalive(Duration::from_secs(2), Duration::from_secs(3));
    let channel = channel::connect(addr, cfg.credentials.client_tls(), dial)
        .await
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let mut client = pb::dispatcher_client::DispatcherClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let hello = pb::AgentHello {
        node_id: cfg.node_id.clone(),
        hostname: cfg.hostname.clone(),
        resources: Some(convert::resources_to_pb(cfg.resources)),
        platform: Some(convert::platform_to_pb(&Platform::current())),
        warren_version: crate::VERSION.to_string(),
        tasks: to_pb_reports(executor.statuses()),
    };
    // Reports queued while disconnected are covered by the hello's statuses.
    while reports.try_recv().is_ok() {}
    tx.send(pb::AgentMessage {
        msg: Some(AgentMsg::Hello(hello)),
    })
    .await
    .map_err(|e| SessionError::Stream(e.to_string()))?;
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| SessionError::Refused(s.message().to_string()))?
        .into_inner();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|s| SessionError::Stream(s.message().to_string()))?;
                let Some(msg) = msg else { return Ok(SessionEnd::Closed) };
                match msg.msg {
                    Some(DispatcherMsg::Accepted(a)) => {
                        tracing::info!("connected to the leader");
                        let period = Duration::from_millis(a.heartbeat_period_ms.max(100) as u64);
                        heartbeat = tokio::time::interval(period);
                        if !a.managers.is_empty() {
                            *managers = a.managers.clone();
                        }
                        let network = (!a.node_subnet.is_empty()).then(|| executor::NodeNetwork {
                            subnet: a.node_subnet.clone(),
                            cluster_cidr: a.cluster_cidr.clone(),
                        });
                                                if let Some(n) = &network {
                            for l in &cfg.listeners {
                                l.configure(n);
                            }
                            executor.configure(n.clone());
                        }
                        (cfg.on_session)(&SessionInfo { managers: managers.clone(), network });
                    }
                    Some(DispatcherMsg::Assignments(a)) => {
                        let mut tasks = Vec::with_capacity(a.tasks.len());
                        for t in a.tasks {
                            let id = t.id.clone();
                            match convert::task_from_pb(t) {
                                Ok(t) => tasks.push(t),
                                Err(e) => tracing::warn!(task = %id, error = %e, "ignoring an assignment this agent cannot read"),
                            }
                        }
                        tracing::debug!(tasks = tasks.len(), index = a.index, "assignments");
                        let peers = a
                            .peers
                            .into_iter()
                            .filter_map(|p| Some((p.subnet, p.via.parse().ok()?)))
                            .collect();
                                                let mut services = Vec::with_capacity(a.services.len());
                        for s in a.services {
                            let name = s.name.clone();
                            match convert::endpoints_from_pb(s) {
                                Ok(s) => services.push(s),
                                Err(e) => tracing::warn!(service = %name, error = %e, "ignoring endpoints this agent cannot read"),
                            }
                        }
                        for l in &cfg.listeners {
                            l.endpoints(&services);
                        }
                        executor.assign(executor::Assignment {
                            tasks,
                            secrets: a.secrets.into_iter().map(|s| (s.name, s.data)).collect(),
                            peers,
                            volumes: a.volumes,
                            services,
                        });
                    }
                    Some(DispatcherMsg::NotLeader(n)) => return Ok(SessionEnd::Redirect(n.leader_addr)),
                    None => {}
                }
            }
            _ = heartbeat.tick() => {
                let hb = pb::AgentMessage { msg: Some(AgentMsg::Heartbeat(pb::Heartbeat {})) };
                if tx.send(hb).await.is_err() {
                    return Err(SessionError::Stream("the dispatcher stopped reading".into()));
                }
            }
            r = reports.recv() => {
                let Some(first) = r else { return Ok(SessionEnd::Closed) };
                let mut batch = vec![first];
                while let Ok(more) = reports.try_recv() {
                    batch.push(more);
                }
                let msg = pb::AgentMessage {
                    msg: Some(AgentMsg::Status(pb::TaskStatusBatch { reports: to_pb_reports(batch) })),
                };
                if tx.send(msg).await.is_err() {
                    return Err(SessionError::Stream("the dispatcher stopped reading".into()));
                }
            }
            _ = shutdown.changed() => return Ok(SessionEnd::Closed),
        }
    }
}

fn to_pb_reports(reports: Vec<Report>) -> Vec<pb::TaskStatusReport> {
    reports
        .into_iter()
        .map(|(task_id, s)| pb::TaskStatusReport {
            task_id,
            status: Some(convert::task_status_to_pb(&s)),
        })
        .collect()
}
