//! The long-running node process behind `cluster init`, `cluster join` and
//! `daemon`: creates or joins a cluster (CA, keys, tokens, the first Raft entry),
//! then wires the pieces — Raft, the API on the cluster port (mutual TLS) and on
//! the root-only unix socket, leader duties, the agent, metrics — and runs them
//! until SIGTERM or SIGINT.

use crate::agent::{self, executor, node_service};
use crate::api::{membership::MembershipService, server::ApiService};
use crate::config::{ConfigError, NodeConfig, RuntimeSettings};
use crate::manager::{self, ManagerCtx, ManagerSettings};
use crate::metrics::{self, Metrics};
use crate::model::{self, new_id, now_ms, Availability, ClusterMeta, Node, NodeRole, NodeState, Platform, Resources};
use crate::pki::{self, CertificateAuthority, JoinToken, NodeCredentials, PkiError};
use crate::raft::node::{RaftTuning, StartError};
use crate::raft::{network::Peers, RaftNode};
use crate::secrets::{SealError, SecretsKey};
use crate::store::WriteError;
use crate::store::{Command, Store};
use crate::wire::channel::{self, Dial};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use warren_proto::v1 as pb;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/warren";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:2377";
pub const DEFAULT_SOCKET: &str = "/run/warren/warren.sock";
pub const DEFAULT_METRICS: &str = "0.0.0.0:9090";
pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";

/// Settings common to init, join and daemon; `None` means "the default" for init
/// and join, and "as persisted" for daemon.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    pub listen_addr: Option<SocketAddr>,
    pub advertise_addr: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub node_name: Option<String>,
    pub capacity: Option<Resources>,
    pub raft: RaftTuning,
    pub manager: ManagerSettings,
    /// Changes to the runtime settings (persisted ones, or the defaults, otherwise).
    pub runtime: RuntimeOverrides,
}

#[derive(Clone, Debug, Default)]
pub struct RuntimeOverrides {
    pub containerd: Option<bool>,
    pub containerd_socket: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub cgroup_parent: Option<String>,
    pub bridge: Option<String>,
    pub insecure_registries: Vec<String>,
    pub dataplane: Option<bool>,
    pub bpffs: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub dataplane_ifaces: Vec<String>,
}

impl RuntimeOverrides {
    pub fn apply(&self, base: &RuntimeSettings) -> RuntimeSettings {
        let mut r = base.clone();
        if let Some(v) = self.containerd {
            r.containerd = v;
        }
        if let Some(v) = &self.containerd_socket {
            r.containerd_socket = v.clone();
        }
        if let Some(v) = &self.containerd_namespace {
            r.containerd_namespace = v.clone();
        }
        if let Some(v) = &self.cgroup_parent {
            r.cgroup_parent = v.clone();
        }
        if let Some(v) = &self.bridge {
            r.bridge = v.clone();
        }
        if !self.insecure_registries.is_empty() {
            r.insecure_registries = self.insecure_registries.clone();
        }
        if let Some(v) = self.dataplane {
            r.dataplane = v;
        }
        if self.bpffs.is_some() {
            r.bpffs = self.bpffs.clone();
        }
        if self.cgroup_root.is_some() {
            r.cgroup_root = self.cgroup_root.clone();
        }
        if !self.dataplane_ifaces.is_empty() {
            r.dataplane_ifaces = self.dataplane_ifaces.clone();
        }
        r
    }
}

/// What `init` and `join` report once the node is up, for the CLI to print.
#[derive(Clone, Debug)]
pub struct Ready {
    pub node_id: String,
    pub node_name: String,
    pub cluster_id: String,
    pub role: NodeRole,
    pub advertise_addr: SocketAddr,
    pub socket: PathBuf,
    /// Set on `init` only.
    pub tokens: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Raft(#[from] StartError),
    #[error("writing the cluster state: {0}")]
    Write(#[from] WriteError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsListenError),
    #[error("{0}")]
    Invalid(String),
    #[error("joining through {manager} failed: {reason}")]
    Join { manager: String, reason: String },
    #[error("{0}")]
    Io(String),
    #[error("container runtime: {0}")]
    Runtime(String),
    #[error("data plane: {0}")]
    Dataplane(String),
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "warren".to_string())
}

/// The address other nodes should use when we listen on a wildcard: the source
/// address of the default route.
fn default_advertise(listen: SocketAddr) -> Result<SocketAddr, DaemonError> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => Ok(SocketAddr::new(a.ip(), listen.port())),
        _ => Err(DaemonError::Invalid(format!(
            "advertise-addr: cannot choose an address to advertise for listen address {listen} (no default route): pass --advertise-addr IP:PORT"
        ))),
    }
}

