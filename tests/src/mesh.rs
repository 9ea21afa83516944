//! Harness for the mesh tests and benchmarks: a node of `warren::mesh` run as a
//! library inside a network namespace (a tokio runtime on a thread that entered
//! it, so every socket and netlink connection the mesh opens lives there), with
//! Warren's own task network (`NetlinkNetwork`) beside it for task namespaces.
//! Dropping a node shuts the mesh down (stopping its wireguard-go), removes its
//! task networks and bridge, and kills a wireguard-go still named in its run dir.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::Ipv4Net;
use nix::sched::{setns, CloneFlags};
use std::os::fd::AsFd;
use warren::mesh::{MeshConfig, MeshHandle, MeshPeer, MeshStatus, PeerStatus, PublicKey};
use warren::network::{NetlinkNetwork, NetworkConfig, TaskNetwork};

use crate::netns::NetnsFiles;

/// A current-thread tokio runtime driven by a thread inside a namespace.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    pub fn new(ns: &Path) -> NsRuntime {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ns = ns.to_path_buf();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
            setns(f.as_fd(), CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("enter {}: {e}", ns.display()));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            tx.send(rt.handle().clone()).expect("hand over the runtime");
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let handle = rx.recv().expect("namespace runtime thread died");
        NsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `fut` on the namespace's runtime and waits for it; a panic is re-raised.
    pub fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        match futures::executor::block_on(self.handle.spawn(fut)) {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("namespace task: {e}"),
        }
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a mesh node is given.
pub struct MeshNodeConfig {
    pub name: String,
    /// The namespace the node runs in.
    pub ns: PathBuf,
    pub subnet: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    /// Where it listens, as its peers should configure it.
    pub endpoint: SocketAddr,
    pub keepalive_secs: u16,
    pub interface: String,
    /// The task network's outbound masquerade rule (its nftables table turns on
    /// connection tracking for every packet of the namespace).
    pub masquerade: bool,
}

/// One node: its mesh and its task network.
pub struct MeshNode {
    pub name: String,
    pub subnet: Ipv4Net,
    pub endpoint: SocketAddr,
    pub interface: String,
    pub mtu: u32,
    pub ns: PathBuf,
    mesh: Option<Arc<MeshHandle>>,
    net: Option<Arc<NetlinkNetwork>>,
    rt: Option<NsRuntime>,
    _files: NetnsFiles,
    pub run_dir: tempfile::TempDir,
    pub data_dir: tempfile::TempDir,
}

impl MeshNode {
    /// Builds the mesh (userspace WireGuard: this machine has no module), then the
    /// task network with the mesh's MTU, then starts the mesh.
    pub fn start(c: MeshNodeConfig) -> MeshNode {
        let rt = NsRuntime::new(&c.ns);
        let run_dir = tempfile::Builder::new().prefix("warren-wg-run-").tempdir().unwrap();
        let data_dir = tempfile::Builder::new().prefix("warren-mesh-").tempdir().unwrap();
        let mut mc = MeshConfig::new(data_dir.path().join("wireguard"), c.subnet, c.cluster_cidr);
        mc.interface = c.interface.clone();
        mc.listen_port = c.endpoint.port();
        mc.run_dir = run_dir.path().to_path_buf();
        mc.backend = warren::mesh::BackendChoice::Userspace;
        mc.keepalive_secs = c.keepalive_secs;
        let prefix = format!("{}-t-", c.name);
        let mut nc = NetworkConfig::new(&c.name, c.subnet, c.cluster_cidr, data_dir.path().join("net"));
        nc.netns_prefix = prefix.clone();
        nc.masquerade = c.masquerade;
        let files = NetnsFiles::new(&nc.netns_dir, &prefix);
        let (mesh, net, mtu) = rt.run(async move {
            let mesh = mc.build().await.expect("build the mesh");
            let mtu = mesh.mtu();
            nc.mtu = Some(mtu);
            let net = NetlinkNetwork::new(nc).await.expect("task network");
            let handle = mesh.spawn().expect("start the mesh");
            (Arc::new(handle), Arc::new(net), mtu)
        });
        MeshNode {
            name: c.name,
            subnet: c.subnet,
            endpoint: c.endpoint,
            interface: c.interface,
            mtu,
            ns: c.ns,
            mesh: Some(mesh),
            net: Some(net),
            rt: Some(rt),
            _files: files,
            run_dir,
            data_dir,
        }
    }

