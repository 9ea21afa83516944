//! tc connection tracking against a real kernel: flows from the wire to a
//! published port carry their TCP state and leave after FIN and RST, SNAT ports
//! come from the reserved range and never from a port a node socket uses, ICMP
//! errors reach the client translated, an unroutable backend is a counted drop,
//! and a node running the previous layout keeps its tc flows across the upgrade.
//! Each test has its own lab (see `warren_tests::dataplane`). Needs root.

use std::{net::Ipv4Addr, time::Duration};

use warren::dataplane::{
    inspect, Backend, BackendGroup, CtTimeouts, Dataplane, DataplaneConfig, EbpfDataplane, Protocol, ServiceEntry,
    ServicePort,
};
use warren_tests::cluster::wait_until;
use warren_tests::dataplane::{Lab, Proc, TCP_PORT, UDP_PORT};

const PROBE: &str = env!("CARGO_BIN_EXE_warren-dp-probe");

fn to(addr: Ipv4Addr, port: u16) -> String {
    format!("{addr}:{port}")
}

/// The lab's client-side node address (published ports from the wire).
fn node_addr(lab: &Lab) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, lab.net, 1)
}

/// A service published at `port` (TCP and UDP to `target`/`UDP_PORT`) with the
/// lab's backends `remote` reached over SNAT.
fn published(lab: &Lab, id: u32, port: u16, target: u16, remote: &[usize]) -> ServiceEntry {
    ServiceEntry {
        id,
        name: format!("pub{id}"),
        vip: None,
        ports: vec![
            ServicePort {
                protocol: Protocol::Tcp,
                target,
                published: Some(port),
                host_mode: false,
            },
            ServicePort {
                protocol: Protocol::Udp,
                target: if target == TCP_PORT { UDP_PORT } else { target },
                published: Some(port),
                host_mode: false,
            },
        ],
        backends: remote
            .iter()
            .map(|&i| Backend {
                addr: lab.backends[i].addr,
                group: BackendGroup::Stable,
                local: false,
                draining: false,
            })
            .collect(),
        canary_weight: 0,
        rate_limit: None,
        prefer_local: false,
    }
}

fn open(lab: &Lab, cfg: DataplaneConfig) -> EbpfDataplane {
    let mut cfg = cfg;
    cfg.ifaces = vec!["vc0".into(), "br0".into()];
    lab.node.enter(|| EbpfDataplane::open(cfg)).expect("open data plane")
}

/// The forward entries of the lab's flows (one per flow).
fn forward_flows(lab: &Lab) -> Vec<inspect::FlowView> {
    inspect::flows(&lab.cfg().bpffs_dir)
        .expect("read the flows")
        .into_iter()
        .filter(|f| f.direction == "forward")
        .collect()
}

fn entries(lab: &Lab) -> usize {
    inspect::flows(&lab.cfg().bpffs_dir).expect("read the flows").len()
}

