//! Real `warren` processes on loopback: start managers and workers with their own
//! data dirs, sockets and ports, run CLI commands against them, kill and restart
//! them. Every process is killed and every directory removed when the `Cluster`
//! is dropped, also when a test panics.

use serde_json::Value;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The `warren` binary under test: `WARREN_BIN`, or the workspace's debug build.
pub fn warren_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WARREN_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/warren");
    assert!(
        bin.exists(),
        "the warren binary is missing at {}: build it first (`cargo build -p warren`, which `cargo xtask test` does) or set WARREN_BIN",
        bin.display()
    );
    bin
}

/// Multi-process clusters are heavy for a 2-core machine; run them one at a time so
/// that Raft timings are not starved by another test's processes.
static HEAVY: Mutex<()> = Mutex::new(());

pub fn serialize_heavy_tests() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port on 127.0.0.1 that nothing listens on, for TCP and UDP alike.
///
/// The port comes from below the kernel's ephemeral range: a port found with
/// bind(0) is free again until the process under test binds it, and in that window
/// any bind(0) or outgoing connection of a parallel test may take it (seen: a test
/// registry's port answered by another test's token server). Below the range only
/// this function hands ports out, and a process-wide counter keeps callers apart.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low <= LOWEST + 1_000 {
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding an ephemeral port on 127.0.0.1");
    }
    let span = ephemeral_low - LOWEST;
    // Test binaries run one after another; the pid spreads them over the span anyway.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOWEST + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {LOWEST} and {ephemeral_low}");
}

/// How much longer than on real hardware the tests' waits may take:
/// `WARREN_TEST_TIME_SCALE` (a whole number; `cargo xtask vm-test` sets it for
/// guests under software emulation), 1 otherwise.
pub fn time_scale() -> u32 {
    std::env::var("WARREN_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout` (scaled
/// by [`time_scale`]).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let timeout = timeout * time_scale();
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`wait_for`] for a condition that holds or not.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, timeout, || cond().then_some(()))
}

pub struct NodeProc {
    pub name: String,
    /// The network namespace the node runs in (None: the test's own).
    pub netns: Option<String>,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub addr: String,
    pub metrics_addr: String,
    /// The daemon's stderr: its log (appended to across restarts).
    pub log: PathBuf,
    /// The daemon's stdout: what `cluster init` and `join` print for the user.
    pub out: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            libc_kill(c.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            libc_kill(pid as i32, sig);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the log ends now: [`NodeProc::log_since`] returns what comes after,
    /// so that a check after a restart does not pass on an earlier run's line.
    pub fn log_mark(&self) -> usize {
        std::fs::metadata(&self.log).map(|m| m.len() as usize).unwrap_or(0)
    }

    pub fn log_since(&self, mark: usize) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(mark..).unwrap_or_default()).into_owned()
    }

    pub fn out_text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

fn libc_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) }
}

pub const SIGSTOP: i32 = libc::SIGSTOP;
pub const SIGCONT: i32 = libc::SIGCONT;

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.signal(SIGCONT);
        self.kill9();
    }
}

/// Several nodes of one cluster, in one temporary directory. On drop the daemons
/// are killed first, then what they left on the host under their own node IDs
/// (task namespace files, secret mounts) goes, and the directory last.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    /// Extra flags given to every daemon (e.g. faster heartbeats for tests).
    pub daemon_flags: Vec<String>,
    /// Nodes to run inside a network namespace, by name: (namespace, address).
    pub placements: std::collections::HashMap<String, (String, String)>,
    _heavy: Option<MutexGuard<'static, ()>>,
    // Last: the data dirs say which node IDs the leftovers belong to.
    pub dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data_dirs: Vec<PathBuf> = self.nodes.iter().map(|n| n.data_dir.clone()).collect();
        self.nodes.clear();
        for d in data_dirs {
            if let Ok(cfg) = warren::config::NodeConfig::load(&d) {
                remove_node_leftovers(&cfg.node_id);
            }
        }
    }
}

/// What a killed daemon leaves for node `node_id`: its task namespace files
/// (`/run/netns/warren-<node>-<task>`) and its secret mounts. Only this node's:
/// other tests, and a real node on this host, keep theirs.
pub fn remove_node_leftovers(node_id: &str) {
    let prefix = format!("warren-{node_id}-");
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(e.path());
        }
    }
    let secrets = warren::worker::node_secrets_dir(node_id);
    if secrets.exists() {
        crate::containerd::unmount_below(&secrets);
        let _ = std::fs::remove_dir_all(&secrets);
    }
}

