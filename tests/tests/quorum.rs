//! Reads and writes around the quorum (issue 16, item 2): reads are linearizable
//! through any manager; with a majority of managers gone, reads still answer from
//! the survivor's state, marked stale, and writes fail at once naming the missing
//! quorum. Real `warren` processes on loopback.

use serde_json::Value;
use std::time::{Duration, Instant};
use warren_tests::cluster::{text, Cluster};

fn create(c: &Cluster, via: usize, name: &str) -> std::process::Output {
    c.cli(via, &["service", "create", name, "--image", "img:1", "--replicas", "0"])
}

/// `service ls --format json` on `i`: the names, and whether every entry is
/// marked stale, and standard error.
fn ls(c: &Cluster, i: usize) -> (Vec<String>, bool, String) {
    let out = c.cli(i, &["service", "ls", "--format", "json"]);
    assert!(out.status.success(), "service ls failed: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let items = v.as_array().cloned().unwrap_or_default();
    let names = items
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let stale = !items.is_empty() && items.iter().all(|s| s["stale"] == true);
    (names, stale, String::from_utf8_lossy(&out.stderr).to_string())
}

/// With the majority gone, `survivor` answers reads (stale) and refuses writes at
/// once, naming the quorum.
fn check_minority(c: &Cluster, survivor: usize, expected: &[&str]) {
    let (names, _, _) = c.wait("the survivor to mark its reads stale", Duration::from_secs(20), || {
        let r = ls(c, survivor);
        r.1.then_some(r)
    });
    for e in expected {
        assert!(names.iter().any(|n| n == e), "stale read lost {e}: {names:?}");
    }
    let (_, _, stderr) = ls(c, survivor);
    assert!(stderr.contains("may be stale"), "no stale note on stderr: {stderr}");
    let human = c.cli(survivor, &["service", "ls"]);
    assert!(human.status.success(), "{}", text(&human));
    assert!(
        String::from_utf8_lossy(&human.stderr).contains("stale"),
        "{}",
        text(&human)
    );

    // Once the survivor has noticed (no leader, or no acknowledgement from a
    // majority, for 1.5 s), every write is refused at once.
    c.wait("the survivor to refuse writes", Duration::from_secs(20), || {
        let out = create(c, survivor, "probe");
        assert!(
            !out.status.success(),
            "a write without quorum succeeded: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stderr).contains("no quorum").then_some(())
    });
    let started = Instant::now();
    let out = create(c, survivor, "in-minority");
    let took = started.elapsed();
    assert!(
        !out.status.success(),
        "a write without quorum succeeded: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no quorum") && err.contains("of the 3 managers"), "{err}");
    assert!(took < Duration::from_secs(2), "the refused write took {took:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
}

#[test]
fn reads_are_linearizable_and_a_minority_answers_stale_and_refuses_writes() {
    let mut c = Cluster::new();
    let m1 = c.init("q1", &[]);
    let token = c.token(m1, "manager");
    let m2 = c.join("q2", &token, m1, &[]);
    let m3 = c.join("q3", &token, m1, &[]);
    let all = [m1, m2, m3];

    // 1. A write through one manager is seen at once by a read through another.
    for i in 0..10 {
        let (w, r) = (all[i % 3], all[(i + 1) % 3]);
        let name = format!("lin-{i}");
        let out = create(&c, w, &name);
        assert!(out.status.success(), "{}", text(&out));
        let read = c.cli(r, &["service", "inspect", &name, "--format", "json"]);
        assert!(
            read.status.success(),
            "read after write through another manager: {}",
            text(&read)
        );
        assert!(!String::from_utf8_lossy(&read.stdout).contains("\"stale\""));
    }
    let (_, stale, stderr) = ls(&c, m2);
    assert!(
        !stale && !stderr.contains("stale"),
        "a healthy cluster marked stale: {stderr}"
    );

    // 2. Both followers killed: the leader is alone.
    let leader = c.leader();
    let followers: Vec<usize> = all.into_iter().filter(|i| *i != leader).collect();
    for f in &followers {
        c.nodes[*f].kill9();
    }
    check_minority(&c, leader, &["lin-0", "lin-9"]);

    // 3. Back to a majority: reads are current again and writes succeed.
    for f in &followers {
        c.restart(*f);
    }
    for f in &followers {
        c.wait_api(*f);
    }
    c.wait("a write with the majority back", Duration::from_secs(30), || {
        create(&c, followers[0], "after-heal").status.success().then_some(())
    });
    c.wait("current reads again", Duration::from_secs(20), || {
        let (names, stale, _) = ls(&c, leader);
        (!stale && names.iter().any(|n| n == "after-heal")).then_some(())
    });

    // 4. The leader and one follower killed: a follower is alone, without a leader.
    let leader = c.leader();
    let survivor = all.into_iter().find(|i| *i != leader).unwrap();
    for i in all {
        if i != survivor {
            c.nodes[i].kill9();
        }
    }
    check_minority(&c, survivor, &["lin-0", "after-heal"]);
}
