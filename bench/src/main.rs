//! `warren-bench`: runs the benchmark scenarios (usually through `cargo xtask
//! bench`), then writes `bench/results/latest.json`, a dated copy, and
//! `docs/benchmarks.md` with its charts.
//!
//! ```text
//! warren-bench --warren target/release/warren [--probe PATH] [--quick] [--only PREFIX]...
//! warren-bench --render        # docs/benchmarks.md again from bench/results/latest.json
//! ```
//!
//! The data-plane and ingress scenarios need `warren-dp-probe` (from
//! `warren-tests`), by default next to this binary.

mod control;
mod dataplane;
mod ingress;
mod mesh;
mod report;
mod stats;
mod worker;

use report::{Machine, Results};
use std::collections::BTreeMap;
use std::path::PathBuf;

struct Args {
    warren: PathBuf,
    probe: PathBuf,
    quick: bool,
    render: bool,
    only: Vec<String>,
    results_dir: PathBuf,
    docs: PathBuf,
    commit: String,
}

fn parse_args() -> Result<Args, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        warren: root.join("target/release/warren"),
        probe: std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("warren-dp-probe")))
            .unwrap_or_else(|| root.join("target/release/warren-dp-probe")),
        quick: false,
        render: false,
        only: vec![],
        results_dir: root.join("bench/results"),
        docs: root.join("docs/benchmarks.md"),
        commit: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--render" => a.render = true,
            "--only" => a.only.push(value("--only")?),
            "--warren" => a.warren = PathBuf::from(value("--warren")?),
            "--probe" => a.probe = PathBuf::from(value("--probe")?),
            "--results-dir" => a.results_dir = PathBuf::from(value("--results-dir")?),
            "--docs" => a.docs = PathBuf::from(value("--docs")?),
            "--commit" => a.commit = value("--commit")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !a.warren.exists() {
        return Err(format!(
            "the warren binary is missing at {}: build it with `cargo build --release -p warren`",
            a.warren.display()
        ));
    }
    Ok(a)
}

