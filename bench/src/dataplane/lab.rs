//! The network of the data-plane scenarios, built once per run and torn down by
//! Drop guards on every path: one backend namespace with one HTTP server, one
//! client namespace per variant on its own veth and /24 (so that an iptables NAT
//! variant's conntrack and TCP timestamp state never meets another variant's), a
//! router namespace per published-port variant, the Warren data plane on a
//! cgroup v2 subtree and its own bpffs directory, and the processes started in
//! them. Addresses are 10.230.0.0/16 (links), 10.231.0.0/16 (service VIPs) and
//! 10.236.0.0/15 (other services, never contacted).

use std::{
    collections::BTreeMap,
    fs::File,
    io::Read,
    net::{Ipv4Addr, SocketAddrV4},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use warren::dataplane::{DataplaneConfig, EbpfDataplane};
use warren_tests::dataplane::{Cgroup, Netns, Pins, Proc, TmpDir, CGROUP2};

/// The port every backend listens on and every service uses.
pub const PORT: u16 = 8080;
/// The published (node) port of the published-port variants.
pub const NODE_PORT: u16 = 30080;
const PREFIX: &str = "wbn-";
const PIN_DIR: &str = "/sys/fs/bpf/warren-bench";

/// Client namespaces on a direct link to the backends: (name, link number,
/// backend addresses on that link, runs in the data plane's cgroup).
const CLIENTS: &[(&str, u8, u8, bool)] = &[
    ("direct", 1, 1, false),
    ("vip", 2, 2, true),
    ("ipt", 3, 2, false),
    ("hap", 4, 2, false),
    ("canary", 5, 4, true),
    ("flood", 6, 2, true),
    ("calm", 7, 2, true),
    ("pvip", 8, 2, true),
    ("pipt", 9, 2, false),
];

/// Published-port clients, each behind its own router namespace.
pub const NODEPORT_CLIENTS: [&str; 3] = ["np-direct", "np-warren", "np-ipt"];
/// The router whose interfaces carry Warren's tc programs.
const TC_ROUTER: usize = 1;
/// Interface names inside every router namespace (client side, backend side).
const ROUTER_IFACES: [&str; 2] = ["wbn-npc", "wbn-npb"];

/// A client namespace and what it reaches.
pub struct Client {
    pub ns: Netns,
    /// The backend server's addresses on this client's own link.
    pub backends: Vec<Ipv4Addr>,
    /// Its processes run in the data plane's cgroup (socket load balancing).
    pub in_cgroup: bool,
    /// For published-port clients: the router's address facing the client.
    pub node_addr: Option<Ipv4Addr>,
}

/// Everything of one run. Field order is drop order: processes, the data plane
/// and its pins, the cgroup, then the namespaces (links go with them).
pub struct Lab {
    pub haproxy: Option<Proc>,
    server: Option<Proc>,
    pub dp: EbpfDataplane,
    _pins: Pins,
    cgroup: Cgroup,
    pub clients: BTreeMap<&'static str, Client>,
    /// Router namespaces of the published-port clients, by client name.
    pub routers: BTreeMap<&'static str, Netns>,
    backend: Netns,
    pub tmp: PathBuf,
    _tmp: TmpDir,
    probe: PathBuf,
}

fn link(a: &Netns, a_if: &str, a_addrs: &[Ipv4Addr], b: &Netns, b_if: &str, b_addrs: &[Ipv4Addr]) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname]);
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// Writes a sysctl of `ns` (/proc/sys/net follows the writing thread's namespace).
fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.enter(|| std::fs::write(&path, value))
        .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", ns.name));
}

/// Reads stdout to the end and waits, killing the process after `limit`.
pub fn finish(mut p: Proc, limit: Duration) -> Result<String, String> {
    let what = p.what.clone();
    drop(p.stdin.take());
    let mut out = p.stdout.take().ok_or_else(|| format!("{what}: no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match p.child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        let _ = p.child.kill();
        let _ = p.child.wait();
        let text = reader.join().unwrap_or_default();
        return Err(format!("{what} did not finish within {limit:?}: {text}"));
    };
    let text = reader.join().unwrap_or_default();
    if status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed ({status}): {}", text.trim()))
    }
}

impl Lab {
    /// Builds the network, opens the data plane and starts the backend server.
    /// Panics (the caller turns that into "not measured") when a step fails.
    pub fn new(probe: &Path, server_threads: usize) -> Lab {
        let tmp = std::env::temp_dir().join("warren-bench-dataplane");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("mkdir {}: {e}", tmp.display()));
        let tmp_guard = TmpDir(tmp.clone());

