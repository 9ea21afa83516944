//! `mesh.throughput`: TCP throughput (iperf3) and new connections per second
//! (`warren-dp-probe crr`) between two namespaces over Warren's mesh, beside the
//! same namespaces with plain routing over the veth (no encryption) and a
//! standalone wireguard-go tunnel set up by hand with `wg`. Every variant has its
//! own pair of namespaces (underlay 10.240.0.0/24, "task" addresses 10.78.1.1 and
//! 10.78.2.1); variants alternate run by run after a warm-up.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use warren_tests::cluster::wait_until;
use warren_tests::dataplane::{Netns, Proc};
use warren_tests::mesh::{MeshNode, MeshNodeConfig};

use crate::dataplane::lab::finish;
use crate::dataplane::tools::parse_crr;
use crate::stats::Record;

const SCENARIO: &str = "mesh.throughput";
const SERVER: &str = "10.78.2.1";
const HTTP_PORT: u16 = 8080;
const WG_PORT: u16 = 51820;
const CRR_CONNS: u32 = 16;

const PLAIN: &str = "plain veth routing (no encryption)";
const STANDALONE: &str = "standalone wireguard-go (wg)";
const WARREN: &str = "warren mesh (wireguard-go)";
/// The embedded-implementation candidate, measured when `boringtun-cli` is on the
/// PATH (`cargo install boringtun-cli`), to decide between it and wireguard-go.
const BORINGTUN: &str = "standalone boringtun (wg)";

