//! Linearizable under faults (issue 16 item 3): four clients create, update and
//! read services through all three managers while the leader is SIGKILLed 20 times
//! (and restarted after each kill) and while a follower's namespace link is down;
//! every operation is recorded with its invoke and complete times and its outcome
//! (ok, failed for certain, unknown), and afterwards every acknowledged write must
//! be there and the history must check out against a register per service
//! (`warren_tests::linearize`). Then, with one manager stopped, the log stays
//! bounded: snapshots purge it although a member is down. Real `warren` processes,
//! each manager in a namespace of its own on a lab bridge.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_tests::cluster::{text, wait_for, warren_bin, Cluster};
use warren_tests::lab::Lab;
use warren_tests::linearize::{self, Event, Op, Outcome};

const CLIENTS: usize = 4;
const KILLS: usize = 20;
/// Updates and reads go to the most recently created services, so that clients
/// meet on the same keys.
const HOT: u64 = 6;
/// Snapshot this often, so that restarted managers catch up through snapshots and
/// the bounded-log check has something to bound.
const SNAPSHOT_EVERY: u64 = 30;

fn cli(sock: &Path, args: &[&str]) -> Output {
    Command::new(warren_bin())
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(args)
        .output()
        .expect("running the warren CLI")
}

/// What a failed write's message says about whether it was applied. Only refusals
/// the server makes before proposing count as failed; anything else (the manager
/// killed mid-call, "may or may not have been applied") is unknown.
fn outcome(out: &Output) -> Outcome {
    if out.status.success() {
        return Outcome::Ok;
    }
    // The error is the last line; a note before it (a stale read) is not about the write.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let err = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    if err.contains("may or may not have been applied") {
        return Outcome::Unknown;
    }
    const REFUSED: &[&str] = &[
        "already exists",
        "not found",
        "no quorum",
        "no manager is leader",
        "was not committed within",
        "changed since it was read",
        // The CLI could not connect: nothing was sent.
        "cannot connect to",
    ];
    if REFUSED.iter().any(|r| err.contains(r)) {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}

fn key(n: u64) -> String {
    format!("lz-{n}")
}

/// Every `lz-*` service's `val` label in a `service ls --format json` answer.
fn values(out: &Output) -> Option<BTreeMap<String, u64>> {
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut m = BTreeMap::new();
    for s in v.as_array()? {
        let name = s["name"].as_str()?;
        if name.starts_with("lz-") {
            let val = s["spec"]["labels"]["val"].as_str()?.parse().ok()?;
            m.insert(name.to_string(), val);
        }
    }
    Some(m)
}

struct Shared {
    start: Instant,
    socks: Vec<PathBuf>,
    /// Managers the test has stopped: clients leave them alone.
    down: Vec<AtomicBool>,
    /// Services created so far get IDs below this (allocated at invoke).
    next_key: AtomicU64,
    stop: AtomicBool,
    history: Mutex<Vec<Event>>,
    /// (manager, invoke, complete, outcome) of every write, for the partition check.
    writes_via: Mutex<Vec<(usize, u128, u128, Outcome)>>,
    stale_reads: AtomicU64,
    /// Operations the clients completed, whatever their outcome.
    ops: AtomicU64,
}

impl Shared {
    fn now(&self) -> u128 {
        self.start.elapsed().as_nanos()
    }
}

