//! End-to-end tests of `warren::network` against the real kernel: every simulated node
//! runs in a network namespace the test creates, so the host's own network is never
//! touched. Needs root, iproute2, nsenter, busybox and nftables.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use warren::network::{NetlinkNetwork, NetworkConfig, NetworkError, NetworkManager, TaskNetwork, RTPROT_WARREN};
use warren_tests::netns::{
    bridge, nsenter, ping, require_network_tools, tcp_request, unique_name, veth_pair, NetNs, NetnsFiles, TcpServer,
    NETNS_RUN_DIR,
};

const CLUSTER: &str = "10.88.0.0/16";
const WAIT: Duration = Duration::from_secs(5);

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// A simulated node: its namespace, IPAM directory, a config whose namespace files
/// are unique to this test, and a guard that removes those files on any exit.
struct Node {
    // Field order is drop order: namespace files first, then the node namespace.
    files: NetnsFiles,
    ns: NetNs,
    cfg: NetworkConfig,
    _state: tempfile::TempDir,
}

impl Node {
    fn new(tag: &str, subnet: &str) -> Node {
        let name = unique_name(&format!("wtn-{tag}"));
        let ns = NetNs::new(&name);
        let state = tempfile::tempdir().unwrap();
        let mut cfg = NetworkConfig::new(&name, net(subnet), net(CLUSTER), state.path());
        cfg.netns_dir = NETNS_RUN_DIR.into();
        let files = NetnsFiles::new(NETNS_RUN_DIR, &cfg.netns_prefix);
        Node {
            files,
            ns,
            cfg,
            _state: state,
        }
    }

    /// Runs `f` with a fresh manager built inside the node namespace (as a restarted
    /// agent would), on a current-thread runtime there.
    fn with<T, F>(&self, f: F) -> T
    where
        T: Send,
        F: for<'a> FnOnce(&'a NetlinkNetwork) -> futures::future::BoxFuture<'a, T> + Send,
    {
        let cfg = self.cfg.clone();
        self.ns.block_on(|| async move {
            let n = NetlinkNetwork::new(cfg).await.expect("NetlinkNetwork::new");
            f(&n).await
        })
    }

    fn setup(&self, tasks: &[&str]) -> Vec<TaskNetwork> {
        let tasks: Vec<String> = tasks.iter().map(|t| t.to_string()).collect();
        self.with(move |n| {
            Box::pin(async move {
                let mut out = Vec::new();
                for t in &tasks {
                    out.push(n.setup_task(t).await.expect("setup_task"));
                }
                out
            })
        })
    }

    fn cleanup(&self) {
        self.with(|n| Box::pin(async move { n.cleanup_node().await.expect("cleanup_node") }));
    }

    fn netns_file(&self, task: &str) -> std::path::PathBuf {
        Path::new(NETNS_RUN_DIR).join(format!("{}{task}", self.cfg.netns_prefix))
    }

    fn link_exists(&self, name: &str) -> bool {
        self.ns.try_ip(&["link", "show", "dev", name]).status.success()
    }

    fn warren_routes(&self) -> String {
        self.ns
            .ip(&["-4", "route", "show", "proto", &RTPROT_WARREN.to_string()])
    }
}

/// Connects a node namespace to the lan namespace's bridge with a veth pair and gives
/// the node end `addr`.
fn wire_to_lan(node: &Node, lan: &NetNs, lan_port: &str, addr: &str) -> warren_tests::netns::Link {
    let link = veth_pair(&node.ns, "lan0", lan, lan_port);
    lan.ip(&["link", "set", lan_port, "master", "lanbr"]);
    node.ns.ip(&["addr", "add", addr, "dev", "lan0"]);
    link
}

