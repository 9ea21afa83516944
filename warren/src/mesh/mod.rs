//! The node's encrypted mesh to the other nodes (`--overlay wireguard`): one
//! WireGuard interface with a peer per other node, whose allowed IPs are that
//! node's task subnet, routes to those subnets through it, its MTU derived from
//! the underlay, keepalive for nodes behind NAT, endpoints that follow roaming
//! peers, and key rotation without dropping connections. Not the Raft state that
//! lists the peers (the caller hands them in), not task interfaces (`network`),
//! not service load balancing (`dataplane`).
//!
//! Shape: [`MeshConfig::build`] does every fallible setup (validation, the key,
//! the underlay MTU, the backend) and returns a [`Mesh`]; [`Mesh::spawn`] starts
//! the reconciler (and, for userspace WireGuard, the supervised `wireguard-go`)
//! and returns the [`MeshHandle`] that feeds it peers and stops it. Each
//! reconciliation reads the device, the link and the routes, plans the steps
//! (`plan`) and applies them through the [`WgBackend`] and [`MeshLink`] seams.
//!
//! Rotation, across the nodes: the rotating node prepares a key and publishes its
//! public half as `next_public_key`; every peer adds a second entry for it (no
//! allowed IPs yet, so traffic stays on the old session); the rotating node then
//! commits, switching its device to the new key, which makes it handshake again
//! with every peer at once; a peer moves the subnet to the new entry at its first
//! handshake and drops the old one. Packets in flight during that move are
//! retransmitted by TCP; no connection is reset.

mod backend;
mod error;
mod keys;
mod link;
mod plan;
mod reconcile;
mod uapi;
mod wggo;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{mpsc, oneshot, watch};

use reconcile::{run, Reconciler};

pub use backend::{
    BackendKind, DeviceState, DeviceUpdate, FakeBackend, KernelBackend, PeerState, PeerUpdate, UserspaceBackend,
    WgBackend,
};
pub use error::{MeshError, WgError};
pub use keys::{KeyStore, PrivateKey, PublicKey, NEXT_KEY_FILE, PRIVATE_KEY_FILE};
pub use link::{FakeLink, LinkState, MeshLink, NetlinkMeshLink, RouteState, RouteTarget};
pub use plan::{
    plan_device, plan_kick, plan_link, validate_peers, Endpoints, MeshPeer, PlanConfig, Step, HANDSHAKE_FRESH,
    TRY_ENDPOINT_FOR,
};
pub use uapi::socket_path;

use crate::network::{gateway_of, RTPROT_WARREN};

/// The mesh interface unless configured otherwise.
pub const DEFAULT_INTERFACE: &str = "warren-wg";
/// WireGuard's usual UDP port: the one to open between nodes.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// Where userspace WireGuard's UAPI sockets go (wireguard-go's and `wg`'s own).
pub const DEFAULT_RUN_DIR: &str = "/run/wireguard";
/// Keepalive for every peer: under the 30 s UDP timeout of common NATs.
pub const DEFAULT_KEEPALIVE_SECS: u16 = 25;
/// The route protocol of the mesh's routes (`ip route show proto 88`): not the
/// native overlay's 87, so neither removes the other's routes.
pub const RTPROT_WARREN_MESH: u8 = 88;
/// WireGuard's per-packet overhead with an IPv6 underlay: 40 (IPv6) + 8 (UDP) +
/// 32 (WireGuard header and tag). An IPv4 underlay needs 60; taking 80 keeps the
/// mesh working when an endpoint is, or roams to, IPv6. 1500 - 80 = 1420, as wg-quick.
pub const WG_OVERHEAD: u32 = 80;
/// The underlay MTU assumed when the node has no default route.
pub const FALLBACK_UNDERLAY_MTU: u32 = 1500;
/// The smallest mesh MTU accepted (IPv6's minimum link MTU).
pub const MIN_MTU: u32 = 1280;

/// How often the reconciler looks at the device without being asked: endpoints of
/// silent peers, a restarted device, drift.
const TICK: Duration = Duration::from_secs(1);
/// How often while a peer is rotating its key: the first handshake on the new key
/// moves its subnet, so this bounds the window in which its packets are dropped.
const ROTATION_TICK: Duration = Duration::from_millis(20);

/// Which WireGuard implementation to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// The kernel module when it is loaded, otherwise userspace.
    Auto,
    Kernel,
    Userspace,
}

