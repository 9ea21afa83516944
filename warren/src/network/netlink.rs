//! The real [`NetworkManager`]: the node's bridge, task namespaces and veth pairs,
//! addresses and routes, all through rtnetlink, plus IPv4 forwarding and the
//! masquerade rule. Not address bookkeeping (`ipam`) nor namespace files (`netns`).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::error::{nl_errno, nl_io, NetworkError};
use super::ipam::Ipam;
use super::netns::{self, NetlinkConn, Ns};
use super::rtnl::{
    del_link, get_link, ipv4_addrs, link_controller, link_kind, link_name, link_peer, main_ipv4_routes, set_ipv4_addr,
};
use super::{
    host_veth_name, nft, validate_peers, validate_task_id, NetworkConfig, NetworkManager, PeerRoute, TaskNetwork,
    TaskNetworkStatus, TASK_IFNAME,
};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The node's network, driven through netlink in the namespace of the thread that
/// called [`NetlinkNetwork::new`].
pub struct NetlinkNetwork {
    cfg: NetworkConfig,
    /// The namespace `new` ran in, for the work done on helper threads (sysctl, nft).
    node_ns: Arc<OwnedFd>,
    /// Bound to the node namespace when created, whichever thread polls it.
    conn: NetlinkConn,
    ipam: Ipam,
    /// Serialises setup and teardown of one task; different tasks run in parallel.
    task_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises changes to node-wide state: bridge, peer routes, nft table.
    node_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NetlinkNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkNetwork").field("cfg", &self.cfg).finish()
    }
}

impl NetlinkNetwork {
    /// Validates `cfg`, opens the IPAM state and sets the node up: bridge with the
    /// gateway address, IPv4 forwarding, masquerade rule. Must run inside a tokio
    /// runtime, on a thread in the node's network namespace.
    pub async fn new(cfg: NetworkConfig) -> Result<NetlinkNetwork, NetworkError> {
        let net = NetlinkNetwork::open(cfg)?;
        net.ensure_node().await?;
        Ok(net)
    }

    /// Validates `cfg` and opens the IPAM state without touching the node, for
    /// [`NetlinkNetwork::cleanup_node`] on a node that is leaving: building the
    /// bridge only to delete it would briefly announce a network that is going away.
    /// Must run inside a tokio runtime, on a thread in the node's network namespace.
    pub fn open(cfg: NetworkConfig) -> Result<NetlinkNetwork, NetworkError> {
        cfg.validate()?;
        let node_ns = Arc::new(netns::current_netns()?);
        let conn = NetlinkConn::here()?;
        let ipam = Ipam::open(&cfg.state_dir, cfg.subnet)?;
        let net = NetlinkNetwork {
            cfg,
            node_ns,
            conn,
            ipam,
            task_locks: Mutex::new(HashMap::new()),
            node_lock: tokio::sync::Mutex::new(()),
        };
        Ok(net)
    }

    /// The configuration this network was built with.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// The IPAM of the node subnet.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// Where task `task_id`'s namespace file is (whether or not it exists).
    pub fn netns_path(&self, task_id: &str) -> PathBuf {
        self.cfg.netns_dir.join(format!("{}{task_id}", self.cfg.netns_prefix))
    }

    /// The host end of task `task_id`'s veth pair.
    pub fn host_veth(&self, task_id: &str) -> String {
        host_veth_name(&self.cfg.netns_prefix, task_id)
    }

    /// (Re)creates the node-wide pieces: bridge, its address, forwarding, masquerade.
    pub async fn ensure_node(&self) -> Result<(), NetworkError> {
        let _g = self.node_lock.lock().await;
        self.ensure_bridge_locked().await?;
        self.ensure_forwarding().await?;
        // With masquerade off, a table left from when it was on goes.
        let script = if self.cfg.masquerade {
            nft::masquerade_script(&self.cfg.nft_table, self.cfg.subnet, self.cfg.cluster_cidr)
        } else {
            nft::delete_script(&self.cfg.nft_table)
        };
        nft::apply(self.ns(), &self.cfg.nft_table, script).await?;
        tracing::info!(
            bridge = %self.cfg.bridge,
            gateway = %self.cfg.gateway(),
            subnet = %self.cfg.subnet,
            "node network ready"
        );
        Ok(())
    }