fn reserved_ports(lab: &Lab) -> String {
    let out = warren_tests::dataplane::run(&mut lab.node.exec(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn tc_flows_carry_tcp_state_and_leave_after_fin_rst_and_their_timeout() {
    let lab = Lab::new("ctstate", 40, 2, true, PROBE);
    let mut cfg = lab.cfg();
    cfg.ct_timeouts = CtTimeouts {
        tcp_syn: Duration::from_secs(5),
        tcp_established: Duration::from_secs(3600),
        tcp_closing: Duration::from_secs(3),
        udp: Duration::from_secs(2),
    };
    cfg.ct_gc_interval = Duration::from_millis(200);
    let dp = open(&lab, cfg);
    let port = 30000 + u16::from(lab.net);
    dp.sync(&[published(&lab, 1, port, TCP_PORT, &[1])]).expect("sync");
    let target = to(node_addr(&lab), port);

    // Held connections are established and stay through GC passes.
    let mut held = Proc::spawn(
        lab.client
            .as_ref()
            .unwrap()
            .exec(&[PROBE, "hold", "--to", &target, "--n", "3"]),
        "held connections",
    );
    held.wait_line("ready");
    let flows = forward_flows(&lab);
    assert_eq!(flows.len(), 3, "{flows:?}");
    assert!(flows.iter().all(|f| f.state == "established" && f.snat), "{flows:?}");
    assert_eq!(entries(&lab), 6, "two halves per flow");

    // Closed with a FIN each way: state "closed", gone after the close timeout.
    let r = lab.outside_client(&["connect", "--to", &target, "--n", "5"]);
    assert_eq!(r.answers(), 5, "{:?}", r.errors);
    // (The backend's FIN follows the client's: wait for it, within the timeout.)
    wait_until("5 flows closed by a FIN each way", Duration::from_secs(3), || {
        forward_flows(&lab).iter().filter(|f| f.state == "closed").count() == 5
    });
    wait_until(
        "the FIN-closed flows to go (close timeout 3 s)",
        Duration::from_secs(10),
        || entries(&lab) == 6,
    );

    // Reset: the same.
    let r = lab.outside_client(&["connect", "--to", &target, "--n", "5", "--rst"]);
    assert_eq!(r.answers(), 5, "{:?}", r.errors);
    let closed = forward_flows(&lab).iter().filter(|f| f.state == "closed").count();
    assert_eq!(closed, 5, "RST flows are closed: {:?}", forward_flows(&lab));
    wait_until(
        "the reset flows to go (close timeout 3 s)",
        Duration::from_secs(10),
        || entries(&lab) == 6,
    );

    held.send_line("check");
    let r = held.finish();
    assert!(
        r.conns.iter().all(|(_, s)| s == "alive"),
        "held connections kept working through the GC: {:?}",
        r.conns
    );
    wait_until("the held flows to go once closed", Duration::from_secs(10), || {
        entries(&lab) == 0
    });

    // UDP flows have no end to see: they go after their idle timeout.
    let r = lab.outside_client(&["udp", "--to", &target, "--n", "3", "--connected"]);
    assert_eq!(r.answers(), 3, "{r:?}");
    let flows = forward_flows(&lab);
    assert!(flows.len() == 1 && flows[0].state == "udp", "{flows:?}");
    wait_until("the UDP flow to go (timeout 2 s)", Duration::from_secs(10), || {
        entries(&lab) == 0
    });
    let st = dp.status();
    assert_eq!(st.services[0].drops.total(), 0, "{:?}", st.services[0].drops);
}

#[test]
fn short_flows_leave_the_ct_map_at_its_steady_state_size() {
    let mut lab = Lab::new("ctchurn", 41, 2, true, PROBE);
    lab.measure_rates();
    let http_port = 8081;
    lab.start_http(1, http_port);
    let mut cfg = lab.cfg();
    cfg.ct_timeouts.tcp_closing = Duration::from_secs(1);
    cfg.ct_gc_interval = Duration::from_millis(500);
    let dp = open(&lab, cfg);
    let port = 30000 + u16::from(lab.net);
    // A backend on this node: no SNAT, so the flows are limited by the map
    // alone (with SNAT, by the range's ports towards one backend).
    let mut svc = published(&lab, 1, port, http_port, &[1]);
    svc.backends[0].local = true;
    dp.sync(&[svc]).expect("sync");
    let target = to(node_addr(&lab), port);

    // 100,000 flows: more than the map's 65,536 flows (131,072 entries), so
    // without the GC the last ones would be refused as ct_full.
    // One client address reuses its ports at once (the server closes first, so
    // the client keeps no TIME_WAIT), and a SYN meeting the backend's TIME_WAIT
    // socket is sometimes refused there: a few slow attempts out of 100,000 are
    // the backend's, with or without a data plane; a lost translation would be
    // many.
    let (mut total, mut failed) = (0u64, 0u64);
    let mut rounds = 0;
    while total < 100_000 {
        rounds += 1;
        assert!(rounds <= 30, "only {total} flows in {rounds} rounds of 5 s");
        let r = lab.outside_client(&["crr", "--to", &target, "--ms", "5000", "--conns", "8"]);
        total += r.values["ok"];
        failed += r.error_count();
        assert!(
            failed * 1000 <= total.max(1000),
            "failed flows: {failed} of {total}: {r:?}; {:?}; flows by state {:?}",
            dp.status().services[0].drops,
            forward_flows(&lab)
                .iter()
                .fold(std::collections::BTreeMap::new(), |mut m, f| {
                    *m.entry(f.state).or_insert(0) += 1;
                    m
                })
        );
    }
    let st = dp.status();
    assert_eq!(st.services[0].drops.total(), 0, "{:?}", st.services[0].drops);
    assert!(st.services[0].connections >= 100_000, "{:?}", st.services[0]);
    wait_until(
        "the CT map back to its steady state (empty)",
        Duration::from_secs(10),
        || entries(&lab) == 0,
    );
}

#[test]
fn snat_ports_are_reserved_and_never_one_a_node_socket_uses() {
    let lab = Lab::new("ctsnat", 42, 2, true, PROBE);
    let first = 40000 + 10 * u16::from(lab.net);
    let mut cfg = lab.cfg();
    cfg.snat_ports = (first, first + 3);
    cfg.ct_timeouts.tcp_closing = Duration::from_secs(60);
    let dp = open(&lab, cfg.clone());
    let port = 30000 + u16::from(lab.net);
    dp.sync(&[published(&lab, 1, port, TCP_PORT, &[1])]).expect("sync");
    assert_eq!(
        reserved_ports(&lab),
        format!("{port},{first}-{}", first + 3),
        "the published port and the SNAT range are reserved"
    );

    // A node socket connected to the backend from the SNAT address (the one the
    // client reaches) and the first SNAT port.
    let backend = to(lab.backends[1].addr, TCP_PORT);
    let mut node_conn = Proc::spawn(
        lab.node.exec(&[
            PROBE,
            "hold",
            "--to",
            &backend,
            "--n",
            "1",
            "--from",
            &to(node_addr(&lab), first),
        ]),
        "node connection",
    );
    node_conn.wait_line("ready");

    let target = to(node_addr(&lab), port);
    let snat_ports = |lab: &Lab| -> Vec<u16> {
        let mut used: Vec<u16> = forward_flows(lab)
            .iter()
            .filter(|f| f.state != "closed")
            .map(|f| {
                let (src, _) = f.to.split_once(" -> ").expect("a:p -> b:q");
                src.rsplit_once(':').unwrap().1.parse().unwrap()
            })
            .collect();
        used.sort();
        used
    };
    let mut held = Proc::spawn(
        lab.client
            .as_ref()
            .unwrap()
            .exec(&[PROBE, "hold", "--to", &target, "--n", "3"]),
        "held connections",
    );
    held.wait_line("ready");
    assert_eq!(
        snat_ports(&lab),
        [first + 1, first + 2, first + 3],
        "SNAT ports skip the node's socket and each other"
    );
    // Every other port is in use: a new flow is refused, counted.
    let r = lab.outside_client(&["connect", "--to", &target, "--n", "1"]);
    assert_eq!(r.answers(), 0, "{r:?}");
    let st = dp.status();
    assert!(st.services[0].drops.snat_exhausted >= 1, "{:?}", st.services[0].drops);
    held.send_line("check");
    let r = held.finish();
    assert!(r.conns.iter().all(|(_, s)| s == "alive"), "{:?}", r.conns);
    // Ended flows (close timeout 60 s) give their ports to new flows at once;
    // the node socket's port is still never taken.
    wait_until("the held flows to close", Duration::from_secs(5), || {
        snat_ports(&lab).is_empty()
    });
    for _ in 0..6 {
        let r = lab.outside_client(&["connect", "--to", &target, "--n", "1"]);
        assert_eq!(r.answers(), 1, "an ended flow's port is taken over: {:?}", r.errors);
    }
    let ports: Vec<u16> = forward_flows(&lab)
        .iter()
        .map(|f| {
            f.to.split_once(" -> ")
                .unwrap()
                .0
                .rsplit_once(':')
                .unwrap()
                .1
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        ports.iter().all(|&p| p != first && (first..=first + 3).contains(&p)),
        "{ports:?}"
    );

    node_conn.send_line("check");
    let r = node_conn.finish();
    assert_eq!(r.conns.len(), 1);
    assert!(
        r.conns.iter().all(|(_, s)| s == "alive"),
        "the node's own connection is untouched: {:?}",
        r.conns
    );

    drop(dp);
    EbpfDataplane::cleanup(&cfg).expect("cleanup");
    assert_eq!(reserved_ports(&lab), "", "cleanup gives the reserved ports back");
}

#[test]
fn icmp_errors_reach_the_client_and_an_unroutable_backend_is_a_counted_drop() {
    let lab = Lab::new("cticmp", 43, 2, true, PROBE);
    let dp = open(&lab, lab.cfg());
    let port = 30000 + u16::from(lab.net);
    let closed_port = 30100 + u16::from(lab.net);
    // Nothing listens on the backend at 9 (UDP): it answers port unreachable.
    dp.sync(&[
        published(&lab, 1, port, TCP_PORT, &[1]),
        published(&lab, 2, closed_port, 9, &[1]),
    ])
    .expect("sync");
    let r = lab.outside_client(&[
        "udp",
        "--to",
        &to(node_addr(&lab), closed_port),
        "--n",
        "1",
        "--connected",
    ]);
    assert_eq!(
        r.errors.get("ECONNREFUSED"),
        Some(&1),
        "the backend's port unreachable reaches the client translated: {r:?}"
    );

    lab.node
        .ip(&["route", "add", "blackhole", &format!("{}/32", lab.backends[1].addr)]);
    let r = lab.outside_client(&["connect", "--to", &to(node_addr(&lab), port), "--n", "1"]);
    assert_eq!(r.answers(), 0, "{r:?}");
    let st = dp.status();
    let svc = st.services.iter().find(|s| s.id == 1).unwrap();
    assert!(svc.drops.no_route >= 1, "{:?}", svc.drops);
    wait_until("a no_route drop event", Duration::from_secs(10), || {
        dp.status().recent_drops.iter().any(|e| e.reason == "no_route")
    });
}

#[test]
fn a_node_running_layout_v2_keeps_its_tc_flows_across_the_upgrade() {
    let lab = Lab::new("ctupgrade", 44, 2, true, PROBE);
    let cfg = lab.cfg();
    let port = 30000 + u16::from(lab.net);
    let ifaces = ["vc0", "br0"];
    lab.node.enter(|| {
        warren_tests::dataplane::v2::install(
            &cfg.bpffs_dir,
            &ifaces,
            &[node_addr(&lab), Ipv4Addr::new(10, 201, lab.net, 1)],
            1,
            port,
            TCP_PORT,
            lab.backends[1].addr,
        )
    });
    let target = to(node_addr(&lab), port);
    let r = lab.outside_client(&["connect", "--to", &target, "--n", "5"]);
    assert_eq!(r.answers(), 5, "the v2 data plane serves from the wire: {:?}", r.errors);
    let mut held = Proc::spawn(
        lab.client
            .as_ref()
            .unwrap()
            .exec(&[PROBE, "hold", "--to", &target, "--n", "5"]),
        "held connections",
    );
    held.wait_line("ready");

    let dp = open(&lab, cfg.clone());
    for old in ["warren_ct_v1", "warren_svcc_v1"] {
        assert!(!cfg.bpffs_dir.join(old).exists(), "{old} retired");
    }
    // v2 kept no TCP state: the five ended flows come over as established
    // too (until their timeout), beside the five held ones.
    let flows = forward_flows(&lab);
    assert_eq!(flows.len(), 10, "the flows were carried over: {flows:?}");
    assert!(flows.iter().all(|f| f.state == "established"), "{flows:?}");
    held.send_line("check");
    let r = held.finish();
    assert_eq!(r.conns.len(), 5);
    assert!(
        r.conns.iter().all(|(_, s)| s == "alive"),
        "tc flows established under v2 survive the upgrade: {:?}",
        r.conns
    );
    let st = dp.status();
    assert!(
        st.services.iter().any(|s| s.connections >= 10),
        "counters carried: {:?}",
        st.services
    );
}
