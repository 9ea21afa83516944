//! End-to-end tests of `warren::dns` with real sockets: the server runs in one network
//! namespace, `dig` queries it from a second one over a veth, and names that are not
//! Warren's go to a small upstream responder in a third. Needs root, iproute2 and
//! `dig` (Debian bind9-dnsutils).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use warren::dns::{DnsConfig, DnsTable};
use warren_tests::dnsutil::{dig, FakeUpstream, NsDnsServer, Zone};
use warren_tests::netns::{require_command, require_root, unique_name, veth_pair, Link, NetNs};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn require_dns_tools() {
    require_root();
    require_command("ip", "iproute2");
    require_command("dig", "bind9-dnsutils");
}

/// Three namespaces: `srv` (the DNS server on 10.53.<net>.1:53), `cli` (10.53.<net>.2,
/// where dig runs) and `up` (10.54.<net>.2, where an upstream may run, reached from
/// `srv` as 10.54.<net>.1). Field order is drop order: the server and upstream stop
/// before the links and namespaces go.
struct Topology {
    server: Option<NsDnsServer>,
    upstream: Option<FakeUpstream>,
    _links: Vec<Link>,
    cli: NetNs,
    up: NetNs,
    srv: NetNs,
    net: u8,
}

impl Topology {
    fn new(tag: &str, net: u8) -> Topology {
        require_dns_tools();
        let srv = NetNs::new(&unique_name(&format!("wdns-{tag}-s")));
        let cli = NetNs::new(&unique_name(&format!("wdns-{tag}-c")));
        let up = NetNs::new(&unique_name(&format!("wdns-{tag}-u")));
        let l1 = veth_pair(&srv, "dns-cli", &cli, "eth0");
        let l2 = veth_pair(&srv, "dns-up", &up, "eth0");
        srv.ip(&["addr", "add", &format!("10.53.{net}.1/24"), "dev", "dns-cli"]);
        cli.ip(&["addr", "add", &format!("10.53.{net}.2/24"), "dev", "eth0"]);
        srv.ip(&["addr", "add", &format!("10.54.{net}.1/24"), "dev", "dns-up"]);
        up.ip(&["addr", "add", &format!("10.54.{net}.2/24"), "dev", "eth0"]);
        Topology {
            server: None,
            upstream: None,
            _links: vec![l1, l2],
            cli,
            up,
            srv,
            net,
        }
    }

    fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(ip(&format!("10.53.{}.1", self.net)).into(), 53)
    }

    fn upstream_addr(&self) -> SocketAddr {
        SocketAddr::new(ip(&format!("10.54.{}.2", self.net)).into(), 53)
    }

    fn config(&self, upstreams: Vec<SocketAddr>) -> DnsConfig {
        DnsConfig {
            bind: self.server_addr(),
            upstreams,
            search_domains: vec!["warren".into()],
            ttl: 5,
            upstream_timeout: Duration::from_secs(1),
        }
    }

    fn start_server(&mut self, upstreams: Vec<SocketAddr>, table: DnsTable) {
        let cfg = self.config(upstreams);
        self.server = Some(NsDnsServer::start(self.srv.path(), cfg, table));
    }

    fn server(&self) -> &NsDnsServer {
        self.server.as_ref().expect("server started")
    }

    fn dig(&self, name: &str, rtype: &str, extra: &[&str]) -> warren_tests::dnsutil::Dig {
        dig(&self.cli, self.server_addr(), name, rtype, extra)
    }
}

/// web: VIP 10.99.0.1 with tasks in slots 1..3; db: dnsrr with three tasks.
fn table(web_vip: &str, web_tasks: &[(u64, &str)]) -> DnsTable {
    let mut b = DnsTable::builder();
    b.service(
        "web",
        Some(ip(web_vip)),
        web_tasks.iter().map(|(s, a)| (*s, ip(a))).collect(),
    )
    .unwrap()
    .service(
        "db",
        None,
        vec![(1, ip("10.88.2.2")), (2, ip("10.88.2.3")), (3, ip("10.88.2.4"))],
    )
    .unwrap();
    b.build()
}