    fn ns(&self) -> Ns {
        Ns::Fd(self.node_ns.clone())
    }

    fn h(&self) -> &Handle {
        &self.conn.handle
    }

    fn task_lock(&self, task_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.task_locks.lock().unwrap_or_else(|e| e.into_inner());
        // Drop locks nobody holds, so the map does not grow with every task ever seen.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(task_id.to_string()).or_default().clone()
    }

    async fn ensure_bridge(&self) -> Result<u32, NetworkError> {
        let _g = self.node_lock.lock().await;
        self.ensure_bridge_locked().await
    }

    async fn ensure_bridge_locked(&self) -> Result<u32, NetworkError> {
        let name = &self.cfg.bridge;
        let link_err = |op, e| NetworkError::Link {
            op,
            link: name.clone(),
            source: nl_io(e),
        };
        let link = match get_link(self.h(), name).await? {
            Some(l) => l,
            None => {
                // A fixed MAC: otherwise the bridge takes the lowest MAC of its ports and
                // changes it as tasks come and go, leaving stale gateway ARP entries.
                let gw = self.cfg.gateway().octets();
                let msg = LinkBridge::new(name)
                    .address(vec![0x02, 0x57, gw[0], gw[1], gw[2], gw[3]])
                    .build();
                match self.h().link().add(msg).execute().await {
                    Ok(()) => tracing::info!(bridge = %name, "created bridge"),
                    Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(link_err("create bridge", e)),
                }
                get_link(self.h(), name).await?.ok_or_else(|| NetworkError::Link {
                    op: "find created bridge",
                    link: name.clone(),
                    source: std::io::Error::from_raw_os_error(libc::ENODEV),
                })?
            }
        };
        match link_kind(&link) {
            Some(InfoKind::Bridge) => {}
            other => {
                return Err(NetworkError::WrongLinkKind {
                    link: name.clone(),
                    kind: other.map_or("device without a kind".into(), |k| k.to_string()),
                    wanted: "bridge",
                })
            }
        }
        let index = link.header.index;
        let gw = self.cfg.gateway();
        let plen = self.cfg.subnet.prefix_len();
        for (addr, p, msg) in ipv4_addrs(self.h(), index, name).await? {
            // Stale gateway addresses of another cluster subnet go; foreign ones stay.
            if (addr, p) != (gw, plen) && self.cfg.cluster_cidr.contains(&addr) {
                tracing::info!(bridge = %name, %addr, "removing stale bridge address");
                self.h()
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(|e| NetworkError::Address {
                        op: "delete",
                        address: format!("{addr}/{p}"),
                        link: name.clone(),
                        source: nl_io(e),
                    })?;
            }
        }
        set_ipv4_addr(self.h(), index, name, gw, plen).await?;
        if !link.header.flags.contains(LinkFlags::Up) {
            self.h()
                .link()
                .change(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| link_err("bring up", e))?;
        }
        Ok(index)
    }

    async fn ensure_forwarding(&self) -> Result<(), NetworkError> {
        netns::in_netns(self.ns(), || {
            let err = |source| NetworkError::Sysctl {
                path: IP_FORWARD,
                source,
            };
            let cur = std::fs::read_to_string(IP_FORWARD).map_err(err)?;
            if cur.trim() != "1" {
                std::fs::write(IP_FORWARD, "1\n").map_err(err)?;
                tracing::info!("enabled IPv4 forwarding");
            }
            Ok(())
        })
        .await
    }

