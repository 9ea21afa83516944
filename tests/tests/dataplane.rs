//! The eBPF data plane against a real kernel: socket load balancing through VIPs
//! and published ports, canary weights, rate limits, socket destruction, the tc
//! path, pinning/adoption/cleanup, BTF-described maps, and no iptables/nft rules.
//! Each test builds its own namespaces, cgroup and pin directory (see
//! `warren_tests::dataplane`), with its own 10.201.<net>.0/24 range. Needs root.

use std::{net::Ipv4Addr, process::Command, sync::Arc};

use aya::programs::{SchedClassifier, TcAttachType};
use warren::dataplane::{
    Backend, BackendGroup, Dataplane, EbpfDataplane, Protocol, RateLimit, ServiceEntry, ServicePort,
};
use warren_tests::cluster::wait_until;
use warren_tests::dataplane::{run, Lab, Proc, TCP_PORT, UDP_PORT};

const PROBE: &str = env!("CARGO_BIN_EXE_warren-dp-probe");

fn vip(net: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 203, net, 1)
}

fn service(lab: &Lab, id: u32, name: &str, groups: &[(usize, BackendGroup, bool)]) -> ServiceEntry {
    ServiceEntry {
        id,
        name: name.into(),
        vip: Some(vip(lab.net)),
        ports: vec![
            ServicePort {
                protocol: Protocol::Tcp,
                target: TCP_PORT,
                published: Some(30000 + u16::from(lab.net)),
                host_mode: false,
            },
            ServicePort {
                protocol: Protocol::Udp,
                target: UDP_PORT,
                published: Some(30000 + u16::from(lab.net)),
                host_mode: false,
            },
        ],
        backends: groups
            .iter()
            .map(|&(i, group, local)| Backend {
                addr: lab.backends[i].addr,
                group,
                local,
                draining: false,
            })
            .collect(),
        canary_weight: 0,
        rate_limit: None,
        prefer_local: false,
    }
}

fn stable(lab: &Lab, id: u32, name: &str) -> ServiceEntry {
    let groups: Vec<_> = (0..lab.backends.len())
        .map(|i| (i, BackendGroup::Stable, true))
        .collect();
    service(lab, id, name, &groups)
}

/// Entries in use of the map `name`, as the data plane's status reports them.
fn map_entries(dp: &EbpfDataplane, name: &str) -> Option<u64> {
    dp.status().maps.iter().find(|m| m.name == name).map(|m| m.entries)
}

fn to(addr: Ipv4Addr, port: u16) -> String {
    format!("{addr}:{port}")
}

#[test]
fn vip_reaches_every_backend_over_tcp_and_udp() {
    let lab = Lab::new("vip", 11, 3, false, PROBE);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    dp.sync(&[stable(&lab, 1, "web")]).expect("sync");

    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "150"]);
    assert_eq!(r.error_count(), 0, "connect errors: {:?}", r.errors);
    assert_eq!(r.answers(), 150);
    assert_eq!(
        r.names.keys().cloned().collect::<Vec<_>>(),
        ["b0", "b1", "b2"],
        "every backend answers through the VIP: {:?}",
        r.names
    );
    assert_eq!(r.values["peer_mismatch"], 0, "getpeername must return the VIP");
    // Where the kernel has socket storage, a connected socket's translation lives
    // with the socket: 150 connections leave no reverse-NAT entry behind.
    let sk_storage = warren::dataplane::check_kernel().expect("kernel").at_least(5, 10);
    let revnat = |dp: &EbpfDataplane| map_entries(dp, "warren_rnat_v1").expect("warren_rnat_v1 fill");
    if sk_storage {
        assert_eq!(revnat(&dp), 0, "TCP connections wrote reverse-NAT entries");
    }

    // Unconnected UDP: replies come from the VIP, not from the backend.
    let r = lab.client(&["udp", "--to", &to(vip(lab.net), UDP_PORT), "--n", "20"]);
    assert_eq!(r.error_count(), 0, "udp errors: {:?}", r.errors);
    assert_eq!(r.answers(), 20);
    assert_eq!(
        r.from.keys().cloned().collect::<Vec<_>>(),
        [to(vip(lab.net), UDP_PORT)],
        "reply source must be the VIP"
    );
    // Connected UDP, too.
    let r = lab.client(&["udp", "--to", &to(vip(lab.net), UDP_PORT), "--n", "5", "--connected"]);
    assert_eq!(r.answers(), 5, "{:?}", r.errors);
    assert_eq!(r.from.keys().cloned().collect::<Vec<_>>(), [to(vip(lab.net), UDP_PORT)]);
    if sk_storage {
        // The one unconnected socket's entry (one backend, one service address).
        assert_eq!(
            revnat(&dp),
            1,
            "reverse-NAT entries beyond the unconnected UDP socket's"
        );
    }

    // Any port of the VIP reaches the same port of a backend (wildcard entry); a
    // node address reaches the published port.
    let published = 30000 + u16::from(lab.net);
    let r = lab.client(&[
        "connect",
        "--to",
        &to(Ipv4Addr::new(10, 201, lab.net, 1), published),
        "--n",
        "30",
    ]);
    assert_eq!(r.answers(), 30, "published port on the node address: {:?}", r.errors);
    let r = lab.client(&["connect", "--to", &to(Ipv4Addr::LOCALHOST, published), "--n", "5"]);
    assert_eq!(r.answers(), 5, "published port on loopback: {:?}", r.errors);

    // A service that declares no port: every port of its VIP still reaches the
    // same port of a backend (the wildcard entry, Swarm semantics).
    let bare_vip = Ipv4Addr::new(10, 203, lab.net, 2);
    let mut bare = stable(&lab, 2, "bare");
    bare.vip = Some(bare_vip);
    bare.ports.clear();
    dp.sync(&[stable(&lab, 1, "web"), bare]).expect("sync");
    let r = lab.client(&["connect", "--to", &to(bare_vip, TCP_PORT), "--n", "30"]);
    assert_eq!(r.answers(), 30, "wildcard VIP over TCP: {:?}", r.errors);
    let r = lab.client(&["udp", "--to", &to(bare_vip, UDP_PORT), "--n", "5"]);
    assert_eq!(r.answers(), 5, "wildcard VIP over UDP: {:?}", r.errors);

    let st = dp.status();
    let web = st.services.iter().find(|s| s.name == "web").expect("web counters");
    // 150 + 30 + 5 TCP connections, one unconnected UDP socket (its datagrams
    // keep their backend) and one connected UDP socket.
    assert_eq!(web.connections, 187, "connections counted: {web:?}");
    assert_eq!(web.packets, 20, "datagrams through sendmsg: {web:?}");
    let web_backends: Vec<_> = st.backends.iter().filter(|b| b.service == "web").collect();
    assert_eq!(web_backends.len(), 3);
    assert!(web_backends.iter().all(|b| b.connections > 0), "{:?}", web_backends);
}

