//! Before a node runs: `init` makes a new cluster (CA, keys, tokens, the first
//! Raft entry to commit), `restore` makes one from a backup (its CA, keys and
//! state), `join` asks a manager for a certificate with a token, and
//! `resume` reads the node back from its data dir. Each ends in a `Boot`: the
//! node's settings and credentials, saved, and what is left to do once Raft runs.
//! Not the running itself (`build`, `spawn`).

use super::error::{DaemonError, JoinError};
use super::options::{DaemonOptions, DEFAULT_LISTEN, DEFAULT_METRICS, DEFAULT_SOCKET};
use crate::agent;
use crate::config::{NodeConfig, RuntimeSettings};
use crate::model::{self, new_id, now_ms, Availability, ClusterMeta, Node, NodeRole, NodeState, Overlay, Platform};
use crate::pki::{self, CertificateAuthority, JoinToken, NodeCredentials};
use crate::secrets::SecretsKey;
use crate::store::Command;
use crate::wire::channel::{self, Dial};
use crate::wire::convert;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_proto::v1 as pb;

/// A node ready to be built: settings (saved in node.json), credentials and, on
/// managers, the secrets key.
pub(super) struct Boot {
    pub cfg: NodeConfig,
    pub creds: NodeCredentials,
    pub secrets_key: Option<SecretsKey>,
    pub start: Start,
    /// The worker and manager join tokens, printed by `init` only.
    pub tokens: Option<(String, String)>,
}

/// What is left once Raft runs.
pub(super) enum Start {
    /// A new cluster: initialize Raft, then commit this command (the bootstrap).
    Init(Box<Command>),
    /// An existing node; a manager that has not entered the Raft group yet asks to.
    Resume,
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
        _ => Err(DaemonError::NoAdvertiseAddr(listen)),
    }
}

fn addr_or(v: Option<SocketAddr>, default: &str) -> SocketAddr {
    v.unwrap_or_else(|| default.parse().expect("default address parses"))
}

fn secrets_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("secrets.key")
}

/// The listen and advertise addresses and the node name of a new node.
fn identity(opts: &DaemonOptions) -> Result<(SocketAddr, SocketAddr, String), DaemonError> {
    let listen = addr_or(opts.listen_addr, DEFAULT_LISTEN);
    let advertise = match opts.advertise_addr {
        Some(a) => a,
        None => default_advertise(listen)?,
    };
    let node_name = opts.node_name.clone().unwrap_or_else(hostname);
    model::validate_name("node-name", &node_name)?;
    Ok((listen, advertise, node_name))
}

/// The settings of a new node; `raft_member` is whether it already is in the Raft
/// group (the first manager is).
/// The record of the one manager a new cluster starts with (`cluster init`, and
/// `cluster restore`).
fn first_manager(opts: &DaemonOptions, node_id: &str, node_name: &str, advertise: SocketAddr, raft_id: u64) -> Node {
    Node {
        id: node_id.to_string(),
        name: node_name.to_string(),
        role: NodeRole::Manager,
        availability: Availability::Active,
        labels: Default::default(),
        addr: advertise.to_string(),
        resources: opts.capacity.unwrap_or_else(agent::detect_resources),
        platform: Platform::current(),
        state: NodeState::Unknown,
        message: String::new(),
        raft_id,
        subnet: None,
        mesh: None,
        warren_version: crate::VERSION.to_string(),
        created_ms: now_ms(),
        updated_ms: now_ms(),
        version: 1,
        ingress: opts.ingress,
        metrics_port: 0,
        last_contact_ms: 0,
        cert_expires_ms: 0,
        autonomy: String::new(),
    }
}

