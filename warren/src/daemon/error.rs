//! Why a node could not start, one variant per cause: the messages name the flag,
//! file, address or component involved.

use super::cidr::CidrError;
use crate::config::{ConfigError, InterfaceError};
use crate::metrics::MetricsListenError;
use crate::model::ValidationError;
use crate::pki::{PkiError, TokenError};
use crate::raft::node::StartError;
use crate::runtime::RuntimeError;
use crate::secrets::SealError;
use crate::store::WriteError;
use crate::wire::channel::ChannelError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the WireGuard mesh: {0}")]
    Mesh(crate::mesh::MeshError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Boxed: openraft's errors would make every Result of the daemon large.
    #[error(transparent)]
    Raft(Box<StartError>),
    #[error("writing the cluster state: {0}")]
    Write(#[from] WriteError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] MetricsListenError),
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("token: {0}")]
    Token(#[from] TokenError),
    #[error("manager address {0:?} is not IP:PORT")]
    ManagerAddr(String),
    #[error(
        "advertise-addr: cannot choose an address to advertise for listen address {0} (no default route): pass --advertise-addr IP:PORT"
    )]
    NoAdvertiseAddr(std::net::SocketAddr),
    #[error("joining through {manager} failed: {source}")]
    Join { manager: String, source: JoinError },
    #[error("writing {path}: {source}")]
    PidFile { path: String, source: std::io::Error },
    #[error("a manager needs its secrets key")]
    NoSecretsKey,
    #[error("the new single-manager cluster elected no leader within {0:?}")]
    NoLeader(Duration),
    #[error("TLS settings: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error("container runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("data plane: {0}")]
    Dataplane(#[from] crate::dataplane::DataplaneError),
    #[error(transparent)]
    Interfaces(#[from] InterfaceError),
    #[error("data plane: cgroup-root {path}: {source}")]
    CgroupRoot { path: String, source: std::io::Error },
    #[error("data plane: metrics: {0}")]
    DataplaneMetrics(#[source] prometheus::Error),
    #[error("ingress metrics: {0}")]
    IngressMetrics(#[source] prometheus::Error),
    #[error("dns metrics: {0}")]
    DnsMetrics(#[from] crate::dns::DnsError),
    #[error("restore: {0}")]
    BackupFile(#[from] crate::backup_seal::BackupSealError),
    #[error("restore: {0}")]
    BackupSnapshot(#[from] crate::store::backup::SnapshotError),
    #[error("restore: data-dir {0} is not empty: restore into a new, empty directory")]
    RestoreNotEmpty(String),
    #[error("restore: the backup's CA key does not open with its secrets key")]
    RestoreCa,
    #[error("data-dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
}

impl From<StartError> for DaemonError {
    fn from(e: StartError) -> Self {
        DaemonError::Raft(Box::new(e))
    }
}

/// Why joining a cluster through a manager failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Connect(#[from] ChannelError),
    #[error("{}", .0.message())]
    Refused(#[from] tonic::Status),
    #[error("the manager answered an overlay this node does not know ({0})")]
    Overlay(crate::model::ValidationError),
    #[error("could not enter the Raft group within {within:?}{}", last.as_ref().map(|(m, e)| format!(": {m}: {e}")).unwrap_or_default())]
    NotEntered {
        within: Duration,
        /// The last manager tried, and what it answered.
        last: Option<(String, Box<JoinError>)>,
    },
}