#[test]
fn loopback_published_port_is_translated_only_in_the_host_namespace() {
    let lab = Lab::new("loopback", 21, 2, false, PROBE);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    // The service publishes the port its tasks listen on (8080), like `-p 8080:8080`.
    let mut svc = stable(&lab, 1, "web");
    svc.ports[0].published = Some(TCP_PORT);
    let extra = 30000 + u16::from(lab.net);
    svc.ports.push(ServicePort {
        protocol: Protocol::Tcp,
        target: TCP_PORT,
        published: Some(extra),
        host_mode: false,
    });
    svc.ports.retain(|p| p.protocol == Protocol::Tcp);
    dp.sync(&[svc]).expect("sync");

    // The host's loopback reaches the service.
    let r = lab.client(&["connect", "--to", &to(Ipv4Addr::LOCALHOST, extra), "--n", "20"]);
    assert_eq!(r.answers(), 20, "host loopback to a published port: {:?}", r.errors);
    assert_eq!(
        r.names.len(),
        2,
        "both backends through the host's loopback: {:?}",
        r.names
    );

    // Inside a task, 127.0.0.1 is the task's own: its own listener answers, never
    // another replica, and a published port nothing listens on is refused.
    for (i, name) in [(0, "b0"), (1, "b1")] {
        let r = lab.task_client(i, &["connect", "--to", &to(Ipv4Addr::LOCALHOST, TCP_PORT), "--n", "20"]);
        assert_eq!(r.answers(), 20, "task {name}: its own listener: {:?}", r.errors);
        assert_eq!(
            r.names.keys().cloned().collect::<Vec<_>>(),
            [name],
            "task {name}: 127.0.0.1:{TCP_PORT} went to another replica: {:?}",
            r.names
        );
        let r = lab.task_client(i, &["connect", "--to", &to(Ipv4Addr::LOCALHOST, extra), "--n", "3"]);
        assert_eq!(
            r.answers(),
            0,
            "task {name}: 127.0.0.1:{extra} was translated: {:?}",
            r.names
        );
        assert_eq!(r.errors.get("ECONNREFUSED"), Some(&3), "task {name}: {:?}", r.errors);
        // The node's address still reaches the published port from a task (Swarm).
        let node = Ipv4Addr::new(10, 201, lab.net, 1);
        let r = lab.task_client(i, &["connect", "--to", &to(node, extra), "--n", "10"]);
        assert_eq!(r.answers(), 10, "task {name}: node address: {:?}", r.errors);
    }

    // A host socket cannot bind a published port that the data plane would shadow;
    // a task can (its namespace has its own ports), and so can the host elsewhere.
    let published_any = to(Ipv4Addr::UNSPECIFIED, extra);
    for (addr, udp) in [
        (published_any.as_str(), false),
        (&to(Ipv4Addr::LOCALHOST, TCP_PORT), false),
    ] {
        let mut args = vec!["bind", "--to", addr];
        if udp {
            args.push("--udp");
        }
        let r = lab.client(&args);
        assert_eq!(r.errors.get("EADDRINUSE"), Some(&1), "host bind {addr}: {r:?}");
    }
    let r = lab.client(&["bind", "--to", &to(Ipv4Addr::UNSPECIFIED, extra), "--udp"]);
    assert_eq!(r.values.get("bound"), Some(&1), "udp/{extra} is not published: {r:?}");
    let r = lab.client(&["bind", "--to", &to(Ipv4Addr::UNSPECIFIED, extra + 1)]);
    assert_eq!(r.values.get("bound"), Some(&1), "an unpublished port: {r:?}");
    let r = lab.task_client(0, &["bind", "--to", &published_any]);
    assert_eq!(r.values.get("bound"), Some(&1), "a task binds its own port: {r:?}");
}

#[test]
fn dual_stack_sockets_reach_a_vip_through_its_ipv4_mapped_address() {
    let lab = Lab::new("dualstack", 22, 2, false, PROBE);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    dp.sync(&[stable(&lab, 1, "web")]).expect("sync");
    let mapped = |port: u16| format!("[::ffff:{}]:{port}", vip(lab.net));

    let r = lab.client(&["dual", "--to", &mapped(TCP_PORT), "--n", "40"]);
    assert_eq!(r.error_count(), 0, "AF_INET6 connect to ::ffff:VIP: {:?}", r.errors);
    assert_eq!(r.answers(), 40);
    assert_eq!(
        r.names.keys().cloned().collect::<Vec<_>>(),
        ["b0", "b1"],
        "{:?}",
        r.names
    );
    assert_eq!(
        r.values["peer_mismatch"], 0,
        "getpeername returns ::ffff:VIP: {:?}",
        r.from
    );

    for connected in [false, true] {
        let m = mapped(UDP_PORT);
        let mut args = vec!["dual", "--udp", "--to", &m, "--n", "10"];
        if connected {
            args.push("--connected");
        }
        let r = lab.client(&args);
        assert_eq!(r.answers(), 10, "udp (connected {connected}): {:?}", r.errors);
        assert_eq!(
            r.from.keys().cloned().collect::<Vec<_>>(),
            [mapped(UDP_PORT)],
            "udp (connected {connected}): replies come from ::ffff:VIP"
        );
    }
    // A published port on the node's address, mapped, too.
    let node = format!("[::ffff:10.201.{}.1]:{}", lab.net, 30000 + u16::from(lab.net));
    let r = lab.client(&["dual", "--to", &node, "--n", "10"]);
    assert_eq!(r.answers(), 10, "::ffff:<node address>:<published>: {:?}", r.errors);
    let st = dp.status();
    assert_eq!(
        st.services[0].connections,
        40 + 2 + 10,
        "counted like IPv4: {:?}",
        st.services
    );
}

fn fraction(r: &warren_tests::dataplane::Report, name: &str) -> f64 {
    r.names.get(name).copied().unwrap_or(0) as f64 / r.answers() as f64
}

#[test]
fn canary_weight_splits_new_connections() {
    let lab = Lab::new("canary", 12, 4, false, PROBE);
    lab.measure_rates();
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    // Three stable tasks and one canary: the split follows the weight, not the count.
    let groups = [
        (0, BackendGroup::Stable, true),
        (1, BackendGroup::Stable, true),
        (2, BackendGroup::Stable, true),
        (3, BackendGroup::Canary, true),
    ];
    let target = to(vip(lab.net), TCP_PORT);
    for (weight, tolerance) in [(20u8, 0.03), (50, 0.04), (0, 0.0)] {
        let mut svc = service(&lab, 7, "web", &groups);
        svc.canary_weight = weight;
        dp.sync(&[svc]).expect("sync");
        let r = lab.client(&["connect", "--to", &target, "--n", "2000"]);
        assert_eq!(r.error_count(), 0, "weight {weight}: errors {:?}", r.errors);
        assert_eq!(r.answers(), 2000);
        let canary = fraction(&r, "b3");
        let want = f64::from(weight) / 100.0;
        assert!(
            (canary - want).abs() <= tolerance,
            "weight {weight}: canary got {:.1}% of new connections ({:?})",
            canary * 100.0,
            r.names
        );
        if weight == 0 {
            assert!(!r.names.contains_key("b3"), "weight 0 sends nothing to the canary");
        }
        // The stable share is spread over the stable tasks.
        for b in ["b0", "b1", "b2"] {
            assert!(
                r.names.get(b).copied().unwrap_or(0) > 0,
                "weight {weight}: {b} got nothing"
            );
        }
    }
}