const WEB_TASKS: &[(u64, &str)] = &[(1, "10.88.1.2"), (2, "10.88.1.3"), (3, "10.88.1.4")];

#[test]
fn service_names_resolve_over_udp_and_tcp() {
    let mut t = Topology::new("names", 1);
    t.start_server(vec![], table("10.99.0.1", WEB_TASKS));

    for transport in [&[][..], &["+tcp"][..], &["+noedns"][..]] {
        let d = t.dig("web", "A", transport);
        assert_eq!(d.status, "NOERROR", "{}", d.output);
        assert!(d.has_flag("aa"), "{}", d.output);
        assert_eq!(d.a(), vec![ip("10.99.0.1")], "{}", d.output);
        assert_eq!(d.answers[0].ttl, 5, "{}", d.output);

        let d = t.dig("web.warren", "A", transport);
        assert_eq!(d.a(), vec![ip("10.99.0.1")], "{}", d.output);
        assert_eq!(d.answers[0].name, "web.warren.");

        let d = t.dig("WEB.Warren.", "A", transport);
        assert_eq!(d.a(), vec![ip("10.99.0.1")], "{}", d.output);

        let d = t.dig("tasks.web", "A", transport);
        assert_eq!(
            d.a_sorted(),
            vec![ip("10.88.1.2"), ip("10.88.1.3"), ip("10.88.1.4")],
            "{}",
            d.output
        );
        assert!(d.answers.iter().all(|r| r.ttl == 0), "{}", d.output);

        let d = t.dig("web.2", "A", transport);
        assert_eq!(d.a(), vec![ip("10.88.1.3")], "{}", d.output);

        let d = t.dig("db", "A", transport);
        assert_eq!(
            d.a_sorted(),
            vec![ip("10.88.2.2"), ip("10.88.2.3"), ip("10.88.2.4")],
            "{}",
            d.output
        );
        assert!(d.answers.iter().all(|r| r.ttl == 0), "{}", d.output);

        let d = t.dig("web", "AAAA", transport);
        assert_eq!(d.status, "NOERROR", "{}", d.output);
        assert!(d.answers.is_empty(), "{}", d.output);
    }
}

#[test]
fn dnsrr_answers_rotate_between_queries() {
    let mut t = Topology::new("rr", 2);
    t.start_server(vec![], table("10.99.0.1", WEB_TASKS));
    let firsts: std::collections::BTreeSet<Ipv4Addr> = (0..3).map(|_| t.dig("db", "A", &[]).a()[0]).collect();
    assert_eq!(
        firsts.into_iter().collect::<Vec<_>>(),
        vec![ip("10.88.2.2"), ip("10.88.2.3"), ip("10.88.2.4")],
        "three queries in a row start at three different tasks"
    );
}

#[test]
fn update_changes_the_answers() {
    let mut t = Topology::new("upd", 3);
    t.start_server(vec![], table("10.99.0.1", WEB_TASKS));
    assert_eq!(t.dig("web", "A", &[]).a(), vec![ip("10.99.0.1")]);
    assert_eq!(t.dig("web.3", "A", &[]).a(), vec![ip("10.88.1.4")]);

    // Task 3 replaced by a new task at another address, the VIP changed.
    t.server().update(table(
        "10.99.0.42",
        &[(1, "10.88.1.2"), (2, "10.88.1.3"), (3, "10.88.1.9")],
    ));
    assert_eq!(t.dig("web", "A", &["+tcp"]).a(), vec![ip("10.99.0.42")]);
    assert_eq!(t.dig("web.3", "A", &[]).a(), vec![ip("10.88.1.9")]);
    assert_eq!(
        t.dig("tasks.web", "A", &[]).a_sorted(),
        vec![ip("10.88.1.2"), ip("10.88.1.3"), ip("10.88.1.9")]
    );

    // No healthy task left: the service still exists, so NOERROR with no records.
    t.server().update(table("10.99.0.42", &[]));
    let d = t.dig("tasks.web", "A", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.output);
    assert!(d.answers.is_empty(), "{}", d.output);
    let d = t.dig("web.1", "A", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.output);
    assert!(d.answers.is_empty(), "{}", d.output);
}