        let backend = Netns::new(&format!("{PREFIX}be"));
        let mut clients = BTreeMap::new();
        for &(name, k, n_backends, in_cgroup) in CLIENTS {
            let ns = Netns::new(&format!("{PREFIX}{name}"));
            let addr = Ipv4Addr::new(10, 230, k, 1);
            let backends: Vec<Ipv4Addr> = (0..n_backends).map(|i| Ipv4Addr::new(10, 230, k, 2 + i)).collect();
            link(&ns, "eth0", &[addr], &backend, &format!("c{k}"), &backends);
            // Service addresses leave by this route (iptables routes before it
            // translates; Warren translates before routing and needs none).
            ns.ip(&["route", "add", "default", "via", &backends[0].to_string()]);
            sysctl(&ns, "net.ipv4.ip_local_port_range", "1024 65535");
            clients.insert(
                name,
                Client {
                    ns,
                    backends,
                    in_cgroup,
                    node_addr: None,
                },
            );
        }
        let mut routers = BTreeMap::new();
        for (i, name) in NODEPORT_CLIENTS.into_iter().enumerate() {
            let i = i as u8;
            let ns = Netns::new(&format!("{PREFIX}{name}"));
            let router = Netns::new(&format!("{PREFIX}{name}-r"));
            let (client_addr, node_addr) = (Ipv4Addr::new(10, 230, 20 + i, 2), Ipv4Addr::new(10, 230, 20 + i, 1));
            let router_be = Ipv4Addr::new(10, 230, 30 + i, 1);
            let backends = vec![Ipv4Addr::new(10, 230, 30 + i, 2), Ipv4Addr::new(10, 230, 30 + i, 3)];
            link(&ns, "eth0", &[client_addr], &router, ROUTER_IFACES[0], &[node_addr]);
            link(
                &router,
                ROUTER_IFACES[1],
                &[router_be],
                &backend,
                &format!("n{i}"),
                &backends,
            );
            ns.ip(&["route", "add", "default", "via", &node_addr.to_string()]);
            backend.ip(&[
                "route",
                "add",
                &format!("10.230.{}.0/24", 20 + i),
                "via",
                &router_be.to_string(),
            ]);
            sysctl(&router, "net.ipv4.ip_forward", "1");
            sysctl(&ns, "net.ipv4.ip_local_port_range", "1024 65535");
            clients.insert(
                name,
                Client {
                    ns,
                    backends,
                    in_cgroup: false,
                    node_addr: Some(node_addr),
                },
            );
            routers.insert(name, router);
        }

        let cgroup = Cgroup::new("warren-bench-dataplane");
        let mut cfg = DataplaneConfig::new("bench");
        cfg.bpffs_dir = PathBuf::from(PIN_DIR);
        cfg.cgroup_root = cgroup.path.clone();
        cfg.ifaces = ROUTER_IFACES.iter().map(|s| s.to_string()).collect();
        let tc_client = NODEPORT_CLIENTS[TC_ROUTER];
        cfg.node_addrs = vec![clients[tc_client].node_addr.expect("router address")];
        // A leftover of an aborted run would be adopted; start clean.
        let _ = EbpfDataplane::cleanup(&cfg);
        let pins = Pins { cfg: cfg.clone() };
        // tc programs attach to interfaces of the namespace the loader runs in.
        let dp = routers[tc_client]
            .enter(|| EbpfDataplane::open(cfg))
            .unwrap_or_else(|e| panic!("opening the data plane: {e}"));