/// Connections per backend address through `target` (the HTTP server answers
/// with the address it was reached on), gathered by rounds of `crr` until `done`
/// says so, at most 10 rounds.
fn spread(
    lab: &Lab,
    target: &str,
    done: impl Fn(&std::collections::BTreeMap<String, u64>) -> bool,
) -> std::collections::BTreeMap<String, u64> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let r = lab.client(&["crr", "--to", target, "--ms", "1500", "--conns", "16", "--threads", "2"]);
        assert_eq!(r.error_count(), 0, "connection errors: {:?}", r.errors);
        for (k, v) in r.names {
            *seen.entry(k).or_default() += v;
        }
        if done(&seen) {
            break;
        }
    }
    seen
}

#[test]
fn maglev_spreads_over_300_backends_and_holds_a_10_percent_canary() {
    let mut lab = Lab::new("maglev", 28, 1, false, PROBE);
    lab.measure_rates();
    let addrs = lab.add_backend_addrs(0, 300);
    lab.start_http(0, 8081);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    let mut svc = stable(&lab, 1, "wide");
    svc.backends = addrs
        .iter()
        .map(|&addr| Backend {
            addr,
            group: BackendGroup::Stable,
            local: true,
            draining: false,
        })
        .collect();
    dp.sync(std::slice::from_ref(&svc)).expect("sync");
    let target = to(vip(lab.net), 8081);
    // Past the old 256-slot tables: every one of 300 backends is reached.
    let seen = spread(&lab, &target, |s| s.len() == 300);
    let missing: Vec<_> = addrs.iter().filter(|a| !seen.contains_key(&a.to_string())).collect();
    assert!(
        missing.is_empty(),
        "{} backends never reached: {missing:?}",
        missing.len()
    );

    // One canary among 299 stable backends at weight 10.
    svc.backends[0].group = BackendGroup::Canary;
    svc.canary_weight = 10;
    dp.sync(std::slice::from_ref(&svc)).expect("sync");
    let seen = spread(&lab, &target, |s| s.values().sum::<u64>() >= 5000);
    let total: u64 = seen.values().sum();
    let canary = seen.get(&addrs[0].to_string()).copied().unwrap_or(0) as f64 / total as f64;
    assert!(
        (canary - 0.10).abs() <= 0.015,
        "canary got {:.2}% of {total} connections, expected 10 ± 1.5%",
        canary * 100.0
    );
}

#[test]
fn rate_limit_refuses_new_connections_over_the_bucket_per_client() {
    let lab = Lab::new("ratelimit", 13, 2, false, PROBE);
    lab.measure_rates();
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    let mut svc = stable(&lab, 2, "limited");
    svc.rate_limit = Some(RateLimit { per_sec: 50, burst: 50 });
    dp.sync(&[svc]).expect("sync");

    let target = to(vip(lab.net), TCP_PORT);
    let busy_src = Ipv4Addr::new(10, 201, lab.net, 101).to_string();
    let calm_src = Ipv4Addr::new(10, 201, lab.net, 102).to_string();
    let before: u64 = (0..2).map(|i| lab.backend_counts(i).0).sum();
    let busy = lab.spawn_client(&[
        "connect", "--to", &target, "--rate", "500", "--secs", "5", "--bind", &busy_src,
    ]);
    let calm = lab.spawn_client(&[
        "connect", "--to", &target, "--rate", "10", "--secs", "5", "--bind", &calm_src,
    ]);
    let busy = busy.finish();
    let calm = calm.finish();
    let after: u64 = (0..2).map(|i| lab.backend_counts(i).0).sum();

    // The second client stays under its own bucket: nothing refused.
    assert_eq!(calm.error_count(), 0, "second client was limited: {:?}", calm.errors);
    assert_eq!(calm.answers(), calm.values["attempts"]);

    // burst + rate × duration, measured rather than assumed.
    let secs = busy.values["elapsed_ms"] as f64 / 1000.0;
    let expected = 50.0 + 50.0 * secs;
    let accepted_at_backends = after - before - calm.answers();
    assert!(
        (accepted_at_backends as f64 - expected).abs() <= expected * 0.10,
        "accepted {accepted_at_backends} of {} attempts in {secs:.2}s, expected {expected:.0} ± 10%",
        busy.values["attempts"]
    );
    assert_eq!(busy.answers(), accepted_at_backends, "client and backends disagree");
    let refused = busy.errors.get("ECONNREFUSED").copied().unwrap_or(0);
    assert_eq!(
        refused + busy.answers(),
        busy.values["attempts"],
        "refusals are ECONNREFUSED: {:?}",
        busy.errors
    );
    let st = dp.status();
    let s = st.services.iter().find(|s| s.name == "limited").expect("counters");
    assert_eq!(s.drops.rate_limited, refused, "every refusal is counted as a drop");
    assert_eq!(s.drops.no_backend, 0);

    // The programs also report the drops through the events ring buffer.
    let busy_ip: Ipv4Addr = busy_src.parse().unwrap();
    wait_until(
        "rate-limit drop events of the busy client",
        std::time::Duration::from_secs(10),
        || {
            dp.status()
                .recent_drops
                .iter()
                .any(|e| e.reason == "rate_limited" && e.client == busy_ip && e.service_id == 2 && !e.from_wire)
        },
    );
    let calm_ip: Ipv4Addr = calm_src.parse().unwrap();
    assert!(
        !dp.status().recent_drops.iter().any(|e| e.client == calm_ip),
        "the calm client was never dropped"
    );
}

#[test]
fn rate_limit_is_exact_under_a_flood_and_under_fast_retries() {
    let mut lab = Lab::new("rlexact", 25, 1, false, PROBE);
    lab.measure_rates();
    lab.start_http(0, 8081);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    let mut flood = stable(&lab, 1, "flood");
    flood.rate_limit = Some(RateLimit {
        per_sec: 1000,
        burst: 100,
    });
    let mut retry = stable(&lab, 2, "retry");
    retry.vip = Some(Ipv4Addr::new(10, 203, lab.net, 2));
    retry.ports.clear();
    // Burst 20 at 20/s fills in 1 s: a client stalled by the machine's load for
    // less than that loses no token (time beyond a full bucket is not banked).
    retry.rate_limit = Some(RateLimit { per_sec: 20, burst: 20 });
    dp.sync(&[flood, retry]).expect("sync");

    // 20,000 attempts/s (32 paced loops) against 1,000/s with burst 100, for 3 s.
    let r = lab.client(&[
        "crr",
        "--to",
        &to(vip(lab.net), 8081),
        "--ms",
        "3000",
        "--rate",
        "20000",
        "--conns",
        "32",
        "--threads",
        "2",
    ]);
    // The client aims at 20,000/s; on a loaded machine it makes fewer, which is
    // still a flood as long as the limit is always exceeded several times over.
    let attempts = r.values["attempts"] as f64;
    assert!(
        attempts > 15_000.0,
        "the flood made only {attempts} attempts in 3 s, not a flood of a 1,000/s limit"
    );
    let refused = r.errors.get("ECONNREFUSED").copied().unwrap_or(0);
    assert_eq!(
        refused + r.values["ok"],
        r.values["attempts"],
        "only ECONNREFUSED refusals: {:?}",
        r.errors
    );
    let expected = 100.0 + 1000.0 * 3.0;
    let accepted = r.values["ok"] as f64;
    let st = dp.status();
    let counted = st.services.iter().find(|s| s.name == "flood").expect("flood counters");
    assert_eq!(
        counted.connections, r.values["ok"],
        "the data plane admitted what the client saw"
    );
    assert!(
        (accepted - expected).abs() <= expected * 0.05,
        "flood: accepted {accepted} of {attempts} attempts in 3 s, expected {expected} ± 5%"
    );

    // A client retrying every 100 µs (the old bucket never refilled for it).
    let r = lab.client(&[
        "connect",
        "--to",
        &to(Ipv4Addr::new(10, 203, lab.net, 2), TCP_PORT),
        "--rate",
        "10000",
        "--secs",
        "3",
    ]);
    let secs = r.values["elapsed_ms"] as f64 / 1000.0;
    let expected = 20.0 + 20.0 * secs;
    let refused = r.errors.get("ECONNREFUSED").copied().unwrap_or(0);
    assert_eq!(
        refused + r.answers(),
        r.values["attempts"],
        "only ECONNREFUSED: {:?}",
        r.errors
    );
    assert!(
        (r.answers() as f64 - expected).abs() <= 2.0,
        "retry every 100 µs: accepted {} of {} attempts in {secs:.3}s, expected {expected:.1} ± 2",
        r.answers(),
        r.values["attempts"]
    );
}

