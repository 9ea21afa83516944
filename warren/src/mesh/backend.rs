//! The WireGuard backend seam: read a device's state, apply one update to it. The
//! kernel module through wireguard-control's netlink backend, userspace WireGuard
//! through its UAPI socket (the process itself is `wggo`'s), and a fake for unit
//! tests. Not what to apply (the plan).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::future::BoxFuture;
use ipnet::{IpNet, Ipv4Net};

use super::error::WgError;
use super::keys::{PrivateKey, PublicKey};
use super::uapi;
use crate::network::netns::{in_netns, Ns};

/// Which implementation carries the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Kernel,
    Userspace,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Kernel => "kernel",
            BackendKind::Userspace => "userspace",
        })
    }
}

/// A WireGuard device as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The public half of the device's private key (`None`: no key set).
    pub public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

/// One peer of a device as it is, with its statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: PublicKey,
    /// Where packets to the peer go: configured, or learned from the peer's last
    /// authenticated packet (WireGuard's roaming).
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; 0 is off.
    pub keepalive: u16,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl PeerState {
    pub fn new(public_key: PublicKey) -> PeerState {
        PeerState {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            keepalive: 0,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }
}

/// One change to a device, applied as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerUpdate>,
}

impl DeviceUpdate {
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none() && self.listen_port.is_none() && self.peers.is_empty()
    }
}

/// A peer to add, change or remove; `None` fields are left as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerUpdate {
    pub public_key: PublicKey,
    pub remove: bool,
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    /// `Some`: replaces the peer's allowed IPs (moving them from any other peer).
    pub allowed_ips: Option<Vec<Ipv4Net>>,
    /// Send a keepalive now (with `keepalive` > 0): with no valid session, that
    /// starts a handshake at once instead of at the next packet or keepalive.
    pub kick: bool,
}

impl PeerUpdate {
    pub fn remove(public_key: PublicKey) -> PeerUpdate {
        PeerUpdate {
            public_key,
            remove: true,
            endpoint: None,
            keepalive: None,
            allowed_ips: None,
            kick: false,
        }
    }
}

/// The seam between the mesh and a WireGuard implementation.
pub trait WgBackend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// The device now; `None` while it does not exist (not created yet, or its
    /// userspace process is starting).
    fn get(&self) -> BoxFuture<'_, Result<Option<DeviceState>, WgError>>;

    /// Applies `u` (the kernel backend creates the interface if it is missing).
    fn set<'a>(&'a self, u: &'a DeviceUpdate) -> BoxFuture<'a, Result<(), WgError>>;
}

/// Userspace WireGuard through its UAPI socket.
#[derive(Clone, Debug)]
pub struct UserspaceBackend {
    socket: PathBuf,
}