fn client(sh: &Shared, id: usize) {
    let mut rng = rand::rng();
    use rand::Rng;
    let mut seq = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        let up: Vec<usize> = (0..sh.socks.len())
            .filter(|i| !sh.down[*i].load(Ordering::Relaxed))
            .collect();
        let m = up[rng.random_range(0..up.len())];
        let sock = &sh.socks[m];
        seq += 1;
        sh.ops.fetch_add(1, Ordering::Relaxed);
        let val = (id as u64 + 1) * 1_000_000 + seq;
        let roll = rng.random_range(0..10);
        let known = sh.next_key.load(Ordering::SeqCst);
        if roll < 2 || known == 0 {
            let k = key(sh.next_key.fetch_add(1, Ordering::SeqCst));
            let label = format!("val={val}");
            let invoke = sh.now();
            let out = cli(
                sock,
                &[
                    "service",
                    "create",
                    &k,
                    "--image",
                    "img:1",
                    "--replicas",
                    "0",
                    "--label",
                    &label,
                ],
            );
            record(sh, id, m, k, Op::Create(val), invoke, &out);
        } else if roll < 6 {
            let k = key(known.saturating_sub(1 + rng.random_range(0..HOT.min(known))));
            let label = format!("val={val}");
            let invoke = sh.now();
            let out = cli(sock, &["service", "update", &k, "--detach", "--label-add", &label]);
            record(sh, id, m, k, Op::Write(val), invoke, &out);
        } else {
            let invoke = sh.now();
            let out = cli(sock, &["service", "ls", "--format", "json"]);
            let complete = sh.now();
            if !out.status.success() {
                continue;
            }
            // A read served without a confirmed read point says so; it is not
            // linearizable and is left out.
            if String::from_utf8_lossy(&out.stderr).contains("stale") {
                sh.stale_reads.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(seen) = values(&out) else {
                panic!("unreadable service ls: {}", text(&out));
            };
            let mut h = sh.history.lock().unwrap();
            for n in known.saturating_sub(HOT)..known {
                let k = key(n);
                h.push(Event {
                    client: id,
                    op: Op::Read(seen.get(&k).copied()),
                    key: k,
                    outcome: Outcome::Ok,
                    invoke,
                    complete,
                });
            }
        }
    }
}

