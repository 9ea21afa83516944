//! Fixtures of the data-plane tests: a per-test "node" network namespace with a
//! bridge, backend namespaces with `warren-dp-probe` servers, an optional client
//! namespace, a cgroup v2 subtree whose processes get socket load balancing, and a
//! per-test bpffs pin directory. Every fixture is a Drop guard, so namespaces,
//! links, cgroups, pins and processes go away on every path, panics included.
//! The probe binary itself is [`probe`].

pub mod probe;
pub mod v1;
pub mod v2;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    time::{Duration, Instant},
};

use warren::dataplane::{DataplaneConfig, EbpfDataplane};

/// The cgroup v2 root of this host (pure v2 or hybrid).
pub const CGROUP2: &crate::cgroups::V2Root = &crate::cgroups::V2Root;
/// Parent of every test pin directory.
pub const PIN_ROOT: &str = "/sys/fs/bpf/warren-test";

/// Fails (never skips) when something the data-plane tests need is missing.
pub fn require_prerequisites() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the data-plane tests need root");
    for tool in ["ip", "bpftool", "iptables-save", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "the data-plane tests need `{tool}` (install iproute2, bpftool, iptables, nftables)"
        );
    }
    assert!(
        Path::new(CGROUP2).join("cgroup.procs").exists(),
        "the data-plane tests need cgroup v2 mounted at {CGROUP2}"
    );
}

/// Where [`RateLock`] takes its lock: one file for every test process of the
/// machine (every worktree), since they share the cores.
pub const RATE_LOCK: &str = "/tmp/warren-dataplane-rate-tests.lock";

/// Serialises the data-plane tests that measure rates (connections per second,
/// admitted shares) or load the machine: such a test holds the lock exclusively,
/// so it runs neither beside another such test nor beside any other lab, which
/// would skew its figures or starve the other's clients into timeouts. Every
/// [`Lab`] holds it shared; [`Lab::measure_rates`] makes a lab's hold exclusive.
/// An `flock` on [`RATE_LOCK`], released on drop (and by the kernel if the
/// process dies).
pub struct RateLock(std::fs::File);

impl RateLock {
    fn open() -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(RATE_LOCK)
            .unwrap_or_else(|e| panic!("open {RATE_LOCK}: {e}"))
    }

    fn lock(&self, op: libc::c_int) {
        // SAFETY: flock on a descriptor this File owns.
        let r = unsafe { libc::flock(self.0.as_raw_fd(), op) };
        assert_eq!(r, 0, "flock {RATE_LOCK}: {}", std::io::Error::last_os_error());
    }

    /// Blocks until no other rate-measuring test or lab runs. A test that builds
    /// a [`Lab`] uses [`Lab::measure_rates`] instead (a second lock of the same
    /// file from one process would wait for itself).
    pub fn acquire() -> Self {
        let l = Self(Self::open());
        l.lock(libc::LOCK_EX);
        l
    }

    /// Blocks while a rate-measuring test runs.
    pub fn shared() -> Self {
        let l = Self(Self::open());
        l.lock(libc::LOCK_SH);
        l
    }

    /// Turns a shared hold into an exclusive one (waits for the other holders).
    pub fn upgrade(&self) {
        self.lock(libc::LOCK_EX);
    }
}

