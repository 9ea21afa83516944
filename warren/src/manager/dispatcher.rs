//! The dispatcher: the leader's end of each node agent's session stream. It checks
//! the agent's certificate against the node it claims to be, records heartbeats
//! (in memory: a heartbeat is not worth a Raft write), turns task status reports
//! into `ReportTaskStatus` writes, and pushes the node's complete assignment set
//! whenever it changes. Followers answer `NotLeader` so that agents follow the
//! leader. `monitor_heartbeats` (a leader duty) marks silent nodes down.

use super::ctx::ManagerCtx;
use crate::model::{now_ms, NodeState, Task};
use crate::store::{Command, ObjectKind, State};
use crate::wire::{auth, convert};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use warren_proto::v1 as pb;
use warren_proto::v1::agent_message::Msg as AgentMsg;
use warren_proto::v1::dispatcher_message::Msg as DispatcherMsg;

/// What one node must know: the tasks placed there that have not finished (it
/// stops anything else it runs), the secrets those tasks use, and the other nodes'
/// task subnets for routing.
#[derive(Debug, Default, PartialEq)]
pub struct NodeAssignment {
    pub tasks: Vec<Task>,
    /// Secret IDs, by name, that the tasks reference.
    pub secrets: BTreeMap<String, String>,
    /// (node ID, subnet, address to route through).
    pub peers: Vec<(String, String, String)>,
    /// Names of the local volumes that live on this node.
    pub volumes: Vec<String>,
    /// Every service's reachable tasks (the same for every node).
    pub services: Vec<crate::model::ServiceEndpoints>,
}

pub fn assignments_for(state: &State, node_id: &str) -> NodeAssignment {
    let tasks: Vec<Task> = state
        .tasks_on_node(node_id)
        .filter(|t| !t.status.state.is_terminal())
        .cloned()
        .collect();
    let mut secrets = BTreeMap::new();
    for t in &tasks {
        for r in &t.spec.secrets {
            if let Some(s) = state.secrets.values().find(|s| s.name == r.name) {
                secrets.insert(s.name.clone(), s.id.clone());
            }
        }
    }
    let peers = state
        .nodes
        .values()
        .filter(|n| n.id != node_id && n.state != NodeState::Down)
        .filter_map(|n| {
            let ip = n.addr.parse::<std::net::SocketAddr>().ok()?.ip().to_string();
            Some((n.id.clone(), n.subnet.clone()?, ip))
        })
        .collect();
    let volumes = state
        .volumes
        .values()
        .filter(|v| v.node_id.as_deref() == Some(node_id))
        .map(|v| v.name.clone())
        .collect();
    NodeAssignment {
        tasks,
        secrets,
        peers,
        volumes,
        services: state.service_endpoints(),
    }
}

type Fingerprint = (
    Vec<(String, u64)>,
    BTreeMap<String, String>,
    Vec<(String, String, String)>,
    Vec<String>,
    Vec<crate::model::ServiceEndpoints>,
);

fn fingerprint(a: &NodeAssignment) -> Fingerprint {
    let mut f: Vec<_> = a.tasks.iter().map(|t| (t.id.clone(), t.version)).collect();
    f.sort();
    (
        f,
        a.secrets.clone(),
        a.peers.clone(),
        a.volumes.clone(),
        a.services.clone(),
    )
}

fn assignments_pb(ctx: &ManagerCtx, a: &NodeAssignment, index: u64) -> pb::Assignments {
    let secrets = ctx.store.read(|s| {
        a.secrets
            .values()
            .filter_map(|id| {
                let secret = s.secrets.get(id)?;
                match ctx.secrets_key.open(&secret.sealed) {
                    Ok(data) => Some(pb::SecretData {
                        name: secret.name.clone(),
                        data,
                    }),
                    Err(e) => {
                        tracing::error!(secret = %secret.name, error = %e, "cannot unseal a secret for a node");
                        None
                    }
                }
            })
            .collect()
    });
    pb::Assignments {
        tasks: a.tasks.iter().map(convert::task_to_pb).collect(),
        index,
        secrets,
        peers: a
            .peers
            .iter()
            .map(|(node_id, subnet, via)| pb::NodeRoute {
                node_id: node_id.clone(),
                subnet: subnet.clone(),
                via: via.clone(),
            })
            .collect(),
        volumes: a.volumes.clone(),
        services: a.services.iter().map(convert::endpoints_to_pb).collect(),
    }
}