#[test]
fn udp_is_charged_per_flow_not_per_datagram() {
    let lab = Lab::new("rlflow", 26, 1, false, PROBE);
    lab.measure_rates();
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    let mut svc = stable(&lab, 1, "dns");
    svc.rate_limit = Some(RateLimit { per_sec: 1, burst: 5 });
    dp.sync(&[svc]).expect("sync");
    let target = to(vip(lab.net), UDP_PORT);
    // One connected flow: charged once, however many datagrams.
    let r = lab.client(&["udp", "--to", &target, "--n", "50", "--connected"]);
    assert_eq!(r.answers(), 50, "a connected UDP flow: {:?}", r.errors);
    // One unconnected socket to one service address: one flow too.
    let r = lab.client(&["udp", "--to", &target, "--n", "50"]);
    assert_eq!(r.answers(), 50, "an unconnected UDP flow: {:?}", r.errors);
    // New flows (a socket each): three tokens left (four if a second passed).
    let r = lab.client(&[
        "udp",
        "--to",
        &target,
        "--n",
        "8",
        "--socket-each",
        "--timeout-ms",
        "300",
    ]);
    assert!((3..=4).contains(&r.answers()), "new flows past the burst: {r:?}");
    assert_eq!(r.errors.get("ECONNREFUSED").copied(), Some(8 - r.answers()), "{r:?}");
    let st = dp.status();
    assert_eq!(st.services[0].connections, 2 + r.answers(), "one connection per flow");
}

/// An unconnected UDP socket's flow to a service ends after the UDP timeout:
/// datagrams further apart are new flows, each charged and balanced; a node's
/// flows of the earlier affinity layout (no idle time) are carried over.
#[test]
fn an_unconnected_udp_flow_ends_after_its_idle_timeout_and_old_affinities_carry_over() {
    use aya::maps::{HashMap, Map, MapData};
    use warren_common::{Affinity, SockKey};
    let lab = Lab::new("udpidle", 27, 2, false, PROBE);
    let mut cfg = lab.cfg();
    cfg.ct_timeouts.udp = std::time::Duration::from_secs(1);
    // 1. A flow as the previous layout pinned it: cookie 7 to 10.203.27.1:53 on
    //    backend 5 of service 1.
    std::fs::create_dir_all(&cfg.bpffs_dir).expect("pin directory");
    let v1 = cfg.bpffs_dir.join("warren_aff_v1");
    let v1_path = v1.to_string_lossy().into_owned();
    run(Command::new("bpftool").args([
        "map",
        "create",
        &v1_path,
        "type",
        "lru_hash",
        "key",
        "16",
        "value",
        "8",
        "entries",
        "65536",
        "name",
        "warren_aff_v1",
    ]));
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>();
    let mut key = 7u64.to_ne_bytes().to_vec();
    key.extend([10, 203, 27, 1, 0, 53, 0, 0]);
    let mut value = 5u32.to_ne_bytes().to_vec();
    value.extend(1u32.to_ne_bytes());
    let mut update = vec!["map", "update", "pinned", v1_path.as_str(), "key", "hex"];
    let (key_hex, value_hex) = (hex(&key), hex(&value));
    update.extend(key_hex.iter().map(String::as_str));
    update.extend(["value", "hex"]);
    update.extend(value_hex.iter().map(String::as_str));
    run(Command::new("bpftool").args(&update));

    // 2. The new daemon carries it into warren_aff_v2, as just seen, and retires
    //    the old pin.
    let dp = EbpfDataplane::open(cfg.clone()).expect("open data plane");
    assert!(!v1.exists(), "warren_aff_v1 is still pinned");
    let data = MapData::from_pin(cfg.bpffs_dir.join("warren_aff_v2")).expect("warren_aff_v2 pinned");
    let aff: HashMap<MapData, SockKey, Affinity> = HashMap::try_from(Map::LruHashMap(data)).expect("LRU hash");
    let carried: Vec<(SockKey, Affinity)> = aff.iter().map(|e| e.expect("entry")).collect();
    assert_eq!(carried.len(), 1, "{carried:?}");
    assert_eq!(
        (carried[0].0.cookie, carried[0].1.backend_id, carried[0].1.svc_id),
        (7, 5, 1)
    );
    assert!(
        carried[0].1.last_ns > 0,
        "a carried flow starts its idle time at the upgrade"
    );

    // 3. Datagrams close together: one flow. Further apart than the timeout: a
    //    new flow each.
    dp.sync(&[stable(&lab, 1, "dns")]).expect("sync");
    let target = to(vip(lab.net), UDP_PORT);
    let r = lab.client(&["udp", "--to", &target, "--n", "5", "--gap-ms", "100"]);
    assert_eq!(r.answers(), 5, "{:?}", r.errors);
    assert_eq!(
        dp.status().services[0].connections,
        1,
        "datagrams 100 ms apart are one flow"
    );
    let r = lab.client(&["udp", "--to", &target, "--n", "3", "--gap-ms", "1300"]);
    assert_eq!(r.answers(), 3, "{:?}", r.errors);
    assert_eq!(
        dp.status().services[0].connections,
        4,
        "datagrams 1.3 s apart (timeout 1 s) are a flow each"
    );
}