fn new_config(
    opts: &DaemonOptions,
    (listen, advertise, node_name): (SocketAddr, SocketAddr, String),
    ids: (String, String, u64),
    role: NodeRole,
    managers: Vec<String>,
    raft_member: bool,
) -> NodeConfig {
    let (cluster_id, node_id, raft_id) = ids;
    NodeConfig {
        cluster_id,
        node_id,
        node_name,
        role,
        raft_id,
        listen_addr: listen,
        advertise_addr: advertise,
        socket: opts.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into()),
        metrics_addr: addr_or(opts.metrics_addr, DEFAULT_METRICS),
        managers,
        capacity: opts.capacity,
        raft_member,
        subnet: None,
        cluster_cidr: None,
        runtime: opts.runtime.apply(&RuntimeSettings::default()),
        overlay: Overlay::Native,
    }
}

/// `warren cluster init`: a new cluster with this node as its first manager.
pub(super) fn init(opts: &DaemonOptions, pod_cidr: &str, service_cidr: &str) -> Result<Boot, DaemonError> {
    NodeConfig::ensure_fresh(&opts.data_dir)?;
    super::cidr::check(pod_cidr, service_cidr)?;
    let (listen, advertise, node_name) = identity(opts)?;

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
    let cert_expiry = opts.cert_expiry.unwrap_or(crate::model::DEFAULT_CERT_EXPIRY);
    let creds = NodeCredentials {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: ca.sign_node(&csr, &cluster_id, &node_id, NodeRole::Manager, cert_expiry)?,
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
        overlay: opts.overlay.unwrap_or(Overlay::FOR_NEW_CLUSTERS),
        cert_expiry_ms: cert_expiry.as_millis() as i64,
        ..Default::default()
    };
    let mut node = first_manager(opts, &node_id, &node_name, advertise, raft_id);
    node.cert_expires_ms = pki::Validity::of_pem(&creds.cert_pem)?.not_after_ms;
    // Saved once the bootstrap entry is committed: an interrupted init leaves no
    // node.json, and the data dir is then refused as incomplete.
    let mut cfg = new_config(
        opts,
        (listen, advertise, node_name),
        (cluster_id, node_id, raft_id),
        NodeRole::Manager,
        vec![advertise.to_string()],
        true,
    );
    cfg.overlay = meta.overlay;
    let token = |secret: &str| {
        JoinToken {
            ca_digest: ca.digest(),
            secret: secret.to_string(),
        }
        .to_string()
    };
    let tokens = (token(&meta.worker_token_secret), token(&meta.manager_token_secret));
    Ok(Boot {
        cfg,
        creds,
        secrets_key: Some(key),
        start: Start::Init(Box::new(Command::Bootstrap { meta, node })),
        tokens: Some(tokens),
    })
}

