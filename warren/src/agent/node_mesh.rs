//! The node's mesh component in a wireguard cluster: publishes the node's mesh end
//! (public key, next key during a rotation, endpoint) for the agent's session to
//! carry into the Raft state, builds and runs `warren::mesh` once the leader has
//! said which subnet is the node's, and reconciles its peers from every
//! assignment set (the replicated node list as the node sees it). A rotation asked
//! through the Raft state (`node update --rotate-key`) runs here: prepare, publish
//! the next key, wait until the state carries it, commit, publish the new key.
//! Not the WireGuard device itself (`mesh`), not native routes (`worker`).

use super::executor::NodeNetwork;
use crate::config::MeshSettings;
use crate::mesh::{KeyStore, MeshConfig, MeshError, MeshHandle, MeshPeer, MeshStatus, PublicKey};
use crate::model::{NodeMesh as MeshEnd, NodePeer};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// After the Raft state carries the next key, how long peers get to add their
/// second entry for it before the node switches: their assignment is pushed at
/// the same moment, and a peer reconciles within milliseconds; the margin covers a
/// loaded machine. A commit before a peer is ready only delays that peer's
/// handshake (WireGuard retries every 5 s), it never resets a connection.
const ROTATION_SETTLE: Duration = Duration::from_secs(2);
/// Between attempts to build the mesh (e.g. wireguard-go missing or dying at start).
const BUILD_RETRY: Duration = Duration::from_secs(2);
/// The file in the key dir holding the last rotation counter acted on, so that a
/// rotation asked while the node was down runs when it is back, and only once.
const ROTATION_FILE: &str = "rotation";

/// What the component is told, in one value: the last one wins.
#[derive(Clone, Debug, Default, PartialEq)]
struct Desired {
    peers: Vec<NodePeer>,
    own: Option<MeshEnd>,
    rotation: u64,
}

pub struct NodeMesh {
    settings: MeshSettings,
    key_dir: PathBuf,
    endpoint: SocketAddr,
    network: watch::Sender<Option<NodeNetwork>>,
    desired: watch::Sender<Desired>,
    published: watch::Sender<Option<MeshEnd>>,
    mtu: watch::Sender<Option<u32>>,
    handle: tokio::sync::Mutex<Option<MeshHandle>>,
    stopped: Notify,
    stopping: Mutex<bool>,
}

impl NodeMesh {
    /// Loads (or creates) the node's key so that its public half goes out with the
    /// first hello, and starts the component's loop. `advertise` is the node's
    /// underlay address; the endpoint is that address with the mesh port.
    pub fn start(settings: MeshSettings, key_dir: PathBuf, advertise: IpAddr) -> Result<Arc<NodeMesh>, MeshError> {
        let keys = KeyStore::new(&key_dir);
        let key = keys.load_or_create()?;
        let next = keys.next()?;
        let endpoint = SocketAddr::new(advertise, settings.listen_port);
        let end = MeshEnd {
            public_key: key.public_key().to_string(),
            next_public_key: next.map(|k| k.public_key().to_string()),
            endpoint: endpoint.to_string(),
            rotation: 0,
        };
        let me = Arc::new(NodeMesh {
            settings,
            key_dir,
            endpoint,
            network: watch::channel(None).0,
            desired: watch::channel(Desired::default()).0,
            published: watch::channel(Some(end)).0,
            mtu: watch::channel(None).0,
            handle: tokio::sync::Mutex::new(None),
            stopped: Notify::new(),
            stopping: Mutex::new(false),
        });
        tokio::spawn(me.clone().run());
        Ok(me)
    }

    /// What the node publishes of its mesh end; changes during a rotation.
    pub fn published(&self) -> watch::Receiver<Option<MeshEnd>> {
        self.published.subscribe()
    }

    pub fn configure(&self, network: &NodeNetwork) {
        self.network.send_if_modified(|cur| {
            if cur.as_ref() == Some(network) {
                return false;
            }
            *cur = Some(network.clone());
            true
        });
    }

    pub fn assign(&self, peers: &[NodePeer], own: Option<&MeshEnd>, rotation: u64) {
        let d = Desired {
            peers: peers.to_vec(),
            own: own.cloned(),
            rotation,
        };
        self.desired.send_if_modified(|cur| {
            if *cur == d {
                return false;
            }
            *cur = d;
            true
        });
    }

