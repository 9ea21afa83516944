//! `ingress.https`: Warren's ingress (its library in a process of its own,
//! `warren-dp-probe ingress`) beside nginx and HAProxy from Debian, each set up for
//! the same route: the same ECDSA P-256 certificate, HTTP/1.1 with keep-alive to
//! the same two backends (round robin), `X-Forwarded-For` set, no access log, two
//! worker threads, TLS session resumption off. Everything runs in one network
//! namespace on its loopback: the backends on 127.0.1.1-2:8080 (one single-threaded
//! hyper server, as in the data-plane scenarios), each proxy on its own address
//! (127.0.2.x) on ports 80 and 443, and the load generators (wrk for keep-alive,
//! `warren-dp-probe crr` for a connection per request, with `--tls` a full
//! handshake each). Every figure alternates over the variants run by run after a
//! warm-up of each. Besides rates and latencies, the CPU time the proxy process
//! (and its children) spent per request is recorded: on a shared machine it says
//! more about the proxy than a rate does.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use warren_tests::dataplane::{Netns, Proc, TmpDir};

use crate::{
    dataplane::{
        lab::finish,
        tools::{parse_crr, parse_wrk},
    },
    stats::Record,
};

pub const SCENARIO: &str = "ingress.https";
const NS: &str = "wbi-lab";
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 1, 1), Ipv4Addr::new(127, 0, 1, 2)];
const BACKEND_PORT: u16 = 8080;
const HOST: &str = "bench.test";
const WRK_CONNS: u32 = 32;
const CRR_CONNS: u32 = 16;
/// A run whose errors exceed this share of its attempts is reported as failed.
const MAX_ERROR_SHARE: f64 = 0.01;

/// The proxies compared, with the address each listens on.
const VARIANTS: [(&str, Ipv4Addr); 3] = [
    ("warren ingress", Ipv4Addr::new(127, 0, 2, 1)),
    ("nginx", Ipv4Addr::new(127, 0, 2, 2)),
    ("haproxy", Ipv4Addr::new(127, 0, 2, 3)),
];
/// The variant the others' ratios are computed against.
pub const BASELINE: &str = "nginx";

struct Settings {
    reps: usize,
    wrk_secs: u64,
    crr_ms: u64,
    warm_ms: u64,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                reps: 2,
                wrk_secs: 1,
                crr_ms: 1000,
                warm_ms: 300,
            }
        } else {
            Settings {
                reps: 5,
                wrk_secs: 4,
                crr_ms: 4000,
                warm_ms: 1000,
            }
        }
    }
}

/// The figures, in order: (protocol, kind, metric, unit, higher is better).
type Metric = (&'static str, &'static str, bool);
const KEEPALIVE: [Metric; 4] = [
    ("keep-alive requests", "req/s", true),
    ("keep-alive p50", "µs", false),
    ("keep-alive p99", "µs", false),
    ("keep-alive proxy CPU per request", "µs", false),
];
const NEWCONN: [Metric; 4] = [
    ("new connections", "conn/s", true),
    ("new-connection p50", "µs", false),
    ("new-connection p99", "µs", false),
    ("new-connection proxy CPU per connection", "µs", false),
];

/// What one load run measured.
struct Run {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Requests (or connections) answered.
    count: u64,
}

/// CPU time (user and system) of `pid` and its children so far, in seconds:
/// nginx's workers are children of its master.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = |stat: &str| -> Option<(u32, u64)> {
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((ppid, t))
    };
    let mut total = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Some((ppid, t)) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(ticks)
            else {
                continue;
            };
            if n == pid || ppid == pid {
                total += t;
            }
        }
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    total as f64 / hz
}

/// Runs of every (variant, metric), and the first failure of a variant.
struct Collector {
    rows: Vec<(String, String, &'static str, bool, Vec<f64>)>,
    failed: Vec<(String, String)>,
}

impl Collector {
    fn declare(&mut self, variant: &str, proto: &str, metrics: &[Metric]) {
        for (m, unit, higher) in metrics {
            self.rows
                .push((variant.to_string(), format!("{proto} {m}"), unit, *higher, Vec::new()));
        }
    }

    fn add(&mut self, variant: &str, metric: &str, v: f64) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.0 == variant && r.1 == metric) {
            r.4.push(v);
        }
    }

    fn fail(&mut self, variant: &str, why: String) {
        eprintln!("warren-bench: {SCENARIO} {variant}: {why}");
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
                |(variant, metric, unit, higher, runs)| match self.failed.iter().find(|(v, _)| *v == variant) {
                    Some((_, why)) => {
                        let mut r = Record::skipped(SCENARIO, &variant, &metric, unit, why.clone());
                        r.higher_is_better = higher;
                        r
                    }
                    None => Record::new(SCENARIO, &variant, &metric, unit, higher, runs),
                },
            )
            .collect()
    }
}