fn parse_cidr(field: &str, s: &str) -> Result<(), DaemonError> {
    let bad = || DaemonError::Invalid(format!("{field}: invalid CIDR {s:?}: expected e.g. 10.88.0.0/16"));
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if len > 24 {
        return Err(DaemonError::Invalid(format!(
            "{field}: {s} is too small: every node gets a /24 from it, so use /24 or larger (e.g. /16)"
        )));
    }
    if u32::from(ip) & !(u32::MAX.checked_shl(32 - len).unwrap_or(0)) != 0 {
        return Err(DaemonError::Invalid(format!("{field}: {s} has host bits set")));
    }
    Ok(())
}

fn parse_net(s: &str) -> Option<(u32, u32)> {
    let (ip, len) = s.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((u32::from(ip), len))
}

fn parse_service_cidr(s: &str) -> Result<(), DaemonError> {
    match parse_net(s) {
        Some((ip, len)) if (8..=28).contains(&len) && ip & !(u32::MAX.checked_shl(32 - len).unwrap_or(0)) == 0 => {
            Ok(())
        }
        Some((_, len)) if !(8..=28).contains(&len) => Err(DaemonError::Invalid(format!(
            "service-cidr: {s} must be between /8 and /28"
        ))),
        Some(_) => Err(DaemonError::Invalid(format!("service-cidr: {s} has host bits set"))),
        None => Err(DaemonError::Invalid(format!(
            "service-cidr: invalid CIDR {s:?}: expected e.g. 10.96.0.0/16"
        ))),
    }
}

fn cidrs_overlap(a: &str, b: &str) -> bool {
    match (parse_net(a), parse_net(b)) {
        (Some((ia, la)), Some((ib, lb))) => {
            let l = la.min(lb);
            let mask = u32::MAX.checked_shl(32 - l).unwrap_or(0);
            ia & mask == ib & mask
        }
        _ => false,
    }
}

fn addr_or(v: Option<SocketAddr>, default: &str) -> SocketAddr {
    v.unwrap_or_else(|| default.parse().expect("default address parses"))
}

fn secrets_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("secrets.key")
}