fn record(sh: &Shared, client: usize, via: usize, key: String, op: Op, invoke: u128, out: &Output) {
    let complete = sh.now();
    let outcome = outcome(out);
    // The open outcomes, for the record; refusals are counted at the end.
    if outcome == Outcome::Unknown {
        eprintln!(
            "client {client} {op:?} on {key} via {via}: {outcome:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    sh.writes_via.lock().unwrap().push((via, invoke, complete, outcome));
    sh.history.lock().unwrap().push(Event {
        client,
        key,
        op,
        outcome,
        invoke,
        complete,
    });
}

fn info(c: &Cluster, i: usize) -> Option<Value> {
    c.json(i, &["cluster", "info", "--format", "json"]).ok()
}

/// Whether a `service ls` through manager `i` is marked stale.
fn reads_stale(c: &Cluster, i: usize) -> bool {
    let out = c.cli(i, &["service", "ls", "--format", "json"]);
    out.status.success() && String::from_utf8_lossy(&out.stderr).contains("stale")
}

fn link(ns: &str, state: &str) {
    let out = Command::new("ip")
        .args(["-n", ns, "link", "set", "eth0", state])
        .output()
        .expect("running ip");
    assert!(out.status.success(), "ip -n {ns} link set eth0 {state}: {}", text(&out));
}

#[test]
fn twenty_leader_kills_and_a_partition_lose_no_acknowledged_write_and_the_history_is_linearizable() {
    let wall = Instant::now();
    let mut lab = Lab::new();
    let mut c = Cluster::new();
    let every = SNAPSHOT_EVERY.to_string();
    let flags = ["--raft-snapshot-every", every.as_str()];
    let mut nss = Vec::new();
    for name in ["lz1", "lz2", "lz3"] {
        let (ns, ip) = lab.node();
        c.place(name, &ns, &ip);
        nss.push(ns);
    }
    let m1 = c.init("lz1", &flags);
    let token = c.token(m1, "manager");
    c.join("lz2", &token, m1, &flags);
    c.join("lz3", &token, m1, &flags);
    let managers = [0, 1, 2];

    // 1. Four clients run through every manager for the whole fault phase.
    let sh = Arc::new(Shared {
        start: Instant::now(),
        socks: c.nodes.iter().map(|n| n.socket.clone()).collect(),
        down: managers.iter().map(|_| AtomicBool::new(false)).collect(),
        next_key: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        history: Mutex::new(Vec::new()),
        writes_via: Mutex::new(Vec::new()),
        stale_reads: AtomicU64::new(0),
        ops: AtomicU64::new(0),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let sh = sh.clone();
            std::thread::spawn(move || client(&sh, id))
        })
        .collect();

    // 2. Kill the leader 20 times, restarting it after each kill; time how long
    // the survivors take to name a new leader.
    let mut elections = Vec::new();
    for kill in 0..KILLS {
        let leader = c.leader();
        sh.down[leader].store(true, Ordering::SeqCst);
        let killed_addr = c.nodes[leader].addr.clone();
        let killed_at = Instant::now();
        c.nodes[leader].kill9();
        let survivor = managers.into_iter().find(|i| *i != leader).unwrap();
        wait_for(
            &format!("a new leader after kill {}", kill + 1),
            Duration::from_secs(20),
            || {
                let addr = info(&c, survivor)?["leader_addr"].as_str()?.to_string();
                (!addr.is_empty() && addr != killed_addr).then_some(())
            },
        );
        elections.push(killed_at.elapsed());
        c.restart(leader);
        c.wait_api(leader);
        sh.down[leader].store(false, Ordering::SeqCst);
    }

    // 3. A follower's link goes down: it must refuse writes (or say it cannot tell)
    // and mark its reads stale; then the link comes back.
    let leader = c.leader();
    let cut = managers.into_iter().find(|i| *i != leader).unwrap();
    link(&nss[cut], "down");
    let cut_from = sh.now();
    c.wait(
        "the cut-off manager to mark its reads stale",
        Duration::from_secs(20),
        || reads_stale(&c, cut).then_some(()),
    );
    let noticed = sh.now();
    let refused = c.wait(
        "the cut-off manager to refuse a write naming the quorum",
        Duration::from_secs(20),
        || {
            let out = c.cli(
                cut,
                &["service", "create", "lz-cut", "--image", "img:1", "--replicas", "0"],
            );
            assert!(
                !out.status.success(),
                "a partitioned manager acknowledged a write: {}",
                text(&out)
            );
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            err.contains("no quorum").then_some(err)
        },
    );
    // The majority side goes on taking writes meanwhile.
    let writes_before = sh.writes_via.lock().unwrap().len();
    c.wait("writes on the majority side", Duration::from_secs(20), || {
        let w = sh.writes_via.lock().unwrap();
        (w[writes_before..]
            .iter()
            .filter(|(via, _, _, o)| *via != cut && *o == Outcome::Ok)
            .count()
            >= 10)
            .then_some(())
    });
    let healed_at = sh.now();
    link(&nss[cut], "up");
    c.wait(
        "the healed manager to read current state",
        Duration::from_secs(30),
        || (!reads_stale(&c, cut)).then_some(()),
    );

    // 4. The clients stop.
    sh.stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.join().expect("a client thread panicked");
    }
    let fault_phase = sh.start.elapsed();

    // 5. No write through the cut-off manager was acknowledged while it was known
    // to be cut off (noticed, and before the link came back).
    let partition_acks: Vec<_> = sh
        .writes_via
        .lock()
        .unwrap()
        .iter()
        .filter(|(via, invoke, _, o)| *via == cut && *o == Outcome::Ok && *invoke >= noticed && *invoke < healed_at)
        .cloned()
        .collect();
    assert!(
        partition_acks.is_empty(),
        "writes acknowledged by the partitioned manager: {partition_acks:?}"
    );

    // 6. The final state, read through every manager (linearizable reads, so each
    // must show every acknowledged write), joins the history.
    let mut finals = BTreeMap::new();
    let keys = sh.next_key.load(Ordering::SeqCst);
    for i in managers {
        let invoke = sh.now();
        let out = c.cli(i, &["service", "ls", "--format", "json"]);
        assert!(out.status.success(), "final read: {}", text(&out));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("stale"),
            "the final read through {} is stale: {}",
            c.nodes[i].name,
            text(&out)
        );
        let complete = sh.now();
        let seen = values(&out).unwrap_or_else(|| panic!("unreadable service ls: {}", text(&out)));
        let mut h = sh.history.lock().unwrap();
        for n in 0..keys {
            let k = key(n);
            let v = seen.get(&k).copied();
            h.push(Event {
                client: CLIENTS + i,
                key: k.clone(),
                op: Op::Read(v),
                outcome: Outcome::Ok,
                invoke,
                complete,
            });
            finals.insert(k, v);
        }
    }
    let history = sh.history.lock().unwrap().clone();
    let lost = linearize::lost_writes(&history, &finals);
    if !lost.is_empty() {
        let why: Vec<String> = lost
            .iter()
            .map(|w| {
                let fin = finals.get(&w.key).copied().flatten();
                let writers: Vec<&Event> = history
                    .iter()
                    .filter(|e| e.key == w.key && matches!(e.op, Op::Create(v) | Op::Write(v) if Some(v) == fin))
                    .collect();
                let phantom = !writers.is_empty() && writers.iter().all(|e| e.outcome == Outcome::Failed);
                let hint = if phantom {
                    " (a write reported as refused took effect)"
                } else {
                    ""
                };
                format!("{w:?}: finally {fin:?}, written by {writers:?}{hint}")
            })
            .collect();
        panic!("acknowledged writes lost:\n{}", why.join("\n"));
    }
    let checked = Instant::now();
    if let Err(v) = linearize::check(&history) {
        panic!("the history is not linearizable: {v}");
    }
    let check_took = checked.elapsed();

    let writes: Vec<&Event> = history.iter().filter(|e| !matches!(e.op, Op::Read(_))).collect();
    let count = |o: Outcome| writes.iter().filter(|e| e.outcome == o).count();
    let ops = sh.ops.load(Ordering::Relaxed);
    elections.sort();
    eprintln!(
        "linearizable: {KILLS} leader kills, {} writes ({} ok, {} failed, {} unknown), about {ops} operations in {:.1} s ({:.0} ops/s), {} stale reads left out, 0 acknowledged writes lost; new leader after a kill p50 {:?}, max {:?}; partition noticed after {:.1} s; the refusal: {}; checked in {check_took:?}",
        writes.len(),
        count(Outcome::Ok),
        count(Outcome::Failed),
        count(Outcome::Unknown),
        fault_phase.as_secs_f64(),
        ops as f64 / fault_phase.as_secs_f64(),
        sh.stale_reads.load(Ordering::Relaxed),
        elections[elections.len() / 2],
        elections[elections.len() - 1],
        (noticed - cut_from) as f64 / 1e9,
        refused.trim(),
    );

    // 7. One follower stopped: many writes later, snapshots have purged the log
    // behind them on the leader, and its length stays below a bound.
    let leader = c.leader();
    let stopped = managers.into_iter().find(|i| *i != leader).unwrap();
    c.nodes[stopped].kill9();
    let before = info(&c, leader).expect("cluster info");
    let purged_before = before["purged_index"].as_u64().unwrap_or(0);
    let last_before = before["last_log_index"].as_u64().unwrap_or(0);
    let bound = 3 * SNAPSHOT_EVERY;
    let sock = c.nodes[leader].socket.clone();
    std::thread::scope(|s| {
        for t in 0..4 {
            let sock = &sock;
            s.spawn(move || {
                let name = format!("bounded-{t}");
                let out = cli(
                    sock,
                    &["service", "create", &name, "--image", "img:1", "--replicas", "0"],
                );
                assert!(out.status.success(), "{}", text(&out));
                for v in 0..(SNAPSHOT_EVERY) {
                    let label = format!("v={v}");
                    let out = cli(sock, &["service", "update", &name, "--detach", "--label-add", &label]);
                    assert!(out.status.success(), "{}", text(&out));
                }
            });
        }
    });
    let after = wait_for(
        "the leader to purge its log with a member down",
        Duration::from_secs(20),
        || {
            let i = info(&c, leader)?;
            let purged = i["purged_index"].as_u64()?;
            let last = i["last_log_index"].as_u64()?;
            (purged > last_before && last - purged < bound).then_some(i)
        },
    );
    let (purged, last) = (
        after["purged_index"].as_u64().unwrap(),
        after["last_log_index"].as_u64().unwrap(),
    );
    assert!(
        last >= last_before + 4 * SNAPSHOT_EVERY,
        "fewer entries than written: {before} then {after}"
    );
    eprintln!(
        "bounded log: with {} down, the leader's log went from {last_before} (purged to {purged_before}) to {last} (purged to {purged}): {} entries kept, bound {bound}",
        c.nodes[stopped].name,
        last - purged,
    );
    c.restart(stopped);
    c.wait_api(stopped);
    wait_for("the stopped manager to catch up", Duration::from_secs(30), || {
        let i = info(&c, stopped)?;
        (i["applied_index"].as_u64()? >= last).then_some(())
    });
    eprintln!("linearizable test wall time {:.1} s", wall.elapsed().as_secs_f64());
    drop(c);
    drop(lab);
}
