//! The WireGuard mesh in a real cluster: three `warren` processes, each in its own
//! network namespace on the lab's lan, with `--overlay wireguard` (userspace
//! wireguard-go on a TUN device, started by each daemon), real containers. A
//! service whose tasks run only on n3 is reached from m1 and n2 through its VIP;
//! the lan carries only WireGuard UDP between the nodes (nft counters on the lan
//! bridge); a key rotation under a request loop fails no request; a node that
//! stops removes its interface, and a node removed loses its peer entry
//! everywhere. Needs root, containerd, runc, nftables, wireguard-go and wg.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use warren_tests::env::{ChildGuard, Env};
use warren_tests::netns::require_command;

const IFACE: &str = "warren-wg";
const WAIT: Duration = Duration::from_secs(60);

/// Kills, on drop, the wireguard-go of every node whose run dir it names: a daemon
/// killed by a failing test leaves it running (and its namespace alive).
struct WgGoGuard(Vec<PathBuf>);

impl Drop for WgGoGuard {
    fn drop(&mut self) {
        for dir in &self.0 {
            let pid = std::fs::read_to_string(dir.join(format!("{IFACE}.pid")))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                // SAFETY: kill(2) of the wireguard-go a node of this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// (public key, allowed IPs, latest handshake, rx bytes, tx bytes).
type WgPeer = (String, String, u64, u64, u64);

/// `wg show IFACE dump` as the node's wireguard-go sees it (its run dir mounted
/// where `wg` looks): peer lines as (public key, allowed IPs, handshake, rx, tx).
fn wg_peers(ns: &str, run_dir: &Path) -> Option<Vec<WgPeer>> {
    let script = format!(
        "mount --bind {} /var/run/wireguard && wg show {IFACE} dump",
        run_dir.display()
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["--", "unshare", "-m", "sh", "-c", &script])
        .output()
        .expect("nsenter/unshare/wg");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 8).then(|| {
                    (
                        f[0].to_string(),
                        f[3].to_string(),
                        f[4].parse().unwrap_or(0),
                        f[5].parse().unwrap_or(0),
                        f[6].parse().unwrap_or(0),
                    )
                })
            })
            .collect(),
    )
}

/// The node's public key, from its data dir.
fn public_key(data_dir: &Path) -> String {
    warren::mesh::KeyStore::new(data_dir.join("wireguard"))
        .load_or_create()
        .expect("the node's key")
        .public_key()
        .to_string()
}

fn nft_in(ns: &str, script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
}

/// Packets counted by the named counter of the lan's `wmesh` table.
fn counter(ns: &str, name: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "counter", "bridge", "wmesh", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("counter {name}: {text}"))
}

