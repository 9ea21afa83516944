//! Data-plane scenarios: Warren's eBPF data plane, used as a library on its own
//! cgroup and bpffs directory, side by side with no translation (`direct`),
//! kube-proxy-style iptables DNAT and HAProxy, over veths between network
//! namespaces ([`lab`]). `dataplane.rr` (keep-alive requests), `.crr` (a new
//! connection per request), `.scale` (with thousands of other services),
//! `.program` (adding a service until its VIP answers), `.nodeport` (published
//! ports from another namespace), `.canary` (measured canary share) and
//! `.ratelimit` (accepted rate under a flood). Every variant runs several times,
//! alternating with the others, after a warm-up.

mod kubeproxy;
pub(crate) mod lab;
pub(crate) mod tools;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    panic::AssertUnwindSafe,
    path::Path,
    time::{Duration, Instant},
};

use kubeproxy::KubeService;
use lab::{finish, Lab, NODE_PORT, PORT};
use tools::{CrrRun, WrkRun};
use warren::dataplane::{Backend, BackendGroup, Dataplane, Protocol, RateLimit, ServiceEntry, ServicePort};

use crate::stats::Record;
use warren_tests::dataplane::probe::monotonic_ns;

type Scenario = fn(&mut Lab, &Settings) -> Vec<Record>;

/// The scenarios this module measures, in order.
const SCENARIOS: [(&str, Scenario); 9] = [
    ("dataplane.rr", rr),
    ("dataplane.crr", crr_scenario),
    ("dataplane.scale", scale),
    ("dataplane.program", program),
    ("dataplane.nodeport", nodeport),
    ("dataplane.canary", canary),
    ("dataplane.ratelimit", ratelimit),
    ("dataplane.maglev", maglev),
    ("footprint", bpf_memory),
];

/// How long and how often; `--quick` keeps the whole data-plane part near a minute.
struct Settings {
    reps: usize,
    warm_ms: u64,
    wrk_secs: u64,
    crr_ms: u64,
    canary_ms: u64,
    program_reps: usize,
    others: [usize; 3],
    program_others: [usize; 2],
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                reps: 2,
                warm_ms: 300,
                wrk_secs: 1,
                crr_ms: 1000,
                canary_ms: 500,
                program_reps: 2,
                others: [1, 1000, 10_000],
                program_others: [1000, 10_000],
            }
        } else {
            Settings {
                reps: 5,
                warm_ms: 1000,
                wrk_secs: 4,
                crr_ms: 4000,
                canary_ms: 2000,
                program_reps: 5,
                others: [1, 1000, 10_000],
                program_others: [1000, 10_000],
            }
        }
    }
}

/// Concurrent connections of wrk (keep-alive) and of the connection-per-request client.
const WRK_CONNS: u32 = 32;
const CRR_CONNS: u32 = 16;
/// Threads of the backend server.
const SERVER_THREADS: usize = 1;
/// The rate limit of `dataplane.ratelimit` and the flood against it.
const LIMIT_PER_SEC: u32 = 1000;
const LIMIT_BURST: u32 = 100;
const FLOOD_PER_SEC: u32 = 20_000;
/// A run whose errors exceed this share of its attempts is reported as failed.
const MAX_ERROR_SHARE: f64 = 0.01;

type Metric = (&'static str, &'static str, bool);
const RR_METRICS: [Metric; 3] = [
    ("requests", "req/s", true),
    ("p50 latency", "µs", false),
    ("p99 latency", "µs", false),
];
const CRR_METRICS: [Metric; 3] = [
    ("new connections", "conn/s", true),
    ("p50 latency", "µs", false),
    ("p99 latency", "µs", false),
];

/// Runs per (variant, metric); a variant that failed keeps the first reason.
struct Collector {
    scenario: &'static str,
    rows: Vec<(String, Metric, Vec<f64>)>,
    failed: Vec<(String, String)>,
}