/// `warren cluster init`: a new cluster with this node as its first manager.
pub async fn init(
    opts: DaemonOptions,
    pod_cidr: &str,
    service_cidr: &str,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), DaemonError> {
    NodeConfig::ensure_fresh(&opts.data_dir)?;
    parse_cidr("pod-cidr", pod_cidr)?;
    parse_service_cidr(service_cidr)?;
    if cidrs_overlap(pod_cidr, service_cidr) {
        return Err(DaemonError::Invalid(format!(
            "service-cidr: {service_cidr} overlaps the pod CIDR {pod_cidr}"
        )));
    }
    let listen = addr_or(opts.listen_addr, DEFAULT_LISTEN);
    let advertise = match opts.advertise_addr {
        Some(a) => a,
        None => default_advertise(listen)?,
    };
    let node_name = opts.node_name.clone().unwrap_or_else(hostname);
    model::validate_name("node-name", &node_name).map_err(|e| DaemonError::Invalid(e.to_string()))?;

    let cluster_id = new_id();
    let node_id = new_id();
    let raft_id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let key = SecretsKey::generate();
    key.save(&secrets_key_path(&opts.data_dir))?;
    let ca = CertificateAuthority::generate(&cluster_id)?;
    let (node_key, csr) = pki::new_node_key(&node_name)?;
    let creds = NodeCredentials {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: ca.sign_node(&csr, &cluster_id, &node_id, NodeRole::Manager)?,
        key_pem: node_key.serialize_pem(),
    };
    creds.save(&opts.data_dir.join("certs"))?;
    let meta = ClusterMeta {
        cluster_id: cluster_id.clone(),
        created_ms: now_ms(),
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key_sealed: key.seal(&ca.key_pkcs8_der()),
        worker_token_secret: pki::new_token_secret(),
        manager_token_secret: pki::new_token_secret(),
        pod_cidr: pod_cidr.to_string(),
        service_cidr: service_cidr.to_string(),
    };
    let capacity = opts.capacity.unwrap_or_else(agent::detect_resources);
    let node = Node {
        id: node_id.clone(),
        name: node_name.clone(),
        role: NodeRole::Manager,
        availability: Availability::Active,
        labels: Default::default(),
        addr: advertise.to_string(),
        resources: capacity,
        platform: Platform::current(),
        state: NodeState::Unknown,
        message: String::new(),
        raft_id,
        subnet: None,
        warren_version: crate::VERSION.to_string(),
        created_ms: now_ms(),
        updated_ms: now_ms(),
        version: 1,
    };
    let cfg = NodeConfig {
        cluster_id: cluster_id.clone(),
        node_id: node_id.clone(),
        node_name,
        role: NodeRole::Manager,
        raft_id,
        listen_addr: listen,
        advertise_addr: advertise,
        socket: opts.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into()),
        metrics_addr: addr_or(opts.metrics_addr, DEFAULT_METRICS),
        managers: vec![advertise.to_string()],
        capacity: opts.capacity,
        raft_member: true,
        subnet: None,
        cluster_cidr: None,
        runtime: opts.runtime.apply(&RuntimeSettings::default()),
    };
    let ca_digest = ca.digest();
    let tokens = (
        JoinToken {
            ca_digest: ca_digest.clone(),
            secret: meta.worker_token_secret.clone(),
        }
        .to_string(),
        JoinToken {
            ca_digest,
            secret: meta.manager_token_secret.clone(),
        }
        .to_string(),
    );
    run(
        opts,
        cfg,
        creds,
        Some(key),
        Start::Init(Box::new(Command::Bootstrap { meta, node })),
        on_ready,
        Some(tokens),
    )
    .await
}

/// `warren cluster join`: join through `manager` with a token.
pub async fn join(
    opts: DaemonOptions,
    token: &str,
    manager: &str,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), DaemonError> {
    NodeConfig::ensure_fresh(&opts.data_dir)?;
    let join_err = |reason: String| DaemonError::Join {
        manager: manager.to_string(),
        reason,
    };
    let token = JoinToken::parse(token).map_err(|e| DaemonError::Invalid(format!("token: {e}")))?;
    manager
        .parse::<SocketAddr>()
        .map_err(|_| DaemonError::Invalid(format!("manager address {manager:?} is not IP:PORT")))?;
    let listen = addr_or(opts.listen_addr, DEFAULT_LISTEN);
    let advertise = match opts.advertise_addr {
        Some(a) => a,
        None => default_advertise(listen)?,
    };
    let node_name = opts.node_name.clone().unwrap_or_else(hostname);
    model::validate_name("node-name", &node_name).map_err(|e| DaemonError::Invalid(e.to_string()))?;

    // Trust the manager only once its CA matches the token.
    let ca_pem = pki::fetch_ca(manager, &token.ca_digest, Duration::from_secs(10)).await?;
    let (node_key, csr) = pki::new_node_key(&node_name)?;
    let channel = channel::connect(
        manager,
        pki::anonymous_client_tls(&ca_pem),
        Dial::new(Duration::from_secs(5)),
    )
    .await
    .map_err(|e| join_err(e.to_string()))?;
    let capacity = opts.capacity.unwrap_or_else(agent::detect_resources);
    let resp = pb::membership_client::MembershipClient::new(channel)
        .join(pb::JoinRequest {
            token: token.to_string(),
            csr_der: csr,
            node_name: node_name.clone(),
            advertise_addr: advertise.to_string(),
            resources: Some(crate::wire::convert::resources_to_pb(capacity)),
            platform: Some(crate::wire::convert::platform_to_pb(&Platform::current())),
            warren_version: crate::VERSION.to_string(),
        })
        .await
        .map_err(|s| join_err(s.message().to_string()))?
        .into_inner();
    let role = crate::wire::convert::role_from_pb(resp.role);
    let creds = NodeCredentials {
        ca_pem: resp.ca_pem,
        cert_pem: resp.cert_pem,
        key_pem: node_key.serialize_pem(),
    };
    creds.save(&opts.data_dir.join("certs"))?;
    let key = match role {
        NodeRole::Manager => {
            let k = SecretsKey::from_bytes(&resp.secrets_key)?;
            k.save(&secrets_key_path(&opts.data_dir))?;
            Some(k)
        }
        NodeRole::Worker => None,
    };
    let mut managers = resp.managers;
    if !managers.iter().any(|m| m == manager) {
        managers.push(manager.to_string());
    }
    if role == NodeRole::Manager && !managers.contains(&advertise.to_string()) {
        managers.insert(0, advertise.to_string());
    }
    let cfg = NodeConfig {
        cluster_id: resp.cluster_id,
        node_id: resp.node_id,
        node_name,
        role,
        raft_id: resp.raft_id,
        listen_addr: listen,
        advertise_addr: advertise,
        socket: opts.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into()),
        metrics_addr: addr_or(opts.metrics_addr, DEFAULT_METRICS),
        managers,
        capacity: opts.capacity,
        raft_member: false,
        subnet: None,
        cluster_cidr: None,
        runtime: opts.runtime.apply(&RuntimeSettings::default()),
    };
    cfg.save(&opts.data_dir)?;
    run(opts, cfg, creds, key, Start::Resume, on_ready, None).await
}

