//! build → spawn: starts a built node's tasks in order — metrics, the executor,
//! the cluster port (on managers the API, membership, dispatcher and Raft
//! services; on workers what managers ask of nodes), the rest of the bootstrap that
//! needs Raft running (the first entry of a new cluster, or entering the Raft
//! group), then the API on the local socket, the leader duties, the node's DNS and
//! data-plane followers and the agent. `Running` holds all of it and owns the
//! shutdown.

use super::bootstrap::Start;
use super::build::{App, Manager};
use super::error::{DaemonError, JoinError};
use super::options::Ready;
use super::serve::{self, Routes};
use super::session;
use crate::agent::node_mesh::NodeMesh;
use crate::agent::{self, executor, node_service, EndpointsListener};
use crate::api::MembershipService;
use crate::config::NodeConfig;
use crate::manager::{self, dispatcher::DispatcherService};
use crate::network::{NetlinkNetwork, NetworkManager};
use crate::pki::LiveIdentity;
use crate::raft::{service::RaftService, RaftNode};
use crate::runtime::Containerd;
use crate::store::Proposer;
use crate::wire::channel::{self, Dial};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use warren_proto::v1 as pb;

/// How long a new manager keeps asking to enter the Raft group.
const ENTER_RAFT_WITHIN: Duration = Duration::from_secs(60);
/// How long a new single-manager cluster may take to elect itself.
const FIRST_LEADER_WITHIN: Duration = Duration::from_secs(10);
/// How long each part gets to stop before the daemon moves on.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// A node whose tasks run; `shutdown` stops them.
pub(super) struct Running {
    pub ready: Ready,
    stop: watch::Sender<bool>,
    servers: JoinSet<()>,
    agent: Option<JoinHandle<()>>,
    metrics_server: JoinHandle<()>,
    raft: Option<Arc<RaftNode>>,
    mesh: Option<Arc<NodeMesh>>,
    containerd: Option<Arc<Containerd>>,
    socket: Option<PathBuf>,
    data_dir: PathBuf,
    ingress: Option<Arc<agent::node_ingress::NodeIngress>>,
}

