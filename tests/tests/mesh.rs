//! End-to-end tests of `warren::mesh` with real userspace WireGuard (Debian's
//! wireguard-go, started and supervised by the mesh) in network namespaces: three
//! nodes on two sites joined by a "wan" router namespace, site B behind a NAT
//! (masquerade in its router), each node running the mesh as a library with
//! Warren's own task network beside it. Needs root, iproute2, nftables, busybox
//! and wireguard-go.
//!
//! ```text
//!  n1 10.201.1.11 ── wan 10.201.1.1 | 10.201.2.1 ── 10.201.2.2 nat (masquerade) 10.201.3.1 ── n2 10.201.3.12
//!  tasks 10.77.1.0/24                                                                     └── n3 10.201.3.13
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use warren::mesh::MeshPeer;
use warren_tests::cluster::wait_until;
use warren_tests::mesh::{peers_of, MeshNode, MeshNodeConfig};
use warren_tests::netns::{
    bridge, require_command, require_network_tools, tcp_request, unique_name, veth_pair, NetNs, TcpServer,
};

const CLUSTER: &str = "10.77.0.0/16";
const PORT: u16 = 51820;
const WAIT: Duration = Duration::from_secs(20);
const TASK_PORT: u16 = 7000;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn sysctl(ns: &NetNs, key: &str, value: &str) {
    let out = ns.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    assert!(
        out.status.success(),
        "sysctl {key}={value} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft(ns: &NetNs, script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two sites, the wan and the NAT, with counters on the wan of what crosses
/// between the sites. Field order is drop order: nodes (meshes, tasks) first.
struct Sites {
    nodes: Vec<MeshNode>,
    _links: Vec<warren_tests::netns::Link>,
    node_ns: Vec<NetNs>,
    nat: NetNs,
    wan: NetNs,
}

impl Sites {
    fn new(tag: &str, keepalive_secs: u16) -> Sites {
        require_network_tools();
        require_command("wireguard-go", "wireguard-go");
        let base = unique_name(tag);
        let wan = NetNs::new(&format!("{base}-wan"));
        let nat = NetNs::new(&format!("{base}-nat"));
        let mut links = Vec::new();
        links.push(veth_pair(&wan, "tonat", &nat, "out"));
        wan.ip(&["addr", "add", "10.201.2.1/24", "dev", "tonat"]);
        nat.ip(&["addr", "add", "10.201.2.2/24", "dev", "out"]);
        nat.ip(&["route", "add", "default", "via", "10.201.2.1"]);
        links.push(bridge(&nat, "lanb"));
        nat.ip(&["addr", "add", "10.201.3.1/24", "dev", "lanb"]);
        for ns in [&wan, &nat] {
            sysctl(ns, "net.ipv4.ip_forward", "1");
        }
        nft(
            &nat,
            "table ip masq {\n chain post { type nat hook postrouting priority 100; oifname \"out\" masquerade; }\n}\n",
        );
        // What crosses between the sites: any TCP, anything to or from a task
        // address, and WireGuard's UDP.
        nft(
            &wan,
            &format!(
                "table inet watch {{\n counter plain_tcp {{}}\n counter task_addr {{}}\n counter wg_udp {{}}\n \
                 chain cross {{ type filter hook forward priority 0;\n  meta l4proto tcp counter name \"plain_tcp\"\n  \
                 ip saddr {CLUSTER} counter name \"task_addr\"\n  ip daddr {CLUSTER} counter name \"task_addr\"\n  \
                 udp sport {PORT} counter name \"wg_udp\"\n  udp dport {PORT} counter name \"wg_udp\"\n }}\n}}\n"
            ),
        );
        let mut node_ns = Vec::new();
        let mut nodes = Vec::new();
        let specs: [(&str, &str, &str); 3] = [
            ("n1", "10.201.1.11", "10.77.1.0/24"),
            ("n2", "10.201.3.12", "10.77.2.0/24"),
            ("n3", "10.201.3.13", "10.77.3.0/24"),
        ];
        for (i, (n, addr, subnet)) in specs.iter().enumerate() {
            let ns = NetNs::new(&format!("{base}-{n}"));
            if i == 0 {
                links.push(veth_pair(&wan, "a1", &ns, "eth0"));
                wan.ip(&["addr", "add", "10.201.1.1/24", "dev", "a1"]);
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
                ns.ip(&["route", "add", "default", "via", "10.201.1.1"]);
            } else {
                let port = format!("b{}", i + 1);
                links.push(veth_pair(&nat, &port, &ns, "eth0"));
                nat.ip(&["link", "set", &port, "master", "lanb"]);
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
                ns.ip(&["route", "add", "default", "via", "10.201.3.1"]);
            }
            node_ns.push(ns);
            nodes.push(MeshNode::start(MeshNodeConfig {
                name: format!("{base}-{n}"),
                ns: node_ns[i].path().to_path_buf(),
                subnet: net(subnet),
                cluster_cidr: net(CLUSTER),
                endpoint: SocketAddr::new(addr.parse().unwrap(), PORT),
                keepalive_secs,
                interface: "warren-wg".into(),
                masquerade: true,
            }));
        }
        for n in &nodes {
            wait_until(&format!("{}'s wireguard-go is up", n.name), WAIT, || n.status().up);
            // One pass in place: the prohibit route for the cluster CIDR is there.
            n.run(|m| Box::pin(async move { m.sync().await.expect("first mesh pass") }));
        }
        Sites {
            nodes,
            _links: links,
            node_ns,
            nat,
            wan,
        }
    }

    fn node(&self, i: usize) -> &MeshNode {
        &self.nodes[i - 1]
    }

    /// Every node gets every other as a peer.
    fn full_mesh(&self) {
        let all: Vec<&MeshNode> = self.nodes.iter().collect();
        for n in &self.nodes {
            n.set_peers(peers_of(n, &all));
        }
    }

    /// Packets counted by the wan's named counter.
    fn wan_counter(&self, name: &str) -> u64 {
        let out = self.wan.exec(&["nft", "list", "counter", "inet", "watch", name]);
        assert!(
            out.status.success(),
            "nft list counter {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {text:?}"))
    }

    fn assert_no_plaintext_between_sites(&self) {
        assert_eq!(
            self.wan_counter("plain_tcp"),
            0,
            "TCP crossed the wan outside WireGuard"
        );
        assert_eq!(
            self.wan_counter("task_addr"),
            0,
            "a task address crossed the wan in clear"
        );
    }
}

/// Starts a TCP server on the node's task `id`; returns it and its address.
fn task_server(node: &MeshNode, id: &str) -> (warren::network::TaskNetwork, TcpServer) {
    let t = node.task(id);
    let s = TcpServer::start(&t.netns_path, SocketAddr::new(t.address.into(), TASK_PORT));
    (t, s)
}

fn request(from: &warren::network::TaskNetwork, to: &warren::network::TaskNetwork) -> std::io::Result<String> {
    tcp_request(
        &from.netns_path,
        SocketAddr::new(to.address.into(), TASK_PORT),
        Duration::from_secs(3),
    )
}

fn ip_link_mtu(ns: &std::path::Path, ifname: &str) -> u32 {
    let out = warren_tests::netns::nsenter(ns, &["ip", "-o", "link", "show", ifname]);
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {out:?}"))
}

#[test]
fn tasks_reach_each_other_across_sites_only_through_wireguard() {
    let mut sites = Sites::new("wm1", 25);
    let (n1, n3) = (sites.node(1), sites.node(3));
    let (t1, _s1) = task_server(n1, "a");
    let (t3, _s3) = task_server(n3, "c");

    // 1. Before any peer, a task address on another node is refused, not leaked.
    assert!(request(&t1, &t3).is_err(), "reached node 3's task without a mesh");

    // 2. The full mesh: node 1's task reaches node 3's behind the NAT, and back.
    sites.full_mesh();
    wait_until("node 1's task reaches node 3's", WAIT, || request(&t1, &t3).is_ok());
    assert_eq!(request(&t1, &t3).expect("n1 -> n3"), "ok");
    assert_eq!(request(&t3, &t1).expect("n3 -> n1"), "ok");

    // 3. Between the sites only WireGuard's UDP crossed.
    sites.assert_no_plaintext_between_sites();
    assert!(sites.wan_counter("wg_udp") > 0, "no WireGuard UDP crossed the wan");

    // 4. MTU: underlay 1500 - 80 on the mesh interface and on both task veths.
    assert_eq!(n1.mtu, 1420);
    assert_eq!(ip_link_mtu(&n1.ns, "warren-wg"), 1420);
    assert_eq!(ip_link_mtu(&t1.netns_path, "eth0"), 1420);
    assert_eq!(ip_link_mtu(&n1.ns, &t1.host_veth), 1420);

    // 5. Node 1 learned node 3's endpoint from its packets: the NAT's address.
    let p3 = n1.peer(&n3.public_key()).expect("node 1 has node 3 as a peer");
    assert_eq!(p3.node_id.as_deref(), Some(n3.name.as_str()));
    assert_eq!(
        p3.endpoint.map(|e| e.ip()),
        Some("10.201.2.2".parse::<Ipv4Addr>().unwrap().into()),
        "node 1 should reach node 3 at the NAT's address: {p3:?}"
    );
    assert!(p3.last_handshake.is_some() && p3.rx_bytes > 0, "{p3:?}");

    // 6. Node 3 removed from node 1's peers: dropped, and refused locally.
    let all: Vec<&MeshNode> = sites.nodes.iter().collect();
    let without3: Vec<MeshPeer> = peers_of(n1, &all)
        .into_iter()
        .filter(|p| p.node_id != n3.name)
        .collect();
    n1.set_peers(without3);
    wait_until("node 1 drops node 3 as a peer", WAIT, || {
        n1.peer(&n3.public_key()).is_none()
    });
    assert!(
        request(&t1, &t3).is_err(),
        "node 1's task still reaches node 3's after removal"
    );
    sites.assert_no_plaintext_between_sites();

    // 7. Added again: reachable again.
    n1.set_peers(peers_of(n1, &all));
    wait_until("node 1's task reaches node 3's again", WAIT, || {
        request(&t1, &t3).is_ok()
    });

    // 8. wireguard-go killed: the mesh restarts it and configures the new device.
    let pid = n1.wireguard_go_pid().expect("node 1's wireguard-go pid file");
    // SAFETY: kill(2) of the wireguard-go the mesh started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_until("a new wireguard-go on node 1", WAIT, || {
        n1.wireguard_go_pid().is_some_and(|p| p != pid)
    });
    wait_until("node 1's task reaches node 3's after the restart", WAIT, || {
        request(&t1, &t3).is_ok()
    });
    sites.assert_no_plaintext_between_sites();

    // 9. Shutdown removes the interface, the routes, the process and its socket.
    let run_dir = sites.nodes[0].run_dir.path().to_path_buf();
    let ns = sites.node_ns[0].path().to_path_buf();
    let pid = sites.node(1).wireguard_go_pid().expect("pid");
    sites.nodes[0].shutdown();
    let links = warren_tests::netns::nsenter(&ns, &["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("warren-wg"),
        "the mesh interface outlived shutdown: {links}"
    );
    let routes = warren_tests::netns::nsenter(&ns, &["ip", "route", "show", "proto", "88"]);
    assert!(routes.trim().is_empty(), "mesh routes outlived shutdown: {routes}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "wireguard-go outlived shutdown"
    );
    let left: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the run dir: {left:?}");
}