/// `warren daemon`: resume the node kept in the data dir.
pub async fn resume(opts: DaemonOptions, on_ready: impl FnOnce(&Ready)) -> Result<(), DaemonError> {
    let mut cfg = NodeConfig::load(&opts.data_dir)?;
    if let Some(a) = opts.listen_addr {
        cfg.listen_addr = a;
    }
    if let Some(a) = opts.advertise_addr {
        cfg.advertise_addr = a;
    }
    if let Some(s) = &opts.socket {
        cfg.socket = s.clone();
    }
    if let Some(a) = opts.metrics_addr {
        cfg.metrics_addr = a;
    }
    if opts.capacity.is_some() {
        cfg.capacity = opts.capacity;
    }
    cfg.runtime = opts.runtime.apply(&cfg.runtime);
    let creds = NodeCredentials::load(&opts.data_dir.join("certs"))?;
    let key = match cfg.role {
        NodeRole::Manager => Some(SecretsKey::load(&secrets_key_path(&opts.data_dir))?),
        NodeRole::Worker => None,
    };
    cfg.save(&opts.data_dir)?;
    run(opts, cfg, creds, key, Start::Resume, on_ready, None).await
}

enum Start {
    /// A new cluster: initialize Raft, then commit this command (the bootstrap).
    Init(Box<Command>),
    Resume,
}