impl App {
    pub(super) async fn spawn(self) -> Result<Running, DaemonError> {
        let App {
            mut cfg,
            data_dir,
            identity,
            start,
            tokens,
            metrics,
            metrics_port,
            containerd,
            dataplane,
            dns_metrics,
            manager,
            cluster_port,
            mut grpc,
            ingress_seed,
        } = self;
        let (stop, stopping) = watch::channel(false);
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        // The mesh first: its public key goes out with the agent's first hello, and
        // task interfaces wait for its MTU.
        let mesh = match cfg.overlay {
            crate::model::Overlay::Wireguard => Some(
                NodeMesh::start(
                    cfg.runtime.mesh.clone(),
                    data_dir.join("wireguard"),
                    cfg.advertise_addr.ip(),
                )
                .map_err(DaemonError::Mesh)?,
            ),
            crate::model::Overlay::Native => None,
        };
        if let (Some(m), Some(n)) = (&mesh, known_network(&cfg)) {
            m.configure(&n);
        }
        // Kept for running on its own while cut off; without it the node still runs,
        // but stops answering for its tasks when the managers are out of reach.
        let autonomy = match agent::autonomy::Autonomy::open(&data_dir, &cfg.node_id) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                tracing::error!(error = %e, "cannot open the agent store: no edge autonomy");
                None
            }
        };
        let (executor, node_ops) = executor(
            &cfg,
            &data_dir,
            containerd.clone(),
            report_tx,
            mesh.clone(),
            autonomy.clone(),
        );
        let mut node_service = node_service::NodeService::new(
            node_ops,
            data_dir.join("spool"),
            cfg.node_name.clone(),
            dataplane.clone(),
        );
        node_service.mesh = mesh.clone();
        let node_agent = pb::node_agent_server::NodeAgentServer::new(node_service).max_decoding_message_size(8 << 20);

        let mut running = Running {
            ready: ready(&cfg, tokens),
            stop,
            servers: JoinSet::new(),
            agent: None,
            metrics_server: crate::metrics::serve(metrics_port, metrics.clone()),
            raft: manager.as_ref().map(|m| m.raft.clone()),
            mesh: mesh.clone(),
            containerd,
            socket: manager.as_ref().map(|_| cfg.socket.clone()),
            data_dir: data_dir.clone(),
            ingress: None,
        };
        match manager {
            Some(Manager { raft, ctx, socket }) => {
                let routes = grpc
                    .add_service(crate::api::client_api(ctx.clone()))
                    .add_service(pb::membership_server::MembershipServer::new(MembershipService::new(
                        ctx.clone(),
                    )))
                    .add_service(node_agent)
                    .add_service(pb::dispatcher_server::DispatcherServer::new(DispatcherService::new(
                        ctx.clone(),
                    )))
                    .add_service(
                        pb::raft_server::RaftServer::new(RaftService::new(raft.clone()))
                            .max_decoding_message_size(256 << 20)
                            .max_encoding_message_size(256 << 20),
                    );
                serve_cluster_port(&mut running, "cluster port", routes, &identity, cluster_port, &stopping);
                if let Err(e) = finish_bootstrap(start, &raft, &mut cfg, &data_dir, &identity).await {
                    running.shutdown().await;
                    return Err(e);
                }
                // Served only now: a client of the local socket never sees a cluster
                // before its first entry (it waits in the socket's backlog meanwhile).
                let local = serve::grpc(&metrics, None).add_service(crate::api::client_api(ctx.clone()));
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(socket);
                serve::serve(&mut running.servers, "local socket", local, incoming, stopping.clone());
                tokio::spawn(manager::run_leader_duties(ctx.clone()));
                let stop = stopping.clone();
                tokio::spawn(async move {
                    if let Err(e) = manager::acme::run(ctx, stop).await {
                        tracing::error!(error = %e, "the acme manager cannot register its metrics; no certificates are ordered");
                    }
                });
            }
            // Workers serve only what managers ask of nodes: logs and image imports.
            None => {
                let routes = grpc.add_service(node_agent);
                serve_cluster_port(&mut running, "node port", routes, &identity, cluster_port, &stopping);
            }
        }

        // The data plane first: a stopping task leaves it before anything else reacts.
        let mut listeners: Vec<Arc<dyn EndpointsListener>> = Vec::new();
        if let Some(dp) = dataplane {
            listeners.push(Arc::new(agent::node_dataplane::NodeDataplane::new(
                dp,
                cfg.node_id.clone(),
            )));
        }
        // The node's service DNS, on its bridge address, for nodes that run tasks.
        if let Some(m) = dns_metrics {
            let dns = agent::node_dns::NodeDns::start(Some(m), vec![]);
            if let Some(n) = known_network(&cfg) {
                dns.configure(&n);
            }
            listeners.push(dns);
        }
        // The ingress last: it binds only once an assignment says this node runs one.
        let ingress =
            agent::node_ingress::NodeIngress::new(&metrics.registry, None).map_err(DaemonError::IngressMetrics);
        let ingress = match ingress {
            Ok(i) => i,
            Err(e) => {
                running.shutdown().await;
                return Err(e);
            }
        };
        listeners.push(ingress.clone());
        running.ingress = Some(ingress);
        let agent_cfg = agent::AgentConfig {
            node_id: cfg.node_id.clone(),
            hostname: cfg.node_name.clone(),
            managers: cfg.managers.clone(),
            link: Arc::new(agent::TlsLink::new(identity.clone())),
            resources: cfg.capacity.unwrap_or_else(agent::detect_resources),
            listeners,
            on_session: session::callback(data_dir.clone(), cfg.clone()),
            mesh,
            metrics_port: cfg.metrics_addr.port(),
            ingress_seed,
            autonomy,
            known_network: known_network(&cfg),
        };
        running.agent = Some(tokio::spawn(agent::run(
            agent_cfg,
            executor,
            report_rx,
            stopping.clone(),
        )));
        // The managers as node.json knows them at each renewal (sessions keep it
        // current); a manager asks itself first: it is up whenever this node is.
        let (dir, first) = (data_dir.clone(), cfg.clone());
        let managers = Arc::new(move || {
            let cfg = NodeConfig::load(&dir).unwrap_or_else(|_| first.clone());
            let mut from = vec![];
            if cfg.role == crate::model::NodeRole::Manager {
                from.push(cfg.advertise_addr.to_string());
            }
            for m in cfg.managers {
                if !from.contains(&m) {
                    from.push(m);
                }
            }
            from
        });
        tokio::spawn(crate::pki::renew::run(
            crate::pki::renew::Renewal {
                identity,
                certs_dir: data_dir.join("certs"),
                node_name: cfg.node_name.clone(),
                managers,
            },
            stopping,
        ));
        tracing::info!(
            node = %cfg.node_id,
            name = %cfg.node_name,
            role = cfg.role.as_str(),
            listen = %cfg.listen_addr,
            advertise = %cfg.advertise_addr,
            "warren node is up"
        );
        Ok(running)
    }
}

impl Running {
    /// Stops the agent, then the listeners (each waiting for its calls in flight),
    /// then Raft and Warren's own containerd, if it started one: the containers keep
    /// running under their shims and are adopted on the next start.
    pub(super) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(agent) = self.agent.take() {
            let _ = tokio::time::timeout(STOP_WITHIN, agent).await;
        }
        if let Some(i) = &self.ingress {
            i.shutdown().await;
        }
        let _ = tokio::time::timeout(STOP_WITHIN, async { while self.servers.join_next().await.is_some() {} }).await;
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
        if let Some(mesh) = &self.mesh {
            mesh.shutdown().await;
        }
        if let Some(raft) = &self.raft {
            raft.shutdown().await;
        }
        if let Some(rt) = &self.containerd {
            rt.shutdown().await;
        }
        self.metrics_server.abort();
        let _ = std::fs::remove_file(NodeConfig::pid_file(&self.data_dir));
    }
}