#[test]
fn three_tasks_get_distinct_addresses_and_reach_each_other() {
    require_network_tools();
    let node = Node::new("three", "10.88.3.0/24");
    let gw = Ipv4Addr::new(10, 88, 3, 1);

    // Set the three up concurrently from several tokio tasks on the node's runtime.
    let tasks = node.with(|n| {
        Box::pin(async move {
            let r = futures::future::join_all(["a1", "a2", "a3"].map(|t| n.setup_task(t))).await;
            r.into_iter().map(|r| r.expect("setup_task")).collect::<Vec<_>>()
        })
    });
    let mut addrs: Vec<Ipv4Addr> = tasks.iter().map(|t| t.address).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 3, "addresses not distinct: {tasks:?}");
    for t in &tasks {
        assert!(net("10.88.3.0/24").contains(&t.address), "{t:?}");
        assert_ne!(t.address, gw);
        assert_eq!(t.gateway, gw);
        assert_eq!(t.prefix_len, 24);
        assert_eq!(t.netns_path, node.netns_file(&t.task_id));
        assert!(t.netns_path.exists(), "{} missing", t.netns_path.display());
        // Inside: eth0 with the address, default route via the gateway, lo up.
        let a = nsenter(&t.netns_path, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(a.contains(&format!("{}/24", t.address)), "{a}");
        let r = nsenter(&t.netns_path, &["ip", "-4", "route", "show", "default"]);
        assert!(r.contains(&format!("default via {gw} dev eth0")), "{r}");
        let lo = nsenter(&t.netns_path, &["ip", "-o", "link", "show", "lo"]);
        assert!(lo.contains("UP"), "{lo}");
        // Outside: the host end is on the bridge.
        let h = node.ns.ip(&["-o", "link", "show", "dev", &t.host_veth]);
        assert!(h.contains("master warren0"), "{h}");
    }
    let b = node.ns.ip(&["-4", "-o", "addr", "show", "dev", "warren0"]);
    assert!(b.contains("10.88.3.1/24"), "{b}");
    // The bridge keeps a fixed MAC derived from the gateway, whatever ports come and go.
    let l = node.ns.ip(&["-o", "link", "show", "dev", "warren0"]);
    assert!(l.contains("link/ether 02:57:0a:58:03:01"), "{l}");
    let fwd = node.ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    for t in &tasks {
        assert!(ping(&t.netns_path, gw), "{} cannot reach the gateway", t.task_id);
        for o in &tasks {
            if o.task_id != t.task_id {
                assert!(
                    ping(&t.netns_path, o.address),
                    "{} cannot reach {} at {}",
                    t.task_id,
                    o.task_id,
                    o.address
                );
            }
        }
    }

    // A new manager object (an agent restart) sees the same state: same task, same
    // result; a new task gets an address nobody holds.
    let again = node.setup(&["a2", "a4"]);
    let a2 = tasks.iter().find(|t| t.task_id == "a2").unwrap();
    assert_eq!(&again[0], a2);
    assert!(
        !tasks.iter().any(|t| t.address == again[1].address),
        "a4 got {} which is in use",
        again[1].address
    );
    assert!(ping(&again[1].netns_path, a2.address));

    let listed = node.with(|n| Box::pin(async move { n.list().await.expect("list") }));
    let ids: Vec<&str> = listed.iter().map(|s| s.task_id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2", "a3", "a4"]);
    assert!(listed.iter().all(|s| s.netns_path.is_some() && s.address.is_some()));

    node.cleanup();
    assert!(node.files.present().is_empty());
}

#[test]
fn exhaustion_is_a_typed_error_naming_the_subnet() {
    require_network_tools();
    // A /30 holds the gateway and exactly one task.
    let node = Node::new("exh", "10.88.4.0/30");
    let (first, err) = node.with(|n| {
        Box::pin(async move {
            // Through the trait object, as the agent holds it.
            let m: &dyn NetworkManager = n;
            let first = m.setup_task("e1").await.expect("setup e1");
            (first, m.setup_task("e2").await.unwrap_err())
        })
    });
    assert_eq!(first.address, Ipv4Addr::new(10, 88, 4, 2));
    assert!(
        matches!(err, NetworkError::AddressesExhausted { subnet } if subnet == net("10.88.4.0/30")),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "no free address left in subnet 10.88.4.0/30");
    assert!(!node.netns_file("e2").exists(), "failed setup left a namespace");
    node.cleanup();
}

#[test]
fn teardown_and_cleanup_leave_nothing_behind() {
    require_network_tools();
    let node = Node::new("tear", "10.88.5.0/24");
    // A link out of the node so that a peer route has a reachable next hop.
    node.ns
        .ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ns.ip(&["addr", "add", "10.210.5.1/24", "dev", "up0"]);
    node.ns.ip(&["link", "set", "up0", "up"]);
    node.ns.ip(&["link", "set", "up1", "up"]);
    let tasks = node.setup(&["t1", "t2", "t3"]);
    let t1 = &tasks[0];

    let (alloc_after, listed) = node.with(|n| {
        Box::pin(async move {
            n.teardown_task("t1").await.expect("teardown");
            // Idempotent: a second teardown finds nothing and succeeds.
            n.teardown_task("t1").await.expect("second teardown");
            (n.ipam().get("t1").expect("ipam"), n.list().await.expect("list"))
        })
    });
    assert!(!t1.netns_path.exists(), "netns file of t1 left behind");
    assert!(!node.link_exists(&t1.host_veth), "veth of t1 left behind");
    assert_eq!(alloc_after, None, "address of t1 still allocated");
    assert_eq!(
        listed.iter().map(|s| s.task_id.as_str()).collect::<Vec<_>>(),
        ["t2", "t3"]
    );
    assert!(ping(&tasks[1].netns_path, tasks[2].address), "t2 lost t3");

    let via = Ipv4Addr::new(10, 210, 5, 2);
    node.with(move |n| {
        Box::pin(async move {
            n.set_peer_routes(&[(net("10.88.6.0/24"), via)])
                .await
                .expect("peer routes")
        })
    });
    assert!(node.warren_routes().contains("10.88.6.0/24 via 10.210.5.2"));

    node.cleanup();
    assert!(node.files.present().is_empty(), "{:?}", node.files.present());
    for t in &tasks {
        assert!(!node.link_exists(&t.host_veth), "{} left behind", t.host_veth);
    }
    assert!(!node.link_exists("warren0"), "bridge left behind");
    assert_eq!(node.warren_routes().trim(), "", "warren routes left behind");
    assert!(
        !node.ns.exec(&["nft", "list", "table", "ip", "warren"]).status.success(),
        "nft table left behind"
    );
    assert!(node.link_exists("up0"), "cleanup removed a link warren does not own");
    let (listed, allocs) = node.with(|n| {
        Box::pin(async move {
            // `new` rebuilt the node; clean again and look at the state.
            n.cleanup_node().await.expect("cleanup");
            (n.list().await.expect("list"), n.ipam().allocations().expect("ipam"))
        })
    });
    assert!(listed.is_empty(), "{listed:?}");
    assert!(allocs.is_empty(), "{allocs:?}");
}

#[test]
fn setup_repairs_a_lost_veth_and_is_idempotent() {
    require_network_tools();
    let node = Node::new("rep", "10.88.7.0/24");
    let first = node.setup(&["r1", "r2"]);
    node.ns.ip(&["link", "del", &first[0].host_veth]);
    assert!(!ping(&first[1].netns_path, first[0].address));
    let again = node.setup(&["r1", "r2"]);
    assert_eq!(again, first);
    assert!(node.link_exists(&first[0].host_veth));
    assert!(ping(&first[1].netns_path, first[0].address), "r1 not repaired");
    let a = nsenter(&first[0].netns_path, &["ip", "-4", "-o", "addr", "show"]);
    assert_eq!(a.matches("inet ").count(), 2, "expected lo and eth0 only: {a}");

    // The namespace file of r2 vanishes (as after a reboot empties /run): setup makes
    // a new namespace and pair with the same address.
    let p = &first[1].netns_path;
    nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(p).unwrap();
    let again = node.setup(&["r2"]);
    assert_eq!(again[0], first[1]);
    assert!(ping(&first[1].netns_path, first[0].address), "r2 not rebuilt");
    node.cleanup();
}

#[test]
fn two_nodes_route_task_traffic_natively_and_drop_stale_routes() {
    require_network_tools();
    let lan = NetNs::new(&unique_name("wtn-lan2"));
    let _lanbr = bridge(&lan, "lanbr");
    let n1 = Node::new("r1", "10.88.11.0/24");
    let n2 = Node::new("r2", "10.88.12.0/24");
    let _l1 = wire_to_lan(&n1, &lan, "p1", "10.210.0.1/24");
    let _l2 = wire_to_lan(&n2, &lan, "p2", "10.210.0.2/24");

    let a = n1.setup(&["ta"]).remove(0);
    let b = n2.setup(&["tb"]).remove(0);
    let server = TcpServer::start(&b.netns_path, SocketAddr::from((b.address, 7411)));
    assert!(
        tcp_request(&a.netns_path, server.addr(), Duration::from_secs(2)).is_err(),
        "task a reached task b before any peer route existed"
    );

    let via1 = Ipv4Addr::new(10, 210, 0, 1);
    let via2 = Ipv4Addr::new(10, 210, 0, 2);
    n1.with(move |n| Box::pin(async move { n.set_peer_routes(&[(net("10.88.12.0/24"), via2)]).await.unwrap() }));
    n2.with(move |n| Box::pin(async move { n.set_peer_routes(&[(net("10.88.11.0/24"), via1)]).await.unwrap() }));
    assert_eq!(n1.warren_routes().trim(), "10.88.12.0/24 via 10.210.0.2 dev lan0");

    let answer = tcp_request(&a.netns_path, server.addr(), WAIT).expect("a -> b over TCP");
    assert_eq!(answer, "ok");
    let peer = server.next_peer(WAIT).expect("server saw no connection");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(a.address),
        "traffic inside the cluster CIDR must not be masqueraded"
    );
    assert!(ping(&b.netns_path, a.address), "b cannot ping a");

    // A route warren does not own, for the same kind of destination.
    n1.ns
        .ip(&["route", "add", "10.88.19.0/24", "via", "10.210.0.9", "proto", "static"]);
    let conflict = n1.with(move |n| {
        Box::pin(async move {
            n.set_peer_routes(&[(net("10.88.12.0/24"), via2), (net("10.88.15.0/24"), via2)])
                .await
                .unwrap();
            // A changed next hop is replaced, not duplicated.
            n.set_peer_routes(&[
                (net("10.88.12.0/24"), Ipv4Addr::new(10, 210, 0, 3)),
                (net("10.88.15.0/24"), via2),
            ])
            .await
            .unwrap();
            n.set_peer_routes(&[(net("10.88.19.0/24"), via2)]).await.unwrap_err()
        })
    });
    assert!(
        matches!(conflict, NetworkError::RouteConflict { destination, protocol: 4 } if destination == net("10.88.19.0/24")),
        "{conflict:?}"
    );
    // The conflicting call still removed the stale routes, and left the foreign one.
    assert_eq!(n1.warren_routes().trim(), "");
    let all = n1.ns.ip(&["-4", "route", "show"]);
    assert!(
        all.contains("10.88.19.0/24 via 10.210.0.9 dev lan0 proto static"),
        "{all}"
    );

    n1.with(move |n| {
        Box::pin(async move {
            n.set_peer_routes(&[
                (net("10.88.12.0/24"), Ipv4Addr::new(10, 210, 0, 3)),
                (net("10.88.15.0/24"), via2),
            ])
            .await
            .unwrap()
        })
    });
    let r = n1.warren_routes();
    assert_eq!(r.lines().count(), 2, "{r}");
    assert!(r.contains("10.88.12.0/24 via 10.210.0.3"), "{r}");
    n1.with(move |n| Box::pin(async move { n.set_peer_routes(&[(net("10.88.12.0/24"), via2)]).await.unwrap() }));
    assert_eq!(
        n1.warren_routes().trim(),
        "10.88.12.0/24 via 10.210.0.2 dev lan0",
        "stale route to 10.88.15.0/24 not removed"
    );
    n1.with(|n| Box::pin(async move { n.set_peer_routes(&[]).await.unwrap() }));
    assert_eq!(n1.warren_routes().trim(), "");
    assert!(
        tcp_request(&a.netns_path, server.addr(), Duration::from_secs(2)).is_err(),
        "task a still reaches task b with no peer route"
    );

    drop(server);
    n1.cleanup();
    n2.cleanup();
}

