//! The dispatcher: the leader's end of each node agent's session stream. It checks
//! the agent's certificate against the node it claims to be, records heartbeats
//! (in memory: a heartbeat is not worth a Raft write), turns task status reports
//! into `ReportTaskStatus` writes, and pushes the node's complete assignment set
//! whenever it changes. Followers answer `NotLeader` so that agents follow the
//! leader. `monitor_heartbeats` (a leader duty) marks silent nodes down.

use super::ctx::ManagerCtx;
use crate::ingress::CertificatePem;
use crate::model::ingress::IngressAssignment;
use crate::model::{now_ms, NodeAssignment, NodePeer, NodeState, Overlay, Task};
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

/// What node `node_id` must know now; pushed again whenever it changes.
pub fn assignments_for(state: &State, node_id: &str) -> NodeAssignment {
    let tasks: Vec<Task> = state
        .tasks_on_node(node_id)
        .filter(|t| !t.status.state.is_terminal())
        .cloned()
        .collect();
    let mut secrets = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for t in &tasks {
        for r in &t.spec.configs {
            if let Some(c) = state.configs.values().find(|c| c.name == r.name) {
                configs.insert(c.name.clone(), c.data.clone());
            }
        }
        for r in &t.spec.secrets {
            if let Some(s) = state.secrets.values().find(|s| s.name == r.name) {
                secrets.insert(s.name.clone(), s.id.clone());
            }
        }
    }
    let overlay = state.meta.as_ref().map(|m| m.overlay).unwrap_or_default();
    let peers = state
        .nodes
        .values()
        .filter(|n| n.id != node_id)
        .filter_map(|n| match overlay {
            // A native route through a node that is down would only blackhole.
            Overlay::Native if n.state == NodeState::Down => None,
            Overlay::Native => {
                let ip = n.addr.parse::<std::net::SocketAddr>().ok()?.ip().to_string();
                Some(NodePeer {
                    node_id: n.id.clone(),
                    subnet: n.subnet.clone()?,
                    via: Some(ip),
                    mesh: None,
                })
            }
            // A mesh peer stays while the node is a member, down or not: WireGuard
            // resumes by itself when it comes back. No key yet: no peer (the
            // cluster range's prohibit route refuses its subnet meanwhile).
            Overlay::Wireguard => Some(NodePeer {
                node_id: n.id.clone(),
                subnet: n.subnet.clone()?,
                via: None,
                mesh: Some(n.mesh.clone()?),
            }),
        })
        .collect();
    let own_mesh = state.nodes.get(node_id).and_then(|n| n.mesh.clone());
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
        configs,
        mesh_rotation: own_mesh.as_ref().map_or(0, |m| m.rotation),
        own_mesh,
        ingress: ingress_for(state, node_id),
    }
}

/// For a node whose ingress is on: every route, the certificates routes may use
/// (all of them: SNI picks one by host, not by route) and the open ACME answers.
fn ingress_for(state: &State, node_id: &str) -> Option<IngressAssignment> {
    let ports = state.nodes.get(node_id)?.ingress?;
    let mut routes: Vec<_> = state.ingresses.values().cloned().collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut certificates: Vec<_> = state
        .certificates
        .values()
        .map(|c| (c.name.clone(), c.id.clone(), c.version))
        .collect();
    certificates.sort();
    Some(IngressAssignment {
        ports,
        routes,
        certificates,
        challenges: state.acme.challenges.clone(),
    })
}

type Fingerprint = (
    Vec<(String, u64)>,
    BTreeMap<String, String>,
    Vec<NodePeer>,
    Vec<String>,
    Vec<crate::model::ServiceEndpoints>,
    BTreeMap<String, Vec<u8>>,
    Option<crate::model::NodeMesh>,
    Option<IngressAssignment>,
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
        a.configs.clone(),
        a.own_mesh.clone(),
        a.ingress.clone(),
    )
}

/// The certificates (with their keys) of a node's ingress. One that cannot be
/// unsealed is left out (and logged): its hosts then fail their handshakes.
fn unseal_certificates(ctx: &ManagerCtx, a: &NodeAssignment) -> Vec<CertificatePem> {
    let Some(ingress) = &a.ingress else {
        return vec![];
    };
    ctx.store.read(|s| {
        ingress
            .certificates
            .iter()
            .filter_map(|(_, id, _)| {
                let c = s.certificates.get(id)?;
                match ctx.secrets_key.open(&c.key_sealed).map(String::from_utf8) {
                    Ok(Ok(key_pem)) => Some(CertificatePem {
                        name: c.name.clone(),
                        cert_pem: c.cert_pem.clone(),
                        key_pem,
                    }),
                    Ok(Err(_)) | Err(_) => {
                        tracing::error!(certificate = %c.name, "cannot unseal a certificate's key for a node");
                        None
                    }
                }
            })
            .collect()
    })
}