impl std::str::FromStr for BackendChoice {
    type Err = MeshError;

    fn from_str(s: &str) -> Result<Self, MeshError> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "kernel" => Ok(BackendChoice::Kernel),
            "userspace" => Ok(BackendChoice::Userspace),
            other => Err(MeshError::invalid(
                "backend",
                format!("{other:?} is not one of auto, kernel, userspace"),
            )),
        }
    }
}

/// How one node's mesh is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// The WireGuard interface (default `warren-wg`).
    pub interface: String,
    /// The UDP port WireGuard listens on (default 51820).
    pub listen_port: u16,
    /// Where the node's private key lives (`<data dir>/wireguard`, mode 0700).
    pub key_dir: PathBuf,
    /// Userspace WireGuard's socket directory (default `/run/wireguard`).
    pub run_dir: PathBuf,
    pub backend: BackendChoice,
    /// The userspace implementation (default `wireguard-go` on the PATH).
    pub wireguard_go: PathBuf,
    /// The mesh MTU; `None`: the underlay's (default route's interface) minus 80.
    pub mtu: Option<u32>,
    /// Persistent keepalive for every peer, in seconds; 0 turns it off.
    pub keepalive_secs: u16,
    /// This node's task subnet.
    pub subnet: Ipv4Net,
    /// The cluster CIDR: what the mesh carries, and refuses when no peer has it.
    pub cluster_cidr: Ipv4Net,
    /// Source address of packets the node itself sends into the mesh; `None`: the
    /// subnet's gateway (the bridge's address), which peers accept as the node's.
    pub route_src: Option<Ipv4Addr>,
    pub route_protocol: u8,
}

impl MeshConfig {
    /// The defaults for a node with task subnet `subnet`, keys in `key_dir`.
    pub fn new(key_dir: impl Into<PathBuf>, subnet: Ipv4Net, cluster_cidr: Ipv4Net) -> MeshConfig {
        MeshConfig {
            interface: DEFAULT_INTERFACE.to_string(),
            listen_port: DEFAULT_LISTEN_PORT,
            key_dir: key_dir.into(),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            backend: BackendChoice::Auto,
            wireguard_go: PathBuf::from("wireguard-go"),
            mtu: None,
            keepalive_secs: DEFAULT_KEEPALIVE_SECS,
            subnet,
            cluster_cidr,
            route_src: None,
            route_protocol: RTPROT_WARREN_MESH,
        }
    }

    /// One clear error for the first bad field.
    pub fn validate(&self) -> Result<(), MeshError> {
        crate::network::validate_ifname("interface", &self.interface).map_err(|e| match e {
            crate::network::NetworkError::Invalid { field, reason } => MeshError::Invalid { field, reason },
            other => MeshError::Network(other),
        })?;
        if self.listen_port == 0 {
            return Err(MeshError::invalid("listen_port", "must be a UDP port, not 0"));
        }
        if self.key_dir.as_os_str().is_empty() {
            return Err(MeshError::invalid("key_dir", "must not be empty"));
        }
        if !self.run_dir.is_absolute() {
            return Err(MeshError::invalid(
                "run_dir",
                format!("{} is not an absolute path", self.run_dir.display()),
            ));
        }
        if let Some(m) = self.mtu {
            if !(MIN_MTU..=65535).contains(&m) {
                return Err(MeshError::invalid("mtu", format!("{m} is outside {MIN_MTU} to 65535")));
            }
        }
        if self.cluster_cidr.trunc() != self.cluster_cidr {
            return Err(MeshError::invalid(
                "cluster_cidr",
                format!("{} has host bits set", self.cluster_cidr),
            ));
        }
        if !self.cluster_cidr.contains(&self.subnet) || self.subnet.trunc() != self.subnet {
            return Err(MeshError::invalid(
                "subnet",
                format!(
                    "{} is not a subnet of the cluster CIDR {}",
                    self.subnet, self.cluster_cidr
                ),
            ));
        }
        if self.route_protocol <= 4 || self.route_protocol == RTPROT_WARREN {
            return Err(MeshError::invalid(
                "route_protocol",
                format!(
                    "{} is the kernel's (0-4) or the native overlay's ({RTPROT_WARREN}); pick another, e.g. {RTPROT_WARREN_MESH}",
                    self.route_protocol
                ),
            ));
        }
        Ok(())
    }