#[test]
fn removed_backend_gets_no_connections_and_its_sockets_are_destroyed() {
    let lab = Lab::new("remove", 14, 2, false, PROBE);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    assert!(
        dp.status().sock_destroy,
        "this kernel (6.5+) must support bpf_sock_destroy"
    );
    dp.sync(&[stable(&lab, 3, "web")]).expect("sync");

    let mut tcp = lab.spawn_client(&["hold", "--to", &to(vip(lab.net), TCP_PORT), "--n", "24"]);
    let mut udp = lab.spawn_client(&["hold", "--to", &to(vip(lab.net), UDP_PORT), "--n", "24", "--udp"]);
    tcp.wait_line("ready");
    udp.wait_line("ready");

    // b1 leaves the service.
    let svc = service(&lab, 3, "web", &[(0, BackendGroup::Stable, true)]);
    dp.sync(&[svc]).expect("sync");
    tcp.send_line("check");
    udp.send_line("check");
    for (what, r) in [("tcp", tcp.finish()), ("udp", udp.finish())] {
        assert_eq!(r.conns.len(), 24);
        let on = |b: &str| r.conns.iter().filter(|(n, _)| n == b).collect::<Vec<_>>();
        assert!(
            !on("b0").is_empty() && !on("b1").is_empty(),
            "{what}: both backends held connections: {:?}",
            r.conns
        );
        for (_, state) in on("b0") {
            assert_eq!(
                state, "alive",
                "{what}: a connection to the remaining backend was touched"
            );
        }
        for (_, state) in on("b1") {
            assert_eq!(
                state, "ECONNABORTED",
                "{what}: a connection to the removed backend survived"
            );
        }
    }

    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "100"]);
    assert_eq!(r.answers(), 100, "{:?}", r.errors);
    assert_eq!(r.names.keys().cloned().collect::<Vec<_>>(), ["b0"]);
    let r = lab.client(&["udp", "--to", &to(vip(lab.net), UDP_PORT), "--n", "20"]);
    assert_eq!(r.names.keys().cloned().collect::<Vec<_>>(), ["b0"]);

    // No backend at all: a connect to the VIP is refused at once and counted.
    let mut empty = stable(&lab, 3, "web");
    empty.backends.clear();
    dp.sync(&[empty]).expect("sync");
    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "3"]);
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&3), "{:?}", r.errors);
    let st = dp.status();
    assert_eq!(st.services[0].drops.no_backend, 3);
}

#[test]
fn prefer_local_sends_new_connections_to_local_tasks_while_any_is_ready() {
    let lab = Lab::new("locality", 31, 3, false, PROBE);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    let target = to(vip(lab.net), TCP_PORT);
    // b0 runs on this node, b1 and b2 elsewhere.
    let groups = [
        (0, BackendGroup::Stable, true),
        (1, BackendGroup::Stable, false),
        (2, BackendGroup::Stable, false),
    ];
    let names = |r: &warren_tests::dataplane::Report| r.names.keys().cloned().collect::<Vec<_>>();

    // 1. Without the option every task takes connections.
    dp.sync(&[service(&lab, 4, "web", &groups)]).expect("sync");
    let r = lab.client(&["connect", "--to", &target, "--n", "150"]);
    assert_eq!(r.answers(), 150, "{:?}", r.errors);
    assert_eq!(names(&r), ["b0", "b1", "b2"]);

    // 2. prefer-local: only the local task, over TCP and UDP.
    let mut svc = service(&lab, 4, "web", &groups);
    svc.prefer_local = true;
    dp.sync(std::slice::from_ref(&svc)).expect("sync");
    let r = lab.client(&["connect", "--to", &target, "--n", "150"]);
    assert_eq!(r.answers(), 150, "{:?}", r.errors);
    assert_eq!(names(&r), ["b0"], "prefer-local with a ready local task");
    let r = lab.client(&["udp", "--to", &to(vip(lab.net), UDP_PORT), "--n", "20"]);
    assert_eq!(r.answers(), 20, "{:?}", r.errors);
    assert_eq!(names(&r), ["b0"], "prefer-local over UDP");

    // 3. The local task drains: new connections go to the remote ones, none refused.
    svc.backends[0].draining = true;
    dp.sync(std::slice::from_ref(&svc)).expect("sync");
    let r = lab.client(&["connect", "--to", &target, "--n", "150"]);
    assert_eq!(r.answers(), 150, "{:?}", r.errors);
    assert_eq!(names(&r), ["b1", "b2"], "a draining local task takes no new connection");

    // 4. It is gone (no longer ready): the same; back: local again.
    svc.backends.remove(0);
    dp.sync(std::slice::from_ref(&svc)).expect("sync");
    let r = lab.client(&["connect", "--to", &target, "--n", "100"]);
    assert_eq!(r.answers(), 100, "{:?}", r.errors);
    assert_eq!(names(&r), ["b1", "b2"]);
    let mut back = service(&lab, 4, "web", &groups);
    back.prefer_local = true;
    dp.sync(&[back]).expect("sync");
    let r = lab.client(&["connect", "--to", &target, "--n", "100"]);
    assert_eq!(r.answers(), 100, "{:?}", r.errors);
    assert_eq!(names(&r), ["b0"], "the local task is preferred again once ready");
}

#[test]
fn an_invalid_service_does_not_stop_another_services_changes() {
    let lab = Lab::new("robust", 24, 2, false, PROBE);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    let web = stable(&lab, 3, "web");
    let mut bad = stable(&lab, 4, "bad");
    bad.vip = Some(Ipv4Addr::new(10, 203, lab.net, 9));
    bad.ports.clear();
    // A VIP that is another service's: the later claimant is skipped.
    let mut thief = stable(&lab, 5, "thief");
    thief.ports.clear();
    let report = dp.sync(&[web.clone(), bad.clone(), thief.clone()]).expect("sync");
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert_eq!(
        (report.skipped[0].name.as_str(), report.skipped[0].field.as_str()),
        ("thief", "vip")
    );
    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "20"]);
    assert_eq!(r.names.len(), 2, "web serves: {:?} {:?}", r.names, r.errors);

    // bad turns invalid while web loses a backend: web's change still lands.
    bad.canary_weight = 101;
    let web_b0 = service(&lab, 3, "web", &[(0, BackendGroup::Stable, true)]);
    let report = dp.sync(&[web_b0, bad, thief]).expect("sync");
    let skipped: Vec<_> = report
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.field.as_str()))
        .collect();
    assert_eq!(skipped, [("bad", "canary_weight"), ("thief", "vip")]);
    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "20"]);
    assert_eq!(r.answers(), 20, "{:?}", r.errors);
    assert_eq!(
        r.names.keys().cloned().collect::<Vec<_>>(),
        ["b0"],
        "web's new backends"
    );
    // The status (what `node inspect` / `service inspect` show) names them.
    let st = dp.status();
    assert_eq!(st.skipped, report.skipped);
    assert_eq!(st.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["web"]);
}

#[test]
fn a_removed_services_vip_refuses_new_connections_until_the_dns_ttl_passed() {
    let lab = Lab::new("tombstone", 23, 1, false, PROBE);
    let mut cfg = lab.cfg();
    cfg.refuse_removed = std::time::Duration::from_secs(2);
    let dp = EbpfDataplane::open(cfg).expect("open data plane");
    dp.sync(&[stable(&lab, 3, "web")]).expect("sync");
    let target = to(vip(lab.net), TCP_PORT);
    let r = lab.client(&["connect", "--to", &target, "--n", "3"]);
    assert_eq!(r.answers(), 3, "{:?}", r.errors);

    // Removed: clients that still resolve the name are refused at once, rather
    // than sent out of the node untranslated (here: no route, ENETUNREACH).
    dp.sync(&[]).expect("sync");
    let r = lab.client(&["connect", "--to", &target, "--n", "3"]);
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&3), "{:?}", r.errors);
    let r = lab.client(&["udp", "--to", &to(vip(lab.net), UDP_PORT), "--n", "1"]);
    assert_eq!(
        r.errors.get("ECONNREFUSED"),
        Some(&1),
        "udp to a removed VIP: {:?}",
        r.errors
    );
    let svc_entries = |dp: &EbpfDataplane| map_entries(dp, "warren_svc_v1");
    assert_eq!(
        svc_entries(&dp),
        Some(4),
        "the VIP entries (2 ports, 2 wildcards) stay as tombstones; published ports go"
    );
    // After the grace the addresses go, with no further sync.
    wait_until(
        "the removed VIP's entries to go",
        std::time::Duration::from_secs(10),
        || svc_entries(&dp) == Some(0),
    );
    let r = lab.client(&["connect", "--to", &target, "--n", "1"]);
    assert_eq!(r.errors.get("ENETUNREACH"), Some(&1), "{:?}", r.errors);
}