impl Collector {
    fn new(scenario: &'static str) -> Collector {
        Collector {
            scenario,
            rows: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Fixes the order of rows: variants as declared, metrics as listed.
    fn declare(&mut self, variant: &str, metrics: &[Metric]) {
        for &m in metrics {
            if !self.rows.iter().any(|(v, x, _)| v == variant && x.0 == m.0) {
                self.rows.push((variant.to_string(), m, Vec::new()));
            }
        }
    }

    fn add(&mut self, variant: &str, metric: &str, value: f64) {
        let row = self
            .rows
            .iter_mut()
            .find(|(v, m, _)| v == variant && m.0 == metric)
            .unwrap_or_else(|| panic!("{}: {variant}/{metric} was not declared", self.scenario));
        row.2.push(value);
    }

    fn fail(&mut self, variant: &str, why: impl Into<String>) {
        let why = why.into();
        eprintln!("warren-bench: {} {variant}: {why}", self.scenario);
        if !self.is_failed(variant) {
            self.failed.push((variant.to_string(), why));
        }
    }

    fn is_failed(&self, variant: &str) -> bool {
        self.failed.iter().any(|(v, _)| v == variant)
    }

    fn records(self) -> Vec<Record> {
        self.rows
            .into_iter()
            .map(
                |(variant, (metric, unit, higher), runs)| match self.failed.iter().find(|(v, _)| *v == variant) {
                    Some((_, why)) => {
                        let mut r = Record::skipped(self.scenario, &variant, metric, unit, why.clone());
                        r.higher_is_better = higher;
                        r
                    }
                    None => Record::new(self.scenario, &variant, metric, unit, higher, runs),
                },
            )
            .collect()
    }
}

fn addr(ip: Ipv4Addr, port: u16) -> String {
    SocketAddrV4::new(ip, port).to_string()
}

fn crr(lab: &Lab, client: &str, to: &str, ms: u64, extra: &[&str]) -> Result<CrrRun, String> {
    let ms_s = ms.to_string();
    let conns = CRR_CONNS.to_string();
    let mut args = vec!["crr", "--to", to, "--ms", &ms_s, "--conns", &conns];
    args.extend_from_slice(extra);
    let out = lab.probe(client, &args, Duration::from_millis(ms) + Duration::from_secs(30))?;
    tools::parse_crr(&out)
}

/// A connection-per-request run that must succeed with few errors.
fn crr_ok(lab: &Lab, client: &str, to: &str, ms: u64) -> Result<CrrRun, String> {
    let r = crr(lab, client, to, ms, &[])?;
    if r.ok == 0 || r.error_count() as f64 > r.attempts as f64 * MAX_ERROR_SHARE {
        return Err(format!(
            "{} answers of {} attempts to {to}, errors {:?}",
            r.ok, r.attempts, r.errors
        ));
    }
    Ok(r)
}

fn wrk(lab: &Lab, client: &str, to: &str, secs: u64) -> Result<WrkRun, String> {
    let d = format!("-d{secs}s");
    let c = format!("-c{WRK_CONNS}");
    let url = format!("http://{to}/");
    let argv = ["wrk", "-t1", &c, &d, "--latency", "--timeout", "2s", &url];
    let out = finish(
        lab.spawn(client, &argv, &format!("wrk in {client}")),
        Duration::from_secs(secs + 30),
    )?;
    let r = tools::parse_wrk(&out)?;
    let bad = r.socket_errors + r.non_2xx;
    if r.requests == 0 || bad as f64 > r.requests as f64 * MAX_ERROR_SHARE {
        return Err(format!(
            "{} requests to {to}, {} socket errors, {} non-2xx",
            r.requests, r.socket_errors, r.non_2xx
        ));
    }
    Ok(r)
}

fn add_crr(c: &mut Collector, variant: &str, r: &CrrRun) {
    c.add(variant, "new connections", r.rate);
    c.add(variant, "p50 latency", r.p50_us);
    c.add(variant, "p99 latency", r.p99_us);
}

/// Warm-up: neighbour entries, page cache, the server's and the proxies' first
/// connections. A variant whose warm-up fails is reported with the reason.
fn warm(c: &mut Collector, lab: &Lab, variant: &str, client: &str, to: &str, ms: u64) {
    if let Err(e) = crr_ok(lab, client, to, ms) {
        c.fail(variant, format!("warm-up: {e}"));
    }
}

/// A variant: its name, its client namespace, and the address it measures (or
/// why it could not be set up).
type Variant<'a> = (&'a str, &'a str, Result<String, String>);

/// Declares and warms up every variant, then measures each `s.reps` times,
/// alternating run by run so that drift on a noisy machine hits all alike.
/// Variants that could not be set up, or that fail, are reported with the reason.
fn alternate(
    c: &mut Collector,
    lab: &Lab,
    s: &Settings,
    variants: &[Variant],
    metrics: &[Metric],
    mut measure: impl FnMut(&mut Collector, &str, &str, &str),
) {
    for (v, client, to) in variants {
        c.declare(v, metrics);
        match to {
            Err(e) => c.fail(v, e.clone()),
            Ok(to) if !c.is_failed(v) => warm(c, lab, v, client, to, s.warm_ms),
            Ok(_) => {}
        }
    }
    for _ in 0..s.reps {
        for (v, client, to) in variants {
            if let Ok(to) = to {
                if !c.is_failed(v) {
                    measure(c, v, client, to);
                }
            }
        }
    }
}

/// Keep-alive requests with wrk.
fn measure_rr<'a>(lab: &'a Lab, s: &Settings) -> impl FnMut(&mut Collector, &str, &str, &str) + 'a {
    let secs = s.wrk_secs;
    move |c, v, client, to| match wrk(lab, client, to, secs) {
        Ok(r) => {
            c.add(v, "requests", r.requests_per_sec);
            c.add(v, "p50 latency", r.p50_us);
            c.add(v, "p99 latency", r.p99_us);
        }
        Err(e) => c.fail(v, e),
    }
}