    /// See [`NetworkManager::setup_task`].
    pub async fn setup_task(&self, task_id: &str) -> Result<TaskNetwork, NetworkError> {
        validate_task_id(task_id)?;
        let lock = self.task_lock(task_id);
        let _g = lock.lock().await;
        let bridge = self.ensure_bridge().await?;
        let address = self.ipam.allocate(task_id)?;
        let netns_path = self.netns_path(task_id);
        netns::create_netns(&netns_path).await?;
        let host = self.host_veth(task_id);
        let task = netns::netlink_in(Ns::Path(netns_path.clone())).await?;

        let host_link = get_link(self.h(), &host).await?;
        if let Some(h) = &host_link {
            if link_kind(h) != Some(InfoKind::Veth) {
                return Err(NetworkError::WrongLinkKind {
                    link: host.clone(),
                    kind: link_kind(h).map_or("device without a kind".into(), |k| k.to_string()),
                    wanted: "veth",
                });
            }
        }
        let eth0 = get_link(&task.handle, TASK_IFNAME).await?;
        match (host_link, eth0) {
            // Each end's IFLA_LINK is the other's index: the pair is intact.
            (Some(h), Some(e)) if link_peer(&h) == Some(e.header.index) && link_peer(&e) == Some(h.header.index) => {
                if link_controller(&h) != Some(bridge) || !h.header.flags.contains(LinkFlags::Up) {
                    self.h()
                        .link()
                        .change(
                            LinkUnspec::new_with_index(h.header.index)
                                .controller(bridge)
                                .up()
                                .build(),
                        )
                        .execute()
                        .await
                        .map_err(|e| NetworkError::Link {
                            op: "attach to bridge",
                            link: host.clone(),
                            source: nl_io(e),
                        })?;
                }
            }
            (h, e) => {
                // A half-made or mismatched pair (an end lost with an old namespace, a
                // crash between steps): rebuild it.
                if let Some(h) = h {
                    del_link(self.h(), h.header.index, &host).await?;
                }
                if let Some(e) = e {
                    del_link(&task.handle, e.header.index, TASK_IFNAME).await?;
                }
                self.create_veth(&host, bridge, &netns_path).await?;
            }
        }
        if let Some(mtu) = self.cfg.mtu {
            // Before the addresses: a task never starts a connection at the old MTU.
            super::mtu::ensure_mtu(self.h(), &host, &host, mtu).await?;
            let label = format!("{TASK_IFNAME} in {}", netns_path.display());
            super::mtu::ensure_mtu(&task.handle, TASK_IFNAME, &label, mtu).await?;
        }
        configure_task_ns(
            &task.handle,
            &netns_path,
            address,
            self.cfg.subnet.prefix_len(),
            self.cfg.gateway(),
        )
        .await?;
        tracing::info!(task = task_id, %address, netns = %netns_path.display(), veth = %host, "task network ready");
        Ok(TaskNetwork {
            task_id: task_id.to_string(),
            netns_path,
            address,
            prefix_len: self.cfg.subnet.prefix_len(),
            gateway: self.cfg.gateway(),
            host_veth: host,
        })
    }