#[test]
fn published_port_from_the_wire_via_tc() {
    let lab = Lab::new("tc", 15, 3, true, PROBE);
    let mut cfg = lab.cfg();
    cfg.ifaces = vec!["vc0".into(), "br0".into()];
    // tc programs attach to interfaces of the namespace the loader runs in.
    let dp = lab.node.enter(|| EbpfDataplane::open(cfg)).expect("open data plane");

    let web_port = 30000 + u16::from(lab.net);
    let host_port = 31000 + u16::from(lab.net);
    // b0 and b1 run on this node, b2 on another one (reached with SNAT).
    let mut web = service(
        &lab,
        1,
        "web",
        &[
            (0, BackendGroup::Stable, true),
            (1, BackendGroup::Stable, true),
            (2, BackendGroup::Stable, false),
        ],
    );
    web.vip = None;
    let mut host = service(
        &lab,
        2,
        "hostmode",
        &[(0, BackendGroup::Stable, true), (2, BackendGroup::Stable, false)],
    );
    host.vip = None;
    host.ports = vec![ServicePort {
        protocol: Protocol::Tcp,
        target: TCP_PORT,
        published: Some(host_port),
        host_mode: true,
    }];
    let limited_port = 32000 + u16::from(lab.net);
    let mut limited = service(&lab, 3, "udplimited", &[(0, BackendGroup::Stable, true)]);
    limited.vip = None;
    limited.ports = vec![ServicePort {
        protocol: Protocol::Udp,
        target: UDP_PORT,
        published: Some(limited_port),
        host_mode: false,
    }];
    limited.rate_limit = Some(RateLimit { per_sec: 1, burst: 3 });
    dp.sync(&[web, host, limited]).expect("sync");

    let node_addr = Ipv4Addr::new(10, 202, lab.net, 1);
    let client_addr = Ipv4Addr::new(10, 202, lab.net, 2).to_string();
    let r = lab.outside_client(&["connect", "--to", &to(node_addr, web_port), "--n", "90"]);
    assert_eq!(r.error_count(), 0, "tc path errors: {:?}", r.errors);
    assert_eq!(r.answers(), 90);
    assert_eq!(
        r.names.keys().cloned().collect::<Vec<_>>(),
        ["b0", "b1", "b2"],
        "{:?}",
        r.names
    );
    assert_eq!(r.values["peer_mismatch"], 0, "the reply comes from the node address");
    assert_eq!(
        r.seen_from["b0"], client_addr,
        "client address preserved to a local backend"
    );
    assert_eq!(
        r.seen_from["b1"], client_addr,
        "client address preserved to a local backend"
    );
    assert_eq!(
        r.seen_from["b2"],
        node_addr.to_string(),
        "SNAT to the node address for a remote backend"
    );

    let r = lab.outside_client(&["udp", "--to", &to(node_addr, web_port), "--n", "20"]);
    assert_eq!(r.error_count(), 0, "udp errors: {:?}", r.errors);
    assert_eq!(
        r.from.keys().cloned().collect::<Vec<_>>(),
        [to(node_addr, web_port)],
        "UDP replies come from the node address"
    );

    let r = lab.outside_client(&["connect", "--to", &to(node_addr, host_port), "--n", "30"]);
    assert_eq!(r.answers(), 30, "{:?}", r.errors);
    assert_eq!(
        r.names.keys().cloned().collect::<Vec<_>>(),
        ["b0"],
        "mode=host goes to local tasks only"
    );

    // The rate limit counts flows: one socket's datagrams are one flow...
    let r = lab.outside_client(&["udp", "--to", &to(node_addr, limited_port), "--n", "10"]);
    assert_eq!(r.answers(), 10, "one UDP flow from the wire is charged once: {r:?}");
    // ...and new flows over the limit are dropped at tc and counted.
    let r = lab.outside_client(&[
        "udp",
        "--to",
        &to(node_addr, limited_port),
        "--n",
        "10",
        "--socket-each",
        "--timeout-ms",
        "300",
    ]);
    let answered = r.answers();
    assert!(
        (2..10).contains(&answered),
        "burst 3 at 1/s (one token spent above) answered {answered} of 10 new flows: {r:?}"
    );

    let st = dp.status();
    let web = st.services.iter().find(|s| s.name == "web").unwrap();
    assert!(web.packets > 0 && web.bytes > 0, "tc counts packets and bytes: {web:?}");
    let lim = st.services.iter().find(|s| s.name == "udplimited").unwrap();
    assert_eq!(
        lim.drops.rate_limited,
        10 - answered,
        "every dropped new flow is counted"
    );
    let client_ip = Ipv4Addr::new(10, 202, lab.net, 2);
    wait_until("tc drop events", std::time::Duration::from_secs(10), || {
        dp.status()
            .recent_drops
            .iter()
            .any(|e| e.from_wire && e.client == client_ip && e.port == limited_port && e.proto == 17)
    });
    let ct = st.maps.iter().find(|m| m.name == warren_common::map_names::CT).unwrap();
    assert!(ct.entries > 0, "connection tracking holds the flows");
    assert!(st.programs.iter().any(|p| p.target == "tc-ingress:vc0"));
    assert!(st.programs.iter().any(|p| p.target == "tc-egress:br0"));

    // tcx programs per hook, as the kernel reports them (bpftool 7.1 predates tcx).
    let tc_progs = |dev: &str, t: TcAttachType| -> Vec<String> {
        lab.node.enter(|| {
            let (_, progs) = SchedClassifier::query_tcx(dev, t).expect("query tcx");
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or_default().to_string())
                .collect()
        })
    };
    assert_eq!(tc_progs("vc0", TcAttachType::Ingress), ["warren_tc_in"]);
    assert_eq!(tc_progs("br0", TcAttachType::Egress), ["warren_tc_out"]);
    drop(dp);
    EbpfDataplane::cleanup(&lab.cfg()).expect("cleanup");
    for dev in ["vc0", "br0"] {
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            assert!(tc_progs(dev, t).is_empty(), "tc programs left on {dev}");
        }
    }
}

