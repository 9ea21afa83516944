//! Node certificates end to end: a short cluster-wide lifetime, renewal at two
//! thirds of it on every node while writes and agent sessions carry on, the expiry
//! in `node inspect`, and a removed node losing its session and getting no renewal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warren::pki::Validity;
use warren_tests::cluster::{wait_for, Cluster};

fn validity(c: &Cluster, i: usize) -> Validity {
    let pem = std::fs::read_to_string(c.nodes[i].data_dir.join("certs/node.pem")).unwrap();
    Validity::of_pem(&pem).unwrap()
}

fn sessions_established(log: &str) -> usize {
    log.matches("agent session established").count()
}

#[test]
fn certificates_are_renewed_under_writes_without_dropping_sessions_and_a_removed_node_gets_none() {
    let mut c = Cluster::new();
    // 1. Two managers (so that every write crosses Raft over TLS) and a worker,
    //    with 6 s certificates: each node renews about every 4 s.
    let m1 = c.init("m1", &["--cert-expiry", "6s"]);
    let mtoken = c.token(m1, "manager");
    let m2 = c.join("m2", &mtoken, m1, &[]);
    let wtoken = c.token(m1, "worker");
    let w1 = c.join("w1", &wtoken, m1, &[]);
    let info = c.json(m1, &["cluster", "info", "--format", "json"]).unwrap();
    assert_eq!(info["cert_expiry_ms"], 6000, "{info}");

    // 2. Bad lifetimes are refused naming the flag, and change nothing.
    for bad in ["1s", "10y"] {
        let err = c.fails(m1, &["cluster", "update", "--cert-expiry", bad]);
        assert!(err.contains("--cert-expiry") && err.contains("out of range"), "{err}");
    }
    let info = c.json(m1, &["cluster", "info", "--format", "json"]).unwrap();
    assert_eq!(info["cert_expiry_ms"], 6000, "{info}");

    // 3. Writes run all along: through the local socket, and through the cluster
    //    port with m2's own (renewed) certificate, a new TLS handshake each time.
    let sessions_before = sessions_established(&c.nodes[m1].log_text());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let writer = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let bin = warren_tests::cluster::warren_bin();
        let socket = c.nodes[m1].socket.clone();
        let tcp = format!("tcp://{}", c.nodes[m1].addr);
        let tls_dir = c.nodes[m2].data_dir.join("certs");
        std::thread::spawn(move || {
            let mut errors = vec![];
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("s{i}");
                let host = match i % 2 {
                    0 => format!("unix://{}", socket.display()),
                    _ => tcp.clone(),
                };
                for args in [
                    vec!["service", "create", &name, "--image", "img:1", "--replicas", "0"],
                    vec!["service", "update", &name, "--replicas", "1", "--detach"],
                ] {
                    let out = std::process::Command::new(&bin)
                        .args(["-H", &host, "--tls-dir", tls_dir.to_str().unwrap()])
                        .args(&args)
                        .output()
                        .unwrap();
                    match out.status.success() {
                        true => ok.fetch_add(1, Ordering::SeqCst),
                        false => {
                            errors.push(String::from_utf8_lossy(&out.stderr).to_string());
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
                i += 1;
            }
            errors
        })
    };

    // 4. Every node's certificate changes at least twice (new serial, later
    //    expiry), while every node stays Ready.
    let nodes = [m1, m2, w1];
    let mut seen: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut not_ready = vec![];
    wait_for("three certificates on every node", Duration::from_secs(25), || {
        for &i in &nodes {
            let v = validity(&c, i);
            assert!(v.not_after_ms - v.not_before_ms <= 7_000, "{v:?}");
            seen.entry(i).or_default().insert(v.serial);
        }
        if let Ok(ls) = c.json(m1, &["node", "ls", "--format", "json"]) {
            for n in ls.as_array().unwrap() {
                if n["state"] != "Ready" {
                    not_ready.push(n.to_string());
                }
            }
        }
        seen.values().all(|s| s.len() >= 3).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let errors = writer.join().unwrap();
    assert!(not_ready.is_empty(), "a node left Ready: {not_ready:?}");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed writes: {errors:?}");
    assert!(ok.load(Ordering::SeqCst) >= 4, "too few writes");
    // No agent session ended or was opened again.
    let m1_log = c.nodes[m1].log_text();
    assert_eq!(
        sessions_established(&m1_log),
        sessions_before,
        "a session was re-established"
    );
    assert!(!m1_log.contains("session ended"), "a session ended");
    assert!(c.nodes[w1].log_text().contains("node certificate renewed"));

    // 5. `node inspect` shows the expiry of the certificate in use.
    let v = validity(&c, w1);
    let n = c.json(m1, &["node", "inspect", "w1", "--format", "json"]).unwrap();
    let recorded = n["cert_expires_ms"].as_i64().unwrap();
    assert!(recorded >= v.not_after_ms - 7_000 && recorded > 0, "{n}");
    let text = c.ok(m1, &["node", "inspect", "w1"]);
    assert!(text.contains("Certificate:  expires"), "{text}");

    // 6. Removed, the worker is refused and gets no further certificate: its next
    //    renewal fails naming the removal, and its certificate stays the last one.
    let m1_mark = c.nodes[m1].log_mark();
    c.ok(m1, &["node", "rm", "--force", "w1"]);
    let mark = c.nodes[w1].log_mark();
    // Its open agent session is ended by the dispatcher, too.
    wait_for("the removed node's session to end", Duration::from_secs(10), || {
        c.nodes[m1]
            .log_since(m1_mark)
            .lines()
            .any(|l| l.contains("session ended") && l.contains("was removed from the cluster"))
            .then_some(())
    });
    let last = wait_for(
        "the removed node's renewal to be refused",
        Duration::from_secs(15),
        || {
            let log = c.nodes[w1].log_since(mark);
            let refused = log
                .lines()
                .any(|l| l.contains("node certificate renewal failed") && l.contains("was removed from the cluster"));
            refused.then(|| validity(&c, w1).serial)
        },
    );
    let mark = c.nodes[w1].log_mark();
    wait_for("a second refusal", Duration::from_secs(15), || {
        c.nodes[w1]
            .log_since(mark)
            .contains("node certificate renewal failed")
            .then_some(())
    });
    assert!(!c.nodes[w1].log_since(mark).contains("node certificate renewed"));
    assert_eq!(validity(&c, w1).serial, last);
    c.nodes[w1].kill9();
}