pub struct DispatcherService {
    ctx: Arc<ManagerCtx>,
}

impl DispatcherService {
    pub fn new(ctx: Arc<ManagerCtx>) -> Self {
        DispatcherService { ctx }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::DispatcherMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream = SessionStream;

    async fn session(&self, req: Request<Streaming<pb::AgentMessage>>) -> Result<Response<SessionStream>, Status> {
        let peer = auth::node_of(&req)?;
        let (tx, rx) = mpsc::channel(16);
        if !self.ctx.raft.is_leader() {
            let leader_addr = self.ctx.raft.leader().map(|(_, a)| a).unwrap_or_default();
            let _ = tx
                .send(Ok(pb::DispatcherMessage {
                    msg: Some(DispatcherMsg::NotLeader(pb::NotLeader { leader_addr })),
                }))
                .await;
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let inbound = req.into_inner();
        let ctx = self.ctx.clone();
        let span = tracing::info_span!("session", node = %peer.node_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(status) = run_session(ctx, peer.node_id.clone(), inbound, tx.clone()).await {
                    tracing::info!(error = %status.message(), "session ended");
                    let _ = tx.send(Err(status)).await;
                }
            },
            span,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn run_session(
    ctx: Arc<ManagerCtx>,
    node_id: String,
    mut inbound: Streaming<pb::AgentMessage>,
    tx: mpsc::Sender<Result<pb::DispatcherMessage, Status>>,
) -> Result<(), Status> {
    let first = inbound
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("the session ended before the agent said hello"))??;
    let Some(AgentMsg::Hello(hello)) = first.msg else {
        return Err(Status::invalid_argument("the first message of a session must be hello"));
    };
    if hello.node_id != node_id {
        return Err(Status::permission_denied(format!(
            "the certificate belongs to node {node_id}, not {}",
            hello.node_id
        )));
    }
    if ctx.store.read(|s| !s.nodes.contains_key(&node_id)) {
        return Err(Status::permission_denied(format!(
            "node {node_id} was removed from the cluster: join it again with a token"
        )));
    }
    let write = |cmd: Command| {
        let ctx = ctx.clone();
        async move {
            ctx.raft
                .propose(cmd)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))
        }
    };
    write(Command::NodeHello {
        id: node_id.clone(),
        resources: convert::resources_from_pb(hello.resources),
        platform: convert::platform_from_pb(hello.platform),
        warren_version: hello.warren_version,
        at_ms: now_ms(),
    })
    .await?;
    let reports = reports_from_pb(hello.tasks);
    if !reports.is_empty() {
        write(Command::ReportTaskStatus {
            node_id: node_id.clone(),
            reports,
        })
        .await?;
    }
    ctx.sessions.seen(&node_id);
    tracing::info!("agent session established");
    let send = |msg: DispatcherMsg| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(pb::DispatcherMessage { msg: Some(msg) }))
                .await
                .map_err(|_| Status::cancelled("the agent went away"))
        }
    };
    let (node_subnet, cluster_cidr) = ctx.store.read(|s| {
        (
            s.nodes.get(&node_id).and_then(|n| n.subnet.clone()).unwrap_or_default(),
            s.meta.as_ref().map(|m| m.pod_cidr.clone()).unwrap_or_default(),
        )
    });
    send(DispatcherMsg::Accepted(pb::SessionAccepted {
        heartbeat_period_ms: ctx.settings.heartbeat_period.as_millis() as i64,
        managers: ctx.manager_addrs(),
        node_subnet,
        cluster_cidr,
    }))
    .await?;

    let mut events = ctx.store.subscribe();
    let mut leadership = ctx.raft.leadership();
    let mut sent: Option<Fingerprint> = None;
    loop {
        let (assignment, index) = ctx
            .store
            .read(|s| (assignments_for(s, &node_id), ctx.store.applied_index()));
        let fp = fingerprint(&assignment);
        if sent.as_ref() != Some(&fp) {
            send(DispatcherMsg::Assignments(assignments_pb(&ctx, &assignment, index))).await?;
            sent = Some(fp);
        }
        tokio::select! {
            msg = inbound.next() => {
                let msg = match msg {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(Status::cancelled(format!("agent stream: {e}"))),
                    Some(Ok(m)) => m,
                };
                ctx.sessions.seen(&node_id);
                match msg.msg {
                    Some(AgentMsg::Heartbeat(_)) => ensure_ready(&ctx, &node_id).await,
                    Some(AgentMsg::Status(batch)) => {
                        let reports = reports_from_pb(batch.reports);
                        if !reports.is_empty() {
                            write(Command::ReportTaskStatus { node_id: node_id.clone(), reports }).await?;
                        }
                    }
                    Some(AgentMsg::Hello(_)) | None => {}
                }
            }
            ev = events.recv() => {
                match ev {
                    Ok(a) if !a.reset
                        && !a
                            .changes
                            .iter()
                            .any(|c| c.kind != ObjectKind::Cluster) =>
                    {
                        continue
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                    _ => {}
                }
            }
            changed = leadership.changed() => {
                if changed.is_err() || !ctx.raft.is_leader() {
                    let leader_addr = ctx.raft.leader().map(|(_, a)| a).unwrap_or_default();
                    send(DispatcherMsg::NotLeader(pb::NotLeader { leader_addr })).await?;
                    return Ok(());
                }
            }
        }
    }
}

