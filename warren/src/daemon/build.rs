//! Config → build: every fallible step of starting a node, before any of its tasks
//! runs — the pid file, the metrics port, containerd (Warren's own when no socket
//! answers), the eBPF data plane, the DNS metrics, on managers the Raft member and
//! the local socket, and the cluster port with its TLS settings. A node that cannot
//! run stops here with one error naming what is missing. The `App` this returns is
//! started by `spawn`.

use super::bootstrap::{Boot, Start};
use super::error::DaemonError;
use super::options::DaemonOptions;
use super::serve::{self, Grpc};
use crate::config::NodeConfig;
use crate::dataplane::{Dataplane, EbpfDataplane};
use crate::dns::DnsMetrics;
use crate::manager::{ManagerCtx, ManagerSettings};
use crate::metrics::{self, Metrics};
use crate::model::NodeRole;
use crate::pki::LiveIdentity;
use crate::raft::{network::Peers, RaftNode};
use crate::runtime::Containerd;
use crate::secrets::SecretsKey;
use crate::store::{Proposer, Store};
use std::path::PathBuf;
use std::sync::Arc;

/// What a node is started from: the daemon's options and what bootstrap decided.
pub(super) struct Config {
    pub opts: DaemonOptions,
    pub boot: Boot,
}

/// A node with everything set up and nothing started yet.
pub(super) struct App {
    pub cfg: NodeConfig,
    pub data_dir: PathBuf,
    /// The node's certificate, swapped on renewal (see `pki::renew`).
    pub identity: Arc<LiveIdentity>,
    pub start: Start,
    pub tokens: Option<(String, String)>,
    pub metrics: Arc<Metrics>,
    pub metrics_port: tokio::net::TcpListener,
    /// None with `--runtime none`.
    pub containerd: Option<Arc<Containerd>>,
    /// None with `--dataplane none`.
    pub dataplane: Option<Arc<dyn Dataplane>>,
    /// For nodes that run tasks (and so serve their service DNS).
    pub dns_metrics: Option<DnsMetrics>,
    pub manager: Option<Manager>,
    pub cluster_port: tokio::net::TcpListener,
    /// The cluster port's server; TLS is the listener's (`LiveIdentity::incoming`).
    pub grpc: Grpc,
    /// `--ingress` given to this run: seeds the node's ingress record if it has none.
    pub ingress_seed: Option<crate::model::ingress::NodeIngress>,
}

/// What only a manager has.
pub(super) struct Manager {
    pub raft: Arc<RaftNode>,
    pub ctx: Arc<ManagerCtx>,
    pub socket: tokio::net::UnixListener,
}

impl Config {
    pub(super) async fn build(self) -> Result<App, DaemonError> {
        let Config { opts, boot } = self;
        let cfg = boot.cfg;
        let data_dir = opts.data_dir.clone();
        let pid_file = NodeConfig::pid_file(&data_dir);
        std::fs::write(&pid_file, std::process::id().to_string()).map_err(|source| DaemonError::PidFile {
            path: pid_file.display().to_string(),
            source,
        })?;
        let metrics = Metrics::new();
        let metrics_port = metrics::bind(cfg.metrics_addr).await?;
        let containerd = match cfg.runtime.containerd {
            true => Some(Arc::new(Containerd::connect(cfg.runtime_config(&data_dir)).await?)),
            false => None,
        };
        let dataplane = open_dataplane(&cfg, &metrics)?;
        let dns_metrics = match cfg.runtime.containerd {
            true => Some(DnsMetrics::register(&metrics.registry)?),
            false => None,
        };
        let identity = LiveIdentity::new(boot.creds)?;
        let manager = match cfg.role {
            NodeRole::Manager => {
                let key = boot.secrets_key.ok_or(DaemonError::NoSecretsKey)?;
                Some(manager(&cfg, &opts, &identity, key, &metrics).await?)
            }
            NodeRole::Worker => None,
        };
        let cluster_port = serve::bind_tcp(cfg.listen_addr).await?;
        let revoked = manager.as_ref().map(|m| serve::revocations(m.ctx.store.clone()));
        let grpc = serve::grpc(&metrics, revoked);
        Ok(App {
            cfg,
            data_dir,
            identity,
            start: boot.start,
            tokens: boot.tokens,
            metrics,
            metrics_port,
            containerd,
            dataplane,
            dns_metrics,
            manager,
            cluster_port,
            grpc,
            ingress_seed: opts.ingress,
        })
    }
}

/// The replicated store and the Raft member over the data dir's stores, the context
/// the manager's services share, and the local socket.
async fn manager(
    cfg: &NodeConfig,
    opts: &DaemonOptions,
    identity: &Arc<LiveIdentity>,
    secrets_key: SecretsKey,
    metrics: &Arc<Metrics>,
) -> Result<Manager, DaemonError> {
    let data_dir = &opts.data_dir;
    let store = Store::new();
    let peers = Peers::new(identity.to_managers());
    let raft = RaftNode::start(
        cfg.raft_id,
        &data_dir.join("raft"),
        store.clone(),
        peers.clone(),
        opts.raft.clone(),
    )
    .await?;
    let settings: ManagerSettings = opts.manager.clone();
    let ctx = Arc::new(ManagerCtx {
        node_id: cfg.node_id.clone(),
        data_dir: data_dir.clone(),
        advertise_addr: cfg.advertise_addr.to_string(),
        raft: raft.clone(),
        peers,
        store: store.clone(),
        secrets_key,
        metrics: metrics.clone(),
        sessions: Arc::default(),
        settings,
    });
    metrics.set_sources(store.clone(), Some(raft.clone() as Arc<dyn Proposer>));
    let socket = serve::bind_socket(&cfg.socket)?;
    Ok(Manager { raft, ctx, socket })
}

/// The node's eBPF data plane (None with `--dataplane none`). Pinned programs and
/// maps of an earlier run are adopted; a kernel that cannot run it stops the daemon
/// with a message naming what is missing.
fn open_dataplane(cfg: &NodeConfig, metrics: &Metrics) -> Result<Option<Arc<dyn Dataplane>>, DaemonError> {
    let rs = &cfg.runtime;
    if !rs.dataplane {
        tracing::warn!("--dataplane none: no service load balancing on this node");
        return Ok(None);
    }
    if let Some(c) = &rs.cgroup_root {
        // A node's own subtree may not exist until its first container; programs
        // attach to the directory, so make it now.
        std::fs::create_dir_all(c).map_err(|source| DaemonError::CgroupRoot {
            path: c.display().to_string(),
            source,
        })?;
    }
    let dc = cfg.dataplane_config()?;
    let dp = EbpfDataplane::open(dc.clone())?;
    tracing::info!(
        bpffs = %dc.bpffs_dir.display(),
        cgroup = %dc.cgroup_root.display(),
        ifaces = ?dc.ifaces,
        "eBPF data plane attached"
    );
    let dp: Arc<dyn Dataplane> = Arc::new(dp);
    crate::dataplane::register_metrics(&metrics.registry, dp.clone()).map_err(DaemonError::DataplaneMetrics)?;
    Ok(Some(dp))
}