/// The plaintext of the secrets a node's tasks use, by name. A secret that cannot
/// be unsealed is left out (and logged): its tasks fail on the node, visibly.
fn unseal(ctx: &ManagerCtx, a: &NodeAssignment) -> Vec<(String, Vec<u8>)> {
    ctx.store.read(|s| {
        a.secrets
            .values()
            .filter_map(|id| {
                let secret = s.secrets.get(id)?;
                match ctx.secrets_key.open(&secret.sealed) {
                    Ok(data) => Some((secret.name.clone(), data)),
                    Err(e) => {
                        tracing::error!(secret = %secret.name, error = %e, "cannot unseal a secret for a node");
                        None
                    }
                }
            })
            .collect()
    })
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
        let out = open(self.ctx.clone(), peer.node_id, req.into_inner());
        Ok(Response::new(Box::pin(out)))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let peer = auth::node_of(&req)?;
        renew_certificate(&self.ctx, &peer.node_id, &req.into_inner().csr_der)
            .await
            .map(Response::new)
    }
}

/// Signs a new certificate for node `node_id` (as its current certificate says),
/// with the cluster's current lifetime and the role the state gives it, and records
/// its expiry. Any manager can: each holds the CA key. A removed node has no record
/// and gets nothing (the call layer refuses it before this, too).
async fn renew_certificate(
    ctx: &ManagerCtx,
    node_id: &str,
    csr_der: &[u8],
) -> Result<pb::RenewCertificateResponse, Status> {
    let (meta, role) = ctx
        .store
        .read(|s| (s.meta.clone(), s.nodes.get(node_id).map(|n| n.role)));
    let meta = meta.ok_or_else(|| Status::unavailable("this manager has not loaded the cluster state yet; retry"))?;
    let Some(role) = role else {
        return Err(Status::permission_denied(format!(
            "node {node_id} was removed from the cluster: join it again with a token"
        )));
    };
    let ca_key = ctx
        .secrets_key
        .open(&meta.ca_key_sealed)
        .map_err(|e| Status::internal(format!("cannot unseal the CA key: {e}")))?;
    let ca = crate::pki::CertificateAuthority::from_parts(&meta.ca_cert_pem, &ca_key)
        .map_err(|e| Status::internal(e.to_string()))?;
    let cert_pem = ca
        .sign_node(csr_der, &meta.cluster_id, node_id, role, meta.cert_expiry())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let v = crate::pki::Validity::of_pem(&cert_pem).map_err(|e| Status::internal(e.to_string()))?;
    ctx.raft
        .propose(Command::SetNodeCertificate {
            id: node_id.to_string(),
            expires_ms: v.not_after_ms,
        })
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    tracing::info!(node = %node_id, serial = %v.serial, expires_ms = v.not_after_ms, "node certificate issued");
    Ok(pb::RenewCertificateResponse {
        cert_pem,
        ca_pem: meta.ca_cert_pem,
    })
}

type Outbound = mpsc::Sender<Result<pb::DispatcherMessage, Status>>;

/// The dispatcher's end of one session of node `node_id` (as its certificate says):
/// a follower answers `NotLeader` at once; the leader runs the session in a task of
/// its own and streams what it sends.
fn open<S>(ctx: Arc<ManagerCtx>, node_id: String, inbound: S) -> ReceiverStream<Result<pb::DispatcherMessage, Status>>
where
    S: Stream<Item = Result<pb::AgentMessage, Status>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    if !ctx.raft.is_leader() {
        let leader_addr = ctx.raft.leader().map(|(_, a)| a).unwrap_or_default();
        // The channel is new and empty: this cannot fail for want of room.
        let _ = tx.try_send(Ok(pb::DispatcherMessage {
            msg: Some(DispatcherMsg::NotLeader(pb::NotLeader { leader_addr })),
        }));
        return ReceiverStream::new(rx);
    }
    let span = tracing::info_span!("session", node = %node_id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if let Err(status) = run_session(ctx, node_id, inbound, tx.clone()).await {
                tracing::info!(error = %status.message(), "session ended");
                let _ = tx.send(Err(status)).await;
            }
        },
        span,
    ));
    ReceiverStream::new(rx)
}