impl Drop for RateLock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip <args>`.
pub fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        // A leftover from an aborted earlier run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Self { name: name.into() }
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// `ip netns exec <ns> <argv>`.
    pub fn exec(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Runs `f` on a thread that has entered this namespace (setns affects only
    /// that thread).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: ns is an open netns file; this thread is discarded after f.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A cgroup v2 directory for the test's clients; on drop, the processes still in
/// it (all started by the test) are killed by pid and the directory removed.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(name: &str) -> Self {
        let path = Path::new(CGROUP2).join(name);
        if path.exists() {
            Self::kill_members(&path);
            let _ = std::fs::remove_dir(&path);
        }
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    fn kill_members(path: &Path) {
        if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill on a pid read from our own test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// The shell prefix that puts a process into this cgroup before `exec`.
    pub fn wrap(&self, argv: &[&str]) -> Vec<String> {
        let quoted: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
        vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo $$ > {}/cgroup.procs && exec {}",
                self.path.display(),
                quoted.join(" ")
            ),
        ]
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            Self::kill_members(&self.path);
            if std::fs::remove_dir(&self.path).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child process, killed by pid on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Option<BufReader<ChildStdout>>,
    pub stdin: Option<ChildStdin>,
    pub what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdout = child.stdout.take().map(BufReader::new);
        let stdin = child.stdin.take();
        Self {
            child,
            stdout,
            stdin,
            what: what.into(),
        }
    }

    /// Reads stdout lines until one equals `line`; returns the lines before it.
    pub fn wait_line(&mut self, line: &str) -> Vec<String> {
        let out = self.stdout.as_mut().expect("stdout");
        let mut before = Vec::new();
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = out.read_line(&mut buf).expect("read child stdout");
            assert!(n > 0, "{} exited before printing {line:?}", self.what);
            if buf.trim() == line {
                return before;
            }
            before.push(buf.trim().to_string());
        }
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write child stdin");
        stdin.flush().ok();
    }

    /// Waits for exit and parses the report on stdout.
    pub fn finish(mut self) -> Report {
        drop(self.stdin.take());
        let mut text = String::new();
        if let Some(mut out) = self.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut text).expect("read child stdout");
        }
        let status = self.child.wait().expect("wait child");
        assert!(status.success(), "{} failed ({status}): {text}", self.what);
        Report::parse(&text)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A probe client's `key value...` output.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Backend name → answers.
    pub names: BTreeMap<String, u64>,
    /// Backend name → source address the backend saw (last seen).
    pub seen_from: BTreeMap<String, String>,
    /// Error → count.
    pub errors: BTreeMap<String, u64>,
    /// Reply source address → count (UDP).
    pub from: BTreeMap<String, u64>,
    /// `conn <name> <state>` lines of hold mode.
    pub conns: Vec<(String, String)>,
    /// `run <name> <count>` lines of loop mode with `--runs`, in order.
    pub runs: Vec<(String, u64)>,
    /// Other `key number` lines.
    pub values: BTreeMap<String, u64>,
    /// The whole output.
    pub raw: String,
}

impl Report {
    pub fn parse(text: &str) -> Self {
        let mut r = Report {
            raw: text.to_string(),
            ..Default::default()
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["name", n, c] => {
                    let (name, src) = n.split_once('@').unwrap_or((n, ""));
                    *r.names.entry(name.into()).or_default() += c.parse::<u64>().unwrap();
                    r.seen_from.insert(name.into(), src.into());
                }
                ["error", e, c] => {
                    r.errors.insert((*e).into(), c.parse().unwrap());
                }
                ["from", a, c] => {
                    r.from.insert((*a).into(), c.parse().unwrap());
                }
                ["run", n, c] => r.runs.push(((*n).into(), c.parse().unwrap())),
                ["conn", n, s] => {
                    let name = n.split_once('@').map_or(*n, |x| x.0);
                    r.conns.push((name.into(), (*s).into()));
                }
                [k, v] => {
                    if let Ok(v) = v.parse() {
                        r.values.insert((*k).into(), v);
                    }
                }
                _ => {}
            }
        }
        r
    }

    pub fn answers(&self) -> u64 {
        self.names.values().sum()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A per-test pin directory; on drop the data plane pinned there is cleaned up.
pub struct Pins {
    pub cfg: DataplaneConfig,
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = EbpfDataplane::cleanup(&self.cfg) {
            eprintln!("cleanup of {}: {e}", self.cfg.bpffs_dir.display());
        }
        let _ = std::fs::remove_dir_all(&self.cfg.bpffs_dir);
        // Shared by every test; only the last one out removes it.
        let _ = std::fs::remove_dir(PIN_ROOT);
    }
}

/// A scratch directory (count files, stop files), removed on drop.
pub struct TmpDir(pub PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One backend of a lab.
pub struct BackendNs {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: Netns,
}

/// A simulated node: namespaces, addresses, servers, cgroup and pins of one test.
/// Field order is drop order: processes, pins (cleanup), cgroup, namespaces.
pub struct Lab {
    pub servers: Vec<Proc>,
    pub pins: Pins,
    pub cgroup: Cgroup,
    pub backends: Vec<BackendNs>,
    pub client: Option<Netns>,
    pub node: Netns,
    pub tmp: PathBuf,
    pub tmp_guard: TmpDir,
    pub probe: PathBuf,
    pub net: u8,
    /// Shared, or exclusive after [`Lab::measure_rates`]; released last.
    pub rates: RateLock,
}

/// Ports every probe server listens on.
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

impl Lab {
    /// `net` is the test's own third octet: backends in 10.201.<net>.0/24 behind a
    /// bridge (node side .1), clients' extra source addresses .101 and .102, and
    /// with `client_ns` a client namespace on 10.202.<net>.0/24 (node .1, client .2).
    pub fn new(test: &str, net: u8, backends: usize, client_ns: bool, probe: &str) -> Self {
        require_prerequisites();
        let rates = RateLock::shared();
        let prefix = format!("wdp{net}");
        let tmp = std::env::temp_dir().join(format!("warren-dptest-{test}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let tmp_guard = TmpDir(tmp.clone());

        let node = Netns::new(&format!("{prefix}-node"));
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", &format!("10.201.{net}.1/24"), "dev", "br0"]);
        for extra in [101, 102] {
            node.ip(&["addr", "add", &format!("10.201.{net}.{extra}/24"), "dev", "br0"]);
        }
        node.ip(&["link", "set", "br0", "up"]);
        run(&mut node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));

        let mut bes = Vec::new();
        for i in 0..backends {
            let ns = Netns::new(&format!("{prefix}-b{i}"));
            let addr = Ipv4Addr::new(10, 201, net, 10 + i as u8);
            node.ip(&[
                "link",
                "add",
                &format!("vb{i}"),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns.name,
            ]);
            node.ip(&["link", "set", &format!("vb{i}"), "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", &format!("10.201.{net}.1")]);
            bes.push(BackendNs {
                name: format!("b{i}"),
                addr,
                ns,
            });
        }

        let client = client_ns.then(|| {
            let ns = Netns::new(&format!("{prefix}-c"));
            node.ip(&[
                "link", "add", "vc0", "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            node.ip(&["addr", "add", &format!("10.202.{net}.1/24"), "dev", "vc0"]);
            node.ip(&["link", "set", "vc0", "up"]);
            ns.ip(&["addr", "add", &format!("10.202.{net}.2/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", &format!("10.202.{net}.1")]);
            ns
        });

        let cgroup = Cgroup::new(&format!("warren-dptest-{test}"));
        let mut cfg = DataplaneConfig::new(test);
        cfg.bpffs_dir = Path::new(PIN_ROOT).join(test);
        cfg.cgroup_root = cgroup.path.clone();
        // The node namespace plays the host: its loopback reaches published ports.
        cfg.host_netns = Some(PathBuf::from(format!("/run/netns/{}", node.name)));
        cfg.node_addrs = vec![Ipv4Addr::new(10, 201, net, 1)];
        if client_ns {
            cfg.node_addrs.push(Ipv4Addr::new(10, 202, net, 1));
        }
        let pins = Pins { cfg };
        // A leftover from an aborted run would be adopted; start clean.
        let _ = EbpfDataplane::cleanup(&pins.cfg);

        let mut lab = Lab {
            servers: Vec::new(),
            pins,
            cgroup,
            backends: bes,
            client,
            node,
            tmp,
            tmp_guard,
            probe: PathBuf::from(probe),
            net,
            rates,
        };
        for i in 0..backends {
            lab.start_server(i);
        }
        lab
    }

    fn start_server(&mut self, i: usize) {
        let b = &self.backends[i];
        let count = self.count_file(i);
        let probe = self.probe.to_string_lossy().into_owned();
        let mut p = Proc::spawn(
            b.ns.exec(&[
                &probe,
                "serve",
                "--name",
                &b.name,
                "--tcp",
                &TCP_PORT.to_string(),
                "--udp",
                &UDP_PORT.to_string(),
                "--count-file",
                &count.to_string_lossy(),
            ]),
            &format!("server {}", b.name),
        );
        p.wait_line("listening");
        self.servers.push(p);
    }

    /// Makes this lab the only one running on the machine (see [`RateLock`]), for
    /// a test that measures rates or loads the machine.
    pub fn measure_rates(&self) {
        self.rates.upgrade();
    }

    /// Gives backend `i`'s namespace `n` more addresses, each one a backend of its
    /// own to the data plane (one process answers on all, with the address it was
    /// reached on): 10.201.<net>.<10+backends>.. then 10.204.<net>.1.., routed from
    /// the node over the bridge. Returns them.
    pub fn add_backend_addrs(&self, i: usize, n: usize) -> Vec<Ipv4Addr> {
        let net = self.net;
        let first = 10 + self.backends.len() as u8;
        // .101 and .102 are the node's own (clients' extra source addresses).
        let mut out: Vec<Ipv4Addr> = (first..=254)
            .filter(|h| ![101, 102].contains(h))
            .map(|h| Ipv4Addr::new(10, 201, net, h))
            .take(n)
            .collect();
        let more = n - out.len();
        assert!(more <= 254, "at most {} addresses", out.len() + 254);
        if more > 0 {
            self.node
                .ip(&["route", "add", &format!("10.204.{net}.0/24"), "dev", "br0"]);
            out.extend((1..=more as u8).map(|h| Ipv4Addr::new(10, 204, net, h)));
        }
        let ns = &self.backends[i].ns;
        // One `ip -batch` instead of hundreds of processes.
        let batch: String = out
            .iter()
            .map(|a| {
                let len = if a.octets()[1] == 201 { 24 } else { 32 };
                format!("addr add {a}/{len} dev eth0\n")
            })
            .collect();
        let file = self.tmp.join(format!("addrs-{i}"));
        std::fs::write(&file, batch).expect("write ip batch");
        run(Command::new("ip").args(["-n", &ns.name, "-batch"]).arg(&file));
        out
    }

    /// Starts the probe's HTTP server (the load clients' counterpart) in backend
    /// `i`'s namespace on `port`; it runs until the lab goes.
    pub fn start_http(&mut self, i: usize, port: u16) {
        let probe = self.probe.to_string_lossy().into_owned();
        let listen = format!("0.0.0.0:{port}");
        let mut p = Proc::spawn(
            self.backends[i].ns.exec(&[&probe, "http", "--listen", &listen]),
            &format!("http server {}", self.backends[i].name),
        );
        p.wait_line("listening");
        self.servers.push(p);
    }

    fn count_file(&self, i: usize) -> PathBuf {
        self.tmp.join(format!("b{i}.count"))
    }

    /// (TCP accepts, UDP datagrams) counted by backend `i` so far.
    pub fn backend_counts(&self, i: usize) -> (u64, u64) {
        let text = std::fs::read_to_string(self.count_file(i)).unwrap_or_default();
        let mut f = text.split_whitespace().map(|v| v.parse().unwrap_or(0));
        (f.next().unwrap_or(0), f.next().unwrap_or(0))
    }

    /// The data plane configuration of this lab's node.
    pub fn cfg(&self) -> DataplaneConfig {
        self.pins.cfg.clone()
    }

    /// A probe client inside the node namespace and the lab's cgroup.
    pub fn client_cmd(&self, args: &[&str]) -> Command {
        // Join the cgroup before `ip netns exec`: it remounts /sys, hiding the
        // cgroup v2 mount; membership is inherited across the exec.
        let probe = self.probe.to_string_lossy().into_owned();
        let mut argv = vec!["ip", "netns", "exec", self.node.name.as_str(), probe.as_str()];
        argv.extend_from_slice(args);
        let wrapped = self.cgroup.wrap(&argv);
        let mut c = Command::new(&wrapped[0]);
        c.args(&wrapped[1..]);
        c
    }

    /// Runs a probe client in the cgroup to completion.
    pub fn client(&self, args: &[&str]) -> Report {
        Proc::spawn(self.client_cmd(args), &format!("client {args:?}")).finish()
    }

    /// Starts a probe client in the cgroup.
    pub fn spawn_client(&self, args: &[&str]) -> Proc {
        Proc::spawn(self.client_cmd(args), &format!("client {args:?}"))
    }

    /// A probe client inside backend `i`'s namespace (a task's own network
    /// namespace) and the lab's cgroup.
    pub fn task_client(&self, i: usize, args: &[&str]) -> Report {
        let probe = self.probe.to_string_lossy().into_owned();
        let ns = self.backends[i].ns.name.as_str();
        let mut argv = vec!["ip", "netns", "exec", ns, probe.as_str()];
        argv.extend_from_slice(args);
        let wrapped = self.cgroup.wrap(&argv);
        let mut c = Command::new(&wrapped[0]);
        c.args(&wrapped[1..]);
        Proc::spawn(c, &format!("task client {args:?}")).finish()
    }

    /// Runs a probe in the client namespace (outside the cgroup: the tc path).
    pub fn outside_client(&self, args: &[&str]) -> Report {
        let ns = self.client.as_ref().expect("lab built without a client namespace");
        let probe = self.probe.to_string_lossy().into_owned();
        let mut argv = vec![probe.as_str()];
        argv.extend_from_slice(args);
        Proc::spawn(ns.exec(&argv), &format!("outside client {args:?}")).finish()
    }
}