    fn mtu_for(&self, underlay: Option<u32>) -> Result<u32, MeshError> {
        if let Some(m) = self.mtu {
            return Ok(m);
        }
        let under = underlay.unwrap_or(FALLBACK_UNDERLAY_MTU);
        let mtu = under.saturating_sub(WG_OVERHEAD);
        if mtu < MIN_MTU {
            return Err(MeshError::invalid(
                "mtu",
                format!(
                    "the underlay MTU {under} leaves {mtu} for the mesh, under {MIN_MTU}; set the mesh MTU explicitly"
                ),
            ));
        }
        Ok(mtu)
    }

    /// Validates, loads (or creates) the node's key, derives the MTU and picks the
    /// backend. Must run inside a tokio runtime, on a thread in the node's network
    /// namespace: the mesh lives in that namespace from then on.
    pub async fn build(self) -> Result<Mesh, MeshError> {
        self.validate()?;
        let node_ns = Arc::new(crate::network::netns::current_netns()?);
        let link = NetlinkMeshLink::here()?;
        let keys = KeyStore::new(&self.key_dir);
        let key = keys.load_or_create()?;
        let next = keys.next()?;
        let mtu = self.mtu_for(link.default_route_mtu().await?)?;
        let kind = match self.backend {
            BackendChoice::Auto if KernelBackend::available() => BackendKind::Kernel,
            BackendChoice::Auto | BackendChoice::Userspace => BackendKind::Userspace,
            BackendChoice::Kernel => BackendKind::Kernel,
        };
        let (backend, wggo): (Arc<dyn WgBackend>, Option<wggo::WgGoConfig>) = match kind {
            BackendKind::Kernel => (Arc::new(KernelBackend::new(&self.interface, node_ns.clone())), None),
            BackendKind::Userspace => {
                let go = wggo::WgGoConfig {
                    binary: self.wireguard_go.clone(),
                    iface: self.interface.clone(),
                    run_dir: self.run_dir.clone(),
                    node_ns: node_ns.clone(),
                };
                wggo::check_binary(&go.binary)?;
                (
                    Arc::new(UserspaceBackend::new(&self.run_dir, &self.interface)),
                    Some(go),
                )
            }
        };
        tracing::info!(
            iface = %self.interface,
            backend = %kind,
            port = self.listen_port,
            mtu,
            public_key = %key.public_key(),
            "mesh built"
        );
        let plan = PlanConfig {
            listen_port: self.listen_port,
            keepalive: self.keepalive_secs,
            mtu,
            subnet: self.subnet,
            cluster_cidr: self.cluster_cidr,
            route_src: Some(self.route_src.unwrap_or_else(|| gateway_of(self.subnet))),
            route_protocol: self.route_protocol,
        };
        Ok(Mesh {
            rec: Reconciler {
                iface: self.interface,
                plan,
                backend,
                link: Arc::new(link),
                keys,
                key,
                next,
                peers: Vec::new(),
                tries: Endpoints::default(),
            },
            wggo,
        })
    }
}

/// `cluster leave` after a daemon that could not clean up (killed): stops the
/// userspace WireGuard named in `run_dir`'s pid file for `interface`, removes the
/// mesh's routes (protocol `route_protocol`) and the interface. Runs in the node's
/// namespace, inside a runtime. True when something was there.
pub async fn leave(interface: &str, run_dir: &std::path::Path, route_protocol: u8) -> Result<bool, MeshError> {
    let mut found = false;
    let pid_file = run_dir.join(format!("{interface}.pid"));
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        // Only a wireguard-go: a stale pid file may name a recycled pid.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim().starts_with("wireguard") {
            // SAFETY: kill(2) of the userspace WireGuard this node's daemon started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            found = true;
        }
        let _ = std::fs::remove_file(&pid_file);
    }
    let link = NetlinkMeshLink::here()?;
    for r in link.routes().await? {
        if r.protocol == route_protocol {
            link.delete_route(interface, r).await?;
            found = true;
        }
    }
    if let Some(l) = link.link(interface).await? {
        link.delete_link(interface, l.index).await?;
        found = true;
    }
    Ok(found)
}

/// A built mesh, not running yet.
pub struct Mesh {
    rec: Reconciler,
    wggo: Option<wggo::WgGoConfig>,
}

impl Mesh {
    pub fn public_key(&self) -> PublicKey {
        self.rec.key.public_key()
    }

