//! End-to-end tests of the control plane: real `warren` processes on loopback,
//! each with its own data dir, socket and ports.

use serde_json::Value;
use std::collections::BTreeMap;

use std::time::Duration;
use warren_tests::cluster::{http_get, wait_for, Cluster, SIGCONT, SIGSTOP};

fn service_names(c: &Cluster, i: usize) -> Vec<String> {
    c.json(i, &["service", "ls", "--format", "json"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// Live tasks (meant to run, not finished) per node name.
fn live_per_node(c: &Cluster, i: usize, service: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in c.tasks(i, service) {
        let terminal = matches!(
            t["status"]["state"].as_str(),
            Some("Complete" | "Shutdown" | "Failed" | "Rejected" | "Orphaned")
        );
        if t["desired_state"] == "Running" && !terminal {
            let node = t["node_name"].as_str().unwrap_or("-").to_string();
            *out.entry(node).or_default() += 1;
        }
    }
    out
}

#[test]
fn three_managers_survive_a_leader_kill_and_a_full_restart() {
    let mut c = Cluster::new();
    // Snapshot every 30 entries, so that a manager that was down catches up through
    // a snapshot and the log really is purged.
    let m1 = c.init("m1", &["--raft-snapshot-every", "30"]);
    let token = c.token(m1, "manager");
    let m2 = c.join("m2", &token, m1, &["--raft-snapshot-every", "30"]);
    let m3 = c.join("m3", &token, m1, &["--raft-snapshot-every", "30"]);

    // 1. Three voters.
    let info = c.json(m2, &["cluster", "info", "--format", "json"]).unwrap();
    let voters = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 3, "{info}");

    // 2. 100 services, written through different managers.
    for i in 0..100 {
        let via = [m1, m2, m3][i % 3];
        c.ok(
            via,
            &[
                "service",
                "create",
                &format!("svc-{i:03}"),
                "--image",
                "img:1",
                "--replicas",
                "0",
            ],
        );
    }
    wait_for(
        "every manager to hold the 100 services",
        Duration::from_secs(10),
        || (service_names(&c, m3).len() == 100).then_some(()),
    );

    // 3. Kill the leader; a write on a survivor succeeds at the first attempt.
    let leader = c.leader();
    c.nodes[leader].kill9();
    let survivor = [m1, m2, m3].into_iter().find(|i| *i != leader).unwrap();
    c.ok(
        survivor,
        &["service", "create", "after-kill", "--image", "img:1", "--replicas", "0"],
    );
    let names = service_names(&c, survivor);
    assert_eq!(names.len(), 101);
    // The survivors' agents follow the new leader; the killed manager is down.
    let killed = c.nodes[leader].name.clone();
    c.wait("agents on the new leader", Duration::from_secs(20), || {
        let nodes = c.json(survivor, &["node", "ls", "--format", "json"]).ok()?;
        nodes
            .as_array()?
            .iter()
            .all(|n| (n["state"] == "Unreachable") == (n["name"] == killed.as_str()))
            .then_some(())
    });
    assert!((0..100).all(|i| names.contains(&format!("svc-{i:03}"))));

    // 4. More writes than a snapshot interval while the old leader is down.
    for i in 0..40 {
        c.ok(
            survivor,
            &[
                "service",
                "create",
                &format!("late-{i:02}"),
                "--image",
                "img:1",
                "--replicas",
                "0",
            ],
        );
    }

    // 5. The killed manager restarts from its data dir and catches up.
    c.restart(leader);
    c.wait_api(leader);
    wait_for("the restarted manager to catch up", Duration::from_secs(30), || {
        (service_names(&c, leader).len() == 141).then_some(())
    });
    // Snapshots were taken (the log is only purged once every member has what it
    // would drop: openraft holds the purge while a member is unreachable).
    let info = c.json(survivor, &["cluster", "info", "--format", "json"]).unwrap();
    assert!(info["snapshot_index"].as_u64().unwrap() > 100, "{info}");

    // 6. Restart all three at once (kill -9): nothing acknowledged is lost.
    for i in [m1, m2, m3] {
        c.nodes[i].kill9();
    }
    for i in [m1, m2, m3] {
        c.restart(i);
    }
    for i in [m1, m2, m3] {
        c.wait_api(i);
    }
    c.leader();
    for i in [m1, m2, m3] {
        wait_for("every manager to hold every service", Duration::from_secs(30), || {
            (service_names(&c, i).len() == 141).then_some(())
        });
    }
    c.ok(
        m2,
        &[
            "service",
            "create",
            "after-restart",
            "--image",
            "img:1",
            "--replicas",
            "0",
        ],
    );
    // Read-your-writes holds on the manager that took the write; another follows
    // within a heartbeat.
    assert_eq!(service_names(&c, m2).len(), 142);
    wait_for("m3 to apply the write", Duration::from_secs(10), || {
        (service_names(&c, m3).len() == 142).then_some(())
    });
    let nodes = c.json(m1, &["node", "ls", "--format", "json"]).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 3);

    // 7. With every member up, new snapshots purge the log behind them...
    for i in 0..40 {
        c.ok(
            m3,
            &[
                "service",
                "create",
                &format!("more-{i:02}"),
                "--image",
                "img:1",
                "--replicas",
                "0",
            ],
        );
    }
    for i in [m1, m2, m3] {
        wait_for("the log to be purged", Duration::from_secs(30), || {
            let info = c.json(i, &["cluster", "info", "--format", "json"]).ok()?;
            (info["purged_index"].as_u64()? > 100).then_some(())
        });
    }
    // ... so that a manager joining now catches up through a snapshot.
    let m4 = c.join("m4", &token, m2, &["--raft-snapshot-every", "30"]);
    wait_for("the new manager to hold every service", Duration::from_secs(30), || {
        (service_names(&c, m4).len() == 182).then_some(())
    });
    let log = c.nodes[m4].log_text();
    assert!(
        log.contains("installed snapshot from the leader"),
        "no snapshot install in:\n{log}"
    );
}

#[test]
fn joining_takes_a_valid_token_and_the_api_a_cluster_certificate() {
    let mut c = Cluster::new();
    let m1 = c.init("m1", &[]);
    let worker_token = c.token(m1, "worker");

    // 1. A worker joins with the worker token.
    let w1 = c.join("w1", &worker_token, m1, &[]);
    let nodes = c.json(m1, &["node", "ls", "--format", "json"]).unwrap();
    let w = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "w1")
        .unwrap()
        .clone();
    assert_eq!(w["role"], "Worker");
    assert!(!c.nodes[w1].socket.exists(), "a worker serves no local API");

    // 2. A right-looking token with a wrong secret is refused, and names the problem.
    let (digest, _) = worker_token.rsplit_once('-').unwrap();
    let wrong_secret = format!("{digest}-{}", "a".repeat(25));
    let out = c.join_expect_failure("bad1", &wrong_secret, m1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid join token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // 3. A token whose CA digest is another cluster's is refused before anything is sent.
    let other_ca = format!("SWMTKN-1-{}-{}", "0".repeat(64), "b".repeat(25));
    let out = c.join_expect_failure("bad2", &other_ca, m1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("but the join token expects CA"), "{err}");

    // 4. A malformed token.
    let out = c.join_expect_failure("bad3", "hello", m1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid join token"));

    // 5. Rotation: the old worker token stops working, the new one works.
    c.ok(m1, &["cluster", "join-token", "worker", "--rotate"]);
    let out = c.join_expect_failure("bad4", &worker_token, m1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("rotated"));
    let fresh = c.token(m1, "worker");
    assert_ne!(fresh, worker_token);
    c.join("w2", &fresh, m1, &[]);

    // 5b. A token issued with an expiry works until then and is refused after,
    //     naming the expiry; issuing it replaced the previous token.
    let out = c.ok(m1, &["cluster", "join-token", "worker", "--expire", "24h"]);
    assert!(out.contains("expires at"), "{out}");
    let issued = std::time::Instant::now();
    let short = c.ok(m1, &["cluster", "join-token", "worker", "--expire", "2s", "-q"]);
    let short = short.trim().to_string();
    let out = c.join_expect_failure("bad5", &fresh, m1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("rotated"));
    // The expiry is a point in time: wait until it has passed.
    wait_for("the 2 s token to expire", Duration::from_secs(10), || {
        (issued.elapsed() > Duration::from_millis(2200)).then_some(())
    });
    let out = c.join_expect_failure("bad6", &short, m1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("join token expired"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let err = c.fails(m1, &["cluster", "join-token", "worker", "--expire", "0s"]);
    assert!(err.contains("--expire"), "{err}");
    let names: Vec<String> = c
        .json(m1, &["node", "ls", "--format", "json"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("bad")), "{names:?}");

    // 6. Over TCP, a client without a cluster certificate is refused; a manager's works;
    //    a worker's is not enough for the API.
    let host = format!("tcp://{}", c.nodes[m1].addr);
    let ca_only = c.dir.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(c.nodes[m1].data_dir.join("certs/ca.pem"), ca_only.join("ca.pem")).unwrap();
    let run = |tls: &std::path::Path| {
        std::process::Command::new(warren_tests::cluster::warren_bin())
            .args(["-H", &host, "--tls-dir", &tls.display().to_string(), "service", "ls"])
            .output()
            .unwrap()
    };
    let out = run(&ca_only);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a cluster certificate is required"),
        "{}",
        warren_tests::cluster::text(&out)
    );
    let out = run(&c.nodes[m1].data_dir.join("certs"));
    assert!(out.status.success(), "{}", warren_tests::cluster::text(&out));
    let out = run(&c.nodes[w1].data_dir.join("certs"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a worker"));

    // 7. A certificate issued by another cluster fails the TLS handshake.
    let other = c.init("other", &[]);
    let mixed = c.dir.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(c.nodes[m1].data_dir.join("certs/ca.pem"), mixed.join("ca.pem")).unwrap();
    for f in ["node.pem", "node-key.pem"] {
        std::fs::copy(c.nodes[other].data_dir.join("certs").join(f), mixed.join(f)).unwrap();
    }
    let out = run(&mixed);
    assert!(
        !out.status.success(),
        "a foreign certificate was accepted: {}",
        warren_tests::cluster::text(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ID"));
}

#[test]
fn scheduling_spreads_pins_drains_and_reschedules() {
    let mut c = Cluster::new();
    let m1 = c.init("m1", &[]);
    let token = c.token(m1, "worker");
    let _w1 = c.join("w1", &token, m1, &[]);
    let w2 = c.join("w2", &token, m1, &[]);

    // 1. Nine replicas spread 3/3/3.
    c.ok(m1, &["service", "create", "web", "--image", "img:1", "--replicas", "9"]);
    let spread = c.wait("9 placed tasks", Duration::from_secs(20), || {
        let p = live_per_node(&c, m1, "web");
        (p.values().sum::<usize>() == 9 && !p.contains_key("-")).then_some(p)
    });
    assert_eq!(
        spread.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3],
        "{spread:?}"
    );
    // Without a container runtime the tasks stay assigned: nothing pretends to run them.
    assert!(c.tasks(m1, "web").iter().all(|t| t["status"]["state"] == "Assigned"));

    // 2. A constraint pins tasks.
    c.ok(m1, &["node", "update", "w2", "--label-add", "zone=edge"]);
    c.ok(
        m1,
        &[
            "service",
            "create",
            "pinned",
            "--image",
            "img:1",
            "--replicas",
            "4",
            "--constraint",
            "node.labels.zone==edge",
        ],
    );
    let p = wait_for("4 pinned tasks", Duration::from_secs(20), || {
        let p = live_per_node(&c, m1, "pinned");
        (p.values().sum::<usize>() == 4 && !p.contains_key("-")).then_some(p)
    });
    assert_eq!(p, BTreeMap::from([("w2".to_string(), 4)]));

    // 3. A drained node ends with no tasks; the replicas move.
    c.ok(m1, &["node", "update", "w1", "--availability", "drain"]);
    let p = wait_for("w1 to be empty", Duration::from_secs(20), || {
        let p = live_per_node(&c, m1, "web");
        (!p.contains_key("w1") && !p.contains_key("-") && p.values().sum::<usize>() == 9).then_some(p)
    });
    // w1's tasks went to both remaining nodes' share, none to the drained one.
    assert_eq!(p.keys().map(String::as_str).collect::<Vec<_>>(), ["m1", "w2"], "{p:?}");
    let on_w2 = p["w2"];

    // 4. A node that stops heartbeating is marked unreachable and, its services
    //    having --reschedule-after 0 (the harness), its tasks rescheduled.
    c.nodes[w2].signal(SIGSTOP);
    wait_for("w2 to be unreachable", Duration::from_secs(20), || {
        let n = c.json(m1, &["node", "inspect", "w2", "--format", "json"]).ok()?;
        (n["state"] == "Unreachable").then_some(())
    });
    let p = wait_for("web to move off w2", Duration::from_secs(20), || {
        let p = live_per_node(&c, m1, "web");
        (p.get("m1") == Some(&9)).then_some(p)
    });
    let orphaned = c
        .tasks(m1, "web")
        .iter()
        .filter(|t| t["status"]["state"] == "Orphaned" && t["node_name"] == "w2")
        .count();
    assert_eq!(orphaned, on_w2, "each web task of w2 shows as orphaned: {p:?}");
    // The pinned tasks have nowhere to go and say why.
    let pinned = c.tasks(m1, "pinned");
    let pending: Vec<&Value> = pinned.iter().filter(|t| t["status"]["state"] == "Pending").collect();
    assert_eq!(pending.len(), 4);
    let msg = pending[0]["status"]["message"].as_str().unwrap();
    assert!(msg.starts_with("no suitable node ("), "{msg}");
    c.nodes[w2].signal(SIGCONT);
    wait_for("w2 to be ready again", Duration::from_secs(20), || {
        let n = c.json(m1, &["node", "inspect", "w2", "--format", "json"]).ok()?;
        (n["state"] == "Ready").then_some(())
    });
    wait_for("the pinned tasks to return to w2", Duration::from_secs(20), || {
        (live_per_node(&c, m1, "pinned") == BTreeMap::from([("w2".to_string(), 4)])).then_some(())
    });

    // 5. A reservation larger than any node stays pending, with the reason in `service ps`.
    c.ok(
        m1,
        &[
            "service",
            "create",
            "big",
            "--image",
            "img:1",
            "--reserve-memory",
            "100000g",
        ],
    );
    let msg = wait_for("the reason", Duration::from_secs(20), || {
        let t = c.tasks(m1, "big");
        let m = t.first()?["status"]["message"].as_str()?.to_string();
        m.contains("insufficient memory").then_some(m)
    });
    assert!(msg.contains("insufficient memory on 2 nodes"), "{msg}");
    assert!(msg.contains("node is drained on 1 node"), "{msg}");
    let ps = c.ok(m1, &["service", "ps", "big"]);
    assert!(ps.contains("insufficient memory"), "{ps}");

    // 6. A global service runs once on every active node; scaling works both ways.
    c.ok(
        m1,
        &["service", "create", "agent", "--image", "img:1", "--mode", "global"],
    );
    let p = wait_for("one global task per active node", Duration::from_secs(20), || {
        let p = live_per_node(&c, m1, "agent");
        (p.len() == 2).then_some(p)
    });
    assert_eq!(p, BTreeMap::from([("m1".to_string(), 1), ("w2".to_string(), 1)]));
    c.ok(m1, &["service", "scale", "web=2"]);
    wait_for("scale down to 2", Duration::from_secs(20), || {
        (live_per_node(&c, m1, "web").values().sum::<usize>() == 2).then_some(())
    });
    c.ok(m1, &["service", "rm", "web", "pinned", "big", "agent"]);
    wait_for("every task removed", Duration::from_secs(20), || {
        let info = c.json(m1, &["cluster", "info", "--format", "json"]).ok()?;
        (info["tasks"] == 0).then_some(())
    });
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing() {
    let mut c = Cluster::new();
    let m1 = c.init("m1", &[]);
    c.ok(m1, &["service", "create", "web", "--image", "img:1", "--replicas", "2"]);
    c.ok(m1, &["volume", "create", "kept"]);
    let secret = c.dir.path().join("kept-secret");
    std::fs::write(&secret, "value").unwrap();
    c.ok(m1, &["secret", "create", "kept", secret.to_str().unwrap()]);
    // Everything bad input could change: services, nodes, secrets and volumes.
    let state = |c: &Cluster| -> Vec<Value> {
        ["service", "node", "secret", "volume"]
            .iter()
            .map(|what| c.json(m1, &[what, "ls", "--format", "json"]).unwrap())
            .collect()
    };
    let before = state(&c);

    let cases: &[(&[&str], &str)] = &[
        (&["service", "inspect", "nope"], "service \"nope\" not found"),
        (
            &["service", "create", "web", "--image", "x"],
            "service \"web\" already exists",
        ),
        (
            &["service", "create", "x1", "--image", "x", "--reserve-memory", "lots"],
            "--reserve-memory: invalid size",
        ),
        (
            &[
                "service",
                "create",
                "x2",
                "--image",
                "x",
                "--mode",
                "global",
                "--replicas",
                "2",
            ],
            "--replicas:",
        ),
        (
            &["service", "create", "x3", "--image", "x", "--publish", "8080"],
            "--publish: invalid port",
        ),
        (
            &["service", "create", "x4", "--image", "x", "--constraint", "zone=edge"],
            "--constraint: invalid constraint",
        ),
        (&["service", "create", "x5"], "--image: an image is required"),
        (&["service", "create", "bad name", "--image", "x"], "invalid name"),
        (&["service", "scale", "web=lots"], "not a number of replicas"),
        (&["service", "scale", "nope=3"], "service \"nope\" not found"),
        (
            &["service", "update", "web", "--limit-memory", "1k"],
            "--limit-memory: a memory limit must be at least 4MiB",
        ),
        (
            &["node", "update", "m1", "--availability", "sometimes"],
            "--availability: invalid availability",
        ),
        (&["node", "rm", "m1"], "answering this request"),
        (
            &["secret", "create", "s1", "/nonexistent/file"],
            "reading the secret from /nonexistent/file",
        ),
        (
            &["volume", "create", "v1", "--driver", "nfs"],
            "driver: unknown volume driver",
        ),
    ];
    for (args, expected) in cases {
        let err = c.fails(m1, args);
        assert!(
            err.contains(expected),
            "`warren {}`: expected {expected:?} in {err:?}",
            args.join(" ")
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "`warren {}` printed more than one line: {err}",
            args.join(" ")
        );
        assert!(err.starts_with("error: "), "{err}");
    }
    let after = state(&c);
    assert_eq!(before, after, "bad input changed the state");

    // Replicas 0 is a service without tasks.
    c.ok(
        m1,
        &["service", "create", "idle", "--image", "img:1", "--replicas", "0"],
    );
    let s = c.json(m1, &["service", "inspect", "idle", "--format", "json"]).unwrap();
    assert_eq!(s["replicas"]["desired"], 0);
    assert!(c.tasks(m1, "idle").is_empty());

    // init refuses a data dir that already holds a node, and points at `warren daemon`.
    let out = std::process::Command::new(warren_tests::cluster::warren_bin())
        .args([
            "cluster",
            "init",
            "--data-dir",
            &c.nodes[m1].data_dir.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warren daemon --data-dir"), "{err}");

    // Secrets: created from stdin, listed without their value, removable.
    let mut child = std::process::Command::new(warren_tests::cluster::warren_bin())
        .args([
            "-H",
            &format!("unix://{}", c.nodes[m1].socket.display()),
            "secret",
            "create",
            "db-pass",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"s3cr3t-value").unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let ls = c.ok(m1, &["secret", "ls", "--format", "json"]);
    assert!(ls.contains("db-pass") && !ls.contains("s3cr3t-value"));
    let raft_state = std::fs::read(c.nodes[m1].data_dir.join("raft/raft-state.redb")).unwrap();
    let raft_log = std::fs::read(c.nodes[m1].data_dir.join("raft/raft-log.redb")).unwrap();
    for (what, bytes) in [("state", &raft_state), ("log", &raft_log)] {
        assert!(
            !bytes.windows(12).any(|w| w == b"s3cr3t-value"),
            "the secret's plaintext is in the Raft {what}"
        );
    }
    c.ok(m1, &["secret", "rm", "db-pass"]);
    c.ok(m1, &["volume", "create", "data"]);
    assert!(c.ok(m1, &["volume", "ls"]).contains("data"));
    c.ok(m1, &["volume", "rm", "data"]);
}

#[test]
fn metrics_and_health_endpoints() {
    let mut c = Cluster::new();
    let m1 = c.init("m1", &[]);
    c.ok(m1, &["service", "create", "web", "--image", "img:1", "--replicas", "2"]);
    c.ok(m1, &["service", "ls"]);
    let addr = c.nodes[m1].metrics_addr.clone();
    let (status, body) = http_get(&addr, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    let body = wait_for("task gauges", Duration::from_secs(10), || {
        let (_, body) = http_get(&addr, "/metrics").ok()?;
        body.contains("warren_tasks{state=\"assigned\"} 2").then_some(body)
    });
    for needle in [
        "warren_raft_is_leader 1",
        "warren_raft_term ",
        "warren_raft_last_log_index ",
        "warren_raft_applied_index ",
        "warren_services 1",
        "warren_nodes{state=\"ready\"} 1",
        "warren_api_request_duration_seconds_bucket{code=\"Ok\",method=\"ListServices\"",
        "warren_node_reserved_ratio",
        "process_resident_memory_bytes",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in /metrics:\n{body}");
    }
    let (status, _) = http_get(&addr, "/nope").unwrap();
    assert_eq!(status, 404);
}

#[test]
fn events_aliases_completion_and_json_logs() {
    use std::io::BufRead;
    let mut c = Cluster::new();
    let m1 = c.init("m1", &["--log-format", "json"]);
    let bin = warren_tests::cluster::warren_bin();
    let host = format!("unix://{}", c.nodes[m1].socket.display());

    // 1. `warren events` streams committed changes.
    let mut events = std::process::Command::new(&bin)
        .args(["-H", &host, "events", "--kind", "service", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The stream is open once the subscription exists, which the client does not
    // announce: create services until one's event arrives.
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let line = wait_for("an event line from `warren events`", Duration::from_secs(20), || {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.ok(
            m1,
            &[
                "service",
                "create",
                &format!("watched{n}"),
                "--image",
                "img:1",
                "--replicas",
                "0",
            ],
        );
        rx.recv_timeout(Duration::from_millis(500)).ok()
    });
    let ev: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (ev["kind"].as_str(), ev["action"].as_str(), ev["name"].as_str()),
        (Some("service"), Some("created"), Some("watched0"))
    );
    assert!(ev["index"].as_u64().unwrap() > 0);
    let _ = events.kill();
    let _ = events.wait();

    // 2. `wrn` is the same program.
    let link = c.dir.path().join("wrn");
    std::os::unix::fs::symlink(&bin, &link).unwrap();
    let out = std::process::Command::new(&link).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("warren "),
        "{}",
        warren_tests::cluster::text(&out)
    );
    let out = std::process::Command::new(&link)
        .args(["-H", &host, "service", "ls", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", warren_tests::cluster::text(&out));
    let created = COUNTER.load(std::sync::atomic::Ordering::Relaxed) as usize;
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), created);

    // 3. Shell completion for both names.
    let out = std::process::Command::new(&bin)
        .args(["completion", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("complete -F _warren") && script.contains("_wrn"),
        "{script}"
    );

    // 4. JSON logs: every line the daemon wrote is a JSON object with a level.
    // (stderr; what `cluster init` prints for the user is on stdout.)
    let log = c.nodes[m1].log_text();
    let json_lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}")))
        .collect();
    assert!(json_lines.iter().all(|l| l["level"].is_string()), "{log}");
    assert!(
        json_lines
            .iter()
            .any(|l| l["message"] == "warren node is up" && l["level"] == "INFO"),
        "{log}"
    );
}