impl UserspaceBackend {
    pub fn new(run_dir: &Path, iface: &str) -> UserspaceBackend {
        UserspaceBackend {
            socket: uapi::socket_path(run_dir, iface),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

fn blocking_err(socket: &Path, e: tokio::task::JoinError) -> WgError {
    WgError::Uapi {
        socket: socket.to_path_buf(),
        source: io::Error::other(e.to_string()),
    }
}

impl WgBackend for UserspaceBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Userspace
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<DeviceState>, WgError>> {
        Box::pin(async move {
            let socket = self.socket.clone();
            let r = tokio::task::spawn_blocking(move || uapi::get(&socket))
                .await
                .map_err(|e| blocking_err(&self.socket, e))?;
            match r {
                Ok(d) => Ok(Some(d)),
                // No process behind the socket (yet): no device.
                Err(WgError::Uapi { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn set<'a>(&'a self, u: &'a DeviceUpdate) -> BoxFuture<'a, Result<(), WgError>> {
        Box::pin(async move {
            let socket = self.socket.clone();
            let u = u.clone();
            tokio::task::spawn_blocking(move || uapi::set(&socket, &u))
                .await
                .map_err(|e| blocking_err(&self.socket, e))?
        })
    }
}

/// The kernel module, through wireguard-control's netlink backend, run on a thread
/// inside the node's namespace. Untested here: this machine has no WireGuard module.
#[derive(Clone, Debug)]
pub struct KernelBackend {
    iface: String,
    node_ns: Arc<std::os::fd::OwnedFd>,
}

impl KernelBackend {
    pub fn new(iface: &str, node_ns: Arc<std::os::fd::OwnedFd>) -> KernelBackend {
        KernelBackend {
            iface: iface.to_string(),
            node_ns,
        }
    }

    /// Whether the running kernel has the WireGuard module loaded or built in.
    pub fn available() -> bool {
        Path::new("/sys/module/wireguard").exists()
    }

    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(wireguard_control::InterfaceName) -> io::Result<T> + Send + 'static,
    ) -> Result<T, WgError> {
        let iface = self.iface.clone();
        let err = move |source| WgError::Kernel {
            iface: iface.clone(),
            op,
            source,
        };
        let name: wireguard_control::InterfaceName = self
            .iface
            .parse()
            .map_err(|e: wireguard_control::InvalidInterfaceName| err(e.into()))?;
        let r = in_netns(Ns::Fd(self.node_ns.clone()), move || Ok(f(name))).await;
        match r {
            Ok(r) => r.map_err(err),
            Err(e) => Err(err(io::Error::other(e.to_string()))),
        }
    }
}

impl WgBackend for KernelBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<DeviceState>, WgError>> {
        Box::pin(async move {
            let r = self
                .run("get", |name| {
                    match wireguard_control::Device::get(&name, wireguard_control::Backend::Kernel) {
                        Ok(d) => Ok(Some(from_wg_device(d))),
                        Err(e) if e.raw_os_error() == Some(libc::ENODEV) || e.kind() == io::ErrorKind::NotFound => {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                })
                .await?;
            Ok(r)
        })
    }

    fn set<'a>(&'a self, u: &'a DeviceUpdate) -> BoxFuture<'a, Result<(), WgError>> {
        // A keepalive interval going from 0 to non-zero sends one at once, in the
        // kernel as in wireguard-go: a kick is a 0 first.
        let kicks: Vec<PeerUpdate> = u
            .peers
            .iter()
            .filter(|p| p.kick && !p.remove && p.keepalive.is_some_and(|k| k > 0))
            .map(|p| PeerUpdate {
                keepalive: Some(0),
                endpoint: None,
                allowed_ips: None,
                ..p.clone()
            })
            .collect();
        let pre = (!kicks.is_empty()).then(|| {
            to_wg_update(&DeviceUpdate {
                peers: kicks,
                ..DeviceUpdate::default()
            })
        });
        let wg = to_wg_update(u);
        Box::pin(async move {
            self.run("set", move |name| {
                if let Some(pre) = pre {
                    pre.apply(&name, wireguard_control::Backend::Kernel)?;
                }
                wg.apply(&name, wireguard_control::Backend::Kernel)
            })
            .await
        })
    }
}

fn from_wg_device(d: wireguard_control::Device) -> DeviceState {
    DeviceState {
        public_key: d.public_key.map(|k| PublicKey(k.0)),
        listen_port: d.listen_port.unwrap_or(0),
        peers: d
            .peers
            .into_iter()
            .map(|p| PeerState {
                public_key: PublicKey(p.config.public_key.0),
                endpoint: p.config.endpoint,
                allowed_ips: p
                    .config
                    .allowed_ips
                    .iter()
                    .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                    .collect(),
                keepalive: p.config.persistent_keepalive_interval.unwrap_or(0),
                last_handshake: p.stats.last_handshake_time,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            })
            .collect(),
    }
}

fn to_wg_update(u: &DeviceUpdate) -> wireguard_control::DeviceUpdate {
    let mut w = wireguard_control::DeviceUpdate::new();
    if let Some(k) = &u.private_key {
        w = w.set_private_key(k.to_wg());
    }
    if let Some(p) = u.listen_port {
        w = w.set_listen_port(p);
    }
    for p in &u.peers {
        let key = wireguard_control::Key(p.public_key.0);
        if p.remove {
            w = w.remove_peer_by_key(&key);
            continue;
        }
        let mut b = wireguard_control::PeerConfigBuilder::new(&key);
        if let Some(e) = p.endpoint {
            b = b.set_endpoint(e);
        }
        if let Some(k) = p.keepalive {
            b = b.set_persistent_keepalive_interval(k);
        }
        if let Some(ips) = &p.allowed_ips {
            b = b.replace_allowed_ips();
            for ip in ips {
                b = b.add_allowed_ip(ip.addr().into(), ip.prefix_len());
            }
        }
        w = w.add_peer(b);
    }
    w
}

/// An in-memory device for unit tests: applies updates with WireGuard's semantics
/// (allowed IPs move between peers) and records them.
#[derive(Default)]
pub struct FakeBackend {
    pub device: Mutex<Option<DeviceState>>,
    pub updates: Mutex<Vec<DeviceUpdate>>,
}

impl FakeBackend {
    /// A fake whose device exists, empty.
    pub fn up() -> FakeBackend {
        FakeBackend {
            device: Mutex::new(Some(DeviceState::default())),
            updates: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on the device (e.g. to simulate a handshake or a roamed endpoint).
    pub fn with_device<T>(&self, f: impl FnOnce(&mut DeviceState) -> T) -> T {
        let mut d = self.device.lock().unwrap();
        f(d.get_or_insert_with(DeviceState::default))
    }
}

impl WgBackend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Userspace
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<DeviceState>, WgError>> {
        let d = self.device.lock().unwrap().clone();
        Box::pin(async move { Ok(d) })
    }

    fn set<'a>(&'a self, u: &'a DeviceUpdate) -> BoxFuture<'a, Result<(), WgError>> {
        self.updates.lock().unwrap().push(u.clone());
        self.with_device(|d| {
            if let Some(k) = &u.private_key {
                d.public_key = Some(k.public_key());
            }
            if let Some(p) = u.listen_port {
                d.listen_port = p;
            }
            for p in &u.peers {
                if p.remove {
                    d.peers.retain(|x| x.public_key != p.public_key);
                    continue;
                }
                if !d.peers.iter().any(|x| x.public_key == p.public_key) {
                    d.peers.push(PeerState::new(p.public_key));
                }
                if let Some(ips) = &p.allowed_ips {
                    let ips: Vec<IpNet> = ips.iter().map(|&n| IpNet::V4(n)).collect();
                    for other in d.peers.iter_mut() {
                        other.allowed_ips.retain(|a| !ips.contains(a));
                    }
                    let peer = d.peers.iter_mut().find(|x| x.public_key == p.public_key).unwrap();
                    peer.allowed_ips = ips;
                }
                let peer = d.peers.iter_mut().find(|x| x.public_key == p.public_key).unwrap();
                if let Some(e) = p.endpoint {
                    peer.endpoint = Some(e);
                }
                if let Some(k) = p.keepalive {
                    peer.keepalive = k;
                }
            }
        });
        Box::pin(async { Ok(()) })
    }
}