    /// The mesh's MTU, once the mesh is built: what every task interface gets.
    pub async fn mtu(&self) -> u32 {
        let mut rx = self.mtu.subscribe();
        loop {
            if let Some(m) = *rx.borrow_and_update() {
                return m;
            }
            if rx.changed().await.is_err() {
                return crate::mesh::FALLBACK_UNDERLAY_MTU - crate::mesh::WG_OVERHEAD;
            }
        }
    }

    /// The mesh as it is, for `node inspect`; None before it is built.
    pub async fn status(&self) -> Option<Result<MeshStatus, MeshError>> {
        let h = self.handle.lock().await;
        match h.as_ref() {
            Some(h) => Some(h.status().await),
            None => None,
        }
    }

    /// Stops the loop and removes the interface and its routes (stopping
    /// wireguard-go). The key stays for the next start.
    pub async fn shutdown(&self) {
        *self.stopping.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stopped.notify_waiters();
        if let Some(h) = self.handle.lock().await.take() {
            if let Err(e) = h.shutdown().await {
                tracing::warn!(error = %e, "could not remove the mesh");
            } else {
                tracing::info!(iface = %self.settings.interface, "mesh removed");
            }
        }
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(self: Arc<Self>) {
        let mut net_rx = self.network.subscribe();
        let network = loop {
            if let Some(n) = net_rx.borrow_and_update().clone() {
                break n;
            }
            tokio::select! {
                r = net_rx.changed() => if r.is_err() { return },
                _ = self.stopped.notified() => return,
            }
        };
        // Build until it works: without the mesh no task traffic leaves the node
        // (the cluster range's prohibit route), so there is nothing to fall back to.
        loop {
            if self.is_stopping() {
                return;
            }
            match self.build(&network).await {
                Ok(h) => {
                    self.mtu.send_replace(Some(h.mtu()));
                    *self.handle.lock().await = Some(h);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, iface = %self.settings.interface, "cannot start the mesh; retrying");
                    tokio::time::sleep(BUILD_RETRY).await;
                }
            }
        }
        if self.is_stopping() {
            // shutdown() ran while the mesh was being built.
            if let Some(h) = self.handle.lock().await.take() {
                let _ = h.shutdown().await;
            }
            return;
        }
        let mut desired_rx = self.desired.subscribe();
        let mut done_rotation = self.load_rotation();
        loop {
            let d = desired_rx.borrow_and_update().clone();
            self.set_peers(&d.peers).await;
            if done_rotation.is_none() {
                // First sight of the counter on a node that never rotated: what was
                // asked before it had a key is not for it.
                done_rotation = Some(d.rotation);
                self.save_rotation(d.rotation);
            }
            if d.rotation > done_rotation.unwrap_or(0) {
                match self.rotate(&mut desired_rx).await {
                    Ok(key) => {
                        tracing::info!(public_key = %key, "mesh key rotated");
                        done_rotation = Some(d.rotation);
                        self.save_rotation(d.rotation);
                    }
                    Err(e) => tracing::error!(error = %e, "mesh key rotation failed; it will be tried again"),
                }
                continue;
            }
            tokio::select! {
                r = desired_rx.changed() => if r.is_err() { return },
                _ = self.stopped.notified() => return,
            }
        }
    }

    async fn build(&self, network: &NodeNetwork) -> Result<MeshHandle, MeshError> {
        let invalid = |field: &'static str, v: &str| MeshError::invalid(field, format!("{v:?} is not an IPv4 network"));
        let subnet = network.subnet.parse().map_err(|_| invalid("subnet", &network.subnet))?;
        let cidr = network
            .cluster_cidr
            .parse()
            .map_err(|_| invalid("cluster_cidr", &network.cluster_cidr))?;
        let mut cfg = MeshConfig::new(&self.key_dir, subnet, cidr);
        cfg.interface = self.settings.interface.clone();
        cfg.listen_port = self.settings.listen_port;
        cfg.run_dir = self.settings.run_dir.clone();
        cfg.wireguard_go = self.settings.wireguard_go.clone();
        let mesh = cfg.build().await?;
        tracing::info!(
            iface = %self.settings.interface,
            backend = %mesh.backend(),
            endpoint = %self.endpoint,
            mtu = mesh.mtu(),
            "mesh started"
        );
        mesh.spawn()
    }