    /// The MTU of the mesh interface, and so of every task interface on the node.
    pub fn mtu(&self) -> u32 {
        self.rec.plan.mtu
    }

    pub fn backend(&self) -> BackendKind {
        self.rec.backend.kind()
    }

    /// Starts the reconciler (and wireguard-go for userspace WireGuard).
    pub fn spawn(self) -> Result<MeshHandle, MeshError> {
        let wggo = match self.wggo {
            Some(cfg) => Some(wggo::WireguardGo::spawn(cfg)?),
            None => None,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (peers_tx, peers_rx) = watch::channel(Vec::new());
        let public_key = self.rec.key.public_key();
        let mtu = self.rec.plan.mtu;
        let own_subnet = self.rec.plan.subnet;
        let cluster_cidr = self.rec.plan.cluster_cidr;
        let (key_tx, key_rx) = watch::channel(public_key);
        let task = tokio::spawn(run(self.rec, wggo, cmd_rx, peers_rx, key_tx));
        Ok(MeshHandle {
            cmd: cmd_tx,
            peers: peers_tx,
            key: key_rx,
            mtu,
            own_subnet,
            cluster_cidr,
            task: Some(task),
        })
    }
}

/// A peer as `warren node inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    /// The node this key belongs to, if it is a configured peer.
    pub node_id: Option<String>,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub keepalive_secs: u16,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The mesh of one node, as it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MeshStatus {
    pub interface: String,
    pub backend: BackendKind,
    pub public_key: PublicKey,
    pub next_public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub mtu: u32,
    /// The device exists (its userspace process is up).
    pub up: bool,
    pub peers: Vec<PeerStatus>,
}

enum Cmd {
    Sync(oneshot::Sender<Result<Vec<Step>, MeshError>>),
    Status(oneshot::Sender<Result<MeshStatus, MeshError>>),
    Prepare(oneshot::Sender<Result<PublicKey, MeshError>>),
    Commit(oneshot::Sender<Result<PublicKey, MeshError>>),
    Stop(Stop, oneshot::Sender<Result<(), MeshError>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Remove the interface and routes (userspace: stop wireguard-go).
    Remove,
    /// Leave everything in place for the next daemon (restart in place).
    Detach,
}

/// The running mesh: feed it peers, ask for its state, rotate its key, stop it.
pub struct MeshHandle {
    cmd: mpsc::Sender<Cmd>,
    peers: watch::Sender<Vec<MeshPeer>>,
    key: watch::Receiver<PublicKey>,
    mtu: u32,
    own_subnet: Ipv4Net,
    cluster_cidr: Ipv4Net,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MeshHandle {
    /// The node's current public key (what the Raft state should carry).
    pub fn public_key(&self) -> PublicKey {
        *self.key.borrow()
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Replaces the desired peers. A bad list is refused whole, with an error
    /// naming the peer and the field, and changes nothing.
    pub fn set_peers(&self, peers: Vec<MeshPeer>) -> Result<(), MeshError> {
        validate_peers(&self.public_key(), self.own_subnet, self.cluster_cidr, &peers)?;
        self.peers.send_replace(peers);
        Ok(())
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, MeshError>>) -> Cmd) -> Result<T, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).await.map_err(|_| MeshError::Closed)?;
        rx.await.map_err(|_| MeshError::Closed)?
    }

    /// Reconciles now; returns the steps taken (empty when all was in place).
    pub async fn sync(&self) -> Result<Vec<Step>, MeshError> {
        self.call(Cmd::Sync).await
    }

    pub async fn status(&self) -> Result<MeshStatus, MeshError> {
        self.call(Cmd::Status).await
    }

    /// Prepares a key rotation; returns the public key to publish as
    /// `next_public_key`. Traffic keeps using the current key.
    pub async fn prepare_rotation(&self) -> Result<PublicKey, MeshError> {
        self.call(Cmd::Prepare).await
    }

    /// Switches the device to the prepared key once the peers list it as this
    /// node's `next_public_key`; returns the new public key.
    pub async fn commit_rotation(&self) -> Result<PublicKey, MeshError> {
        self.call(Cmd::Commit).await
    }

    async fn stop(mut self, how: Stop) -> Result<(), MeshError> {
        let r = self.call(|tx| Cmd::Stop(how, tx)).await;
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        r
    }