/// Flags that make failure detection fast enough for tests.
pub fn fast_flags() -> Vec<String> {
    vec![
        "--heartbeat-period".into(),
        "500ms".into(),
        "--heartbeat-grace".into(),
        format!("{}s", 3 * time_scale()),
    ]
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Cluster {
    /// Nodes without a container runtime (`--runtime none`): control-plane tests.
    pub fn new() -> Cluster {
        let mut flags = fast_flags();
        flags.extend(["--runtime", "none", "--dataplane", "none"].map(String::from));
        Cluster::with_flags(flags)
    }

    pub fn with_flags(daemon_flags: Vec<String>) -> Cluster {
        let heavy = serialize_heavy_tests();
        Cluster {
            dir: tempfile::Builder::new()
                .prefix("warren-e2e-")
                .tempdir()
                .expect("temp dir"),
            nodes: Vec::new(),
            daemon_flags,
            placements: Default::default(),
            _heavy: Some(heavy),
        }
    }

    /// Hands over the lock that keeps heavy tests apart, so that a test holding more
    /// than the cluster can release it after everything else is torn down.
    pub fn take_heavy_guard(&mut self) -> Option<MutexGuard<'static, ()>> {
        self._heavy.take()
    }

    /// Runs node `name` (when started later) inside namespace `netns` at `ip`.
    pub fn place(&mut self, name: &str, netns: &str, ip: &str) {
        self.placements
            .insert(name.to_string(), (netns.to_string(), ip.to_string()));
    }

    fn new_node(&self, name: &str) -> NodeProc {
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let (netns, ip) = match self.placements.get(name) {
            Some((ns, ip)) => (Some(ns.clone()), ip.clone()),
            None => (None, "127.0.0.1".to_string()),
        };
        // In a namespace of its own, any port is free.
        let port = |p: u16| if netns.is_some() { p } else { free_port() };
        NodeProc {
            name: name.to_string(),
            netns: netns.clone(),
            socket: self.dir.path().join(format!("{name}.sock")),
            addr: format!("{ip}:{}", port(2377)),
            metrics_addr: format!("{ip}:{}", port(9090)),
            log: self.dir.path().join(format!("{name}.log")),
            out: self.dir.path().join(format!("{name}.out")),
            data_dir,
            child: None,
            extra: vec![],
        }
    }

    fn spawn(node: &mut NodeProc, args: Vec<String>) {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let (log, out) = (open(&node.log), open(&node.out));
        let mut cmd = match &node.netns {
            // Only the network namespace: `ip netns exec` would also give the daemon a
            // private mount namespace, hiding the netns and tmpfs mounts it makes from
            // containerd.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(warren_bin());
                c
            }
            None => Command::new(warren_bin()),
        };
        let child = cmd
            .args(&args)
            .env("WARREN_LOG", "info,warren=debug,openraft=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawning warren");
        node.child = Some(child);
    }

    fn node_flags(&self, n: &NodeProc) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--data-dir".into(),
            n.data_dir.display().to_string(),
            "--listen-addr".into(),
            n.addr.clone(),
            "--socket".into(),
            n.socket.display().to_string(),
            "--metrics-addr".into(),
            n.metrics_addr.clone(),
        ];
        v.extend(self.daemon_flags.iter().cloned());
        v.extend(n.extra.iter().cloned());
        v
    }

    /// `warren cluster init` as node `name`; waits until its API answers and the
    /// cluster it bootstraps is applied (the local API serves before that).
    pub fn init(&mut self, name: &str, extra: &[&str]) -> usize {
        let mut n = self.new_node(name);
        n.extra = extra.iter().map(|s| s.to_string()).collect();
        let mut args = vec!["cluster".into(), "init".into(), "--node-name".into(), name.into()];
        // Most tests run several nodes in one namespace, where one mesh interface
        // and port each would not fit: native unless the test picks the overlay.
        if !extra.iter().any(|e| e.starts_with("--overlay")) {
            args.extend(["--overlay".to_string(), "native".to_string()]);
        }
        args.extend(self.node_flags(&n));
        Self::spawn(&mut n, args);
        self.nodes.push(n);
        let i = self.nodes.len() - 1;
        self.wait_api(i);
        wait_for(
            &format!("the cluster bootstrapped by {name}"),
            Duration::from_secs(30),
            || {
                let info = self.json(i, &["cluster", "info", "--format", "json"]).ok()?;
                info["cluster_id"]
                    .as_str()
                    .is_some_and(|id| !id.is_empty())
                    .then_some(())
            },
        );
        i
    }

    /// `warren cluster restore FILE` as node `name` with `args` (the passphrase
    /// flags, then `extra` daemon flags); waits like `init`.
    pub fn restore(&mut self, name: &str, file: &Path, args: &[&str], extra: &[&str]) -> usize {
        let mut n = self.new_node(name);
        n.extra = extra.iter().map(|s| s.to_string()).collect();
        let mut all: Vec<String> = vec!["cluster".into(), "restore".into(), file.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(["--node-name".to_string(), name.to_string()]);
        all.extend(self.node_flags(&n));
        Self::spawn(&mut n, all);
        self.nodes.push(n);
        let i = self.nodes.len() - 1;
        self.wait_api(i);
        i
    }

    /// `warren cluster join` with `token` through node `via`; waits until the new node
    /// is ready in `node ls`.
    pub fn join(&mut self, name: &str, token: &str, via: usize, extra: &[&str]) -> usize {
        let i = self.join_nowait(name, token, via, extra);
        let asked = self.any_manager();
        wait_for(&format!("node {name} to be ready"), Duration::from_secs(30), || {
            let nodes = self.json(asked, &["node", "ls", "--format", "json"]).ok()?;
            nodes
                .as_array()?
                .iter()
                .any(|n| n["name"] == name && n["state"] == "Ready")
                .then_some(())
        });
        i
    }

    pub fn join_nowait(&mut self, name: &str, token: &str, via: usize, extra: &[&str]) -> usize {
        let mut n = self.new_node(name);
        n.extra = extra.iter().map(|s| s.to_string()).collect();
        let mut args = vec![
            "cluster".into(),
            "join".into(),
            "--token".into(),
            token.into(),
            "--node-name".into(),
            name.into(),
        ];
        args.extend(self.node_flags(&n));
        args.push(self.nodes[via].addr.clone());
        Self::spawn(&mut n, args);
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Runs a join and expects it to fail; returns its output.
    pub fn join_expect_failure(&self, name: &str, token: &str, via: usize) -> Output {
        let n = self.new_node(name);
        let mut args: Vec<String> = vec![
            "cluster".into(),
            "join".into(),
            "--token".into(),
            token.into(),
            "--node-name".into(),
            name.into(),
        ];
        args.extend(self.node_flags(&n));
        args.push(self.nodes[via].addr.clone());
        let out = Command::new(warren_bin())
            .args(&args)
            .output()
            .expect("running warren cluster join");
        assert!(!out.status.success(), "join with a bad token succeeded: {}", text(&out));
        out
    }

    /// `warren daemon` on a stopped node's data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(
            !self.nodes[i].is_running(),
            "node {} is still running",
            self.nodes[i].name
        );
        let mut args = vec!["daemon".into()];
        args.extend(self.node_flags(&self.nodes[i]));
        Self::spawn(&mut self.nodes[i], args);
    }

    pub fn wait_api(&self, i: usize) {
        let n = &self.nodes[i];
        self.wait(
            &format!("the API of {} (log: {})", n.name, n.log.display()),
            Duration::from_secs(30),
            // The API answers before `init` has written the node's identity: a
            // node is up once both are there.
            || {
                (n.data_dir.join("node.json").exists() && self.cli(i, &["cluster", "info"]).status.success())
                    .then_some(())
            },
        );
    }

    /// A running manager (its socket exists).
    pub fn any_manager(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some() && n.socket.exists())
            .expect("no running manager")
    }

    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let host = format!("unix://{}", self.nodes[i].socket.display());
        Command::new(warren_bin())
            .arg("-H")
            .arg(&host)
            .args(reschedule_at_once(args))
            .output()
            .expect("running the warren CLI")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "`warren {}` failed: {}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs a CLI command that must fail; returns its stderr.
    pub fn fails(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            !out.status.success(),
            "`warren {}` succeeded but should fail: {}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    pub fn json(&self, i: usize, args: &[&str]) -> Result<Value, String> {
        let out = self.cli(i, args);
        if !out.status.success() {
            return Err(text(&out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))
    }

    /// The join token for `role`, once the cluster has made it (right after
    /// `init` the API may answer "not initialized yet").
    pub fn token(&self, i: usize, role: &str) -> String {
        let args = ["cluster", "join-token", role, "-q"];
        self.wait(&format!("a {role} join token"), Duration::from_secs(30), || {
            let out = self.cli(i, &args);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
    }

    /// The index of the current leader among the running managers.
    pub fn leader(&self) -> usize {
        wait_for("a leader", Duration::from_secs(30), || {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_none() || !n.socket.exists() {
                    continue;
                }
                let Ok(info) = self.json(i, &["cluster", "info", "--format", "json"]) else {
                    continue;
                };
                let addr = info["leader_addr"].as_str().unwrap_or("");
                if let Some(l) = self.nodes.iter().position(|m| m.addr == addr && m.child.is_some()) {
                    return Some(l);
                }
            }
            None
        })
    }

    /// Tasks of a service, as `service ps --format json` shows them.
    pub fn tasks(&self, i: usize, service: &str) -> Vec<Value> {
        self.json(i, &["service", "ps", service, "--format", "json"])
            .unwrap_or_else(|e| panic!("service ps {service}: {e}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The tasks of `service` that are to run and have not finished.
    pub fn live_tasks(&self, i: usize, service: &str) -> Vec<Value> {
        const FINISHED: &[&str] = &["Complete", "Shutdown", "Failed", "Rejected", "Orphaned"];
        self.tasks(i, service)
            .into_iter()
            .filter(|t| t["desired_state"] == "Running")
            .filter(|t| !FINISHED.iter().any(|s| t["status"]["state"] == *s))
            .collect()
    }

    /// Waits until `service` has exactly `n` live tasks, all running `image` and
    /// healthy (so all are backends).
    pub fn wait_healthy_on(&self, i: usize, service: &str, image: &str, n: usize) {
        self.wait(
            &format!("{n} healthy tasks of {service} on {image}"),
            Duration::from_secs(90),
            || {
                let ts = self.live_tasks(i, service);
                let healthy = |t: &Value| t["status"]["state"] == "Running" && t["status"]["health"] == "healthy";
                (ts.len() == n && ts.iter().all(|t| healthy(t) && t["spec"]["image"] == image)).then_some(())
            },
        );
    }

    /// Prints every node's log; call it before failing a test on a timing issue.
    pub fn dump_logs(&self) {
        for n in &self.nodes {
            eprintln!("===== {} =====\n{}{}", n.name, n.out_text(), n.log_text());
        }
    }

    /// Like `wait_for`, but prints the nodes' logs and `service ps` before failing.
    pub fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let timeout = timeout * time_scale();
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > timeout {
                self.dump_logs();
                if let Some(m) = self.nodes.iter().position(|n| n.child.is_some() && n.socket.exists()) {
                    for s in self.json(m, &["service", "ls", "-q"]).ok().into_iter() {
                        let _ = s;
                    }
                    let out = self.cli(m, &["service", "ls"]);
                    eprintln!("===== service ls =====\n{}", String::from_utf8_lossy(&out.stdout));
                    let names = String::from_utf8_lossy(&self.cli(m, &["service", "ls", "-q"]).stdout).to_string();
                    for id in names.lines() {
                        let out = self.cli(m, &["service", "ps", id]);
                        eprintln!("===== service ps {id} =====\n{}", String::from_utf8_lossy(&out.stdout));
                    }
                }
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// GET http://addr/path; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Services the tests create are placed elsewhere as soon as their node is
/// unreachable (`--reschedule-after 0`, the behaviour before edge autonomy), unless
/// a test says otherwise. The flag goes right after `service create`, before the image and its command.
fn reschedule_at_once<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let creates = args.len() >= 2 && args[0] == "service" && args[1] == "create";
    let mut out = args.to_vec();
    if creates && !args.iter().any(|a| a.starts_with("--reschedule-after")) {
        out.splice(2..2, ["--reschedule-after", "0"]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{free_port, remove_node_leftovers};

    #[test]
    fn leftovers_of_one_node_go_and_others_stay() {
        crate::netns::require_root();
        let me = format!("n{}", std::process::id());
        let mine = std::path::Path::new("/run/netns").join(format!("warren-{me}-task1"));
        let other = std::path::Path::new("/run/netns").join(format!("warren-{me}x-task1"));
        std::fs::create_dir_all("/run/netns").unwrap();
        std::fs::write(&mine, "").unwrap();
        std::fs::write(&other, "").unwrap();
        remove_node_leftovers(&me);
        let (mine_left, other_left) = (mine.exists(), other.exists());
        let _ = std::fs::remove_file(&other);
        assert!(!mine_left, "{} is still there", mine.display());
        assert!(other_left, "another node's {} was removed", other.display());
    }

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("/proc/sys/net/ipv4/ip_local_port_range")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("a port range");
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        if low > 11_000 {
            assert!(
                ports.iter().all(|&p| (10_000..low).contains(&p)),
                "{ports:?} (ephemeral from {low})"
            );
        }
    }
}