#[test]
fn three_nodes_reach_a_remote_service_over_the_encrypted_mesh_rotate_keys_and_drop_removed_peers() {
    require_command("wireguard-go", "wireguard-go");
    require_command("wg", "wireguard-tools");
    // Declared before the cluster, so dropped after its daemons are gone (a live
    // daemon would restart a wireguard-go killed under it).
    let wg_dirs = tempfile::Builder::new().prefix("warren-wg-").tempdir().unwrap();
    let _wg_guard = WgGoGuard(["m1", "n2", "n3"].map(|n| wg_dirs.path().join(n)).to_vec());
    let mut env = Env::new();
    let add = |env: &mut Env, name: &str, token: Option<(&str, usize)>| -> (usize, PathBuf) {
        let (ns, ip) = env.lab.node();
        env.c.place(name, &ns, &ip);
        let run_dir = wg_dirs.path().join(name);
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut flags = env.runtime_flags(name);
        flags.extend(["--mesh-run-dir".into(), run_dir.display().to_string()]);
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let i = match token {
            None => {
                let mut refs = refs.clone();
                refs.extend(["--overlay", "wireguard"]);
                env.c.init(name, &refs)
            }
            Some((t, via)) => env.c.join(name, t, via, &refs),
        };
        (i, run_dir)
    };
    // 1. m1 bootstraps a wireguard cluster; n2 and n3 join it as workers.
    let (m1, run1) = add(&mut env, "m1", None);
    let token = env.c.token(m1, "worker");
    let (n2, run2) = add(&mut env, "n2", Some((&token, m1)));
    let (n3, run3) = add(&mut env, "n3", Some((&token, m1)));
    let info: Value = env.c.json(m1, &["cluster", "info", "--format", "json"]).unwrap();
    assert_eq!(info["overlay"], "wireguard", "{info}");
    let nodes = [
        ("m1", m1, run1.clone()),
        ("n2", n2, run2.clone()),
        ("n3", n3, run3.clone()),
    ];
    let keys: Vec<String> = nodes
        .iter()
        .map(|(_, i, _)| public_key(&env.c.nodes[*i].data_dir))
        .collect();

    // 2. Every node has the two others as peers, with handshakes.
    for (k, (name, _, run)) in nodes.iter().enumerate() {
        let ns = env.node_netns(name);
        let want: BTreeSet<String> = keys
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .map(|(_, k)| k.clone())
            .collect();
        env.c.wait(&format!("{name}'s mesh peers"), WAIT, || {
            let peers = wg_peers(&ns, run)?;
            let got: BTreeSet<String> = peers.iter().map(|p| p.0.clone()).collect();
            (got == want && peers.iter().all(|p| !p.1.is_empty() && p.1 != "(none)")).then_some(())
        });
    }

    // 3. Counters on the lan: plaintext TCP to task or service addresses, and
    //    WireGuard's UDP, between the nodes.
    let lan = env.lab.lan.name().to_string();
    nft_in(
        &lan,
        "table bridge wmesh {
           counter plain {}
           counter wg {}
           chain seen {
             type filter hook forward priority 0;
             ip daddr 10.88.0.0/16 meta l4proto tcp counter name \"plain\"
             ip daddr 10.96.0.0/16 meta l4proto tcp counter name \"plain\"
             udp dport 51820 counter name \"wg\"
           }
         }",
    );
    struct DropTable(String);
    impl Drop for DropTable {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &self.0, "nft", "delete", "table", "bridge", "wmesh"])
                .output();
        }
    }
    let _table = DropTable(lan.clone());

    // 4. A service whose tasks run only on n3, reached through its VIP from m1 and
    //    n2 (socket load balancing picks n3's task addresses, routed via the mesh).
    let http = env.image("warren-test/http");
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "web",
            "--image",
            &http,
            "--replicas",
            "2",
            "--constraint",
            "node.hostname==n3",
        ],
    );
    let tasks = env.running(m1, "web", 2);
    assert!(tasks.iter().all(|t| t["node_id"] == tasks[0]["node_id"]), "{tasks:?}");
    env.c.wait("healthy web tasks", WAIT, || {
        let healthy = env
            .c
            .tasks(m1, "web")
            .into_iter()
            .filter(|t| t["status"]["state"] == "Running" && t["status"]["health"] == "healthy")
            .count();
        (healthy == 2).then_some(())
    });
    let names: BTreeSet<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap()[..12].to_string())
        .collect();
    let svc: Value = env
        .c
        .json(m1, &["service", "inspect", "web", "--format", "json"])
        .unwrap();
    let vip = format!("{}:80", svc["vip"].as_str().expect("a VIP"));
    for from in ["m1", "n2"] {
        let ns = env.node_netns(from);
        let cg = env.node_cgroup(from);
        let r = env.c.wait(&format!("the VIP from {from}"), WAIT, || {
            let r = env.probe_run(&ns, Some(&cg), &["connect", "--to", &vip, "--n", "30", "--http"]);
            (r.error_count() == 0 && r.names.len() == 2).then_some(r)
        });
        assert_eq!(r.names.keys().cloned().collect::<BTreeSet<_>>(), names, "{from}: {r:?}");
    }

    // 4b. --endpoint-locality prefer-local: a task on n2 and one on n3; each node's
    //     clients reach only their own node's task, and with `any` both again.
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "near",
            "--image",
            &http,
            "--mode",
            "global",
            "--constraint",
            "node.role==worker",
            "--endpoint-locality",
            "prefer-local",
        ],
    );
    let near_tasks = env.running(m1, "near", 2);
    // Until both are healthy, a node without a ready task of its own falls back to
    // the other's (correctly): wait, so that locality is what the probe shows.
    env.c.wait_healthy_on(m1, "near", &http, 2);
    let near_names: BTreeSet<String> = near_tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap()[..12].to_string())
        .collect();
    let near: Value = env
        .c
        .json(m1, &["service", "inspect", "near", "--format", "json"])
        .unwrap();
    assert_eq!(near["spec"]["endpoint_locality"], "PreferLocal", "{near}");
    let near_vip = format!("{}:80", near["vip"].as_str().expect("a VIP"));
    let reached = |from: &str, want: usize| {
        let (ns, cg) = (env.node_netns(from), env.node_cgroup(from));
        env.c.wait(&format!("near from {from} on {want} task(s)"), WAIT, || {
            let r = env.probe_run(&ns, Some(&cg), &["connect", "--to", &near_vip, "--n", "60", "--http"]);
            (r.error_count() == 0 && r.names.len() == want).then_some(r)
        })
    };
    let on_n2 = reached("n2", 1);
    let on_n3 = reached("n3", 1);
    assert_ne!(
        on_n2.names.keys().next(),
        on_n3.names.keys().next(),
        "{on_n2:?} {on_n3:?}"
    );
    assert!(on_n2
        .names
        .keys()
        .chain(on_n3.names.keys())
        .all(|n| near_names.contains(n)));
    env.c
        .ok(m1, &["service", "update", "near", "--endpoint-locality", "any"]);
    reached("n2", 2);
    env.c.ok(m1, &["service", "rm", "near"]);

    // 5. Between the nodes the lan carried WireGuard, and no plaintext TCP to a task.
    assert_eq!(
        counter(&lan, "plain"),
        0,
        "plaintext TCP to task addresses crossed the lan"
    );
    assert!(counter(&lan, "wg") > 0, "no WireGuard UDP crossed the lan");
    let m1_ns = env.node_netns("m1");
    let to_n3 = wg_peers(&m1_ns, &run1).unwrap();
    let to_n3 = to_n3.iter().find(|p| p.0 == keys[2]).expect("n3 is m1's peer");
    assert!(
        to_n3.2 > 0 && to_n3.3 > 0 && to_n3.4 > 0,
        "handshake and bytes with n3: {to_n3:?}"
    );

    // `node inspect` shows n3's mesh as n3 sees it: m1 and n2 as peers, with
    // handshakes and bytes; and its published key.
    let n3_view: Value = env.c.json(m1, &["node", "inspect", "n3", "--format", "json"]).unwrap();
    assert_eq!(n3_view["mesh"]["public_key"], keys[2].as_str(), "{n3_view}");
    let mesh = &n3_view["dataplane"]["mesh"];
    assert_eq!(mesh["public_key"], keys[2].as_str(), "{n3_view}");
    let peers = mesh["peers"].as_array().expect("mesh peers");
    assert_eq!(peers.len(), 2, "{mesh}");
    assert!(
        peers
            .iter()
            .all(|p| p["last_handshake_ms"].as_i64() > Some(0) && p["rx_bytes"].as_u64() > Some(0)),
        "{mesh}"
    );

    // 6. n3 rotates its key under a constant request loop from m1: 0 failures.
    let stop = env.c.dir.path().join("stop-loop");
    let mut looping = ChildGuard::spawn(
        env.probe(
            &m1_ns,
            Some(&env.node_cgroup("m1")),
            &[
                "loop",
                "--to",
                &vip,
                "--http",
                "--stop-file",
                &stop.display().to_string(),
            ],
        )
        .stdout(std::process::Stdio::piped()),
    );
    let mut loop_out = std::io::BufReader::new(looping.stdout());
    let mut started = String::new();
    std::io::BufRead::read_line(&mut loop_out, &mut started).unwrap();
    assert_eq!(started.trim(), "started");
    let out_rotate = env.c.ok(m1, &["node", "update", "n3", "--rotate-key"]);
    assert!(out_rotate.contains("n3"), "{out_rotate}");
    let new_key = env.c.wait("n3's new key on m1 and n2", WAIT, || {
        let k = public_key(&env.c.nodes[n3].data_dir);
        if k == keys[2] {
            return None;
        }
        for (name, run) in [("m1", &run1), ("n2", &run2)] {
            let peers = wg_peers(&env.node_netns(name), run)?;
            let ks: BTreeSet<&str> = peers.iter().map(|p| p.0.as_str()).collect();
            if ks.contains(keys[2].as_str()) || !ks.contains(k.as_str()) {
                return None;
            }
        }
        Some(k)
    });
    // Requests keep flowing on the new key before the loop stops.
    env.c.wait("a request over n3's new key", WAIT, || {
        let peers = wg_peers(&m1_ns, &run1)?;
        peers.iter().find(|p| p.0 == new_key && p.2 > 0).map(|_| ())
    });
    std::fs::write(&stop, "").unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut loop_out, &mut said).unwrap();
    looping.wait_with_output();
    let r = warren_tests::dataplane::Report::parse(&said);
    assert_eq!(r.error_count(), 0, "requests failed during the rotation: {r:?}");
    assert!(r.names.values().sum::<u64>() > 10, "the loop ran: {r:?}");

    // 7. n2 stops: its daemon removes its mesh interface. Removed from the
    //    cluster, it is no peer of m1 or n3 any more.
    let n2_ns = env.node_netns("n2");
    env.c.nodes[n2].stop();
    let link = std::process::Command::new("ip")
        .args(["netns", "exec", &n2_ns, "ip", "link", "show", IFACE])
        .output()
        .unwrap();
    assert!(!link.status.success(), "n2's {IFACE} outlived its daemon");
    env.c.ok(m1, &["node", "rm", "--force", "n2"]);
    for (name, run) in [("m1", &run1), ("n3", &run3)] {
        let ns = env.node_netns(name);
        env.c.wait(&format!("{name} to drop n2"), WAIT, || {
            let peers = wg_peers(&ns, run)?;
            (!peers.iter().any(|p| p.0 == keys[1]) && peers.len() == 1).then_some(())
        });
    }
}