    /// Stops the mesh and removes what it made: the interface (stopping
    /// wireguard-go) and its routes. The key stays for the next start.
    pub async fn shutdown(self) -> Result<(), MeshError> {
        self.stop(Stop::Remove).await
    }

    /// Stops reconciling but leaves the interface, its sessions and wireguard-go
    /// running, for a daemon restarting in place to adopt.
    pub async fn detach(self) -> Result<(), MeshError> {
        self.stop(Stop::Detach).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn rec(backend: Arc<FakeBackend>, link: Arc<FakeLink>, dir: &std::path::Path) -> Reconciler {
        let keys = KeyStore::new(dir);
        let key = keys.load_or_create().unwrap();
        Reconciler {
            iface: "warren-wg".into(),
            plan: PlanConfig {
                listen_port: 51820,
                keepalive: 25,
                mtu: 1420,
                subnet: net("10.88.1.0/24"),
                cluster_cidr: net("10.88.0.0/16"),
                route_src: Some("10.88.1.1".parse().unwrap()),
                route_protocol: RTPROT_WARREN_MESH,
            },
            backend,
            link,
            keys,
            key,
            next: None,
            peers: Vec::new(),
            tries: Endpoints::default(),
        }
    }

    #[tokio::test]
    async fn reconcile_applies_once_then_is_idempotent_and_removes_its_routes() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(FakeBackend::up());
        let link = Arc::new(FakeLink::with_link(5, 1500));
        let mut r = rec(backend.clone(), link.clone(), dir.path());
        r.peers = vec![MeshPeer {
            node_id: "n2".into(),
            public_key: PrivateKey::generate().public_key(),
            next_public_key: None,
            endpoints: vec!["192.0.2.2:51820".parse().unwrap()],
            subnet: net("10.88.2.0/24"),
        }];
        let steps = r.reconcile().await.unwrap();
        let names: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(
            names[0].starts_with("1 configure") && names[1].starts_with("2 peers"),
            "{names:?}"
        );
        assert_eq!(&names[2..4], ["3 mtu 1420", "4 up"]);
        assert!(
            r.tries.tried.contains_key(&r.peers[0].public_key),
            "the endpoint set is remembered"
        );
        assert_eq!(r.reconcile().await.unwrap(), vec![], "a second pass changes nothing");
        let st = r.status().await.unwrap();
        assert_eq!(st.peers.len(), 1);
        assert_eq!(st.peers[0].node_id.as_deref(), Some("n2"));

        r.remove().await.unwrap();
        assert!(link.routes.lock().unwrap().is_empty());
    }

    #[test]
    fn config_defaults_validate_and_bad_fields_are_named() {
        let c = MeshConfig::new("/var/lib/warren/wireguard", net("10.88.1.0/24"), net("10.88.0.0/16"));
        c.validate().unwrap();
        assert_eq!(c.mtu_for(Some(1500)).unwrap(), 1420);
        assert_eq!(c.mtu_for(None).unwrap(), 1420);
        assert_eq!(c.mtu_for(Some(9000)).unwrap(), 8920);
        let e = c.mtu_for(Some(1300)).unwrap_err().to_string();
        assert!(e.starts_with("invalid mtu: the underlay MTU 1300 leaves 1220"), "{e}");
        type Mutation = Box<dyn Fn(&mut MeshConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|c| c.interface = "a-very-long-interface".into()),
                "invalid interface: ",
            ),
            (Box::new(|c| c.listen_port = 0), "invalid listen_port: "),
            (Box::new(|c| c.run_dir = "run".into()), "invalid run_dir: "),
            (Box::new(|c| c.mtu = Some(1000)), "invalid mtu: 1000 is outside"),
            (Box::new(|c| c.subnet = net("10.99.1.0/24")), "invalid subnet: "),
            (
                Box::new(|c| c.route_protocol = RTPROT_WARREN),
                "invalid route_protocol: 87",
            ),
            (Box::new(|c| c.key_dir = PathBuf::new()), "invalid key_dir: "),
        ];
        for (mutate, want) in cases {
            let mut c = c.clone();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
        assert!("kernel".parse::<BackendChoice>().is_ok());
        let e = "bpf".parse::<BackendChoice>().unwrap_err().to_string();
        assert_eq!(e, "invalid backend: \"bpf\" is not one of auto, kernel, userspace");
    }
}