#[test]
fn udp_answers_over_512_bytes_without_edns_are_truncated() {
    let mut t = Topology::new("tc", 4);
    let mut b = DnsTable::builder();
    let tasks: Vec<(u64, Ipv4Addr)> = (0..50u8)
        .map(|i| (u64::from(i) + 1, Ipv4Addr::new(10, 88, 7, i + 2)))
        .collect();
    b.service("big", None, tasks).unwrap();
    t.start_server(vec![], b.build());

    let d = t.dig("big", "A", &["+noedns", "+ignore"]);
    assert!(d.has_flag("tc"), "{}", d.output);
    assert!(d.answers.len() < 50, "{}", d.output);

    let d = t.dig("big", "A", &["+tcp"]);
    assert!(!d.has_flag("tc"), "{}", d.output);
    assert_eq!(d.answers.len(), 50, "{}", d.output);

    // With EDNS (dig offers 1232 bytes) 50 records fit in one datagram.
    let d = t.dig("big", "A", &["+ignore"]);
    assert!(!d.has_flag("tc"), "{}", d.output);
    assert_eq!(d.answers.len(), 50, "{}", d.output);
}

#[test]
fn other_names_are_forwarded_and_the_upstream_code_comes_back() {
    let mut t = Topology::new("fwd", 5);
    let zone = HashMap::from([
        (
            "www.example.test.".to_string(),
            Zone::A(vec![ip("192.0.2.10"), ip("192.0.2.11")]),
        ),
        ("broken.example.test.".to_string(), Zone::ServFail),
    ]);
    t.upstream = Some(FakeUpstream::start(t.up.path(), t.upstream_addr(), zone));
    t.start_server(vec![t.upstream_addr()], table("10.99.0.1", WEB_TASKS));

    for transport in [&[][..], &["+tcp"][..]] {
        let d = t.dig("www.example.test", "A", transport);
        assert_eq!(d.status, "NOERROR", "{}", d.output);
        assert!(
            !d.has_flag("aa"),
            "forwarded answers are not authoritative: {}",
            d.output
        );
        assert_eq!(d.a_sorted(), vec![ip("192.0.2.10"), ip("192.0.2.11")], "{}", d.output);
        assert_eq!(d.answers[0].ttl, 60, "the upstream's TTL: {}", d.output);

        let d = t.dig("missing.example.test", "A", transport);
        assert_eq!(d.status, "NXDOMAIN", "{}", d.output);

        let d = t.dig("broken.example.test", "A", transport);
        assert_eq!(d.status, "SERVFAIL", "{}", d.output);
    }
    // A service name is answered here, never asked upstream.
    assert_eq!(t.dig("web", "A", &[]).a(), vec![ip("10.99.0.1")]);

    let asked = t.upstream.as_ref().unwrap().asked();
    for name in ["www.example.test.", "missing.example.test.", "broken.example.test."] {
        assert_eq!(
            asked.iter().filter(|n| *n == name).count(),
            2,
            "{name} asked upstream once per dig: {asked:?}"
        );
    }
    assert!(!asked.iter().any(|n| n.starts_with("web")), "{asked:?}");
}

#[test]
fn without_a_reachable_upstream_other_names_get_servfail() {
    let mut t = Topology::new("noup", 6);
    // Nothing listens on the upstream address: the port is closed, so the query fails
    // fast (ICMP port unreachable) and the client gets SERVFAIL, not a timeout.
    t.start_server(vec![t.upstream_addr()], table("10.99.0.1", WEB_TASKS));
    let d = t.dig("www.example.test", "A", &[]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.output);
    assert_eq!(t.dig("web", "A", &[]).a(), vec![ip("10.99.0.1")]);
}