#[test]
fn the_node_behind_nat_keeps_its_handshakes_alive() {
    // Keepalive every second against a NAT that forgets UDP mappings after 2 s.
    let sites = Sites::new("wm2", 1);
    for key in ["nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"] {
        sysctl(&sites.nat, &format!("net.netfilter.{key}"), "2");
    }
    let (n1, n3) = (sites.node(1), sites.node(3));
    let (t1, _s1) = task_server(n1, "a");
    let (t3, _s3) = task_server(n3, "c");
    sites.full_mesh();
    wait_until("node 3 handshakes with node 1", WAIT, || {
        n1.peer(&n3.public_key()).is_some_and(|p| p.last_handshake.is_some())
    });

    // 1. With no traffic, keepalives keep arriving through the NAT for several
    //    times its UDP timeout.
    let start = n1.peer(&n3.public_key()).expect("peer").rx_bytes;
    // A keepalive is a 32-byte WireGuard message; 8 of them span 8 s > 2 s.
    wait_until("8 keepalives from node 3 reach node 1", WAIT, || {
        n1.peer(&n3.public_key()).expect("peer").rx_bytes >= start + 8 * 32
    });

    // 2. Node 1 starts a connection to node 3's task: only a live NAT mapping
    //    lets it in.
    assert_eq!(request(&t1, &t3).expect("n1 -> n3 through the NAT"), "ok");

    // 3. The handshake stays fresh (WireGuard rekeys at most every 2 min).
    let p = n1.peer(&n3.public_key()).expect("peer");
    let age = SystemTime::now()
        .duration_since(p.last_handshake.expect("handshake"))
        .unwrap_or_default();
    assert!(age < warren::mesh::HANDSHAKE_FRESH, "handshake {age:?} old");
    sites.assert_no_plaintext_between_sites();
}

