//! End-to-end tests of how services are reached: the node's DNS, virtual IPs,
//! published ports, canaries and rate limits, on real containers.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use warren_tests::env::Env;

/// `nslookup NAME` in a container, with the container's own resolver settings.
fn lookup(env: &Env, node: &str, task: &str, name: &str) -> BTreeSet<String> {
    let out = env.exec_in(node, task, &["/bin/busybox", "nslookup", name]);
    let text = String::from_utf8_lossy(&out.stdout);
    // busybox prints the server first, then "Address: a.b.c.d" per answer.
    text.split("Name:")
        .skip(1)
        .flat_map(|block| {
            block
                .lines()
                .filter_map(|l| l.strip_prefix("Address:"))
                .map(|a| a.trim().to_string())
        })
        .collect()
}

#[test]
fn service_names_resolve_in_containers_and_follow_the_tasks() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");

    // 1. A VIP service and a DNS round-robin one.
    env.c
        .ok(m1, &["service", "create", "web", "--image", &http, "--replicas", "2"]);
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "db",
            "--image",
            &http,
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
        ],
    );
    let web = env.running(m1, "web", 2);
    let db = env.running(m1, "db", 2);
    let svc: Value = env
        .c
        .json(m1, &["service", "inspect", "web", "--format", "json"])
        .unwrap();
    let vip = svc["vip"].as_str().expect("a VIP").to_string();
    assert!(vip.starts_with("10.96."), "{vip}");
    let dnsrr: Value = env
        .c
        .json(m1, &["service", "inspect", "db", "--format", "json"])
        .unwrap();
    assert!(dnsrr["vip"].is_null(), "{dnsrr}");
    let client = web[0]["id"].as_str().unwrap().to_string();
    let addrs = |tasks: &[Value]| -> BTreeSet<String> {
        tasks
            .iter()
            .map(|t| t["status"]["addr"].as_str().unwrap().to_string())
            .collect()
    };

    // 2. NAME, tasks.NAME, NAME.SLOT, with and without the search domain.
    let got = env.c.wait("web to resolve", Duration::from_secs(20), || {
        let got = lookup(&env, "m1", &client, "web");
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(got, BTreeSet::from([vip.clone()]));
    assert_eq!(lookup(&env, "m1", &client, "web.warren"), BTreeSet::from([vip.clone()]));
    // Tasks are listed once healthy (the image has a HEALTHCHECK).
    env.c.wait("tasks.web to list both tasks", Duration::from_secs(20), || {
        (lookup(&env, "m1", &client, "tasks.web") == addrs(&web)).then_some(())
    });
    env.c.wait("db to list both tasks", Duration::from_secs(20), || {
        (lookup(&env, "m1", &client, "db") == addrs(&db)).then_some(())
    });
    let slot1 = web.iter().find(|t| t["slot"] == 1).unwrap()["status"]["addr"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lookup(&env, "m1", &client, "web.1"), BTreeSet::from([slot1]));

    // 3. Answers follow the tasks.
    env.c.ok(m1, &["service", "scale", "db=3"]);
    let db3 = env.running(m1, "db", 3);
    env.c.wait("the third db task in DNS", Duration::from_secs(20), || {
        (lookup(&env, "m1", &client, "db") == addrs(&db3)).then_some(())
    });
}