async fn run(
    opts: DaemonOptions,
    mut cfg: NodeConfig,
    creds: NodeCredentials,
    secrets_key: Option<SecretsKey>,
    start: Start,
    on_ready: impl FnOnce(&Ready),
    tokens: Option<(String, String)>,
) -> Result<(), DaemonError> {
    let data_dir = opts.data_dir.clone();
    std::fs::write(pid_file(&data_dir), std::process::id().to_string())
        .map_err(|e| DaemonError::Invalid(format!("writing {}: {e}", pid_file(&data_dir).display())))?;
    let metrics = Metrics::new();
    let store = Store::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let _metrics_server = metrics::serve(cfg.metrics_addr, metrics.clone()).await?;
    let mut servers = tokio::task::JoinSet::new();
    let (report_tx, report_rx) = tokio::sync::mpsc::unbounded_channel();
    let (executor, node_ops, runtime) = start_executor(&cfg, &data_dir, report_tx).await?;
    let dataplane = start_dataplane(&cfg, &metrics)?;
    let node_agent = || {
        pb::node_agent_server::NodeAgentServer::new(node_service::NodeService::new(
            node_ops.clone(),
            data_dir.join("spool"),
            cfg.node_name.clone(),
            dataplane.clone(),
        ))
        .max_decoding_message_size(8 << 20)
    };
    let mut raft_node = None;

    if cfg.role == NodeRole::Manager {
        let secrets_key = secrets_key
            .clone()
            .ok_or_else(|| DaemonError::Invalid("a manager needs its secrets key".into()))?;
        let peers = Peers::new(creds.client_tls());
        let raft = RaftNode::start(
            cfg.raft_id,
            &data_dir.join("raft"),
            store.clone(),
            peers,
            opts.raft.clone(),
        )
        .await?;
        raft_node = Some(raft.clone());
        let ctx = Arc::new(ManagerCtx {
            node_id: cfg.node_id.clone(),
            data_dir: data_dir.clone(),
            advertise_addr: cfg.advertise_addr.to_string(),
            raft: raft.clone(),
            store: store.clone(),
            secrets_key,
            metrics: metrics.clone(),
            sessions: Arc::default(),
            settings: opts.manager.clone(),
        });
        metrics.set_sources(store.clone(), Some(raft.clone()));

        let listener = tokio::net::TcpListener::bind(cfg.listen_addr)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: cfg.listen_addr.to_string(),
                source,
            })?;
        let tcp = tonic::transport::Server::builder()
            .tls_config(creds.server_tls())
            .map_err(|e| DaemonError::Invalid(format!("TLS settings: {e}")))?
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .add_service(pb::warren_api_server::WarrenApiServer::new(ApiService::new(
                ctx.clone(),
            )))
            .add_service(pb::membership_server::MembershipServer::new(MembershipService::new(
                ctx.clone(),
            )))
            .add_service(node_agent())
            .add_service(pb::dispatcher_server::DispatcherServer::new(
                crate::manager::dispatcher::DispatcherService::new(ctx.clone()),
            ))
            .add_service(
                pb::raft_server::RaftServer::new(crate::raft::service::RaftService::new(raft.clone()))
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20),
            );
        let mut rx = shutdown_rx.clone();
        servers.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = tcp
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            {
                tracing::error!(error = %e, "cluster port server failed");
            }
        });

        let uds = bind_socket(&cfg.socket)?;
        let local = tonic::transport::Server::builder().add_service(pb::warren_api_server::WarrenApiServer::new(
            ApiService::new(ctx.clone()),
        ));
        let mut rx = shutdown_rx.clone();
        let socket_path = cfg.socket.clone();
        servers.spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(uds);
            if let Err(e) = local
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            {
                tracing::error!(error = %e, "local socket server failed");
            }
            let _ = std::fs::remove_file(&socket_path);
        });

        match start {
            Start::Init(bootstrap) => {
                raft.initialize(&cfg.advertise_addr.to_string()).await?;
                if !raft.wait_for_leader(Duration::from_secs(10)).await {
                    return Err(DaemonError::Invalid(
                        "the new single-manager cluster elected no leader within 10s".into(),
                    ));
                }
                raft.write(*bootstrap).await?;
                cfg.save(&data_dir)?;
            }
            Start::Resume => {
                if !cfg.raft_member {
                    enter_raft(&cfg, &creds).await?;
                    cfg.raft_member = true;
                    cfg.save(&data_dir)?;
                }
            }
        }
        tokio::spawn(manager::run_leader_duties(ctx.clone()));
    }

    if cfg.role == NodeRole::Worker {
        // Workers serve only what managers ask of nodes: logs and image imports.
        let listener = tokio::net::TcpListener::bind(cfg.listen_addr)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: cfg.listen_addr.to_string(),
                source,
            })?;
        let server = tonic::transport::Server::builder()
            .tls_config(creds.server_tls())
            .map_err(|e| DaemonError::Invalid(format!("TLS settings: {e}")))?
            .add_service(node_agent());
        let mut rx = shutdown_rx.clone();
        servers.spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = server
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            {
                tracing::error!(error = %e, "node port server failed");
            }
        });
    }

    // The data plane first: a stopping task leaves it before anything else reacts.
    let mut listeners: Vec<Arc<dyn agent::EndpointsListener>> = Vec::new();
    if let Some(dp) = dataplane.clone() {
        listeners.push(Arc::new(agent::node_dataplane::NodeDataplane::new(
            dp,
            cfg.node_id.clone(),
        )));
    }
    // The node's service DNS, on its bridge address, for nodes that run tasks.
    if cfg.runtime.containerd {
        let dns_metrics = crate::dns::DnsMetrics::register(&metrics.registry)
            .map_err(|e| DaemonError::Invalid(format!("dns metrics: {e}")))?;
        let dns = agent::node_dns::NodeDns::start(Some(dns_metrics), vec![]);
        if let (Some(s), Some(c)) = (&cfg.subnet, &cfg.cluster_cidr) {
            dns.configure(&executor::NodeNetwork {
                subnet: s.clone(),
                cluster_cidr: c.clone(),
            });
        }
        listeners.push(dns);
    }
    let managers_file = data_dir.clone();
    let cfg_for_agent = cfg.clone();
    let agent_cfg = agent::AgentConfig {
        node_id: cfg.node_id.clone(),
        hostname: cfg.node_name.clone(),
        managers: cfg.managers.clone(),
        credentials: creds.clone(),
        resources: cfg.capacity.unwrap_or_else(agent::detect_resources),
        listeners: listeners.clone(),
        on_session: Box::new(move |info| {
            let mut c = NodeConfig::load(&managers_file).unwrap_or_else(|_| cfg_for_agent.clone());
            let before = c.clone();
            c.managers = info.managers.clone();
            if let Some(n) = &info.network {
                c.subnet = Some(n.subnet.clone());
                c.cluster_cidr = Some(n.cluster_cidr.clone());
            }
            if c != before {
                if let Err(e) = c.save(&managers_file) {
                    tracing::warn!(error = %e, "could not save what the leader announced");
                }
            }
        }),
    };
    let agent_task = tokio::spawn(agent::run(agent_cfg, executor, report_rx, shutdown_rx.clone()));

    tracing::info!(
        node = %cfg.node_id,
        name = %cfg.node_name,
        role = cfg.role.as_str(),
        listen = %cfg.listen_addr,
        advertise = %cfg.advertise_addr,
        "warren node is up"
    );
    on_ready(&Ready {
        node_id: cfg.node_id.clone(),
        node_name: cfg.node_name.clone(),
        cluster_id: cfg.cluster_id.clone(),
        role: cfg.role,
        advertise_addr: cfg.advertise_addr,
        socket: cfg.socket.clone(),
        tokens,
    });

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if let Some(raft) = raft_node {
        raft.shutdown().await;
    }
    // Our own containerd (if we started one) stops; the containers keep running
    // under their shims, and are adopted on the next start.
    if let Some(rt) = runtime {
        rt.shutdown().await;
    }
    let _ = std::fs::remove_file(pid_file(&data_dir));
    Ok(())
}