#[test]
fn a_key_rotation_under_a_request_loop_fails_no_request() {
    let sites = Sites::new("wm3", 25);
    let (n1, n2, n3) = (sites.node(1), sites.node(2), sites.node(3));
    let (t1, _s1) = task_server(n1, "a");
    let (t3, _s3) = task_server(n3, "c");
    sites.full_mesh();
    wait_until("node 1's task reaches node 3's", WAIT, || request(&t1, &t3).is_ok());

    // A request loop from node 1's task to node 3's, over the whole rotation.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (from, to) = (t1.netns_path.clone(), SocketAddr::new(t3.address.into(), TASK_PORT));
    let loop_stop = stop.clone();
    let requests = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !loop_stop.load(std::sync::atomic::Ordering::Relaxed) {
            match tcp_request(&from, to, Duration::from_secs(5)) {
                Ok(a) if a == "ok" => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (ok, failed)
    });

    // 1. Node 3 prepares a key; its peers add the new key beside the old one.
    let old = n3.public_key();
    let next = n3.run(|m| Box::pin(async move { m.prepare_rotation().await.expect("prepare") }));
    let mut as_peer = n3.as_peer();
    as_peer.next_public_key = Some(next);
    let all: Vec<&MeshNode> = sites.nodes.iter().collect();
    for n in [n1, n2] {
        let mut peers: Vec<MeshPeer> = peers_of(n, &all).into_iter().filter(|p| p.node_id != n3.name).collect();
        peers.push(as_peer.clone());
        n.set_peers(peers);
    }
    for n in [n1, n2] {
        wait_until("the peers configure node 3's next key", WAIT, || {
            n.peer(&next).is_some()
        });
    }

    // 2. Node 3 switches; its peers move its subnet to the new key at its handshake.
    let new = n3.run(|m| Box::pin(async move { m.commit_rotation().await.expect("commit") }));
    assert_eq!(new, next);
    for n in [n1, n2] {
        wait_until("the peers route node 3's subnet to the new key", WAIT, || {
            n.peer(&old).is_none() && n.peer(&new).is_some_and(|p| !p.allowed_ips.is_empty())
        });
    }

    // 3. The state commits the new key as node 3's only key.
    for n in [n1, n2] {
        n.set_peers(peers_of(n, &all));
    }
    let before = n1.peer(&new).expect("peer").rx_bytes;
    wait_until("more requests after the rotation", WAIT, || {
        n1.peer(&new).is_some_and(|p| p.rx_bytes > before + 10_000)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = requests.join().expect("request loop");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 20, "only {ok} requests ran across the rotation");
    assert_eq!(n3.status().public_key, new);
    assert!(
        std::fs::read_to_string(n3.data_dir.path().join("wireguard/private.key")).is_ok(),
        "the committed key is on disk"
    );
    sites.assert_no_plaintext_between_sites();
}