#[test]
fn outbound_traffic_is_masqueraded_behind_the_node() {
    require_network_tools();
    let lan = NetNs::new(&unique_name("wtn-lanm"));
    let _lanbr = bridge(&lan, "lanbr");
    lan.ip(&["addr", "add", "10.210.1.254/24", "dev", "lanbr"]);
    let node = Node::new("masq", "10.88.21.0/24");
    let _l = wire_to_lan(&node, &lan, "p1", "10.210.1.1/24");

    let t = node.setup(&["m1"]).remove(0);
    // A second manager object (restart) must not add a second rule.
    node.setup(&["m1"]);
    let rules = node.ns.exec(&["nft", "list", "table", "ip", "warren"]);
    assert!(rules.status.success(), "warren table missing");
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert_eq!(rules.matches("masquerade").count(), 1, "{rules}");
    assert!(
        rules.contains("ip saddr 10.88.21.0/24 ip daddr != 10.88.0.0/16"),
        "{rules}"
    );

    let server = TcpServer::start(lan.path(), "10.210.1.254:7412".parse().unwrap());
    let answer = tcp_request(&t.netns_path, server.addr(), WAIT).expect("task -> lan over TCP");
    assert_eq!(answer, "ok");
    let peer = server.next_peer(WAIT).expect("server saw no connection");
    assert_eq!(
        peer.ip(),
        "10.210.1.1".parse::<std::net::IpAddr>().unwrap(),
        "the lan server must see the node's address, not the task's"
    );
    drop(server);

    node.cleanup();
    assert!(
        !node.ns.exec(&["nft", "list", "table", "ip", "warren"]).status.success(),
        "nft table left behind by cleanup_node"
    );
}

#[test]
fn bad_config_fails_before_touching_anything() {
    require_network_tools();
    let node = Node::new("bad", "10.88.22.0/24");
    let mut cfg = node.cfg.clone();
    cfg.bridge = "this-name-is-too-long".into();
    let err = node
        .ns
        .block_on(|| async move { NetlinkNetwork::new(cfg).await.unwrap_err() });
    assert!(err.to_string().starts_with("invalid bridge: "), "{err}");
    assert!(!node.link_exists("this-name-is-too-long"));
    assert!(!node.link_exists("warren0"));

    // A link of the bridge's name that is not a bridge is refused, not adopted.
    node.ns
        .ip(&["link", "add", "warren0", "type", "veth", "peer", "name", "w0peer"]);
    let cfg = node.cfg.clone();
    let err = node
        .ns
        .block_on(|| async move { NetlinkNetwork::new(cfg).await.unwrap_err() });
    assert_eq!(err.to_string(), "link warren0 exists but is a veth, not a bridge");
}