async fn run_session<S>(ctx: Arc<ManagerCtx>, node_id: String, mut inbound: S, tx: Outbound) -> Result<(), Status>
where
    S: Stream<Item = Result<pb::AgentMessage, Status>> + Unpin,
{
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
        metrics_port: u16::try_from(hello.metrics_port).unwrap_or(0),
        autonomy: hello.autonomy.clone(),
    })
    .await?;
    // `warren daemon --ingress` seeds the record; a node that has one keeps it.
    if let Some(seed) = convert::node_ingress_from_pb(hello.ingress_seed) {
        write(Command::SeedNodeIngress {
            id: node_id.clone(),
            ingress: seed,
            at_ms: now_ms(),
        })
        .await?;
    }
    if let Some(m) = hello.mesh {
        write(Command::SetNodeMesh {
            id: node_id.clone(),
            mesh: convert::mesh_from_pb(m),
            at_ms: now_ms(),
        })
        .await?;
    }
    let reports = convert::reports_from_pb(hello.tasks);
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
        // `node rm` ends the session it finds open: the certificate is refused on
        // new calls by the call layer, and this stream is one already admitted.
        if ctx.store.read(|s| !s.nodes.contains_key(&node_id)) {
            return Err(Status::permission_denied(format!(
                "node {node_id} was removed from the cluster: join it again with a token"
            )));
        }
        let (assignment, index) = ctx
            .store
            .read(|s| (assignments_for(s, &node_id), ctx.store.applied_index()));
        let fp = fingerprint(&assignment);
        if sent.as_ref() != Some(&fp) {
            let secrets = unseal(&ctx, &assignment);
            let certificates = unseal_certificates(&ctx, &assignment);
            send(DispatcherMsg::Assignments(convert::assignment_to_pb(
                &assignment,
                secrets,
                certificates,
                index,
            )))
            .await?;
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
                    Some(AgentMsg::Heartbeat(hb)) => {
                        let outcomes = hb
                            .outcomes
                            .into_iter()
                            .map(|o| {
                                let counts = crate::model::Outcomes {
                                    established: o.established,
                                    reset: o.reset,
                                    refused: o.refused,
                                    timed_out: o.timed_out,
                                };
                                (o.task_id, counts)
                            })
                            .collect();
                        ctx.sessions.report_outcomes(&node_id, outcomes);
                        ensure_ready(&ctx, &node_id).await
                    }
                    Some(AgentMsg::Status(batch)) => {
                        let reports = convert::reports_from_pb(batch.reports);
                        if !reports.is_empty() {
                            write(Command::ReportTaskStatus { node_id: node_id.clone(), reports }).await?;
                        }
                    }
                    Some(AgentMsg::Mesh(m)) => {
                        write(Command::SetNodeMesh { id: node_id.clone(), mesh: convert::mesh_from_pb(m), at_ms: now_ms() }).await?;
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
                .filter(|n| !n.state.is_away())
                .filter_map(|n| {
                    let since = ctx.sessions.last(&n.id).map_or(started, |l| l.max(started));
                    let quiet = since.elapsed();
                    (quiet > grace).then(|| (n.id.clone(), quiet))
                })
                .collect()
        });
        for (id, quiet) in silent {
            // Unreachable, not down: its agent runs on its own, and each service's
            // `reschedule_after_ms` decides when its tasks are placed elsewhere.
            tracing::warn!(node = %id, silent_ms = quiet.as_millis() as u64, "node missed its heartbeats: marking it unreachable");
            let cmd = Command::SetNodeState {
                id,
                state: NodeState::Unreachable,
                message: format!("heartbeat failure: nothing heard for {}s", quiet.as_secs()),
                at_ms: now_ms() - quiet.as_millis() as i64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;
    use crate::model::{NodeRole, TaskState, TaskStatus};
    use crate::store::{Proposer, State};

    /// Node `id` at `10.0.0.N:2377` with subnet `10.88.N.0/24`.
    fn node(id: &str, n: u8) -> crate::model::Node {
        let mut node = fixtures::node(id, id);
        node.addr = format!("10.0.0.{n}:2377");
        node.subnet = Some(format!("10.88.{n}.0/24"));
        node
    }

    #[test]
    fn a_nodes_assignment_holds_its_live_tasks_their_secrets_its_volumes_and_its_peers() {
        let mut s = State::default();
        for n in [node("n1", 1), node("n2", 2)] {
            s.nodes.insert(n.id.clone(), n);
        }
        let mut down = node("n3", 3);
        down.state = NodeState::Down;
        let mut unplaced = node("n4", 4);
        unplaced.subnet = None;
        s.nodes.insert(down.id.clone(), down);
        s.nodes.insert(unplaced.id.clone(), unplaced);
        let mut svc = fixtures::service("s1", "web");
        svc.spec.secrets = vec![crate::model::SecretRef {
            name: "db".into(),
            ..Default::default()
        }];
        for secret in [fixtures::secret("x1", "db"), fixtures::secret("x2", "unused")] {
            s.secrets.insert(secret.id.clone(), secret);
        }
        for v in [
            fixtures::volume("v1", "data", Some("n1")),
            fixtures::volume("v2", "logs", Some("n2")),
            fixtures::volume("v3", "new", None),
        ] {
            s.volumes.insert(v.id.clone(), v);
        }
        let live = fixtures::task("t1", &svc, Some("n1"), TaskState::Running);
        let done = fixtures::task("t2", &svc, Some("n1"), TaskState::Complete);
        let elsewhere = fixtures::task("t3", &svc, Some("n2"), TaskState::Running);
        for t in [live.clone(), done, elsewhere] {
            s.tasks.insert(t.id.clone(), t);
        }
        s.services.insert(svc.id.clone(), svc);

        let a = assignments_for(&s, "n1");
        assert_eq!(
            a.tasks,
            vec![live],
            "finished tasks and other nodes' tasks are not sent"
        );
        assert_eq!(a.secrets, BTreeMap::from([("db".to_string(), "x1".to_string())]));
        assert_eq!(
            a.peers,
            vec![NodePeer {
                node_id: "n2".to_string(),
                subnet: "10.88.2.0/24".to_string(),
                via: Some("10.0.0.2".to_string()),
                mesh: None,
            }],
            "no route to itself, to a down node, or to a node without a subnet"
        );
        assert_eq!(a.volumes, vec!["data".to_string()]);
        assert_eq!(a.services, s.service_endpoints());

        // What the session compares to decide whether to push again.
        let before = fingerprint(&a);
        s.tasks.get_mut("t1").unwrap().version += 1;
        assert_ne!(fingerprint(&assignments_for(&s, "n1")), before);
        let stranger = assignments_for(&s, "nobody");
        assert!(stranger.tasks.is_empty() && stranger.secrets.is_empty() && stranger.volumes.is_empty());
        assert_eq!(stranger.peers.len(), 2, "every reachable node with a subnet is a peer");
    }

    #[test]
    fn in_a_wireguard_cluster_peers_are_mesh_ends_without_native_routes() {
        let mut s = State::default();
        let mut meta = fixtures::meta();
        meta.overlay = Overlay::Wireguard;
        s.meta = Some(meta);
        let end = |n: u8| crate::model::NodeMesh {
            public_key: format!("key{n}"),
            next_public_key: None,
            endpoint: format!("10.0.0.{n}:51820"),
            rotation: 0,
        };
        let mut n1 = node("n1", 1);
        n1.mesh = Some(crate::model::NodeMesh { rotation: 2, ..end(1) });
        let mut down = node("n3", 3);
        down.state = NodeState::Down;
        down.mesh = Some(end(3));
        let mut n2 = node("n2", 2);
        n2.mesh = Some(end(2));
        let keyless = node("n4", 4);
        for n in [n1, n2, down, keyless] {
            s.nodes.insert(n.id.clone(), n);
        }
        let a = assignments_for(&s, "n1");
        let got: Vec<(&str, Option<&str>, Option<&str>)> = a
            .peers
            .iter()
            .map(|p| {
                (
                    p.node_id.as_str(),
                    p.via.as_deref(),
                    p.mesh.as_ref().map(|m| m.public_key.as_str()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [("n2", None, Some("key2")), ("n3", None, Some("key3"))],
            "a down node stays a peer; a node without a key is none; no native route"
        );
        assert_eq!(a.mesh_rotation, 2);
        assert_eq!(a.own_mesh.as_ref().map(|m| m.public_key.as_str()), Some("key1"));
    }

    /// A cluster whose manager `m1` leads, with worker `n1` joined.
    async fn cluster() -> (Arc<ManagerCtx>, Arc<crate::store::FakeProposer>) {
        let (ctx, raft) = ManagerCtx::fake();
        let mut m1 = fixtures::manager("m1", "m1", 1);
        m1.addr = "127.0.0.1:2377".into();
        raft.propose(Command::Bootstrap {
            meta: fixtures::meta(),
            node: m1,
        })
        .await
        .unwrap();
        let mut n1 = fixtures::node("n1", "n1");
        n1.state = NodeState::Unknown;
        raft.propose(Command::AddNode { node: n1 }).await.unwrap();
        (ctx, raft)
    }

    fn hello(node_id: &str, tasks: Vec<pb::TaskStatusReport>) -> pb::AgentMessage {
        pb::AgentMessage {
            msg: Some(AgentMsg::Hello(pb::AgentHello {
                node_id: node_id.into(),
                hostname: node_id.into(),
                resources: Some(convert::resources_to_pb(crate::model::Resources {
                    nano_cpus: 4_000_000_000,
                    memory_bytes: 1 << 31,
                })),
                platform: None,
                warren_version: "9.9.9".into(),
                tasks,
                mesh: None,
                metrics_port: 0,
                ingress_seed: None,
                autonomy: String::new(),
            })),
        }
    }

    type Agent = mpsc::UnboundedSender<Result<pb::AgentMessage, Status>>;
    type Out = ReceiverStream<Result<pb::DispatcherMessage, Status>>;

    fn session(ctx: &Arc<ManagerCtx>, node_id: &str) -> (Agent, Out) {
        let (agent, inbound) = mpsc::unbounded_channel();
        let out = open(
            ctx.clone(),
            node_id.into(),
            tokio_stream::wrappers::UnboundedReceiverStream::new(inbound),
        );
        (agent, out)
    }

    async fn next(out: &mut Out) -> Result<DispatcherMsg, Status> {
        let m = tokio::time::timeout(Duration::from_secs(5), out.next())
            .await
            .expect("the dispatcher sent nothing within 5s")
            .expect("the dispatcher closed the session");
        m.map(|m| m.msg.expect("a message with a body"))
    }

    #[tokio::test]
    async fn a_session_records_the_hello_accepts_and_pushes_every_new_assignment_set() {
        let (ctx, raft) = cluster().await;
        let (agent, mut out) = session(&ctx, "n1");
        let report = pb::TaskStatusReport {
            task_id: "t-old".into(),
            status: Some(convert::task_status_to_pb(&TaskStatus {
                state: TaskState::Running,
                ..Default::default()
            })),
        };
        agent.send(Ok(hello("n1", vec![report]))).unwrap();

        // 1. The hello refreshes the node (ready, with what it reports).
        let Ok(DispatcherMsg::Accepted(a)) = next(&mut out).await else {
            panic!("the first answer is not an acceptance");
        };
        assert_eq!(a.heartbeat_period_ms, 100);
        assert_eq!(a.managers, vec!["127.0.0.1:2377".to_string()]);
        assert_eq!(a.cluster_cidr, "10.88.0.0/16");
        let n1 = ctx.store.read(|s| s.nodes["n1"].clone());
        assert_eq!(Some(a.node_subnet), n1.subnet);
        assert_eq!((n1.state, n1.warren_version.as_str()), (NodeState::Ready, "9.9.9"));
        assert_eq!(n1.resources.memory_bytes, 1 << 31);
        assert!(raft
            .proposed()
            .iter()
            .any(|c| matches!(c, Command::ReportTaskStatus { node_id, reports } if node_id == "n1" && reports[0].0 == "t-old")));

        // 2. Then the node's assignment set, and again whenever it changes.
        let Ok(DispatcherMsg::Assignments(first)) = next(&mut out).await else {
            panic!("no assignment set after the acceptance");
        };
        assert!(first.tasks.is_empty());
        let svc = fixtures::service("s1", "web");
        raft.propose(Command::CreateService {
            service: svc.clone(),
            rules: crate::store::Rules::CURRENT,
        })
        .await
        .unwrap();
        let task = fixtures::task("t1", &svc, Some("n1"), TaskState::Assigned);
        raft.propose(Command::CreateTasks { tasks: vec![task] }).await.unwrap();
        let pushed = loop {
            let Ok(DispatcherMsg::Assignments(a)) = next(&mut out).await else {
                panic!("expected assignment sets only");
            };
            if !a.tasks.is_empty() {
                break a;
            }
        };
        assert_eq!(pushed.tasks[0].id, "t1");
        assert!(pushed.index > first.index);

        // 3. A status batch becomes one write for this node.
        let report = pb::TaskStatusReport {
            task_id: "t1".into(),
            status: Some(convert::task_status_to_pb(&TaskStatus {
                state: TaskState::Running,
                ..Default::default()
            })),
        };
        agent
            .send(Ok(pb::AgentMessage {
                msg: Some(AgentMsg::Status(pb::TaskStatusBatch { reports: vec![report] })),
            }))
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ctx.store.read(|s| s.tasks["t1"].status.state) != TaskState::Running {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the report was not written within 5s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // 4. Losing the lead sends the agent to the new leader.
        raft.set_leader(Some((2, "10.0.0.2:2377")));
        loop {
            match next(&mut out).await {
                Ok(DispatcherMsg::NotLeader(n)) => {
                    assert_eq!(n.leader_addr, "10.0.0.2:2377");
                    break;
                }
                Ok(DispatcherMsg::Assignments(_)) => continue,
                other => panic!("expected NotLeader, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_hellos_metrics_port_is_recorded_and_its_ingress_flag_seeds_only_an_empty_record() {
        let (ctx, _raft) = cluster().await;
        let seeded = |http: u32| {
            let mut m = hello("n1", vec![]);
            if let Some(AgentMsg::Hello(h)) = m.msg.as_mut() {
                h.metrics_port = 9191;
                h.ingress_seed = Some(pb::IngressPorts {
                    http_port: http,
                    https_port: 8443,
                });
            }
            m
        };
        // 1. No ingress in the record: the flag's ports become the record.
        let (agent, mut out) = session(&ctx, "n1");
        agent.send(Ok(seeded(8080))).unwrap();
        let Ok(DispatcherMsg::Accepted(_)) = next(&mut out).await else {
            panic!("the first answer is not an acceptance");
        };
        let n1 = ctx.store.read(|s| s.nodes["n1"].clone());
        assert_eq!(n1.metrics_port, 9191);
        assert_eq!(n1.ingress.map(|i| (i.http_port, i.https_port)), Some((8080, 8443)));
        drop((agent, out));
        // 2. A record that has one keeps it: the flag only seeds.
        let (agent, mut out) = session(&ctx, "n1");
        agent.send(Ok(seeded(9000))).unwrap();
        let Ok(DispatcherMsg::Accepted(_)) = next(&mut out).await else {
            panic!("the first answer is not an acceptance");
        };
        let n1 = ctx.store.read(|s| s.nodes["n1"].clone());
        assert_eq!(n1.ingress.map(|i| i.http_port), Some(8080));
        drop((agent, out));
    }

    #[tokio::test]
    async fn a_follower_sends_the_agent_to_the_leader() {
        let (ctx, raft) = cluster().await;
        raft.set_leader(Some((2, "10.0.0.2:2377")));
        let (_agent, mut out) = session(&ctx, "n1");
        match next(&mut out).await {
            Ok(DispatcherMsg::NotLeader(n)) => assert_eq!(n.leader_addr, "10.0.0.2:2377"),
            other => panic!("expected NotLeader, got {other:?}"),
        }
        assert!(out.next().await.is_none(), "a follower ends the session");
    }

    #[tokio::test]
    async fn sessions_that_are_not_a_known_nodes_hello_are_refused() {
        let (ctx, raft) = cluster().await;
        let before = raft.proposed().len();

        let (agent, mut out) = session(&ctx, "n1");
        agent.send(Ok(hello("m1", vec![]))).unwrap();
        let e = next(&mut out).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(e.message(), "the certificate belongs to node n1, not m1");

        let (agent, mut out) = session(&ctx, "gone");
        agent.send(Ok(hello("gone", vec![]))).unwrap();
        let e = next(&mut out).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("was removed from the cluster"), "{}", e.message());

        let (agent, mut out) = session(&ctx, "n1");
        let heartbeat = pb::AgentMessage {
            msg: Some(AgentMsg::Heartbeat(pb::Heartbeat::default())),
        };
        agent.send(Ok(heartbeat)).unwrap();
        let e = next(&mut out).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(raft.proposed().len(), before, "a refused session writes nothing");
        assert_eq!(ctx.store.read(|s| s.nodes["n1"].role), NodeRole::Worker);
    }
}