fn ready(cfg: &NodeConfig, tokens: Option<(String, String)>) -> Ready {
    Ready {
        node_id: cfg.node_id.clone(),
        node_name: cfg.node_name.clone(),
        cluster_id: cfg.cluster_id.clone(),
        role: cfg.role,
        advertise_addr: cfg.advertise_addr,
        socket: cfg.socket.clone(),
        tokens,
    }
}

fn serve_cluster_port(
    running: &mut Running,
    name: &'static str,
    routes: Routes,
    identity: &Arc<LiveIdentity>,
    listener: TcpListener,
    stopping: &watch::Receiver<bool>,
) {
    let incoming = identity.incoming(listener);
    serve::serve(&mut running.servers, name, routes, incoming, stopping.clone());
}

/// The subnet the leader last announced, kept in node.json.
fn known_network(cfg: &NodeConfig) -> Option<executor::NodeNetwork> {
    match (&cfg.subnet, &cfg.cluster_cidr) {
        (Some(s), Some(c)) => Some(executor::NodeNetwork {
            subnet: s.clone(),
            cluster_cidr: c.clone(),
        }),
        _ => None,
    }
}

/// The node's executor: containers through containerd, or none at all with
/// `--runtime none`.
fn executor(
    cfg: &NodeConfig,
    data_dir: &Path,
    containerd: Option<Arc<Containerd>>,
    reports: mpsc::UnboundedSender<executor::Report>,
    mesh: Option<Arc<NodeMesh>>,
    autonomy: Option<Arc<agent::autonomy::Autonomy>>,
) -> (Arc<dyn executor::Executor>, Arc<dyn node_service::NodeOps>) {
    let Some(containerd) = containerd else {
        tracing::warn!("--runtime none: this node runs no tasks; tasks placed here stay assigned");
        return (
            Arc::new(executor::Unavailable::new(reports)),
            Arc::new(node_service::NoRuntime),
        );
    };
    let (node, dir) = (cfg.clone(), data_dir.to_path_buf());
    let factory: crate::worker::NetworkFactory = Arc::new(move |n: executor::NodeNetwork| {
        let (node, dir, mesh) = (node.clone(), dir.clone(), mesh.clone());
        Box::pin(async move {
            let mut nc = node.network_config(&dir, &n.subnet, &n.cluster_cidr)?;
            if let Some(m) = &mesh {
                nc.mtu = Some(m.mtu().await);
            }
            let net = NetlinkNetwork::new(nc).await?;
            Ok(Arc::new(net) as Arc<dyn NetworkManager>)
        })
    });
    let worker = Arc::new(crate::worker::Worker::start(
        crate::worker::WorkerConfig {
            node_id: cfg.node_id.clone(),
            data_dir: data_dir.to_path_buf(),
            search_domains: vec!["warren".to_string()],
            upstream_dns: vec![],
            autonomy,
        },
        containerd,
        factory,
        reports,
        known_network(cfg),
    ));
    (worker.clone(), worker)
}

/// What bootstrap left for when Raft runs: a new cluster's first entry, or a new
/// manager's entry into the Raft group (which needs its own Raft server up, so that
/// the leader can replicate to it).
async fn finish_bootstrap(
    start: Start,
    raft: &RaftNode,
    cfg: &mut NodeConfig,
    data_dir: &Path,
    identity: &Arc<LiveIdentity>,
) -> Result<(), DaemonError> {
    match start {
        Start::Init(bootstrap) => {
            raft.initialize(&cfg.advertise_addr.to_string()).await?;
            if !raft.wait_for_leader(FIRST_LEADER_WITHIN).await {
                return Err(DaemonError::NoLeader(FIRST_LEADER_WITHIN));
            }
            raft.propose(*bootstrap).await?;
            cfg.save(data_dir)?;
        }
        Start::Resume if !cfg.raft_member => {
            enter_raft(cfg, identity).await?;
            cfg.raft_member = true;
            cfg.save(data_dir)?;
        }
        Start::Resume => {}
    }
    Ok(())
}

/// Asks the managers to add this new manager to the Raft group, retrying until one
/// leader accepts (the cluster may be electing).
async fn enter_raft(cfg: &NodeConfig, identity: &Arc<LiveIdentity>) -> Result<(), DaemonError> {
    let deadline = tokio::time::Instant::now() + ENTER_RAFT_WITHIN;
    let mut last = None;
    let me = cfg.advertise_addr.to_string();
    while tokio::time::Instant::now() < deadline {
        for m in cfg.managers.iter().filter(|m| **m != me) {
            let channel = match channel::connect(m, identity.to_managers(), Dial::new(Duration::from_secs(2))).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some((m.clone(), Box::new(JoinError::from(e))));
                    continue;
                }
            };
            let req = pb::JoinRaftRequest {
                node_id: cfg.node_id.clone(),
            };
            match pb::membership_client::MembershipClient::new(channel)
                .join_raft(req)
                .await
            {
                Ok(_) => {
                    tracing::info!(via = %m, "entered the Raft group");
                    return Ok(());
                }
                Err(s) => last = Some((m.clone(), Box::new(JoinError::from(s)))),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(DaemonError::Join {
        manager: cfg.managers.join(", "),
        source: JoinError::NotEntered {
            within: ENTER_RAFT_WITHIN,
            last,
        },
    })
}