const SCENARIOS: &[(&str, &str)] = &[
    (
        "dataplane.rr",
        "HTTP requests per second over keep-alive connections, and wrk's p50/p99 request latency: \
         `wrk -t1 -c32 --latency` for 1 s (quick) or 4 s per run, 2 (quick) or 5 runs per variant, \
         variants alternating run by run after a 0.3 s / 1 s warm-up each. Every variant has its own \
         client network namespace on its own veth to one backend namespace, where a single-threaded \
         hyper HTTP/1.1 server answers on every address with a 11-byte body. `direct`: the client \
         connects to a backend address. `warren-vip`: the client runs in the cgroup v2 subtree where \
         Warren's eBPF data plane is attached (used as a library, its own bpffs directory) and \
         connects to a service VIP with two backends; cgroup/connect4 picks the backend once per \
         connection. `iptables-dnat`: kube-proxy-style nat rules in the client's namespace \
         (KUBE-SERVICES → KUBE-SVC-* with `statistic --mode random` → KUBE-SEP-* DNAT, Debian 12's \
         iptables-nft), same two backends. `userspace-proxy (haproxy)`: HAProxy 2.6 from Debian in \
         TCP mode, default threads, round-robin over the two backends, on 127.0.0.1 in the client's \
         namespace. Client, server and proxy share the machine's cores.",
    ),
    (
        "dataplane.crr",
        "New connections per second with one HTTP request each (`Connection: close`, the server closes \
         first), and the p50/p99 time from connect() to the end of the response. Client: \
         `warren-dp-probe crr`, a single-threaded tokio loop with 16 concurrent connections, 1 s \
         (quick) or 4 s per run; runs, warm-up, alternation, namespaces and variants as in \
         dataplane.rr. A run with more than 1% failed attempts is reported as not measured.",
    ),
    (
        "dataplane.scale",
        "dataplane.crr's measurement (16 concurrent connection-per-request loops) through a service \
         while 1, 1,000 or 10,000 other services (each with a VIP and two backends) are installed \
         besides it. `warren-vip`: all services synced into Warren's data plane (hash-map lookups). \
         `iptables-dnat`: the kube-proxy rules of all services restored into the client's namespace, \
         the measured service's rule in the middle of KUBE-SERVICES (the average case of iptables' \
         linear match, paid by the first packet of every connection). The two variants alternate run \
         by run at each size. A size the data plane refuses is reported with its error.",
    ),
    (
        "dataplane.program",
        "Time from the start of adding one service (VIP with two backends) to the first HTTP answer \
         through its VIP, while 1,000 or 10,000 other services are present. A poller in the client \
         namespace (in the data plane's cgroup for Warren) tries a fresh connection every 0.2 ms \
         (each attempt gives up after 0.2 ms) and reports the CLOCK_MONOTONIC time of its first \
         answer; the clock starts just before the change. `warren`: one `Dataplane::sync` call with \
         the complete new set of services (the diff is computed and written to the maps). \
         `iptables-restore`: what kube-proxy 1.28+ does on a partial sync, an `iptables-restore \
         --noflush` process that rewrites KUBE-SERVICES and KUBE-NODEPORTS whole and adds the new \
         service's chains. The service is removed again between runs (the same way); one untimed \
         round first; variants alternate.",
    ),
    (
        "dataplane.nodeport",
        "A published port reached from a client namespace through a router namespace (veth on both \
         sides) to the backend namespace: new connections per second with p50/p99 (as in \
         dataplane.crr) and keep-alive requests per second (as in dataplane.rr), alternating per run. \
         Each variant has its own client and router namespaces. `direct`: the client connects to a \
         backend address, the router only forwards. `warren-tc`: Warren's tc programs on both router \
         interfaces translate router-address:30080 to one of two local backends (client address \
         kept, replies translated back by tc). `iptables-dnat`: kube-proxy's node-port rules \
         (KUBE-NODEPORTS → KUBE-EXT → KUBE-SVL → KUBE-SEP DNAT, externalTrafficPolicy: Local, so no \
         SNAT either) in the router's namespace.",
    ),
    (
        "dataplane.canary",
        "Share of new connections that reached the canary, measured at the client from the backend \
         address each answer names: a service with three stable backends and one canary, its canary \
         weight set with `Dataplane::sync` before each run, then connection-per-request load (16 \
         loops) for 0.5 s (quick) or 2 s; weights alternate run by run. The configured weight is in \
         the variant's name.",
    ),
    (
        "dataplane.ratelimit",
        "A service limited to 1,000 new connections/s per client (burst 100) is flooded from one \
         client namespace with 20,000 connection attempts/s (32 paced loops, open loop); at the same \
         time another client runs closed-loop connection-per-request load (16 loops) against an \
         unlimited service. Measured over 1 s (quick) or 4 s after a 0.3 s / 1 s lead-in that spends \
         the burst: the limited service's accepted connections/s (HTTP answers), refused attempts/s \
         (connect() fails with ECONNREFUSED) and attempts/s actually made, and the unlimited service's \
         connections/s during the flood and, in a separate run just before, alone.",
    ),
    (
        "mesh.throughput",
        "TCP throughput (`iperf3 -c` for 2 s (quick) or 5 s, one stream) and new connections per second \
         (`warren-dp-probe crr`, 16 concurrent connection-per-request loops, 1 s (quick) or 4 s) between two \
         network namespaces on one veth, from a \"task\" address in one to a \"task\" address in the other. \
         `plain veth routing (no encryption)`: a route to the other subnet via the veth. `standalone wireguard-go \
         (wg)`: Debian's wireguard-go in each namespace, configured by hand with `wg set` (MTU 1420). \
         `warren mesh (wireguard-go)`: `warren::mesh` as a library in each namespace (the same wireguard-go, \
         started and configured by the mesh, MTU 1420 from the veth's 1500; the task network's masquerade rule \
         off, so that no variant tracks connections), peers set to each other. \
         `standalone boringtun (wg)`: Cloudflare's boringtun-cli 0.7.1 (from crates.io, when installed) in place \
         of wireguard-go, configured the same way: the embedded implementation Warren could use instead. Each \
         variant has its own pair of namespaces; after a warm-up, variants alternate run by run, 2 (quick) or \
         5 runs each. Client, server and WireGuard share the machine's cores.",
    ),
    (
        ingress::SCENARIO,
        "Warren's ingress (its library in a process of its own, `warren-dp-probe ingress`, tokio with 2 \
         worker threads) beside nginx 1.22 (2 worker processes) and HAProxy 2.6 (2 threads, HTTP mode) from \
         Debian, configured for the same route: one ECDSA P-256 certificate, HTTP/1.1 with keep-alive to the \
         same two backends (round robin), X-Forwarded-For set, no access log, TLS session resumption off. \
         One network namespace on its loopback holds the backends (127.0.1.1-2:8080, one single-threaded \
         hyper server as in dataplane.rr), the proxies (127.0.2.1-3, ports 80 and 443) and the clients. \
         Keep-alive: `wrk -t1 -c32 --latency` for 1 s (quick) or 4 s, HTTPS (TLS 1.3 negotiated by wrk's \
         OpenSSL) and plain HTTP. New connections: `warren-dp-probe crr` with 16 closed loops of connect, \
         request, response, close; over HTTPS each is a full TLS 1.3 handshake (rustls client, no \
         resumption, certificate not verified so the client costs as little as it can), 1 s (quick) or \
         4 s. 2 (quick) or 5 runs per variant and figure, alternating run by run after a warm-up; a run \
         with more than 1% errors is reported as not measured. Client, proxy and backend share the \
         machine's cores. `proxy CPU per request` is the user and system CPU time of the proxy's \
         processes (nginx's master and workers) during the run, from /proc, divided by the requests \
         (or connections) answered.",
    ),
    (
        "control.failover",
        "Three managers as separate processes on 127.0.0.1. A client connected to a follower's socket \
         kills the leader with SIGKILL and retries CreateService until one succeeds; the time from the \
         kill to that success is one run. The killed manager is restarted between runs; the first kill \
         is a warm-up and is not counted.",
    ),
    (
        "control.create",
        "The same three managers. CreateService calls (replicas 0) over the local unix socket: 16 \
         concurrent clients on the leader, 16 on a follower (writes forwarded to the leader), and one \
         client calling sequentially. Each run creates a fresh batch of services.",
    ),
    (
        "control.api",
        "ListServices over the leader's unix socket, one client, sequential calls, with 1,000 or more \
         services present; percentiles per run of 200 (quick) or 1,000 calls after 50 warm-up calls.",
    ),
    (
        "control.schedule",
        "A manager and a worker, each in its own network namespace, with a private containerd; the \
         image is loaded once with `warren image load` and warmed up with one container. A service \
         pinned to the worker is created with 1, 10 or 50 replicas and the time until every task \
         reports running is measured through the API (polling every 10 ms); the service is removed \
         between runs.",
    ),
    (
        "dataplane.maglev",
        "The share of a service's Maglev table, read from the pinned map before and after the \
         sync, whose slot changes backend when one of N backends (N = 10, 100, 1,000; addresses \
         only) is removed; for uniform flow hashes it is the share of flows re-mapped. Goal: at \
         most 1.5/N.",
    ),
    (
        "footprint",
        "Size of the stripped release binary; resident memory (VmRSS) of a fresh single-node manager \
                  after 3 s idle, of the three-manager leader once 1,000 or more services exist, and of a \
         worker running 50 tasks (see control.schedule); kernel memory locked by the data plane's \
         maps with the default sizes (the memlock of each pinned map, from /proc), goal < 16 MiB \
         on 2 CPUs.",
    ),
];