    fn rt(&self) -> &NsRuntime {
        self.rt.as_ref().expect("runtime")
    }

    pub fn mesh(&self) -> Arc<MeshHandle> {
        self.mesh.clone().expect("mesh running")
    }

    pub fn public_key(&self) -> PublicKey {
        self.mesh().public_key()
    }

    /// This node as a peer of the others.
    pub fn as_peer(&self) -> MeshPeer {
        MeshPeer {
            node_id: self.name.clone(),
            public_key: self.public_key(),
            next_public_key: None,
            endpoints: vec![self.endpoint],
            subnet: self.subnet,
        }
    }

    pub fn set_peers(&self, peers: Vec<MeshPeer>) {
        self.mesh().set_peers(peers).expect("set peers");
    }

    pub fn status(&self) -> MeshStatus {
        let m = self.mesh();
        self.rt().run(async move { m.status().await.expect("mesh status") })
    }

    /// The device's entry for `key`, if any.
    pub fn peer(&self, key: &PublicKey) -> Option<PeerStatus> {
        self.status().peers.into_iter().find(|p| p.public_key == *key)
    }

    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(Arc<MeshHandle>) -> futures::future::BoxFuture<'static, T>,
    ) -> T {
        let fut = f(self.mesh());
        self.rt().run(fut)
    }

    /// A task network on this node (Warren's own veth, address, routes, MTU).
    pub fn task(&self, id: &str) -> TaskNetwork {
        let net = self.net.clone().expect("network");
        let id = id.to_string();
        self.rt()
            .run(async move { net.setup_task(&id).await.expect("task network") })
    }

    /// The pid of the node's wireguard-go, from its pid file.
    pub fn wireguard_go_pid(&self) -> Option<i32> {
        let p = self.run_dir.path().join(format!("{}.pid", self.interface));
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    /// Stops the mesh (wireguard-go, its interface and routes) and the task network.
    pub fn shutdown(&mut self) {
        if let Some(m) = self.mesh.take() {
            let rt = self.rt.as_ref().expect("runtime");
            let m = Arc::try_unwrap(m).unwrap_or_else(|_| panic!("mesh handle of {} still shared", self.name));
            rt.run(async move { m.shutdown().await.expect("mesh shutdown") });
        }
        if let Some(n) = self.net.take() {
            let rt = self.rt.as_ref().expect("runtime");
            rt.run(async move { n.cleanup_node().await.expect("network cleanup") });
        }
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Best effort without asserting: the test already failed.
            if let Some(m) = self.mesh.take() {
                if let (Ok(m), Some(rt)) = (Arc::try_unwrap(m), self.rt.as_ref()) {
                    rt.run(async move {
                        let _ = m.shutdown().await;
                    });
                }
            }
            if let (Some(n), Some(rt)) = (self.net.take(), self.rt.as_ref()) {
                rt.run(async move {
                    let _ = n.cleanup_node().await;
                });
            }
        } else {
            self.shutdown();
        }
        if let Some(pid) = self.wireguard_go_pid() {
            // SAFETY: kill(2) of the process this node started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.rt.take();
    }
}

/// The peers of `me` among `all`.
pub fn peers_of(me: &MeshNode, all: &[&MeshNode]) -> Vec<MeshPeer> {
    all.iter().filter(|n| n.name != me.name).map(|n| n.as_peer()).collect()
}

/// The gateway (bridge) address of a node subnet.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    warren::network::gateway_of(subnet)
}
