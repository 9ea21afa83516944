//! Helpers for the service-DNS end-to-end tests: a `warren::dns::DnsServer` running
//! inside a network namespace, a tiny upstream DNS responder written here from the RFC
//! 1035 wire format (so that it shares no code with the server under test), and `dig`
//! with its output parsed. Everything stops when its guard drops, also on panic.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use warren::dns::{DnsConfig, DnsServer, DnsTable, DnsUpdater};

use crate::netns::NetNs;

fn enter(ns: &Path) -> Result<(), String> {
    let f = std::fs::File::open(ns).map_err(|e| format!("open namespace {}: {e}", ns.display()))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter namespace {}: {e}", ns.display()))
}

/// A `DnsServer` serving inside a namespace, on its own thread with a current-thread
/// runtime (a namespace is per thread). Shut down and joined on drop.
pub struct NsDnsServer {
    updater: DnsUpdater,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsDnsServer {
    /// Starts the server in the namespace file `ns`; panics with the server's error if
    /// it cannot start.
    pub fn start(ns: &Path, cfg: DnsConfig, table: DnsTable) -> NsDnsServer {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns = ns.to_path_buf();
        let thread = std::thread::spawn(move || {
            if let Err(e) = enter(&ns) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build tokio runtime");
            rt.block_on(async move {
                match DnsServer::start(cfg, table).await {
                    Ok(server) => {
                        let _ = ready_tx.send(Ok((server.updater(), server.local_addr())));
                        let _ = stop_rx.await;
                        if let Err(e) = server.shutdown().await {
                            eprintln!("dns server shutdown: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let (updater, addr) = match ready_rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = thread.join();
                panic!("start the dns server: {e}");
            }
            Err(_) => panic!("the dns server thread died while starting"),
        };
        NsDnsServer {
            updater,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn update(&self, table: DnsTable) {
        self.updater.update(table);
    }
}

impl Drop for NsDnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the upstream responder answers for a name.
#[derive(Clone, Debug)]
pub enum Zone {
    A(Vec<Ipv4Addr>),
    ServFail,
}

/// A minimal authoritative responder on UDP and TCP inside a namespace: names in its
/// zone (lowercase, with trailing dot) get their A records (any query type gets the
/// A records, good enough for a test) or SERVFAIL, every other name NXDOMAIN. Records
/// every name it was asked for.
pub struct FakeUpstream {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn start(ns: &Path, addr: SocketAddr, zone: HashMap<String, Zone>) -> FakeUpstream {
        let (ready_tx, ready_rx) = mpsc::channel();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (asked2, stop2) = (asked.clone(), stop.clone());
        let ns = ns.to_path_buf();
        let thread = std::thread::spawn(move || {
            let sockets = enter(&ns).and_then(|()| {
                let udp = UdpSocket::bind(addr).map_err(|e| format!("bind udp {addr}: {e}"))?;
                udp.set_read_timeout(Some(Duration::from_millis(20)))
                    .map_err(|e| e.to_string())?;
                let tcp = TcpListener::bind(addr).map_err(|e| format!("bind tcp {addr}: {e}"))?;
                tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok((udp, tcp))
            });
            let (udp, tcp) = match sockets {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 4096];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    if let Some((name, reply)) = respond(&buf[..n], &zone) {
                        asked2.lock().unwrap().push(name);
                        let _ = udp.send_to(&reply, peer);
                    }
                }
                match tcp.accept() {
                    Ok((s, _)) => serve_tcp(s, &zone, &asked2),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("fake upstream: {e}"),
            Err(_) => panic!("fake upstream thread for {addr} died"),
        }
        FakeUpstream {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The names asked so far, lowercase with trailing dot.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_tcp(mut s: TcpStream, zone: &HashMap<String, Zone>, asked: &Mutex<Vec<String>>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut len = [0u8; 2];
    if s.read_exact(&mut len).is_err() {
        return;
    }
    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
    if s.read_exact(&mut q).is_err() {
        return;
    }
    if let Some((name, reply)) = respond(&q, zone) {
        asked.lock().unwrap().push(name);
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        let _ = s.write_all(&framed);
    }
}

/// Builds the answer to one query (RFC 1035 §4.1): the question echoed, A records
/// pointing back at the question name (offset 12). `None` for what is not a query.
fn respond(q: &[u8], zone: &HashMap<String, Zone>) -> Option<(String, Vec<u8>)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut pos = 12;
    let mut name = String::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None;
        }
        name.push_str(&String::from_utf8_lossy(q.get(pos..pos + len)?).to_ascii_lowercase());
        name.push('.');
        pos += len;
    }
    if name.is_empty() {
        name.push('.');
    }
    let question_end = pos + 4;
    let question = q.get(12..question_end)?;
    let (rcode, addrs) = match zone.get(&name) {
        Some(Zone::A(addrs)) => (0u8, addrs.clone()),
        Some(Zone::ServFail) => (2, Vec::new()),
        None => (3, Vec::new()),
    };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]);
    // QR, opcode and RD from the query; AA and RA set.
    r.push(0x80 | (q[2] & 0x78) | 0x04 | (q[2] & 0x01));
    r.push(0x80 | rcode);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for a in addrs {
        r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        r.extend_from_slice(&60u32.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&a.octets());
    }
    Some((name, r))
}

/// One answer record as dig prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigRecord {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

/// What `dig` got back.
#[derive(Clone, Debug)]
pub struct Dig {
    /// NOERROR, NXDOMAIN, SERVFAIL, ...
    pub status: String,
    /// Header flags: qr, aa, tc, rd, ra, ...
    pub flags: Vec<String>,
    pub answers: Vec<DigRecord>,
    /// The whole output, for assertion messages.
    pub output: String,
}

impl Dig {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The addresses of the A records, in answer order.
    pub fn a(&self) -> Vec<Ipv4Addr> {
        self.answers
            .iter()
            .filter(|r| r.rtype == "A")
            .map(|r| r.data.parse().unwrap_or_else(|e| panic!("A record {r:?}: {e}")))
            .collect()
    }

    /// [`Dig::a`], sorted.
    pub fn a_sorted(&self) -> Vec<Ipv4Addr> {
        let mut v = self.a();
        v.sort();
        v
    }
}

/// Runs `dig @server name type extra...` inside `ns` (one try, two seconds) and parses
/// its header and answer section; panics if dig gets no answer at all.
pub fn dig(ns: &NetNs, server: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> Dig {
    let at = format!("@{}", server.ip());
    let port = server.port().to_string();
    let mut args = vec![
        "dig",
        &at,
        "-p",
        &port,
        name,
        rtype,
        "+time=2",
        "+tries=1",
        "+nocookie",
        "+noall",
        "+comments",
        "+answer",
    ];
    args.extend_from_slice(extra);
    let out = ns.exec(&args);
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{args:?} in {} failed ({}):\n{output}",
        ns.name(),
        out.status
    );
    let mut status = None;
    let mut flags = Vec::new();
    let mut answers = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            status = rest.split(',').next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
        } else if !line.starts_with(';') && !line.trim().is_empty() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                answers.push(DigRecord {
                    name: f[0].to_string(),
                    ttl: f[1].parse().unwrap_or_else(|e| panic!("ttl in {line:?}: {e}")),
                    rtype: f[3].to_string(),
                    data: f[4..].join(" "),
                });
            }
        }
    }
    let status = status.unwrap_or_else(|| panic!("no status in dig output:\n{output}"));
    Dig {
        status,
        flags,
        answers,
        output,
    }
}