/// How each scenario is measured, for the scenarios `keep` accepts.
fn methods(keep: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    SCENARIOS
        .iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .collect()
}

/// The variant each scenario's ratios are computed against, for the scenarios in `methods`.
fn baselines(methods: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut b = BTreeMap::new();
    b.insert("control.create".to_string(), "16 clients, leader".to_string());
    b.insert(
        "mesh.throughput".to_string(),
        "standalone wireguard-go (wg)".to_string(),
    );
    for s in ["dataplane.rr", "dataplane.crr", "dataplane.nodeport"] {
        b.insert(s.to_string(), "direct".to_string());
    }
    // Flatness: every size, and iptables, against Warren with one service.
    b.insert("dataplane.scale".to_string(), "warren-vip, 1 service".to_string());
    b.insert(ingress::SCENARIO.to_string(), ingress::BASELINE.to_string());
    b.insert(
        "dataplane.ratelimit".to_string(),
        "unlimited service, alone".to_string(),
    );
    b.retain(|k, _| methods.contains_key(k));
    b
}

/// `--render`: rewrites `docs/benchmarks.md` (and the baselines and methods in the
/// results) from the recorded `latest.json` without measuring anything.
fn render(args: &Args) -> std::process::ExitCode {
    let path = args.results_dir.join("latest.json");
    let mut results: Results = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren-bench: reading {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    let present: std::collections::BTreeSet<&str> = results.records.iter().map(|r| r.scenario.as_str()).collect();
    results.methods = methods(|n| present.contains(n));
    results.baselines = baselines(&results.methods);
    match write_reports(&results, args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// `latest.json`, its dated copy, and `docs/benchmarks.md` with its charts.
fn write_reports(results: &Results, args: &Args) -> Result<(), std::process::ExitCode> {
    if let Err(e) = report::write_json(results, &args.results_dir) {
        eprintln!("warren-bench: writing results: {e}");
        return Err(std::process::ExitCode::FAILURE);
    }
    if let Err(e) = report::write_markdown(results, &args.docs) {
        eprintln!("warren-bench: writing {}: {e}", args.docs.display());
        return Err(std::process::ExitCode::FAILURE);
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("warren-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.render {
        return render(&args);
    }
    // The harness starts `warren` from WARREN_BIN.
    std::env::set_var("WARREN_BIN", &args.warren);
    let wanted = |s: &str| args.only.is_empty() || args.only.iter().any(|o| s.starts_with(o.as_str()));
    let mut records = Vec::new();
    let methods = methods(wanted);
    let started = std::time::Instant::now();
    let took = |what: &str, since: std::time::Instant| eprintln!("warren-bench: {what} took {:.1?}", since.elapsed());
    let dp_wanted = |s: &str| wanted(s);
    records.extend(tokio::task::block_in_place(|| {
        dataplane::run(args.quick, &args.probe, &dp_wanted)
    }));
    if wanted("mesh.throughput") {
        eprintln!("warren-bench: mesh.throughput");
        let t = std::time::Instant::now();
        records.extend(tokio::task::block_in_place(|| mesh::run(args.quick, &args.probe)));
        took("mesh.throughput", t);
    }
    if wanted(ingress::SCENARIO) {
        eprintln!("warren-bench: {}", ingress::SCENARIO);
        let t = std::time::Instant::now();
        records.extend(tokio::task::block_in_place(|| ingress::run(args.quick, &args.probe)));
        took(ingress::SCENARIO, t);
    }
    if wanted("control.failover") {
        eprintln!("warren-bench: control.failover");
        let t = std::time::Instant::now();
        records.extend(control::failover(args.quick).await);
        took("control.failover", t);
    }
    if wanted("control.create") || wanted("control.api") || wanted("footprint") {
        eprintln!("warren-bench: control.create, control.api");
        let t = std::time::Instant::now();
        let r = control::create_and_api(args.quick).await;
        took("control.create, control.api", t);
        records.extend(r.into_iter().filter(|r| wanted(&r.scenario)));
    }
    if wanted("footprint") {
        eprintln!("warren-bench: footprint");
        let t = std::time::Instant::now();
        records.extend(control::footprint(&args.warren).await);
        took("footprint", t);
    }
    if wanted("control.schedule") || wanted("footprint") {
        eprintln!("warren-bench: control.schedule");
        let t = std::time::Instant::now();
        let r = worker::schedule(args.quick).await;
        took("control.schedule", t);
        records.extend(r.into_iter().filter(|r| wanted(&r.scenario)));
    }
    took("all scenarios", started);
    let baselines = baselines(&methods);
    // Keep the scenarios in the documented order.
    let order = |s: &str| SCENARIOS.iter().position(|(n, _)| *n == s).unwrap_or(usize::MAX);
    records.sort_by_key(|r| order(&r.scenario));
    let results = Results {
        machine: Machine::detect(args.quick, env!("CARGO_PKG_VERSION"), &args.commit),
        records,
        methods,
        baselines,
    };
    if let Err(code) = write_reports(&results, &args) {
        return code;
    }
    for r in &results.records {
        match (&r.skipped, r.median) {
            (Some(why), _) => println!(
                "{:<18} {:<34} {:<26} not measured: {why}",
                r.scenario, r.variant, r.metric
            ),
            (None, Some(m)) => println!(
                "{:<18} {:<34} {:<26} {:>10.2} {} (min {:.2}, max {:.2}, {} runs)",
                r.scenario,
                r.variant,
                r.metric,
                m,
                r.unit,
                r.min.unwrap_or(m),
                r.max.unwrap_or(m),
                r.runs.len()
            ),
            (None, None) => println!("{:<18} {:<34} {:<26} no data", r.scenario, r.variant, r.metric),
        }
    }
    std::process::ExitCode::SUCCESS
}