/// What the scenario needs from the machine; the first missing piece.
fn missing_prerequisite(probe: &Path) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (a network namespace)".into());
    }
    if !probe.exists() {
        return Some(format!(
            "{} is missing: build it with `cargo build --release -p warren-tests --bins`",
            probe.display()
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("wrk", "wrk"),
        ("haproxy", "haproxy"),
        ("nginx", "nginx"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not installed (Debian package {package})"));
        }
    }
    None
}

/// The nginx configuration of the variant: the same route as Warren's.
pub fn nginx_config(listen: Ipv4Addr, backends: &[SocketAddrV4], cert: &Path, key: &Path, tmp: &Path) -> String {
    let t = tmp.display();
    let servers: String = backends.iter().map(|b| format!("        server {b};\n")).collect();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {t}/nginx.pid;\n\
         error_log {t}/nginx-error.log warn;\n\
         events {{\n    worker_connections 8192;\n}}\n\
         http {{\n    access_log off;\n    keepalive_requests 1000000;\n\
         \x20   client_body_temp_path {t}/nginx-body;\n    proxy_temp_path {t}/nginx-proxy;\n\
         \x20   fastcgi_temp_path {t}/nginx-fastcgi;\n    uwsgi_temp_path {t}/nginx-uwsgi;\n\
         \x20   scgi_temp_path {t}/nginx-scgi;\n\
         \x20   upstream backends {{\n{servers}        keepalive 64;\n        keepalive_requests 1000000;\n    }}\n\
         \x20   server {{\n        listen {listen}:80 default_server backlog=4096;\n\
         \x20       listen {listen}:443 ssl default_server backlog=4096;\n\
         \x20       ssl_certificate {cert};\n        ssl_certificate_key {key};\n\
         \x20       ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache off;\n        ssl_session_tickets off;\n\
         \x20       location / {{\n            proxy_pass http://backends;\n            proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n            proxy_set_header Host $host;\n\
         \x20           proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20           proxy_set_header X-Forwarded-Proto $scheme;\n            proxy_set_header X-Forwarded-Host $host;\n\
         \x20       }}\n    }}\n}}\n",
        cert = cert.display(),
        key = key.display(),
    )
}

/// The HAProxy configuration of the variant: HTTP mode, the same route.
pub fn haproxy_config(listen: Ipv4Addr, backends: &[SocketAddrV4], pem: &Path) -> String {
    let mut s = format!(
        "global\n    maxconn 8000\n    nbthread 2\n    tune.ssl.cachesize 0\n\
         \x20   ssl-default-bind-options no-tls-tickets\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         \x20   timeout http-keep-alive 30s\n    option forwardfor\n    http-reuse always\n\
         frontend bench\n    bind {listen}:80\n    bind {listen}:443 ssl crt {pem} alpn h2,http/1.1\n\
         \x20   http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n\
         \x20   http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}\n\
         \x20   default_backend servers\n\
         backend servers\n    balance roundrobin\n",
        pem = pem.display()
    );
    for (i, b) in backends.iter().enumerate() {
        s.push_str(&format!("    server s{i} {b}\n"));
    }
    s
}