    async fn create_veth(&self, host: &str, bridge: u32, netns_path: &std::path::Path) -> Result<(), NetworkError> {
        let ns_fd = netns::open_netns(netns_path)?;
        // The peer is born inside the task namespace as eth0, so no name is ever
        // taken in the node namespace and there is no window with a stray link.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(TASK_IFNAME)
            .setns_by_fd(ns_fd.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, TASK_IFNAME)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(bridge)
            .up()
            .build();
        self.h()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetworkError::Link {
                op: "create veth",
                link: format!("{host} (peer {TASK_IFNAME} in {})", netns_path.display()),
                source: nl_io(e),
            })?;
        drop(ns_fd);
        Ok(())
    }

    /// See [`NetworkManager::teardown_task`].
    pub async fn teardown_task(&self, task_id: &str) -> Result<(), NetworkError> {
        validate_task_id(task_id)?;
        let lock = self.task_lock(task_id);
        let _g = lock.lock().await;
        let host = self.host_veth(task_id);
        // Deleting the host end takes the pair down now; the namespace would only take
        // it with it once the kernel's asynchronous netns cleanup runs.
        if let Some(l) = get_link(self.h(), &host).await? {
            if link_kind(&l) == Some(InfoKind::Veth) {
                del_link(self.h(), l.header.index, &host).await?;
            }
        }
        let path = self.netns_path(task_id);
        let removed = netns::remove_netns(&path)?;
        let released = self.ipam.release(task_id)?;
        tracing::info!(task = task_id, netns_removed = removed, address = ?released, "task network removed");
        Ok(())
    }

    /// See [`NetworkManager::list`].
    pub async fn list(&self) -> Result<Vec<TaskNetworkStatus>, NetworkError> {
        let mut by_task: BTreeMap<String, TaskNetworkStatus> = BTreeMap::new();
        for (task_id, path) in netns::list_netns(&self.cfg.netns_dir, &self.cfg.netns_prefix)? {
            by_task.insert(
                task_id.clone(),
                TaskNetworkStatus {
                    task_id,
                    netns_path: Some(path),
                    address: None,
                },
            );
        }
        for (task_id, addr) in self.ipam.allocations()? {
            by_task
                .entry(task_id.clone())
                .or_insert(TaskNetworkStatus {
                    task_id,
                    netns_path: None,
                    address: None,
                })
                .address = Some(addr);
        }
        Ok(by_task.into_values().collect())
    }

    /// See [`NetworkManager::set_peer_routes`].
    pub async fn set_peer_routes(&self, peers: &[PeerRoute]) -> Result<(), NetworkError> {
        let desired = validate_peers(self.cfg.subnet, self.cfg.cluster_cidr, peers)?;
        let _g = self.node_lock.lock().await;
        let proto = self.cfg.route_protocol;
        let mut ours: BTreeMap<Ipv4Net, Option<Ipv4Addr>> = BTreeMap::new();
        let mut foreign: BTreeMap<Ipv4Net, u8> = BTreeMap::new();
        for r in main_ipv4_routes(self.h()).await? {
            if u8::from(r.protocol) == proto {
                ours.insert(r.destination, r.gateway);
            } else {
                foreign.entry(r.destination).or_insert(u8::from(r.protocol));
            }
        }
        // One unreachable peer or foreign route must not hold the others back: go on,
        // and report the first failure at the end.
        let mut first_err = None;
        for (&dst, &via) in &desired {
            if ours.get(&dst) == Some(&Some(via)) {
                continue;
            }
            if let Some(&protocol) = foreign.get(&dst) {
                if !ours.contains_key(&dst) {
                    tracing::warn!(destination = %dst, protocol, "peer route conflicts with a route warren does not own");
                    first_err.get_or_insert(NetworkError::RouteConflict {
                        destination: dst,
                        protocol,
                    });
                    continue;
                }
            }
            let msg = self.peer_route_msg(dst, via);
            match self.h().route().add(msg).replace().execute().await {
                Ok(()) => tracing::info!(destination = %dst, %via, "peer route set"),
                Err(e) => {
                    let e = NetworkError::Route {
                        op: "add",
                        destination: dst.to_string(),
                        via: via.to_string(),
                        source: nl_io(e),
                    };
                    tracing::warn!(error = %e, "peer route not set");
                    first_err.get_or_insert(e);
                }
            }
        }
        for (dst, via) in ours {
            if desired.contains_key(&dst) {
                continue;
            }
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .protocol(RouteProtocol::from(proto));
            if let Some(via) = via {
                b = b.gateway(via);
            }
            match self.h().route().del(b.build()).execute().await {
                Ok(()) => tracing::info!(destination = %dst, "stale peer route removed"),
                Err(e) if nl_errno(&e) == Some(libc::ESRCH) => {}
                Err(e) => {
                    let e = NetworkError::Route {
                        op: "delete",
                        destination: dst.to_string(),
                        via: via.map_or("(none)".into(), |v| v.to_string()),
                        source: nl_io(e),
                    };
                    tracing::warn!(error = %e, "stale peer route not removed");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn peer_route_msg(&self, dst: Ipv4Net, via: Ipv4Addr) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .gateway(via)
            .protocol(RouteProtocol::from(self.cfg.route_protocol))
            .scope(RouteScope::Universe)
            .kind(RouteType::Unicast)
            .build()
    }

    /// Removes everything of this node: every task namespace, veth and address, the
    /// peer routes, the nft table and the bridge. The object stays usable: a later
    /// `ensure_node` or `setup_task` builds the node again. IPv4 forwarding is left on,
    /// since something else on the host may rely on it.
    pub async fn cleanup_node(&self) -> Result<(), NetworkError> {
        for (task_id, path) in netns::list_netns(&self.cfg.netns_dir, &self.cfg.netns_prefix)? {
            if validate_task_id(&task_id).is_ok() {
                self.teardown_task(&task_id).await?;
            } else {
                netns::remove_netns(&path)?;
            }
        }
        for (task_id, _) in self.ipam.allocations()? {
            self.teardown_task(&task_id).await?;
        }
        self.set_peer_routes(&[]).await?;
        let _g = self.node_lock.lock().await;
        if let Some(bridge) = get_link(self.h(), &self.cfg.bridge).await? {
            if link_kind(&bridge) == Some(InfoKind::Bridge) {
                // veths of tasks whose state was lost still hang off the bridge.
                let links: Vec<LinkMessage> =
                    self.h()
                        .link()
                        .get()
                        .execute()
                        .try_collect()
                        .await
                        .map_err(|e| NetworkError::Link {
                            op: "list links on",
                            link: self.cfg.bridge.clone(),
                            source: nl_io(e),
                        })?;
                for l in links {
                    if link_controller(&l) == Some(bridge.header.index) && link_kind(&l) == Some(InfoKind::Veth) {
                        let name = link_name(&l).unwrap_or_default();
                        del_link(self.h(), l.header.index, &name).await?;
                    }
                }
                del_link(self.h(), bridge.header.index, &self.cfg.bridge).await?;
            }
        }
        nft::apply(self.ns(), &self.cfg.nft_table, nft::delete_script(&self.cfg.nft_table)).await?;
        self.ipam.clear()?;
        tracing::info!(bridge = %self.cfg.bridge, "node network removed");
        Ok(())
    }
}

impl NetworkManager for NetlinkNetwork {
    fn subnet(&self) -> Ipv4Net {
        self.cfg.subnet
    }

    fn setup_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<TaskNetwork, NetworkError>> {
        Box::pin(NetlinkNetwork::setup_task(self, task_id))
    }

    fn teardown_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(NetlinkNetwork::teardown_task(self, task_id))
    }

    fn set_peer_routes<'a>(&'a self, peers: &'a [PeerRoute]) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(NetlinkNetwork::set_peer_routes(self, peers))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskNetworkStatus>, NetworkError>> {
        Box::pin(NetlinkNetwork::list(self))
    }
}