#[test]
fn pinned_programs_survive_the_loader_and_are_adopted_without_a_gap() {
    let lab = Lab::new("adopt", 16, 2, false, PROBE);
    let svc = stable(&lab, 4, "web");
    {
        let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
        dp.sync(std::slice::from_ref(&svc)).expect("sync");
        assert!(dp.status().programs.iter().all(|p| !p.adopted));
    }
    // The loader is gone (as after kill -9): the pins keep everything attached.
    let stop = lab.tmp.join("stop");
    let mut looping = lab.spawn_client(&[
        "loop",
        "--to",
        &to(vip(lab.net), TCP_PORT),
        "--stop-file",
        &stop.to_string_lossy(),
    ]);
    looping.wait_line("started");
    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "20"]);
    assert_eq!(r.answers(), 20, "VIP works with no loader running: {:?}", r.errors);

    for _ in 0..3 {
        let dp = EbpfDataplane::open(lab.cfg()).expect("adopt data plane");
        let st = dp.status();
        assert!(
            st.programs.iter().all(|p| p.adopted),
            "links adopted: {:?}",
            st.programs
        );
        assert_eq!(st.services.len(), 1, "map contents adopted");
        assert_eq!(st.backends.len(), 2);
        dp.sync(std::slice::from_ref(&svc)).expect("sync after adoption");
    }
    std::fs::write(&stop, b"").unwrap();
    let r = looping.finish();
    assert!(r.values["attempts"] > 10, "the loop ran: {r:?}");
    assert_eq!(r.error_count(), 0, "connections failed across restarts: {:?}", r.errors);

    // One program per hook: adoption updated the links instead of adding new ones.
    let out = run(Command::new("bpftool").args(["cgroup", "show"]).arg(&lab.cgroup.path));
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "warren_connect4",
        "warren_sendmsg4",
        "warren_recvmsg4",
        "warren_getpeer4",
        "warren_connect6",
        "warren_sendmsg6",
        "warren_recvmsg6",
        "warren_getpeer6",
        "warren_post_bind4",
        "warren_post_bind6",
        "warren_sockops",
    ] {
        assert_eq!(text.matches(name).count(), 1, "{name} attached once:\n{text}");
    }

    EbpfDataplane::cleanup(&lab.cfg()).expect("cleanup");
    assert!(!lab.cfg().bpffs_dir.exists(), "pin directory removed");
    let out = run(Command::new("bpftool").args(["cgroup", "show"]).arg(&lab.cgroup.path));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("warren_"),
        "programs detached after cleanup"
    );
    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "1"]);
    assert_eq!(r.answers(), 0, "the VIP is gone after cleanup");
    EbpfDataplane::cleanup(&lab.cfg()).expect("cleanup is idempotent");
}

#[test]
fn a_daemon_killed_with_sigkill_and_restarted_causes_no_failed_connection() {
    let lab = Lab::new("kill9", 20, 2, false, PROBE);
    let cfg = lab.cfg();
    let port = TCP_PORT.to_string();
    let vip_s = vip(lab.net).to_string();
    let b0 = lab.backends[0].addr.to_string();
    let b1 = lab.backends[1].addr.to_string();
    let bpffs = cfg.bpffs_dir.to_string_lossy().into_owned();
    let cgroup = cfg.cgroup_root.to_string_lossy().into_owned();
    let start_daemon = || {
        let mut c = Command::new(PROBE);
        c.args([
            "daemon",
            "--node",
            "kill9",
            "--bpffs",
            &bpffs,
            "--cgroup",
            &cgroup,
            "--vip",
            &vip_s,
            "--port",
            &port,
            "--backend",
            &b0,
            "--backend",
            &b1,
        ]);
        let mut d = Proc::spawn(c, "daemon");
        let lines = d.wait_line("synced");
        (d, lines)
    };
    let (mut daemon, lines) = start_daemon();
    assert_eq!(lines, ["adopted 0"], "a fresh start attaches new links");

    let stop = lab.tmp.join("stop");
    let mut looping = lab.spawn_client(&[
        "loop",
        "--to",
        &to(vip(lab.net), TCP_PORT),
        "--stop-file",
        &stop.to_string_lossy(),
    ]);
    looping.wait_line("started");
    for _ in 0..3 {
        daemon.child.kill().expect("SIGKILL the daemon");
        daemon.child.wait().expect("reap the daemon");
        let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "10"]);
        assert_eq!(r.answers(), 10, "VIP works while no daemon runs: {:?}", r.errors);
        let (d, lines) = start_daemon();
        assert_eq!(
            lines,
            ["adopted 11"],
            "a restart adopts the 11 pinned cgroup links (sockops included)"
        );
        daemon = d;
    }
    std::fs::write(&stop, b"").unwrap();
    let r = looping.finish();
    assert!(r.values["attempts"] > 10, "the loop ran: {r:?}");
    assert_eq!(
        r.error_count(),
        0,
        "connections failed across kill -9 and restart: {:?}",
        r.errors
    );
    assert_eq!(r.names.len(), 2, "both backends served: {:?}", r.names);
    drop(daemon);
}

#[test]
fn a_node_running_layout_v1_is_upgraded_without_dropping_a_connection() {
    let lab = Lab::new("upgrade", 29, 2, false, PROBE);
    let cfg = lab.cfg();
    let backends: Vec<Ipv4Addr> = lab.backends.iter().map(|b| b.addr).collect();
    // The node as the previous release left it (its daemon gone, pins in place).
    warren_tests::dataplane::v1::install(&cfg.bpffs_dir, &cfg.cgroup_root, 1, vip(lab.net), TCP_PORT, &backends);
    let target = to(vip(lab.net), TCP_PORT);
    let r = lab.client(&["connect", "--to", &target, "--n", "20"]);
    assert_eq!(r.answers(), 20, "the v1 data plane serves: {:?}", r.errors);
    let mut held = lab.spawn_client(&["hold", "--to", &target, "--n", "10"]);
    held.wait_line("ready");
    let stop = lab.tmp.join("stop");
    let mut looping = lab.spawn_client(&["loop", "--to", &target, "--stop-file", &stop.to_string_lossy()]);
    looping.wait_line("started");

    // The new daemon starts on those pins: new maps beside the old, filled from
    // them, then every hook switched; no sync yet.
    let dp = EbpfDataplane::open(cfg.clone()).expect("open the data plane on v1 pins");
    let st = dp.status();
    assert_eq!(
        st.programs.iter().filter(|p| p.target.starts_with("cgroup:")).count(),
        11,
        "{:?}",
        st.programs
    );
    // The v1 links got the new programs (BPF_LINK_UPDATE: never an empty hook).
    for p in [
        "warren_connect4",
        "warren_sendmsg4",
        "warren_recvmsg4",
        "warren_getpeer4",
    ] {
        assert!(
            st.programs.iter().any(|a| a.adopted && a.program == p),
            "{p}'s v1 link adopted: {:?}",
            st.programs
        );
    }
    for old in ["warren_state_v1", "warren_slot_v1", "warren_rl_v1"] {
        assert!(!cfg.bpffs_dir.join(old).exists(), "{old} retired");
    }
    assert_eq!(st.backends.len(), 2, "backends adopted: {:?}", st.backends);
    let r = lab.client(&["connect", "--to", &target, "--n", "40"]);
    assert_eq!(
        r.answers(),
        40,
        "the migrated tables serve before any sync: {:?}",
        r.errors
    );
    assert_eq!(r.names.len(), 2, "over both backends: {:?}", r.names);

    // The first sync of the same service changes no backend.
    let svc = ServiceEntry {
        id: 1,
        name: "web".into(),
        vip: Some(vip(lab.net)),
        ports: vec![ServicePort {
            protocol: Protocol::Tcp,
            target: TCP_PORT,
            published: None,
            host_mode: false,
        }],
        backends: backends
            .iter()
            .map(|&addr| Backend {
                addr,
                group: BackendGroup::Stable,
                local: true,
                draining: false,
            })
            .collect(),
        canary_weight: 0,
        rate_limit: None,
        prefer_local: false,
    };
    dp.sync(&[svc]).expect("sync");
    held.send_line("check");
    let r = held.finish();
    assert_eq!(r.conns.len(), 10);
    assert!(
        r.conns.iter().all(|(_, state)| state == "alive"),
        "connections established under v1 survive: {:?}",
        r.conns
    );
    std::fs::write(&stop, b"").unwrap();
    let r = looping.finish();
    assert!(r.values["attempts"] > 10, "the loop ran: {r:?}");
    assert_eq!(
        r.error_count(),
        0,
        "connections failed across the upgrade: {:?}",
        r.errors
    );
}