/// The node's eBPF data plane (None with `--dataplane none`). Pinned programs and
/// maps of an earlier run are adopted; a kernel that cannot run it stops the daemon
/// with a message naming what is missing.
fn start_dataplane(
    cfg: &NodeConfig,
    metrics: &Metrics,
) -> Result<Option<Arc<dyn crate::dataplane::Dataplane>>, DaemonError> {
    let rs = &cfg.runtime;
    if !rs.dataplane {
        tracing::warn!("--dataplane none: no service load balancing on this node");
        return Ok(None);
    }
    if let Some(c) = &rs.cgroup_root {
        // A node's own subtree may not exist until its first container; programs
        // attach to the directory, so make it now.
        std::fs::create_dir_all(c).map_err(|e| DaemonError::Dataplane(format!("cgroup-root {}: {e}", c.display())))?;
    }
    let dc = dataplane_config(cfg)?;
    let dp = crate::dataplane::EbpfDataplane::open(dc.clone()).map_err(|e| DaemonError::Dataplane(e.to_string()))?;
    tracing::info!(
        bpffs = %dc.bpffs_dir.display(),
        cgroup = %dc.cgroup_root.display(),
        ifaces = ?dc.ifaces,
        "eBPF data plane attached"
    );
    let dp: Arc<dyn crate::dataplane::Dataplane> = Arc::new(dp);
    crate::dataplane::register_metrics(&metrics.registry, dp.clone())
        .map_err(|e| DaemonError::Dataplane(format!("metrics: {e}")))?;
    Ok(Some(dp))
}

