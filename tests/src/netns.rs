//! Network-namespace harness for end-to-end tests: Drop guards for namespaces, links
//! and leftover namespace files, running code inside a namespace on its own thread,
//! and probes (ping, TCP) between namespaces. Not the code under test: namespaces and
//! links here are made with iproute2, independently of `warren::network`.
//!
//! Network namespaces are per thread, so code "inside" a namespace runs on a fresh
//! scoped thread that entered it with setns(2); a tokio current-thread runtime built
//! on that thread keeps every socket it opens in that namespace.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces and links)"
    );
}

/// Fails the test unless `cmd` is installed.
pub fn require_command(cmd: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false);
    assert!(found, "this test needs the `{cmd}` command (Debian package {package})");
}

/// The prerequisites of the network tests: root, iproute2, util-linux's nsenter,
/// busybox and nftables.
pub fn require_network_tools() {
    require_root();
    require_command("ip", "iproute2");
    require_command("nsenter", "util-linux");
    require_command("busybox", "busybox-static");
    require_command("nft", "nftables");
}

/// A name unique to this test process: `<tag>-<pid>`, trimmed to fit namespace and
/// prefix limits.
pub fn unique_name(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    out
}

fn check(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted with everything in it on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Creates namespace `name` (a leftover of the same name is replaced) with `lo` up.
    pub fn new(name: &str) -> NetNs {
        let path = Path::new(NETNS_RUN_DIR).join(name);
        if path.exists() {
            let _ = run(Command::new("ip").args(["netns", "del", name]));
        }
        check(Command::new("ip").args(["netns", "add", name]));
        let ns = NetNs {
            name: name.to_string(),
            path,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <ns> args...`; panics on failure, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -n <ns> args...`, whatever its outcome.
    pub fn try_ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in_netns(&self.path, f)
    }

    /// Runs the future made by `f` on a current-thread runtime inside this namespace.
    pub fn block_on<T, Fut>(&self, f: impl FnOnce() -> Fut + Send) -> T
    where
        T: Send,
        Fut: Future<Output = T>,
    {
        block_on_in_netns(&self.path, f)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// Runs `f` on a new thread that entered the namespace file `path`; a panic in `f`
/// is re-raised here.
pub fn run_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open namespace {}: {e}", path.display()));
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("enter namespace {}: {e}", path.display()));
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// [`run_in_netns`] with a tokio current-thread runtime around the future `f` makes.
pub fn block_on_in_netns<T, Fut>(path: &Path, f: impl FnOnce() -> Fut + Send) -> T
where
    T: Send,
    Fut: Future<Output = T>,
{
    run_in_netns(path, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build tokio runtime");
        rt.block_on(f())
    })
}

/// A link deleted on drop (`ip [-n ns] link del`); deleting one end of a veth pair
/// deletes both.
#[derive(Debug)]
pub struct Link {
    ns: String,
    name: String,
}

impl Link {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["-n", &self.ns, "link", "del", &self.name]));
    }
}

/// A veth pair `a_name` (in `a`) – `b_name` (in `b`), both up.
pub fn veth_pair(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Link {
    check(Command::new("ip").args([
        "-n",
        a.name(),
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ]));
    let link = Link {
        ns: a.name().to_string(),
        name: a_name.to_string(),
    };
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
    link
}

/// A bridge `name` in `ns`, up.
pub fn bridge(ns: &NetNs, name: &str) -> Link {
    ns.ip(&["link", "add", name, "type", "bridge"]);
    let link = Link {
        ns: ns.name().to_string(),
        name: name.to_string(),
    };
    ns.ip(&["link", "set", name, "up"]);
    link
}

/// Namespace files in `dir` starting with `prefix` that the code under test made:
/// unmounted and deleted on drop, so a failed test leaves none behind.
#[derive(Debug)]
pub struct NetnsFiles {
    dir: PathBuf,
    prefix: String,
}

impl NetnsFiles {
    pub fn new(dir: impl Into<PathBuf>, prefix: &str) -> NetnsFiles {
        NetnsFiles {
            dir: dir.into(),
            prefix: prefix.to_string(),
        }
    }

    /// The matching files present now.
    pub fn present(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&self.prefix))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }
}

impl Drop for NetnsFiles {
    fn drop(&mut self) {
        for p in self.present() {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Whether `busybox ping` from the namespace file `from` gets an answer from `to`
/// (up to three one-second tries, for the first ARP exchange).
pub fn ping(from: &Path, to: std::net::Ipv4Addr) -> bool {
    (0..3).any(|_| {
        run(Command::new("nsenter").arg(format!("--net={}", from.display())).args([
            "busybox",
            "ping",
            "-c1",
            "-W1",
            &to.to_string(),
        ]))
        .status
        .success()
    })
}

/// Runs a command inside the namespace file `ns` (`nsenter --net`); returns stdout,
/// panics on failure.
pub fn nsenter(ns: &Path, args: &[&str]) -> String {
    check(
        Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(args),
    )
}

/// A TCP server inside a namespace that records the peer address of every
/// connection and answers "ok". Stops on drop.
pub struct TcpServer {
    addr: SocketAddr,
    peers: mpsc::Receiver<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `addr` inside the namespace file `ns`.
    pub fn start(ns: &Path, addr: SocketAddr) -> TcpServer {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (peer_tx, peers) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let ns = ns.to_path_buf();
        let thread = std::thread::spawn(move || {
            let entered = std::fs::File::open(&ns)
                .map_err(|e| e.to_string())
                .and_then(|f| setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()));
            let listener = entered.and_then(|()| {
                let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 16];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"ok");
                        let _ = peer_tx.send(peer);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("tcp server in {}: {e}", addr),
            Err(_) => panic!("tcp server thread for {addr} died"),
        }
        TcpServer {
            addr,
            peers,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer address of the next connection, waiting up to `timeout`.
    pub fn next_peer(&self, timeout: Duration) -> Option<SocketAddr> {
        self.peers.recv_timeout(timeout).ok()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside the namespace file `ns` to `to`, sends a line and reads the
/// answer; returns the answer.
pub fn tcp_request(ns: &Path, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    run_in_netns(ns, || {
        let deadline = Instant::now() + timeout;
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        ))?;
        s.write_all(b"hello\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}