fn reports_from_pb(reports: Vec<pb::TaskStatusReport>) -> Vec<(String, crate::model::TaskStatus)> {
    reports
        .into_iter()
        .filter_map(|r| Some((r.task_id, convert::task_status_from_pb(r.status?))))
        .collect()
}

/// Leader duty: nodes silent for longer than the grace period are marked down (the
/// orchestrator then moves their tasks). A new leader gives every node a full grace
/// period to reconnect before judging it.
pub async fn monitor_heartbeats(ctx: Arc<ManagerCtx>) {
    let started = Instant::now();
    let grace = ctx.settings.heartbeat_grace;
    let mut tick = tokio::time::interval(ctx.settings.heartbeat_period.min(Duration::from_millis(500)));
    loop {
        tick.tick().await;
        let silent: Vec<(String, Duration)> = ctx.store.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.state != NodeState::Down)
                .filter_map(|n| {
                    let since = ctx.sessions.last(&n.id).map_or(started, |l| l.max(started));
                    let quiet = since.elapsed();
                    (quiet > grace).then(|| (n.id.clone(), quiet))
                })
                .collect()
        });
        for (id, quiet) in silent {
            tracing::warn!(node = %id, silent_ms = quiet.as_millis() as u64, "node missed its heartbeats: marking it down");
            let cmd = Command::SetNodeState {
                id,
                state: NodeState::Down,
                message: format!("heartbeat failure: nothing heard for {}s", quiet.as_secs()),
                at_ms: now_ms(),
            };
            if let Err(e) = ctx.raft.propose(cmd).await {
                tracing::warn!(error = %e, "could not mark a node down");
            }
        }
    }
}

/// Marks a node ready if its heartbeats say so but the state does not.
async fn ensure_ready(ctx: &ManagerCtx, node_id: &str) {
    let needs = ctx
        .store
        .read(|s| s.nodes.get(node_id).is_some_and(|n| n.state != NodeState::Ready));
    if needs {
        let _ = ctx
            .raft
            .propose(Command::SetNodeState {
                id: node_id.to_string(),
                state: NodeState::Ready,
                message: String::new(),
                at_ms: now_ms(),
            })
            .await;
    }
}