/// Where this node's data plane lives: pin directory, cgroup, interfaces.
pub(crate) fn dataplane_config(cfg: &NodeConfig) -> Result<crate::dataplane::DataplaneConfig, DaemonError> {
    let rs = &cfg.runtime;
    let mut dc = crate::dataplane::DataplaneConfig::new(&cfg.node_name);
    if let Some(b) = &rs.bpffs {
        dc.bpffs_dir = b.clone();
    }
    if let Some(c) = &rs.cgroup_root {
        dc.cgroup_root = c.clone();
    }
    let (ifaces, addrs) = dataplane_interfaces(cfg.advertise_addr.ip(), &rs.dataplane_ifaces)?;
    dc.ifaces = ifaces;
    dc.node_addrs = addrs;
    Ok(dc)
}

/// How this node reaches containerd (or starts its own under the data dir).
pub(crate) fn runtime_config(cfg: &NodeConfig, data_dir: &Path) -> crate::runtime::RuntimeConfig {
    let rs = &cfg.runtime;
    let mut rc = crate::runtime::RuntimeConfig::new(data_dir);
    rc.socket = rs.containerd_socket.clone();
    rc.namespace = rs.containerd_namespace.clone();
    rc.cgroup_parent = rs.cgroup_parent.clone();
    rc.registry.insecure = rs.insecure_registries.clone();
    rc
}

/// The node network of `node_id` in the subnet the managers gave it.
pub(crate) fn network_config(
    node_id: &str,
    bridge: &str,
    state_dir: PathBuf,
    subnet: &str,
    cluster_cidr: &str,
) -> Result<crate::network::NetworkConfig, String> {
    let subnet = subnet.parse().map_err(|e| format!("node subnet {subnet:?}: {e}"))?;
    let cidr = cluster_cidr
        .parse()
        .map_err(|e| format!("cluster CIDR {cluster_cidr:?}: {e}"))?;
    let mut nc = crate::network::NetworkConfig::new(node_id, subnet, cidr, state_dir);
    nc.bridge = bridge.to_string();
    Ok(nc)
}

/// The file holding the running daemon's process ID, for `warren cluster leave`.
pub fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("warren.pid")
}

/// The interfaces whose published-port traffic the data plane translates (given,
/// or the one holding the advertise address; none for loopback), and the node's
/// IPv4 addresses on them.
fn dataplane_interfaces(
    advertise: std::net::IpAddr,
    given: &[String],
) -> Result<(Vec<String>, Vec<std::net::Ipv4Addr>), DaemonError> {
    let mut addrs_of: std::collections::BTreeMap<String, Vec<std::net::Ipv4Addr>> = Default::default();
    for ifa in nix::ifaddrs::getifaddrs().map_err(|e| DaemonError::Dataplane(format!("listing interfaces: {e}")))? {
        if let Some(a) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            addrs_of.entry(ifa.interface_name.clone()).or_default().push(a.ip());
        }
    }
    let ifaces: Vec<String> = if given.is_empty() {
        addrs_of
            .iter()
            .filter(|(name, addrs)| *name != "lo" && addrs.iter().any(|a| std::net::IpAddr::V4(*a) == advertise))
            .map(|(name, _)| name.clone())
            .collect()
    } else {
        for i in given {
            if !addrs_of.contains_key(i) && !std::path::Path::new("/sys/class/net").join(i).exists() {
                return Err(DaemonError::Invalid(format!(
                    "dataplane-iface: no interface named {i:?}"
                )));
            }
        }
        given.to_vec()
    };
    let mut addrs: Vec<std::net::Ipv4Addr> = ifaces
        .iter()
        .flat_map(|i| addrs_of.get(i).cloned().unwrap_or_default())
        .collect();
    if let std::net::IpAddr::V4(a) = advertise {
        if !a.is_unspecified() && !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    Ok((ifaces, addrs))
}

/// The node's executor: containers through containerd (ours, if no socket
/// answers), or none at all with `--runtime none`.
async fn start_executor(
    cfg: &NodeConfig,
    data_dir: &Path,
    reports: tokio::sync::mpsc::UnboundedSender<executor::Report>,
) -> Result<
    (
        Arc<dyn executor::Executor>,
        Arc<dyn node_service::NodeOps>,
        Option<Arc<crate::runtime::Containerd>>,
    ),
    DaemonError,