/// The namespace with the backend server and the three proxies. Field order is
/// drop order: processes (asked to stop first, see `Drop`), the namespace, the
/// directory.
struct Lab {
    procs: Vec<Proc>,
    /// The process of each variant, for its CPU time.
    pids: Vec<(&'static str, u32)>,
    ns: Netns,
    _tmp: TmpDir,
    probe: String,
}

/// A variant, and why it did not start.
type Started = (&'static str, Result<(), String>);

impl Lab {
    /// The lab, and whether each variant started.
    fn new(probe: &Path) -> Result<(Lab, Vec<Started>), String> {
        let tmp = std::env::temp_dir().join("warren-bench-ingress");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
        let guard = TmpDir(tmp.clone());
        let ns = Netns::new(NS);
        let mut lab = Lab {
            procs: Vec::new(),
            pids: Vec::new(),
            ns,
            _tmp: guard,
            probe: probe.to_str().ok_or("the probe path is not UTF-8")?.to_string(),
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let cert = rcgen::CertificateParams::new(vec![HOST.to_string()])
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| e.to_string())?;
        let write = |name: &str, text: &str| {
            let p = tmp.join(name);
            std::fs::write(&p, text)
                .map(|_| p)
                .map_err(|e| format!("write {name}: {e}"))
        };
        let cert_file = write("cert.pem", &cert.pem())?;
        let key_file = write("key.pem", &key.serialize_pem())?;
        let combined = write("combined.pem", &format!("{}{}", cert.pem(), key.serialize_pem()))?;
        let backends: Vec<SocketAddrV4> = BACKENDS.iter().map(|&a| SocketAddrV4::new(a, BACKEND_PORT)).collect();

        let mut server = lab.spawn(
            &[
                &lab.probe,
                "http",
                "--listen",
                &format!("0.0.0.0:{BACKEND_PORT}"),
                "--threads",
                "1",
            ],
            "backend HTTP server",
        );
        server.wait_line("listening");
        lab.procs.push(server);

        let mut started = Vec::new();
        for (name, ip) in VARIANTS {
            let r = match name {
                "warren ingress" => {
                    let mut argv = vec![
                        lab.probe.clone(),
                        "ingress".into(),
                        "--http".into(),
                        format!("{ip}:80"),
                        "--https".into(),
                        format!("{ip}:443"),
                        "--cert".into(),
                        cert_file.display().to_string(),
                        "--key".into(),
                        key_file.display().to_string(),
                        "--threads".into(),
                        "2".into(),
                    ];
                    for b in &backends {
                        argv.push("--backend".into());
                        argv.push(b.to_string());
                    }
                    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                    let mut p = lab.spawn(&argv, "warren ingress");
                    p.wait_line("listening");
                    lab.pids.push((name, p.child.id()));
                    lab.procs.push(p);
                    Ok(())
                }
                "nginx" => {
                    let conf = write("nginx.conf", &nginx_config(ip, &backends, &cert_file, &key_file, &tmp))?;
                    let err = tmp.join("nginx-startup.log").display().to_string();
                    let p = lab.spawn(&["nginx", "-e", &err, "-c", &conf.display().to_string()], "nginx");
                    lab.pids.push((name, p.child.id()));
                    lab.procs.push(p);
                    Ok(())
                }
                _ => {
                    let conf = write("haproxy.cfg", &haproxy_config(ip, &backends, &combined))?;
                    let p = lab.spawn(&["haproxy", "-db", "-q", "-f", &conf.display().to_string()], "haproxy");
                    lab.pids.push((name, p.child.id()));
                    lab.procs.push(p);
                    Ok(())
                }
            };
            started.push((name, r.and_then(|_| lab.await_listening(ip))));
        }
        Ok((lab, started))
    }

    fn spawn(&self, argv: &[&str], what: &str) -> Proc {
        self.ns.enter(|| {
            let mut cmd = Command::new(argv[0]);
            cmd.args(&argv[1..]);
            Proc::spawn(cmd, what)
        })
    }

    /// Ready when both ports accept.
    fn await_listening(&mut self, ip: Ipv4Addr) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [80, 443] {
            let a = SocketAddrV4::new(ip, port);
            while self.ns.enter(|| std::net::TcpStream::connect(a)).is_err() {
                if Instant::now() > deadline {
                    return Err(format!("nothing listens on {a} after 10 s"));
                }
                for p in &mut self.procs {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        return Err(format!("{} exited at start ({status})", p.what));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn run(&self, argv: &[&str], what: &str, limit: Duration) -> Result<String, String> {
        finish(self.spawn(argv, what), limit)
    }

    fn cpu(&self, variant: &str) -> f64 {
        self.pids
            .iter()
            .find(|(v, _)| *v == variant)
            .map_or(0.0, |(_, pid)| cpu_seconds(*pid))
    }

    fn wrk(&self, url: &str, secs: u64) -> Result<Run, String> {
        let (d, c) = (format!("-d{secs}s"), format!("-c{WRK_CONNS}"));
        let host = format!("Host: {HOST}");
        let out = self.run(
            &["wrk", "-t1", &c, &d, "--latency", "--timeout", "2s", "-H", &host, url],
            "wrk",
            Duration::from_secs(secs + 30),
        )?;
        let r = parse_wrk(&out)?;
        let bad = r.socket_errors + r.non_2xx;
        if r.requests == 0 || bad as f64 > r.requests as f64 * MAX_ERROR_SHARE {
            return Err(format!(
                "{} requests to {url}, {} socket errors, {} non-2xx",
                r.requests, r.socket_errors, r.non_2xx
            ));
        }
        Ok(Run {
            rate: r.requests_per_sec,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            count: r.requests,
        })
    }

    fn crr(&self, to: SocketAddrV4, tls: bool, ms: u64) -> Result<Run, String> {
        let (to_s, ms_s, conns) = (to.to_string(), ms.to_string(), CRR_CONNS.to_string());
        let mut argv = vec![
            self.probe.as_str(),
            "crr",
            "--to",
            &to_s,
            "--ms",
            &ms_s,
            "--conns",
            &conns,
        ];
        if tls {
            argv.extend(["--tls", "--sni", HOST]);
        }
        let out = self.run(&argv, "crr", Duration::from_millis(ms) + Duration::from_secs(30))?;
        let r = parse_crr(&out)?;
        if r.ok == 0 || r.error_count() as f64 > r.attempts as f64 * MAX_ERROR_SHARE {
            return Err(format!(
                "{} answers of {} attempts to {to}, errors {:?}",
                r.ok, r.attempts, r.errors
            ));
        }
        Ok(Run {
            rate: r.rate,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            count: r.ok,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // nginx's workers outlive a master killed with SIGKILL: ask every process
        // to stop, and kill only what is still there after a moment.
        for p in &self.procs {
            // SAFETY: a signal to a child of ours that has not been reaped yet.
            unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut self.procs {
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

pub fn run(quick: bool, probe: &Path) -> Vec<Record> {
    let s = Settings::new(quick);
    let mut c = Collector {
        rows: Vec::new(),
        failed: Vec::new(),
    };
    for (v, _) in VARIANTS {
        for proto in ["https", "http"] {
            c.declare(v, proto, &KEEPALIVE);
            c.declare(v, proto, &NEWCONN);
        }
    }
    if let Some(why) = missing_prerequisite(probe) {
        for (v, _) in VARIANTS {
            c.fail(v, why.clone());
        }
        return c.records();
    }
    let (lab, started) = match Lab::new(probe) {
        Ok(l) => l,
        Err(why) => {
            for (v, _) in VARIANTS {
                c.fail(v, format!("setting up: {why}"));
            }
            return c.records();
        }
    };
    for (v, r) in started {
        if let Err(e) = r {
            c.fail(v, e);
        }
    }
    // Warm-up: the proxies' first connections to the backends, and TLS state.
    for (v, ip) in VARIANTS {
        if c.is_failed(v) {
            continue;
        }
        for (port, tls) in [(80, false), (443, true)] {
            if let Err(e) = lab.crr(SocketAddrV4::new(ip, port), tls, s.warm_ms) {
                c.fail(v, format!("warm-up: {e}"));
            }
        }
    }
    // Each figure alternates over the variants, run by run.
    let record = |c: &mut Collector, v: &str, names: [String; 4], cpu0: f64, r: Result<Run, String>, lab: &Lab| match r
    {
        Ok(r) => {
            let cpu = lab.cpu(v) - cpu0;
            c.add(v, &names[0], r.rate);
            c.add(v, &names[1], r.p50_us);
            c.add(v, &names[2], r.p99_us);
            c.add(v, &names[3], cpu * 1e6 / r.count.max(1) as f64);
        }
        Err(e) => c.fail(v, e),
    };
    for _ in 0..s.reps {
        for (proto, port) in [("https", 443), ("http", 80)] {
            for (v, ip) in VARIANTS {
                if c.is_failed(v) {
                    continue;
                }
                let names = KEEPALIVE.map(|(m, _, _)| format!("{proto} {m}"));
                let cpu0 = lab.cpu(v);
                let r = lab.wrk(&format!("{proto}://{ip}:{port}/"), s.wrk_secs);
                record(&mut c, v, names, cpu0, r, &lab);
            }
            for (v, ip) in VARIANTS {
                if c.is_failed(v) {
                    continue;
                }
                let names = NEWCONN.map(|(m, _, _)| format!("{proto} {m}"));
                let cpu0 = lab.cpu(v);
                let r = lab.crr(SocketAddrV4::new(ip, port), proto == "https", s.crr_ms);
                record(&mut c, v, names, cpu0, r, &lab);
            }
        }
    }
    drop(lab);
    c.records()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxies_get_the_same_route() {
        let be = [
            SocketAddrV4::new(BACKENDS[0], BACKEND_PORT),
            SocketAddrV4::new(BACKENDS[1], BACKEND_PORT),
        ];
        let tmp = Path::new("/tmp/x");
        let n = nginx_config(VARIANTS[1].1, &be, Path::new("/c.pem"), Path::new("/k.pem"), tmp);
        for want in [
            "listen 127.0.2.2:443 ssl default_server",
            "server 127.0.1.1:8080;",
            "server 127.0.1.2:8080;",
            "keepalive 64;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "ssl_session_tickets off;",
            "ssl_session_cache off;",
            "access_log off;",
            "worker_processes 2;",
        ] {
            assert!(n.contains(want), "nginx config lacks {want:?}:\n{n}");
        }
        let h = haproxy_config(VARIANTS[2].1, &be, Path::new("/all.pem"));
        for want in [
            "bind 127.0.2.3:443 ssl crt /all.pem",
            "nbthread 2",
            "option forwardfor",
            "no-tls-tickets",
            "tune.ssl.cachesize 0",
            "server s0 127.0.1.1:8080",
            "server s1 127.0.1.2:8080",
            "balance roundrobin",
        ] {
            assert!(h.contains(want), "haproxy config lacks {want:?}:\n{h}");
        }
    }
}