        let mut lab = Lab {
            haproxy: None,
            server: None,
            dp,
            _pins: pins,
            cgroup,
            clients,
            routers,
            backend,
            tmp,
            _tmp: tmp_guard,
            probe: probe.to_path_buf(),
        };
        let threads = server_threads.to_string();
        let mut server = lab.spawn_in(
            &lab.backend,
            false,
            &[
                lab.probe_str(),
                "http",
                "--listen",
                &format!("0.0.0.0:{PORT}"),
                "--threads",
                &threads,
            ],
            "backend HTTP server",
        );
        server.wait_line("listening");
        lab.server = Some(server);
        lab
    }

    fn probe_str(&self) -> &str {
        self.probe.to_str().expect("utf-8 probe path")
    }

    /// Starts `argv` inside `ns`, and inside the data plane's cgroup if asked.
    pub fn spawn_in(&self, ns: &Netns, in_cgroup: bool, argv: &[&str], what: &str) -> Proc {
        let procs = in_cgroup.then(|| {
            let p = self.cgroup.path.join("cgroup.procs");
            File::options()
                .write(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        });
        ns.enter(|| {
            let mut cmd = Command::new(argv[0]);
            cmd.args(&argv[1..]);
            if let Some(f) = &procs {
                let fd = f.as_raw_fd();
                // SAFETY: only write(2) runs between fork and exec; "0" moves the
                // writing process itself into the cgroup before it execs.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                            Err(std::io::Error::last_os_error())
                        } else {
                            Ok(())
                        }
                    });
                }
            }
            Proc::spawn(cmd, what)
        })
    }

    /// Starts a process in a client's namespace (and the cgroup, for the Warren
    /// socket variants).
    pub fn spawn(&self, client: &str, argv: &[&str], what: &str) -> Proc {
        let c = &self.clients[client];
        self.spawn_in(&c.ns, c.in_cgroup, argv, what)
    }

    /// Runs the probe in a client's namespace to completion.
    pub fn probe(&self, client: &str, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut argv = vec![self.probe_str()];
        argv.extend_from_slice(args);
        finish(
            self.spawn(client, &argv, &format!("probe {} in {client}", args[0])),
            limit,
        )
    }

    /// Starts the probe in a client's namespace.
    pub fn spawn_probe(&self, client: &str, args: &[&str]) -> Proc {
        let mut argv = vec![self.probe_str()];
        argv.extend_from_slice(args);
        self.spawn(client, &argv, &format!("probe {} in {client}", args[0]))
    }

    /// `iptables-restore [--noflush]` of `rules` inside `ns`; returns when it has
    /// exited (its own process start and exit included, as for kube-proxy).
    pub fn iptables_restore(ns: &Netns, rules: &str, noflush: bool) -> Result<(), String> {
        let mut child = ns
            .enter(|| {
                let mut c = Command::new("iptables-restore");
                if noflush {
                    c.arg("--noflush");
                }
                c.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .map_err(|e| format!("spawn iptables-restore: {e}"))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(rules.as_bytes())
                .map_err(|e| format!("writing to iptables-restore: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for iptables-restore: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "iptables-restore in {} failed ({}): {}",
                ns.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Starts HAProxy in the `hap` namespace, listening on 127.0.0.1:PORT.
    pub fn start_haproxy(&mut self) -> Result<SocketAddrV4, String> {
        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT);
        if self.haproxy.is_some() {
            return Ok(listen);
        }
        let servers: Vec<SocketAddrV4> = self.clients["hap"]
            .backends
            .iter()
            .map(|&a| SocketAddrV4::new(a, PORT))
            .collect();
        let cfg = self.tmp.join("haproxy.cfg");
        std::fs::write(&cfg, super::tools::haproxy_config(listen, &servers))
            .map_err(|e| format!("write {}: {e}", cfg.display()))?;
        let cfg = cfg.to_string_lossy().into_owned();
        let p = self.spawn_in(
            &self.clients["hap"].ns,
            false,
            &["haproxy", "-db", "-q", "-f", &cfg],
            "haproxy",
        );
        self.haproxy = Some(p);
        // Ready when it accepts.
        let deadline = Instant::now() + Duration::from_secs(10);
        let ns = &self.clients["hap"].ns;
        while Instant::now() < deadline {
            if ns.enter(|| std::net::TcpStream::connect(listen)).is_ok() {
                return Ok(listen);
            }
            if let Some(Ok(Some(status))) = self.haproxy.as_mut().map(|p| p.child.try_wait()) {
                return Err(format!("haproxy exited at start ({status})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("haproxy did not listen within 10 s".into())
    }
}

/// What the data-plane scenarios need from the machine; the first missing piece.
pub fn missing_prerequisite(probe: &Path) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, eBPF, cgroups)".into());
    }
    if !probe.exists() {
        return Some(format!(
            "{} is missing: build it with `cargo build --release -p warren-tests --bins`",
            probe.display()
        ));
    }
    if !Path::new(CGROUP2).join("cgroup.procs").exists() {
        return Some(format!("no cgroup v2 at {CGROUP2}"));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("wrk", "wrk"),
        ("haproxy", "haproxy"),
        ("iptables-restore", "iptables"),
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