    async fn set_peers(&self, peers: &[NodePeer]) {
        let mut out = Vec::with_capacity(peers.len());
        for p in peers {
            match mesh_peer(p) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(e) => tracing::warn!(node = %p.node_id, error = %e, "ignoring a mesh peer this node cannot read"),
            }
        }
        let h = self.handle.lock().await;
        let Some(h) = h.as_ref() else { return };
        if let Err(e) = h.set_peers(out) {
            tracing::warn!(error = %e, "refused the mesh's peer list");
        }
    }

    /// Prepare, publish, wait for the Raft state to carry the next key, settle,
    /// commit, publish the new key.
    async fn rotate(&self, desired_rx: &mut watch::Receiver<Desired>) -> Result<PublicKey, MeshError> {
        let next = {
            let h = self.handle.lock().await;
            h.as_ref().ok_or(MeshError::Closed)?.prepare_rotation().await?
        };
        tracing::info!(next_public_key = %next, "mesh key rotation prepared");
        self.published.send_modify(|p| {
            if let Some(p) = p {
                p.next_public_key = Some(next.to_string());
            }
        });
        loop {
            let d = desired_rx.borrow_and_update().clone();
            self.set_peers(&d.peers).await;
            if d.own.as_ref().and_then(|o| o.next_public_key.as_deref()) == Some(next.to_string().as_str()) {
                break;
            }
            tokio::select! {
                r = desired_rx.changed() => if r.is_err() { return Err(MeshError::Closed) },
                _ = self.stopped.notified() => return Err(MeshError::Closed),
            }
        }
        tokio::time::sleep(ROTATION_SETTLE).await;
        let key = {
            let h = self.handle.lock().await;
            h.as_ref().ok_or(MeshError::Closed)?.commit_rotation().await?
        };
        self.published.send_modify(|p| {
            if let Some(p) = p {
                p.public_key = key.to_string();
                p.next_public_key = None;
            }
        });
        Ok(key)
    }

    fn load_rotation(&self) -> Option<u64> {
        std::fs::read_to_string(self.key_dir.join(ROTATION_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn save_rotation(&self, n: u64) {
        let path = self.key_dir.join(ROTATION_FILE);
        if let Err(e) = std::fs::write(&path, n.to_string()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the mesh rotation done");
        }
    }
}

/// A peer of the assignment as the mesh takes it; None for a peer without a mesh
/// end (a native route, which is not the mesh's).
fn mesh_peer(p: &NodePeer) -> Result<Option<MeshPeer>, MeshError> {
    let Some(m) = &p.mesh else { return Ok(None) };
    let key = |field: &'static str, v: &str| -> Result<PublicKey, MeshError> {
        v.parse()
            .map_err(|_| MeshError::invalid(field, format!("{v:?} is not a WireGuard public key")))
    };
    let endpoints = match m.endpoint.parse::<SocketAddr>() {
        Ok(e) => vec![e],
        Err(_) if m.endpoint.is_empty() => vec![],
        Err(_) => {
            return Err(MeshError::invalid(
                "endpoint",
                format!("{:?} is not IP:PORT", m.endpoint),
            ))
        }
    };
    Ok(Some(MeshPeer {
        node_id: p.node_id.clone(),
        public_key: key("public_key", &m.public_key)?,
        next_public_key: m
            .next_public_key
            .as_deref()
            .map(|k| key("next_public_key", k))
            .transpose()?,
        endpoints,
        subnet: p
            .subnet
            .parse()
            .map_err(|_| MeshError::invalid("subnet", format!("{:?} is not an IPv4 network", p.subnet)))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_without_a_mesh_end_are_not_the_meshs_and_bad_keys_are_named() {
        let k = crate::mesh::PrivateKey::generate().public_key().to_string();
        let mut p = NodePeer {
            node_id: "n2".into(),
            subnet: "10.88.2.0/24".into(),
            via: Some("192.0.2.2".into()),
            mesh: None,
        };
        assert_eq!(mesh_peer(&p).unwrap(), None);
        p.mesh = Some(MeshEnd {
            public_key: k.clone(),
            next_public_key: None,
            endpoint: "192.0.2.2:51820".into(),
            rotation: 3,
        });
        let m = mesh_peer(&p).unwrap().unwrap();
        assert_eq!(m.public_key.to_string(), k);
        assert_eq!(m.endpoints, vec!["192.0.2.2:51820".parse::<SocketAddr>().unwrap()]);
        p.mesh.as_mut().unwrap().next_public_key = Some("nope".into());
        let e = mesh_peer(&p).unwrap_err().to_string();
        assert!(e.starts_with("invalid next_public_key: \"nope\""), "{e}");
    }
}