#[test]
fn warren_dataplane_reads_the_pinned_maps_with_the_daemon_running_and_stopped() {
    let lab = Lab::new("inspect", 30, 2, false, PROBE);
    let cfg = lab.cfg();
    let bpffs = cfg.bpffs_dir.to_string_lossy().into_owned();
    let mut c = Command::new(PROBE);
    c.args(["daemon", "--node", "inspect", "--bpffs", &bpffs, "--cgroup"])
        .arg(&cfg.cgroup_root)
        .args(["--vip", &vip(lab.net).to_string(), "--port", &TCP_PORT.to_string()]);
    for b in &lab.backends {
        c.args(["--backend", &b.addr.to_string()]);
    }
    let mut daemon = Proc::spawn(c, "daemon");
    daemon.wait_line("synced");
    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "10"]);
    assert_eq!(r.answers(), 10, "{:?}", r.errors);

    let warren = warren_tests::cluster::warren_bin();
    let inspect = |what: &str| -> serde_json::Value {
        let out = run(Command::new(&warren).args(["dataplane", what, "--bpffs", &bpffs, "--format", "json"]));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("warren dataplane {what}: {e}"))
    };
    let check = |when: &str| {
        let v = inspect("services");
        let svc = &v[0];
        assert_eq!(svc["id"], 1, "{when}: {v}");
        let frontends: Vec<&str> = svc["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["address"].as_str().unwrap())
            .collect();
        let vip_port = format!("{}:{TCP_PORT}/tcp", vip(lab.net));
        assert!(frontends.contains(&vip_port.as_str()), "{when}: {frontends:?}");
        let backends: Vec<String> = svc["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["addr"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = lab.backends.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(backends, want, "{when}: {v}");
        assert_eq!(svc["table_size"], 101, "{when}: two backends, 101 slots");
        let stats = inspect("stats");
        assert_eq!(stats[0]["connections"], 10, "{when}: {stats}");
        // The other views parse too (no tc flows or buckets in this lab).
        assert_eq!(inspect("ct"), serde_json::json!([]), "{when}");
        assert_eq!(inspect("ratelimit"), serde_json::json!([]), "{when}");
    };
    check("daemon running");
    daemon.child.kill().expect("kill the daemon");
    daemon.child.wait().expect("reap the daemon");
    check("daemon stopped");
    // The table form, for people.
    let out = run(Command::new(&warren).args(["dataplane", "services", "--bpffs", &bpffs]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FRONTEND") && text.contains(&lab.backends[0].addr.to_string()),
        "{text}"
    );
}

#[test]
fn bpftool_prints_map_fields_by_name() {
    let lab = Lab::new("bpftool", 17, 1, false, PROBE);
    let dp = EbpfDataplane::open(lab.cfg()).expect("open data plane");
    dp.sync(&[stable(&lab, 5, "web")]).expect("sync");
    let dir = lab.cfg().bpffs_dir;
    let dump = |map: &str| {
        let out = run(Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(dir.join(map)));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let svc = dump("warren_svc_v1");
    for field in [
        "\"addr\"",
        "\"port\"",
        "\"proto\"",
        "\"svc_id\"",
        "\"target_port\"",
        "\"flags\"",
    ] {
        assert!(svc.contains(field), "warren_svc_v1 dump lacks {field}:\n{svc}");
    }
    let be = dump("warren_be_v1");
    assert!(
        be.contains("\"svc_id\": 5"),
        "warren_be_v1 dump:\n{}",
        &be[..be.len().min(2000)]
    );
    let state = dump("warren_state_v2");
    assert!(state.contains("\"size_all\""), "warren_state_v2 dump lacks fields");

    // The lookups docs/dataplane.md shows: keys as bytes in memory order.
    let lookup = |map: &str, key: &[String]| {
        let out = run(Command::new("bpftool")
            .args(["map", "lookup", "pinned"])
            .arg(dir.join(map))
            .arg("key")
            .args(key));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let v = vip(lab.net).octets();
    let [hi, lo] = TCP_PORT.to_be_bytes();
    let key: Vec<String> = [v[0], v[1], v[2], v[3], hi, lo, 6, 0]
        .iter()
        .map(|b| b.to_string())
        .collect();
    let entry = lookup("warren_svc_v1", &key);
    assert!(entry.contains("\"svc_id\": 5"), "VIP:8080/tcp lookup:\n{entry}");
    let key: Vec<String> = ["5", "0", "0", "0"].iter().map(|s| s.to_string()).collect();
    let entry = lookup("warren_state_v2", &key);
    assert!(entry.contains("\"backends_all\": 1"), "state of service 5:\n{entry}");
}

#[test]
fn no_iptables_or_nft_rules_for_services() {
    let lab = Lab::new("nonft", 18, 1, true, PROBE);
    let mut cfg = lab.cfg();
    cfg.ifaces = vec!["vc0".into()];
    let dp = lab.node.enter(|| EbpfDataplane::open(cfg)).expect("open data plane");
    dp.sync(&[stable(&lab, 6, "web")]).expect("sync");
    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "5"]);
    assert_eq!(r.answers(), 5, "the service works: {:?}", r.errors);

    let vip = vip(lab.net).to_string();
    let published = (30000 + u16::from(lab.net)).to_string();
    for ns in [None, Some(&lab.node)] {
        for argv in [&["iptables-save"][..], &["nft", "list", "ruleset"][..]] {
            let mut cmd = match ns {
                Some(ns) => ns.exec(argv),
                None => {
                    let mut c = Command::new(argv[0]);
                    c.args(&argv[1..]);
                    c
                }
            };
            let out = cmd.output().expect("run rule listing");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(!text.contains(&vip), "{argv:?} mentions the VIP {vip}:\n{text}");
            assert!(
                !text.contains(&published),
                "{argv:?} mentions published port {published}:\n{text}"
            );
        }
    }
}

#[test]
fn metrics_are_registered_on_a_registry() {
    let lab = Lab::new("metrics", 19, 1, false, PROBE);
    let dp = Arc::new(EbpfDataplane::open(lab.cfg()).expect("open data plane"));
    dp.sync(&[stable(&lab, 8, "web")]).expect("sync");
    let r = lab.client(&["connect", "--to", &to(vip(lab.net), TCP_PORT), "--n", "7"]);
    assert_eq!(r.answers(), 7);
    let registry = prometheus::Registry::new_custom(Some("warren".into()), None).unwrap();
    warren::dataplane::register_metrics(&registry, dp.clone()).expect("register");
    let mut out = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("warren_dataplane_connections_total{service=\"web\"} 7"),
        "{text}"
    );
    assert!(
        text.contains("warren_dataplane_map_entries{map=\"warren_svc_v1\"} 6"),
        "{text}"
    );
    assert!(
        text.contains("warren_dataplane_program_attached{program=\"warren_connect4\""),
        "{text}"
    );
}