/// Sets up the inside of a task namespace: `lo` up, `eth0` with exactly the task
/// address, up, and the default route via the gateway.
async fn configure_task_ns(
    h: &Handle,
    netns_path: &std::path::Path,
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<(), NetworkError> {
    let in_ns = |name: &str| format!("{name} in {}", netns_path.display());
    for name in ["lo", TASK_IFNAME] {
        let link = get_link(h, name).await?.ok_or_else(|| NetworkError::Link {
            op: "find",
            link: in_ns(name),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
        let index = link.header.index;
        if name == TASK_IFNAME {
            for (a, p, msg) in ipv4_addrs(h, index, &in_ns(name)).await? {
                if (a, p) != (address, prefix_len) {
                    h.address()
                        .del(msg)
                        .execute()
                        .await
                        .map_err(|e| NetworkError::Address {
                            op: "delete",
                            address: format!("{a}/{p}"),
                            link: in_ns(name),
                            source: nl_io(e),
                        })?;
                }
            }
            set_ipv4_addr(h, index, &in_ns(name), address, prefix_len).await?;
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            h.link()
                .change(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| NetworkError::Link {
                    op: "bring up",
                    link: in_ns(name),
                    source: nl_io(e),
                })?;
        }
        if name == TASK_IFNAME {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(index)
                .build();
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(|e| NetworkError::Route {
                    op: "add",
                    destination: format!("default in {}", netns_path.display()),
                    via: gateway.to_string(),
                    source: nl_io(e),
                })?;
        }
    }
    Ok(())
}