/// A new connection per request.
fn measure_crr<'a>(lab: &'a Lab, s: &Settings) -> impl FnMut(&mut Collector, &str, &str, &str) + 'a {
    let ms = s.crr_ms;
    move |c, v, client, to| match crr_ok(lab, client, to, ms) {
        Ok(r) => add_crr(c, v, &r),
        Err(e) => c.fail(v, e),
    }
}

// ---------------------------------------------------------------- services

const VIP_RR: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
const VIP_IPT: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 3);
const VIP_CANARY: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 5);
const VIP_LIMITED: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 6);
const VIP_UNLIMITED: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 7);
/// The node-port service's cluster IP in the iptables router (never used).
const VIP_NODEPORT_IPT: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 22);
/// The pod network of the iptables variants: their clients count as pods, so
/// kube-proxy's rules do not masquerade them.
const CLUSTER_CIDR: &str = "10.230.0.0/16";

fn warren_service(id: u32, name: &str, vip: Option<Ipv4Addr>, backends: &[Ipv4Addr]) -> ServiceEntry {
    ServiceEntry {
        id,
        name: name.into(),
        vip,
        ports: vec![ServicePort {
            protocol: Protocol::Tcp,
            target: PORT,
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
    }
}

fn kube_service(name: &str, cluster_ip: Ipv4Addr, backends: &[Ipv4Addr]) -> KubeService {
    KubeService {
        name: format!("default/{name}:http"),
        cluster_ip,
        port: PORT,
        endpoints: backends.iter().map(|&a| (a, PORT)).collect(),
        node_port: None,
    }
}

/// `n` other services, each with a VIP and two backends that are never contacted.
fn others(n: usize) -> (Vec<ServiceEntry>, Vec<KubeService>) {
    let vip0 = u32::from(Ipv4Addr::new(10, 236, 0, 1));
    let be0 = u32::from(Ipv4Addr::new(10, 237, 0, 1));
    let mut w = Vec::with_capacity(n);
    let mut k = Vec::with_capacity(n);
    for i in 0..n as u32 {
        let vip = Ipv4Addr::from(vip0 + i);
        let backends = [Ipv4Addr::from(be0 + 2 * i), Ipv4Addr::from(be0 + 2 * i + 1)];
        let name = format!("other-{i}");
        w.push(warren_service(10 + i, &name, Some(vip), &backends));
        k.push(kube_service(&name, vip, &backends));
    }
    (w, k)
}

// ---------------------------------------------------------------- scenarios

/// The four variants of `rr` and `crr`: (variant, client namespace, target).
fn proxy_variants(lab: &mut Lab) -> Vec<(&'static str, &'static str, Result<String, String>)> {
    let direct = addr(lab.clients["direct"].backends[0], PORT);
    let vip = lab
        .dp
        .sync(&[warren_service(1, "rr", Some(VIP_RR), &lab.clients["vip"].backends)])
        .map(|_| addr(VIP_RR, PORT))
        .map_err(|e| format!("data plane sync: {e}"));
    let ipt = Lab::iptables_restore(
        &lab.clients["ipt"].ns,
        &kubeproxy::full_restore(
            &[kube_service("rr", VIP_IPT, &lab.clients["ipt"].backends)],
            CLUSTER_CIDR,
        ),
        false,
    )
    .map(|_| addr(VIP_IPT, PORT));
    let hap = lab.start_haproxy().map(|a| a.to_string());
    vec![
        ("direct", "direct", Ok(direct)),
        ("warren-vip", "vip", vip),
        ("iptables-dnat", "ipt", ipt),
        ("userspace-proxy (haproxy)", "hap", hap),
    ]
}

fn rr(lab: &mut Lab, s: &Settings) -> Vec<Record> {
    let mut c = Collector::new("dataplane.rr");
    let variants = proxy_variants(lab);
    alternate(&mut c, lab, s, &variants, &RR_METRICS, measure_rr(lab, s));
    c.records()
}

fn crr_scenario(lab: &mut Lab, s: &Settings) -> Vec<Record> {
    let mut c = Collector::new("dataplane.crr");
    let variants = proxy_variants(lab);
    alternate(&mut c, lab, s, &variants, &CRR_METRICS, measure_crr(lab, s));
    c.records()
}

fn scale(lab: &mut Lab, s: &Settings) -> Vec<Record> {
    let mut c = Collector::new("dataplane.scale");
    let plural = |n: usize| if n == 1 { "service" } else { "services" };
    for n in s.others {
        let wv = format!("warren-vip, {n} {}", plural(n));
        let iv = format!("iptables-dnat, {n} {}", plural(n));
        c.declare(&wv, &CRR_METRICS);
        c.declare(&iv, &CRR_METRICS);
        let (mut wsvcs, mut ksvcs) = others(n);
        wsvcs.push(warren_service(1, "rr", Some(VIP_RR), &lab.clients["vip"].backends));
        // The measured rule sits in the middle of KUBE-SERVICES: the average
        // case of iptables' linear match.
        ksvcs.insert(n / 2, kube_service("rr", VIP_IPT, &lab.clients["ipt"].backends));
        let t = Instant::now();
        match lab.dp.sync(&wsvcs) {
            Ok(_) => eprintln!("warren-bench: data plane sync of {} services: {:?}", n + 1, t.elapsed()),
            Err(e) => c.fail(&wv, format!("the data plane refused {} services: {e}", n + 1)),
        }
        let t = Instant::now();
        match Lab::iptables_restore(
            &lab.clients["ipt"].ns,
            &kubeproxy::full_restore(&ksvcs, CLUSTER_CIDR),
            false,
        ) {
            Ok(()) => eprintln!(
                "warren-bench: iptables-restore of {} services: {:?}",
                n + 1,
                t.elapsed()
            ),
            Err(e) => c.fail(&iv, e),
        }
        let variants = [
            (wv.as_str(), "vip", Ok(addr(VIP_RR, PORT))),
            (iv.as_str(), "ipt", Ok(addr(VIP_IPT, PORT))),
        ];
        alternate(&mut c, lab, s, &variants, &CRR_METRICS, measure_crr(lab, s));
    }
    // Leave the small rule set for whatever runs next.
    let _ = Lab::iptables_restore(
        &lab.clients["ipt"].ns,
        &kubeproxy::full_restore(
            &[kube_service("rr", VIP_IPT, &lab.clients["ipt"].backends)],
            CLUSTER_CIDR,
        ),
        false,
    );
    c.records()
}

/// Starts the poller, takes the start time, installs, and returns the time
/// until the poller's first answer.
fn time_to_answer(
    lab: &Lab,
    client: &str,
    vip: Ipv4Addr,
    install: impl FnOnce() -> Result<(), String>,
) -> Result<f64, String> {
    let to = addr(vip, PORT);
    let mut poller = lab.spawn_probe(
        client,
        &["await", "--to", &to, "--timeout-ms", "30000", "--poll-us", "200"],
    );
    poller.wait_line("ready");
    let t0 = monotonic_ns();
    install()?;
    let out = finish(poller, Duration::from_secs(40))?;
    let t1 = tools::parse_await(&out)?;
    Ok(t1.saturating_sub(t0) as f64 / 1e6)
}

fn program(lab: &mut Lab, s: &Settings) -> Vec<Record> {
    const METRIC: Metric = ("add service to VIP answering", "ms", false);
    let mut c = Collector::new("dataplane.program");
    for n in s.program_others {
        let wv = format!("warren, {n} services");
        let iv = format!("iptables-restore, {n} services");
        c.declare(&wv, &[METRIC]);
        c.declare(&iv, &[METRIC]);
        let (wsvcs, ksvcs) = others(n);
        if let Err(e) = lab.dp.sync(&wsvcs) {
            c.fail(&wv, format!("the data plane refused {n} services: {e}"));
        }
        let ipt_ns = &lab.clients["pipt"].ns;
        let t = Instant::now();
        match Lab::iptables_restore(ipt_ns, &kubeproxy::full_restore(&ksvcs, CLUSTER_CIDR), false) {
            Ok(()) => eprintln!("warren-bench: iptables-restore of {n} services: {:?}", t.elapsed()),
            Err(e) => c.fail(&iv, e),
        }
        // The first round is a warm-up and is not counted.
        for rep in 0..=s.program_reps {
            let vip = Ipv4Addr::new(10, 231, 1, 1 + rep as u8);
            if !c.is_failed(&wv) {
                let mut all = wsvcs.clone();
                all.push(warren_service(9, "new", Some(vip), &lab.clients["pvip"].backends));
                let dp = &lab.dp;
                let r = time_to_answer(lab, "pvip", vip, || {
                    dp.sync(&all).map(drop).map_err(|e| format!("data plane sync: {e}"))
                });
                match r {
                    Ok(ms) if rep > 0 => c.add(&wv, METRIC.0, ms),
                    Ok(_) => {}
                    Err(e) => c.fail(&wv, e),
                }
                if let Err(e) = lab.dp.sync(&wsvcs) {
                    c.fail(&wv, format!("removing the new service: {e}"));
                }
            }
            if !c.is_failed(&iv) {
                let added = kube_service("new", vip, &lab.clients["pipt"].backends);
                let mut all = ksvcs.clone();
                all.push(added.clone());
                let rules = kubeproxy::add_service_restore(&all, &added, CLUSTER_CIDR);
                let r = time_to_answer(lab, "pipt", vip, || Lab::iptables_restore(ipt_ns, &rules, true));
                match r {
                    Ok(ms) if rep > 0 => c.add(&iv, METRIC.0, ms),
                    Ok(_) => {}
                    Err(e) => c.fail(&iv, e),
                }
                if let Err(e) = Lab::iptables_restore(ipt_ns, &kubeproxy::remove_service_restore(&ksvcs, &added), true)
                {
                    c.fail(&iv, format!("removing the new service: {e}"));
                }
            }
        }
    }
    let _ = lab.dp.sync(&[]);
    let _ = Lab::iptables_restore(
        &lab.clients["pipt"].ns,
        &kubeproxy::full_restore(&[], CLUSTER_CIDR),
        false,
    );
    c.records()
}

fn nodeport(lab: &mut Lab, s: &Settings) -> Vec<Record> {
    const KEEPALIVE: Metric = ("keep-alive requests", "req/s", true);
    let mut c = Collector::new("dataplane.nodeport");
    let np = |name: &str| -> (Ipv4Addr, Vec<Ipv4Addr>) {
        let cl = &lab.clients[name];
        (cl.node_addr.expect("a node-port client"), cl.backends.clone())
    };
    let (_, direct_be) = np("np-direct");
    let (warren_node, warren_be) = np("np-warren");
    let (ipt_node, ipt_be) = np("np-ipt");

    let mut svc = warren_service(8, "published", None, &warren_be);
    svc.ports[0].published = Some(NODE_PORT);
    let warren = lab
        .dp
        .sync(&[svc])
        .map(|_| addr(warren_node, NODE_PORT))
        .map_err(|e| format!("data plane sync: {e}"));
    let mut ksvc = kube_service("published", VIP_NODEPORT_IPT, &ipt_be);
    ksvc.node_port = Some(NODE_PORT);
    // The router's pod network is its backend link: the client outside it keeps
    // its address (externalTrafficPolicy: Local), as with Warren's local backends.
    let ipt = Lab::iptables_restore(
        &lab.routers["np-ipt"],
        &kubeproxy::full_restore(&[ksvc], "10.230.32.0/24"),
        false,
    )
    .map(|_| addr(ipt_node, NODE_PORT));
    let variants = [
        ("direct", "np-direct", Ok(addr(direct_be[0], PORT))),
        ("warren-tc", "np-warren", warren),
        ("iptables-dnat", "np-ipt", ipt),
    ];
    let metrics = [CRR_METRICS[0], CRR_METRICS[1], CRR_METRICS[2], KEEPALIVE];
    let (mut crr, secs) = (measure_crr(lab, s), s.wrk_secs);
    alternate(&mut c, lab, s, &variants, &metrics, |c, v, client, to| {
        crr(c, v, client, to);
        match wrk(lab, client, to, secs) {
            Ok(r) => c.add(v, KEEPALIVE.0, r.requests_per_sec),
            Err(e) => c.fail(v, e),
        }
    });
    c.records()
}

fn canary(lab: &mut Lab, s: &Settings) -> Vec<Record> {
    const METRIC: Metric = ("canary share of new connections", "%", true);
    let mut c = Collector::new("dataplane.canary");
    let backends = lab.clients["canary"].backends.clone();
    let canary_addr = *backends.last().expect("canary backends");
    let service = |weight: u8| {
        let mut svc = warren_service(5, "canary", Some(VIP_CANARY), &backends);
        svc.backends.last_mut().expect("a canary backend").group = BackendGroup::Canary;
        svc.canary_weight = weight;
        svc
    };
    let to = addr(VIP_CANARY, PORT);
    let weights = [1u8, 10, 50, 90];
    let variant = |w: u8| format!("weight {w}%");
    for w in weights {
        c.declare(&variant(w), &[METRIC]);
    }
    match lab.dp.sync(&[service(weights[0])]) {
        Ok(_) => {
            if let Err(e) = crr_ok(lab, "canary", &to, s.warm_ms) {
                for w in weights {
                    c.fail(&variant(w), format!("warm-up: {e}"));
                }
            }
        }
        Err(e) => {
            for w in weights {
                c.fail(&variant(w), format!("data plane sync: {e}"));
            }
        }
    }
    for _ in 0..s.reps {
        for w in weights {
            let v = variant(w);
            if c.is_failed(&v) {
                continue;
            }
            if let Err(e) = lab.dp.sync(&[service(w)]) {
                c.fail(&v, format!("data plane sync: {e}"));
                continue;
            }
            match crr_ok(lab, "canary", &to, s.canary_ms) {
                Ok(r) => c.add(&v, METRIC.0, r.share(&canary_addr.to_string()).unwrap_or(f64::NAN)),
                Err(e) => c.fail(&v, e),
            }
        }
    }
    c.records()
}

fn ratelimit(lab: &mut Lab, s: &Settings) -> Vec<Record> {
    const CONNS: Metric = ("new connections", "conn/s", true);
    const ACCEPTED: Metric = ("accepted new connections", "conn/s", true);
    const REFUSED: Metric = ("refused attempts", "attempts/s", true);
    const ATTEMPTED: Metric = ("attempts", "attempts/s", true);
    // Accuracy: how far the accepted rate is from the limit (goal: within 1%).
    const DEVIATION: Metric = ("accepted rate off the limit", "%", false);
    let mut c = Collector::new("dataplane.ratelimit");
    let limited = format!("limited {LIMIT_PER_SEC}/s (burst {LIMIT_BURST}), flood of {FLOOD_PER_SEC} attempts/s");
    let alone = "unlimited service, alone";
    let during = "unlimited service, during the flood";
    c.declare(&limited, &[ACCEPTED, DEVIATION, REFUSED, ATTEMPTED]);
    c.declare(alone, &[CONNS]);
    c.declare(during, &[CONNS]);
    let mut lim = warren_service(6, "limited", Some(VIP_LIMITED), &lab.clients["flood"].backends);
    lim.rate_limit = Some(RateLimit {
        per_sec: LIMIT_PER_SEC,
        burst: LIMIT_BURST,
    });
    let unl = warren_service(7, "unlimited", Some(VIP_UNLIMITED), &lab.clients["calm"].backends);
    if let Err(e) = lab.dp.sync(&[lim, unl]) {
        for v in [limited.as_str(), alone, during] {
            c.fail(v, format!("data plane sync: {e}"));
        }
        return c.records();
    }
    let calm_to = addr(VIP_UNLIMITED, PORT);
    let flood_to = addr(VIP_LIMITED, PORT);
    warm(&mut c, lab, alone, "calm", &calm_to, s.warm_ms);
    if c.is_failed(alone) {
        let why = c.failed[0].1.clone();
        c.fail(during, why.clone());
        c.fail(&limited, why);
        return c.records();
    }
    // The burst is spent in the first milliseconds; the warm-up of the flood
    // run keeps it out of the measured window.
    let warm_ms = s.warm_ms.to_string();
    let ms = s.crr_ms.to_string();
    let conns = CRR_CONNS.to_string();
    let rate = FLOOD_PER_SEC.to_string();
    for _ in 0..s.reps {
        match crr_ok(lab, "calm", &calm_to, s.crr_ms) {
            Ok(r) => c.add(alone, CONNS.0, r.rate),
            Err(e) => c.fail(alone, e),
        }
        let flood = lab.spawn_probe(
            "flood",
            &[
                "crr",
                "--to",
                &flood_to,
                "--ms",
                &ms,
                "--warmup-ms",
                &warm_ms,
                "--conns",
                "32",
                "--rate",
                &rate,
            ],
        );
        let calm = lab.spawn_probe(
            "calm",
            &[
                "crr",
                "--to",
                &calm_to,
                "--ms",
                &ms,
                "--warmup-ms",
                &warm_ms,
                "--conns",
                &conns,
            ],
        );
        let limit = Duration::from_millis(s.crr_ms + s.warm_ms) + Duration::from_secs(30);
        let flood = finish(flood, limit).and_then(|o| tools::parse_crr(&o));
        let calm = finish(calm, limit).and_then(|o| tools::parse_crr(&o));
        match flood {
            Ok(f) => {
                let refused = f.errors.get("ECONNREFUSED").copied().unwrap_or(0);
                let other = f.error_count() - refused;
                if other as f64 > f.attempts as f64 * MAX_ERROR_SHARE {
                    c.fail(&limited, format!("errors other than ECONNREFUSED: {:?}", f.errors));
                } else {
                    c.add(&limited, ACCEPTED.0, f.rate);
                    c.add(
                        &limited,
                        DEVIATION.0,
                        (f.rate - f64::from(LIMIT_PER_SEC)).abs() * 100.0 / f64::from(LIMIT_PER_SEC),
                    );
                    c.add(&limited, REFUSED.0, refused as f64 / f.elapsed_s);
                    c.add(&limited, ATTEMPTED.0, f.attempts as f64 / f.elapsed_s);
                }
            }
            Err(e) => c.fail(&limited, e),
        }
        match calm {
            Ok(r) if r.error_count() as f64 <= r.attempts as f64 * MAX_ERROR_SHARE && r.ok > 0 => {
                c.add(during, CONNS.0, r.rate)
            }
            Ok(r) => c.fail(during, format!("{} answers, errors {:?}", r.ok, r.errors)),
            Err(e) => c.fail(during, e),
        }
    }
    c.records()
}

/// Runs the wanted data-plane scenarios; prerequisites missing or a scenario
/// that breaks give "not measured" records that say why.
pub fn run(quick: bool, probe: &Path, wanted: &dyn Fn(&str) -> bool) -> Vec<Record> {
    let scenarios: Vec<(&str, Scenario)> = SCENARIOS.into_iter().filter(|(s, _)| wanted(s)).collect();
    if scenarios.is_empty() {
        return Vec::new();
    }
    let not_measured = |scenario: &str, why: &str| Record::skipped(scenario, "all variants", "all", "", why);
    if let Some(why) = lab::missing_prerequisite(probe) {
        return scenarios.iter().map(|(s, _)| not_measured(s, &why)).collect();
    }
    let settings = Settings::new(quick);
    let started = Instant::now();
    let lab = std::panic::catch_unwind(|| Lab::new(probe, SERVER_THREADS));
    let mut lab = match lab {
        Ok(lab) => lab,
        Err(p) => {
            let why = format!("building the namespaces failed: {}", panic_text(&p));
            return scenarios.iter().map(|(s, _)| not_measured(s, &why)).collect();
        }
    };
    eprintln!("warren-bench: data-plane lab ready in {:?}", started.elapsed());
    let mut records = Vec::new();
    for (scenario, f) in scenarios {
        eprintln!("warren-bench: {scenario}");
        let t = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut lab, &settings))) {
            Ok(r) => records.extend(r),
            Err(p) => records.push(not_measured(
                scenario,
                &format!("the scenario broke: {}", panic_text(&p)),
            )),
        }
        eprintln!("warren-bench: {scenario} took {:?}", t.elapsed());
    }
    drop(lab);
    eprintln!("warren-bench: data-plane scenarios took {:?}", started.elapsed());
    records
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Share of a service's Maglev table (= of its flows, for uniform hashes) that
/// moves to another backend when one of N backends leaves, read from the real
/// pinned table before and after the sync. The backends need not exist: only the
/// table is looked at.
fn maglev(lab: &mut Lab, s: &Settings) -> Vec<Record> {
    const MOVED: Metric = ("flows re-mapped", "%", false);
    const RATIO: Metric = ("re-mapped × N (ideal 1)", "×", false);
    let mut c = Collector::new("dataplane.maglev");
    let dir = lab.dp.config().bpffs_dir.clone();
    for n in [10u32, 100, 1000] {
        let v = format!("{n} backends, one removed");
        c.declare(&v, &[MOVED, RATIO]);
        let addrs: Vec<Ipv4Addr> = (0..n).map(|i| Ipv4Addr::from(0x0afa_0000 + i + 1)).collect();
        for rep in 0..s.reps.min(3) {
            let gone = (rep as u32 * 7 + 3) % n;
            let all = warren_service(20, "maglev", Some(Ipv4Addr::new(10, 249, 0, 1)), &addrs);
            let mut fewer = all.clone();
            fewer.backends.remove(gone as usize);
            let moved = lab
                .dp
                .sync(&[all])
                .map_err(|e| e.to_string())
                .and_then(|_| warren::dataplane::inspect::table(&dir, 20).map_err(|e| e.to_string()))
                .and_then(|before| {
                    lab.dp.sync(&[fewer]).map_err(|e| e.to_string())?;
                    let after = warren::dataplane::inspect::table(&dir, 20).map_err(|e| e.to_string())?;
                    if before.len() != after.len() || before.is_empty() {
                        return Err(format!("table sizes {} and {}", before.len(), after.len()));
                    }
                    Ok(before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / before.len() as f64)
                });
            let _ = lab.dp.sync(&[]);
            match moved {
                Ok(m) => {
                    c.add(&v, MOVED.0, m * 100.0);
                    c.add(&v, RATIO.0, m * f64::from(n));
                }
                Err(e) => c.fail(&v, e),
            }
        }
    }
    c.records()
}

/// Kernel memory locked by the data plane's maps on this machine, with the
/// default sizes (read from /proc for each pinned map of the lab's data plane).
fn bpf_memory(lab: &mut Lab, _: &Settings) -> Vec<Record> {
    const LOCKED: Metric = ("locked eBPF map memory", "MiB", false);
    let mut c = Collector::new("footprint");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let v = format!("data plane maps, {cpus} CPUs, default sizes");
    c.declare(&v, &[LOCKED]);
    match warren::dataplane::inspect::locked_memory(&lab.dp.config().bpffs_dir) {
        Ok(m) => {
            for (name, bytes) in &m {
                eprintln!("warren-bench: {name}: {:.2} MiB", *bytes as f64 / 1048576.0);
            }
            c.add(&v, LOCKED.0, m.values().sum::<u64>() as f64 / 1048576.0)
        }
        Err(e) => c.fail(&v, e.to_string()),
    }
    c.records()
}