/// One variant's two namespaces and what runs in them. Field order is drop order.
struct Pair {
    procs: Vec<Proc>,
    mesh: Vec<MeshNode>,
    /// UAPI sockets of standalone tunnels: a killed process leaves its socket.
    sockets: Vec<std::path::PathBuf>,
    a: Netns,
    b: Netns,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.procs.clear();
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Two namespaces on one veth: a 10.240.0.1 ↔ b 10.240.0.2.
fn pair(tag: &str) -> Pair {
    let a = Netns::new(&format!("wbm-{tag}-a"));
    let b = Netns::new(&format!("wbm-{tag}-b"));
    a.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", "10.240.0.1/24", "dev", "eth0"]);
    b.ip(&["addr", "add", "10.240.0.2/24", "dev", "eth0"]);
    a.ip(&["link", "set", "eth0", "up"]);
    b.ip(&["link", "set", "eth0", "up"]);
    Pair {
        procs: Vec::new(),
        mesh: Vec::new(),
        sockets: Vec::new(),
        a,
        b,
    }
}

/// The "task" addresses on `lo`, for the variants without Warren's network (this
/// kernel has no dummy links); a local address is local whatever its link.
fn task_addrs(p: &Pair) {
    for (ns, addr) in [(&p.a, "10.78.1.1/32"), (&p.b, "10.78.2.1/32")] {
        ns.ip(&["addr", "add", addr, "dev", "lo"]);
    }
}

fn plain() -> Result<Pair, String> {
    let p = pair("plain");
    task_addrs(&p);
    p.a.ip(&["route", "add", "10.78.2.0/24", "via", "10.240.0.2", "src", "10.78.1.1"]);
    p.b.ip(&["route", "add", "10.78.1.0/24", "via", "10.240.0.1", "src", "10.78.2.1"]);
    Ok(p)
}

/// The userspace implementations a standalone tunnel can run on.
#[derive(Clone, Copy)]
enum Impl {
    WireguardGo,
    Boringtun,
}

fn standalone(imp: Impl) -> Result<Pair, String> {
    let mut p = pair(match imp {
        Impl::WireguardGo => "wg",
        Impl::Boringtun => "bt",
    });
    task_addrs(&p);
    let keys: Vec<(String, String)> = (0..2)
        .map(|_| {
            let private = sh(Command::new("wg").arg("genkey"))?;
            let public = {
                use std::io::Write;
                let mut c = Command::new("wg")
                    .arg("pubkey")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("wg pubkey: {e}"))?;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(private.as_bytes())
                    .map_err(|e| e.to_string())?;
                let out = c.wait_with_output().map_err(|e| e.to_string())?;
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            Ok((private, public))
        })
        .collect::<Result<_, String>>()?;
    let tmp = std::env::temp_dir().join(format!("warren-bench-wg-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    // wg finds wireguard-go's socket in /var/run/wireguard: names unique to this run.
    let t = match imp {
        Impl::WireguardGo => "g",
        Impl::Boringtun => "t",
    };
    let ifaces = [
        format!("wbm{t}{}a", std::process::id() % 100_000),
        format!("wbm{t}{}b", std::process::id() % 100_000),
    ];
    let sides = [
        (&p.a, &ifaces[0], 0usize, "10.240.0.2", "10.78.2.0/24", "10.78.1.1"),
        (&p.b, &ifaces[1], 1usize, "10.240.0.1", "10.78.1.0/24", "10.78.2.1"),
    ];
    let mut procs = Vec::new();
    for (ns, iface, me, peer_ip, peer_net, src) in sides {
        let mut cmd = match imp {
            Impl::WireguardGo => ns.exec(&["wireguard-go", "-f", iface]),
            Impl::Boringtun => ns.exec(&["boringtun-cli", "-f", "--disable-drop-privileges", iface]),
        };
        cmd.env("WG_PROCESS_FOREGROUND", "1").env("LOG_LEVEL", "error");
        procs.push(Proc::spawn(cmd, &format!("standalone tunnel {iface}")));
        let sock = Path::new("/var/run/wireguard").join(format!("{iface}.sock"));
        p.sockets.push(sock.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline {
                return Err(format!("{} did not appear", sock.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let keyfile = tmp.join(format!("{iface}.key"));
        std::fs::write(&keyfile, &keys[me].0).map_err(|e| e.to_string())?;
        let endpoint = format!("{peer_ip}:{WG_PORT}");
        let port = WG_PORT.to_string();
        sh(&mut ns.exec(&[
            "wg",
            "set",
            iface,
            "private-key",
            keyfile.to_str().unwrap(),
            "listen-port",
            &port,
            "peer",
            &keys[1 - me].1,
            "endpoint",
            &endpoint,
            "allowed-ips",
            peer_net,
        ]))?;
        ns.ip(&["link", "set", iface, "up"]);
        ns.ip(&["route", "add", peer_net, "dev", iface, "src", src]);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    p.procs = procs;
    Ok(p)
}

fn warren() -> Result<Pair, String> {
    let mut p = pair("warren");
    let specs = [
        (&p.a, "10.240.0.1", "10.78.1.0/24"),
        (&p.b, "10.240.0.2", "10.78.2.0/24"),
    ];
    let mut nodes = Vec::new();
    for (ns, addr, subnet) in specs {
        nodes.push(MeshNode::start(MeshNodeConfig {
            name: ns.name.clone(),
            ns: format!("/run/netns/{}", ns.name).into(),
            subnet: subnet.parse().unwrap(),
            cluster_cidr: "10.78.0.0/16".parse().unwrap(),
            endpoint: SocketAddr::new(addr.parse().unwrap(), WG_PORT),
            keepalive_secs: 25,
            interface: "warren-wg".into(),
            // No outbound masquerade: its nftables table would put connection
            // tracking on every packet, a cost of the task network, not the mesh.
            masquerade: false,
        }));
    }
    nodes[0].set_peers(vec![nodes[1].as_peer()]);
    nodes[1].set_peers(vec![nodes[0].as_peer()]);
    let key = nodes[1].public_key();
    let routed = |n: &MeshNode| {
        let out = Command::new("ip")
            .args(["-n", &p.a.name, "route", "show", "10.78.2.0/24"])
            .output();
        let _ = n;
        out.map(|o| String::from_utf8_lossy(&o.stdout).contains("warren-wg"))
            .unwrap_or(false)
    };
    wait_until(
        "the warren mesh routes to the other namespace",
        Duration::from_secs(20),
        || nodes[0].peer(&key).is_some() && routed(&nodes[0]),
    );
    p.mesh = nodes;
    Ok(p)
}

fn iperf(p: &Pair, secs: u64) -> Result<f64, String> {
    let t = secs.to_string();
    let out = sh(&mut p
        .a
        .exec(&["iperf3", "-c", SERVER, "-t", &t, "-J", "--connect-timeout", "3000"]))?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("iperf3 json: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("no end.sum_received in iperf3's output: {out}"))
}

fn crr(p: &Pair, probe: &Path, ms: u64) -> Result<f64, String> {
    let to = format!("{SERVER}:{HTTP_PORT}");
    let (ms_s, conns) = (ms.to_string(), CRR_CONNS.to_string());
    let argv = [
        probe.to_str().unwrap(),
        "crr",
        "--to",
        &to,
        "--ms",
        &ms_s,
        "--conns",
        &conns,
    ];
    let out = finish(
        Proc::spawn(p.a.exec(&argv), "crr client"),
        Duration::from_millis(ms) + Duration::from_secs(30),
    )?;
    let r = parse_crr(&out)?;
    if r.ok == 0 || r.error_count() as f64 > r.attempts as f64 * 0.01 {
        return Err(format!(
            "{} answers of {} attempts, errors {:?}",
            r.ok, r.attempts, r.errors
        ));
    }
    Ok(r.rate)
}

/// Starts iperf3 and the HTTP server in the pair's `b` namespace.
fn servers(p: &mut Pair, probe: &Path) {
    let iperf = Proc::spawn(p.b.exec(&["iperf3", "-s", "-B", SERVER]), "iperf3 server");
    p.procs.push(iperf);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let listening = sh(&mut p.b.exec(&["ss", "-Hltn", "sport", "=", ":5201"])).unwrap_or_default();
        if !listening.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let listen = format!("{SERVER}:{HTTP_PORT}");
    let mut http = Proc::spawn(
        p.b.exec(&[probe.to_str().unwrap(), "http", "--listen", &listen, "--threads", "1"]),
        "http server",
    );
    http.wait_line("listening");
    p.procs.push(http);
}

/// A variant's setup, a panic in it turned into its reason.
fn guarded(f: impl FnOnce() -> Result<Pair, String>) -> Result<Pair, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(p
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "setting the variant up failed".into()))
    })
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn missing_prerequisite(probe: &Path) -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    if !probe.exists() {
        return Some(format!("{} is missing", probe.display()));
    }
    for (tool, pkg) in [
        ("iperf3", "iperf3"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
    ] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!("`{tool}` is not installed (Debian package {pkg})"));
        }
    }
    None
}

pub fn run(quick: bool, probe: &Path) -> Vec<Record> {
    let metrics = [("throughput", "Gbit/s"), ("new connections", "conn/s")];
    let all_skipped = |why: &str| {
        [PLAIN, STANDALONE, WARREN, BORINGTUN]
            .iter()
            .flat_map(|v| {
                metrics
                    .iter()
                    .map(move |(m, u)| Record::skipped(SCENARIO, v, m, u, why))
            })
            .collect::<Vec<_>>()
    };
    if let Some(why) = missing_prerequisite(probe) {
        return all_skipped(&why);
    }
    let (reps, secs, ms) = if quick { (2, 2, 1000) } else { (5, 5, 4000) };
    let boringtun = if has("boringtun-cli") {
        guarded(|| standalone(Impl::Boringtun))
    } else {
        Err("`boringtun-cli` is not installed (cargo install boringtun-cli)".into())
    };
    let mut variants: Vec<(&str, Result<Pair, String>)> = vec![
        (PLAIN, guarded(plain)),
        (STANDALONE, guarded(|| standalone(Impl::WireguardGo))),
        (
            WARREN,
            std::panic::catch_unwind(warren).unwrap_or_else(|_| Err("the mesh did not start".into())),
        ),
        (BORINGTUN, boringtun),
    ];
    let mut runs: Vec<(Vec<f64>, Vec<f64>, Option<String>)> = variants.iter().map(|_| (vec![], vec![], None)).collect();
    for (i, (_, p)) in variants.iter_mut().enumerate() {
        match p {
            Ok(p) => {
                servers(p, probe);
                // Warm-up: handshakes, neighbour entries, the servers' first connections.
                if let Err(e) = iperf(p, 1).and_then(|_| crr(p, probe, 300)) {
                    runs[i].2 = Some(format!("warm-up: {e}"));
                }
            }
            Err(e) => runs[i].2 = Some(e.clone()),
        }
    }
    for _ in 0..reps {
        for (i, (v, p)) in variants.iter().enumerate() {
            let Ok(p) = p else { continue };
            if runs[i].2.is_some() {
                continue;
            }
            match iperf(p, secs).and_then(|g| crr(p, probe, ms).map(|c| (g, c))) {
                Ok((g, c)) => {
                    eprintln!("warren-bench: {SCENARIO} {v}: {g:.2} Gbit/s, {c:.0} conn/s");
                    runs[i].0.push(g);
                    runs[i].1.push(c);
                }
                Err(e) => runs[i].2 = Some(e),
            }
        }
    }
    let mut out = Vec::new();
    for (i, (v, _)) in variants.iter().enumerate() {
        let (g, c, failed) = &runs[i];
        for ((m, u), r) in metrics.iter().zip([g, c]) {
            out.push(match failed {
                Some(why) => Record::skipped(SCENARIO, v, m, u, why.clone()),
                None => Record::new(SCENARIO, v, m, u, true, r.clone()),
            });
        }
    }
    drop(variants);
    out
}