/// `warren cluster restore`: a new single-manager cluster from a backup file, with
/// the backup's CA, secrets key and state; this node is its only node. Everything
/// that can fail without writing (the data dir, the file, the passphrase, the CA)
/// is checked before anything is written.
pub(super) fn restore(opts: &DaemonOptions, file: &[u8], passphrase: &[u8]) -> Result<Boot, DaemonError> {
    let dir = &opts.data_dir;
    let not_empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(DaemonError::DataDir {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    if not_empty {
        return Err(DaemonError::RestoreNotEmpty(dir.display().to_string()));
    }
    let opened = crate::backup_seal::open(passphrase, file)?;
    let snapshot = crate::store::backup::Snapshot::decode(&opened.body)?;
    let key = opened.secrets_key;
    let meta = snapshot
        .state
        .meta
        .clone()
        .ok_or(crate::store::backup::SnapshotError::NoCluster)?;
    let ca_key = key.open(&meta.ca_key_sealed).map_err(|_| DaemonError::RestoreCa)?;
    let ca = CertificateAuthority::from_parts(&meta.ca_cert_pem, &ca_key)?;
    let (listen, advertise, node_name) = identity(opts)?;

    let node_id = new_id();
    let raft_id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let (node_key, csr) = pki::new_node_key(&node_name)?;
    let creds = NodeCredentials {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: ca.sign_node(&csr, &meta.cluster_id, &node_id, NodeRole::Manager, meta.cert_expiry())?,
        key_pem: node_key.serialize_pem(),
    };
    key.save(&secrets_key_path(dir))?;
    creds.save(&dir.join("certs"))?;
    let node = first_manager(opts, &node_id, &node_name, advertise, raft_id);
    // As init: node.json is saved once the first entry is committed.
    let mut cfg = new_config(
        opts,
        (listen, advertise, node_name),
        (meta.cluster_id.clone(), node_id, raft_id),
        NodeRole::Manager,
        vec![advertise.to_string()],
        true,
    );
    cfg.overlay = meta.overlay;
    let token = |secret: &str| {
        JoinToken {
            ca_digest: ca.digest(),
            secret: secret.to_string(),
        }
        .to_string()
    };
    let tokens = (token(&meta.worker_token_secret), token(&meta.manager_token_secret));
    tracing::info!(
        cluster = %meta.cluster_id,
        index = snapshot.applied_index,
        taken_ms = snapshot.taken_ms,
        services = snapshot.state.services.len(),
        "restoring the cluster from a backup"
    );
    Ok(Boot {
        cfg,
        creds,
        secrets_key: Some(key),
        start: Start::Init(Box::new(Command::Restore {
            state: Box::new(snapshot.state),
            node,
        })),
        tokens: Some(tokens),
    })
}

/// `warren cluster join`: join through `manager` with a token.
pub(super) async fn join(opts: &DaemonOptions, token: &str, manager: &str) -> Result<Boot, DaemonError> {
    NodeConfig::ensure_fresh(&opts.data_dir)?;
    let join_err = |source: JoinError| DaemonError::Join {
        manager: manager.to_string(),
        source,
    };
    let token = JoinToken::parse(token)?;
    manager
        .parse::<SocketAddr>()
        .map_err(|_| DaemonError::ManagerAddr(manager.to_string()))?;
    let (listen, advertise, node_name) = identity(opts)?;

    // Trust the manager only once its CA matches the token.
    let ca_pem = pki::fetch_ca(manager, &token.ca_digest, Duration::from_secs(10)).await?;
    let (node_key, csr) = pki::new_node_key(&node_name)?;
    let channel = channel::connect(
        manager,
        pki::anonymous_client_tls(&ca_pem),
        Dial::new(Duration::from_secs(5)),
    )
    .await
    .map_err(|e| join_err(e.into()))?;
    let capacity = opts.capacity.unwrap_or_else(agent::detect_resources);
    let resp = pb::membership_client::MembershipClient::new(channel)
        .join(pb::JoinRequest {
            ingress: convert::node_ingress_to_pb(opts.ingress),
            token: token.to_string(),
            csr_der: csr,
            node_name: node_name.clone(),
            advertise_addr: advertise.to_string(),
            resources: Some(convert::resources_to_pb(capacity)),
            platform: Some(convert::platform_to_pb(&Platform::current())),
            warren_version: crate::VERSION.to_string(),
        })
        .await
        .map_err(|s| join_err(s.into()))?
        .into_inner();
    let role = convert::role_from_pb(resp.role);
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
    let mut cfg = new_config(
        opts,
        (listen, advertise, node_name),
        (resp.cluster_id, resp.node_id, resp.raft_id),
        role,
        managers,
        false,
    );
    // A manager that predates the mesh says nothing: its cluster is native.
    cfg.overlay = match resp.overlay.as_str() {
        "" => Overlay::Native,
        o => Overlay::parse("overlay", o).map_err(|e| DaemonError::Join {
            manager: manager.to_string(),
            source: JoinError::Overlay(e),
        })?,
    };
    cfg.save(&opts.data_dir)?;
    Ok(Boot {
        cfg,
        creds,
        secrets_key: key,
        start: Start::Resume,
        tokens: None,
    })
}

/// `warren daemon`: the node kept in the data dir, with the flags given now.
pub(super) fn resume(opts: &DaemonOptions) -> Result<Boot, DaemonError> {
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
    Ok(Boot {
        cfg,
        creds,
        secrets_key: key,
        start: Start::Resume,
        tokens: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_listen_addresses_are_advertised_as_they_are() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(default_advertise(a).unwrap(), a);
    }
}