> {
    let rs = &cfg.runtime;
    if !rs.containerd {
        tracing::warn!("--runtime none: this node runs no tasks; tasks placed here stay assigned");
        return Ok((
            Arc::new(executor::Unavailable::new(reports)),
            Arc::new(node_service::NoRuntime),
            None,
        ));
    }
    let rc = runtime_config(cfg, data_dir);
    let containerd = Arc::new(
        crate::runtime::Containerd::connect(rc)
            .await
            .map_err(|e| DaemonError::Runtime(e.to_string()))?,
    );
    let node_id = cfg.node_id.clone();
    let bridge = rs.bridge.clone();
    let state_dir = data_dir.join("network");
    let factory: crate::worker::NetworkFactory = Arc::new(move |n: executor::NodeNetwork| {
        let (node_id, bridge, state_dir) = (node_id.clone(), bridge.clone(), state_dir.clone());
        Box::pin(async move {
            let nc = network_config(&node_id, &bridge, state_dir, &n.subnet, &n.cluster_cidr)?;
            let net = crate::network::NetlinkNetwork::new(nc)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(net) as Arc<dyn crate::network::NetworkManager>)
        })
    });
    let initial = match (&cfg.subnet, &cfg.cluster_cidr) {
        (Some(s), Some(c)) => Some(executor::NodeNetwork {
            subnet: s.clone(),
            cluster_cidr: c.clone(),
        }),
        _ => None,
    };
    let worker = Arc::new(crate::worker::Worker::start(
        crate::worker::WorkerConfig {
            node_id: cfg.node_id.clone(),
            data_dir: data_dir.to_path_buf(),
            search_domains: vec!["warren".to_string()],
            upstream_dns: vec![],
        },
        containerd.clone(),
        factory,
        reports,
        initial,
    ));
    Ok((worker.clone(), worker, Some(containerd)))
}

/// Asks the managers to add this new manager to the Raft group, retrying until one
/// leader accepts (the cluster may be electing).
async fn enter_raft(cfg: &NodeConfig, creds: &NodeCredentials) -> Result<(), DaemonError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        for m in cfg.managers.iter().filter(|m| **m != cfg.advertise_addr.to_string()) {
            let channel = match channel::connect(m, creds.client_tls(), Dial::new(Duration::from_secs(2))).await {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            match pb::membership_client::MembershipClient::new(channel)
                .join_raft(pb::JoinRaftRequest {
                    node_id: cfg.node_id.clone(),
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(via = %m, "entered the Raft group");
                    return Ok(());
                }
                Err(s) => last = format!("{m}: {}", s.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(DaemonError::Join {
        manager: cfg.managers.join(", "),
        reason: format!("could not enter the Raft group within 60s: {last}"),
    })
}

/// The local API socket: root-only (mode 0600 in a 0700 directory we create).
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source: std::io::Error| DaemonError::Listen {
        addr: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
    }
    if path.exists() {
        // A live daemon answers on it; a stale file from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another warren daemon is serving this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_checked() {
        parse_cidr("pod-cidr", "10.88.0.0/16").unwrap();
        parse_cidr("pod-cidr", "10.88.0.0/24").unwrap();
        let e = parse_cidr("pod-cidr", "10.88.0.0/25").unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
        assert!(parse_cidr("pod-cidr", "10.88.1.0/16")
            .unwrap_err()
            .to_string()
            .contains("host bits"));
        assert!(parse_cidr("pod-cidr", "banana")
            .unwrap_err()
            .to_string()
            .starts_with("pod-cidr: invalid CIDR"));
    }

    #[test]
    fn service_cidrs_are_checked() {
        parse_service_cidr("10.96.0.0/16").unwrap();
        assert!(parse_service_cidr("10.96.0.0/30")
            .unwrap_err()
            .to_string()
            .contains("between /8 and /28"));
        assert!(parse_service_cidr("10.96.1.0/16")
            .unwrap_err()
            .to_string()
            .contains("host bits"));
        assert!(cidrs_overlap("10.88.0.0/16", "10.88.128.0/17"));
        assert!(!cidrs_overlap("10.88.0.0/16", "10.96.0.0/16"));
    }

    #[test]
    fn explicit_listen_addresses_are_advertised_as_they_are() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(default_advertise(a).unwrap(), a);
    }
}
