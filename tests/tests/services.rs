//! End-to-end tests of how services are reached: the node's DNS, virtual IPs,
//! published ports, canaries and rate limits, on real containers; and what a node's
//! data plane shows (`node inspect`) and leaves behind (`cluster leave`).

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

fn vip_of(env: &Env, m: usize, service: &str) -> String {
    let s: Value = env
        .c
        .json(m, &["service", "inspect", service, "--format", "json"])
        .unwrap();
    s["vip"].as_str().expect("a VIP").to_string()
}

/// Hostnames of the running tasks of `service` (what the http image answers).
fn hostnames(env: &Env, m: usize, service: &str, canary: Option<bool>) -> BTreeSet<String> {
    env.c
        .tasks(m, service)
        .into_iter()
        .filter(|t| t["status"]["state"] == "Running" && t["desired_state"] == "Running")
        .filter(|t| canary.is_none_or(|c| t["canary"] == c))
        .map(|t| t["id"].as_str().unwrap()[..12].to_string())
        .collect()
}

/// Waits until every running task of `service` is healthy, so that all are backends.
fn wait_healthy(env: &Env, m: usize, service: &str, n: usize) {
    env.c.wait(
        &format!("{n} healthy tasks of {service}"),
        Duration::from_secs(60),
        || {
            let healthy = env
                .c
                .tasks(m, service)
                .into_iter()
                .filter(|t| t["status"]["state"] == "Running" && t["desired_state"] == "Running")
                .filter(|t| t["status"]["health"] == "healthy")
                .count();
            (healthy == n).then_some(())
        },
    );
}

#[test]
fn vips_and_published_ports_reach_every_backend_over_tcp_and_udp() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    let echo = env.image("warren-test/echo");
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "web",
            "--image",
            &http,
            "--replicas",
            "3",
            "--publish",
            "8080:80",
        ],
    );
    env.c
        .ok(m1, &["service", "create", "echo", "--image", &echo, "--replicas", "2"]);
    wait_healthy(&env, m1, "web", 3);
    let echo_tasks = env.running(m1, "echo", 2);
    let vip = vip_of(&env, m1, "web");
    let web_names = hostnames(&env, m1, "web", None);
    let ns = env.node_netns("m1");
    let cg = env.node_cgroup("m1");

    // 1. From the node (a process in the node's cgroup): VIP:80 reaches every backend.
    let r = env.c.wait("the VIP to answer", Duration::from_secs(20), || {
        let r = env.probe_run(
            &ns,
            Some(&cg),
            &["connect", "--to", &format!("{vip}:80"), "--n", "60", "--http"],
        );
        (r.error_count() == 0 && r.names.len() == 3).then_some(r)
    });
    assert_eq!(r.names.keys().cloned().collect::<BTreeSet<_>>(), web_names, "{r:?}");
    assert_eq!(
        r.values.get("peer_mismatch"),
        Some(&0),
        "getpeername must return the VIP"
    );

    // 2. From inside a container, the service name resolves to the VIP, and the VIP
    //    reaches every backend. (The image's static busybox wget cannot use glibc's
    //    resolver, so the name is looked up with nslookup, busybox's own client.)
    let client = echo_tasks[0]["id"].as_str().unwrap().to_string();
    assert_eq!(lookup(&env, "m1", &client, "web"), BTreeSet::from([vip.clone()]));
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let out = env.exec_in(
            "m1",
            &client,
            &["/bin/busybox", "wget", "-q", "-O", "-", &format!("http://{vip}/")],
        );
        assert!(
            out.status.success(),
            "wget in a container: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    assert_eq!(seen, web_names, "from a container through the VIP");

    // 3. UDP through the VIP, both ways: every reply comes from the VIP.
    //    A socket keeps its backend; new sockets are spread.
    let evip = vip_of(&env, m1, "echo");
    let mut udp_names = BTreeSet::new();
    for _ in 0..20 {
        let r = env.probe_run(&ns, Some(&cg), &["udp", "--to", &format!("{evip}:7"), "--n", "3"]);
        assert_eq!(r.error_count(), 0, "{r:?}");
        assert_eq!(r.names.len(), 1, "one socket, one backend: {r:?}");
        assert_eq!(
            r.from.keys().cloned().collect::<Vec<_>>(),
            vec![format!("{evip}:7")],
            "{r:?}"
        );
        udp_names.extend(r.names.keys().cloned());
    }
    assert_eq!(udp_names.len(), 2, "both UDP backends answer: {udp_names:?}");

    // 4. A client in its own namespace, linked to the node by the lab's network, reaches
    //    node-address:published-port; the reply comes from the node address.
    let (client_ns, _) = env.lab.node();
    let node_ip = env.c.nodes[m1].addr.split(':').next().unwrap().to_string();
    let r = env.probe_run(
        &client_ns,
        None,
        &["connect", "--to", &format!("{node_ip}:8080"), "--n", "60", "--http"],
    );
    assert_eq!(r.error_count(), 0, "{r:?}");
    assert_eq!(r.names.keys().cloned().collect::<BTreeSet<_>>(), web_names);
    assert_eq!(
        r.values.get("peer_mismatch"),
        Some(&0),
        "replies come from the node address"
    );

    // 5. Nothing of this is in iptables or nftables; the maps print their fields.
    for (cmd, args) in [("iptables-save", vec![]), ("nft", vec!["list", "ruleset"])] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, cmd])
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", warren_tests::cluster::text(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains(&vip) && !text.contains("8080"),
            "{cmd} mentions a service:\n{text}"
        );
    }
    let pins = env.c.nodes[m1].log_text();
    assert!(pins.contains("eBPF data plane attached"), "{pins}");
    let bpffs = env.pins_dir("m1");
    let dump = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned", &format!("{}/warren_svc_v1", bpffs.display())])
        .output()
        .expect("bpftool (Debian package bpftool)");
    assert!(
        dump.status.success(),
        "bpftool map dump: {}",
        warren_tests::cluster::text(&dump)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("\"key\"") && dump.contains("\"value\""), "{dump}");
}

#[test]
fn canary_weights_shift_new_connections_and_promote_or_roll_back() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let v1 = env.image("warren-test/http");
    let v2 = format!("{}/warren-test/http:2", env.registry);
    env.c
        .ok(m1, &["service", "create", "web", "--image", &v1, "--replicas", "4"]);
    wait_healthy(&env, m1, "web", 4);
    let vip = vip_of(&env, m1, "web");
    let (ns, cg) = (env.node_netns("m1"), env.node_cgroup("m1"));
    let share = |n: u64| {
        let canary = hostnames(&env, m1, "web", Some(true));
        let r = env.probe_run(
            &ns,
            Some(&cg),
            &["connect", "--to", &format!("{vip}:80"), "--n", &n.to_string(), "--http"],
        );
        assert_eq!(r.error_count(), 0, "{r:?}");
        let c: u64 = r
            .names
            .iter()
            .filter(|(k, _)| canary.contains(*k))
            .map(|(_, v)| v)
            .sum();
        (c as f64 / r.answers() as f64 * 100.0, r)
    };

    // 1. Weight 20: 20 ± 3% of 2,000 new connections go to the canary.
    env.c.ok(
        m1,
        &["service", "update", "web", "--image", &v2, "--canary-weight", "20"],
    );
    wait_healthy(&env, m1, "web", 5);
    let s: Value = env
        .c
        .json(m1, &["service", "inspect", "web", "--format", "json"])
        .unwrap();
    assert_eq!(s["canary"]["weight"], 20);
    assert_eq!(s["canary"]["spec"]["image"], v2.as_str());
    // The canary backend is in the data plane once it gets new connections at all.
    env.c
        .wait("the canary's weight in the data plane", Duration::from_secs(20), || {
            let (pct, _) = share(200);
            (pct > 5.0).then_some(())
        });
    let (pct, _) = share(2000);
    assert!((17.0..=23.0).contains(&pct), "weight 20 gave {pct:.1}%");

    // 2. Weight 50: 50 ± 4%.
    env.c.ok(m1, &["service", "update", "web", "--canary-weight", "50"]);
    wait_healthy(&env, m1, "web", 6);
    env.c
        .wait("the new weight in the data plane", Duration::from_secs(10), || {
            let (pct, _) = share(200);
            (pct > 35.0).then_some(())
        });
    let (pct, _) = share(2000);
    assert!((46.0..=54.0).contains(&pct), "weight 50 gave {pct:.1}%");

    // 3. Rollback: no canary connection and no canary task.
    env.c.ok(m1, &["service", "rollback", "web"]);
    env.c.wait("the canary tasks to go", Duration::from_secs(60), || {
        let live = env
            .c
            .tasks(m1, "web")
            .into_iter()
            .filter(|t| t["canary"] == true && t["desired_state"] == "Running")
            .count();
        (live == 0).then_some(())
    });
    let (_, r) = share(300);
    let stable = hostnames(&env, m1, "web", Some(false));
    assert!(r.names.keys().all(|k| stable.contains(k)), "{r:?} vs {stable:?}");

    // 4. A canary again, then promote: every task runs the new image.
    env.c.ok(
        m1,
        &["service", "update", "web", "--image", &v2, "--canary-weight", "10"],
    );
    wait_healthy(&env, m1, "web", 5);
    env.c.ok(m1, &["service", "promote", "web"]);
    env.c.wait("every task on the new image", Duration::from_secs(90), || {
        let live: Vec<Value> = env
            .c
            .tasks(m1, "web")
            .into_iter()
            .filter(|t| t["desired_state"] == "Running")
            .collect();
        (live.len() == 4
            && live.iter().all(|t| {
                t["spec"]["image"] == v2.as_str() && t["status"]["state"] == "Running" && t["canary"] == false
            }))
        .then_some(())
    });
}

#[test]
fn rate_limits_unhealthy_backends_and_a_daemon_restart_under_load() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    let (ns, cg) = (env.node_netns("m1"), env.node_cgroup("m1"));

    // 1. Rate limit 50/s, burst 50: ~500 new connections/s for 5 s from one client are
    //    cut to about 50 + 50 * 5; the rest are counted as rate-limited; a second
    //    client meanwhile is not limited.
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "rl",
            "--image",
            &http,
            "--replicas",
            "2",
            "--rate-limit",
            "50/s",
            "--rate-burst",
            "50",
        ],
    );
    wait_healthy(&env, m1, "rl", 2);
    let vip = vip_of(&env, m1, "rl");
    let other = env.running(m1, "rl", 2)[0]["id"].as_str().unwrap().to_string();
    let flood = env.probe(
        &ns,
        Some(&cg),
        &[
            "connect",
            "--to",
            &format!("{vip}:80"),
            "--rate",
            "500",
            "--secs",
            "5",
            "--http",
        ],
    );
    let flood = std::thread::spawn(move || {
        let mut flood = flood;
        flood.output().expect("flood client")
    });
    let mut second_ok = 0;
    for _ in 0..20 {
        let out = env.exec_in(
            "m1",
            &other,
            &["/bin/busybox", "wget", "-q", "-O", "-", &format!("http://{vip}/")],
        );
        second_ok += usize::from(out.status.success());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = flood.join().unwrap();
    let r = warren_tests::dataplane::Report::parse(&String::from_utf8_lossy(&out.stdout));
    let elapsed = *r.values.get("elapsed_ms").unwrap() as f64 / 1000.0;
    let expected = 50.0 + 50.0 * elapsed;
    let accepted = r.answers() as f64;
    assert!(
        (accepted - expected).abs() <= expected * 0.1,
        "accepted {accepted}, expected {expected:.0} ± 10%: {r:?}"
    );
    assert!(
        r.errors.get("ECONNREFUSED").copied().unwrap_or(0) > 1000,
        "over-limit connects are refused: {r:?}"
    );
    assert_eq!(second_ok, 20, "the second client must not be limited");
    let metrics = env.metrics("m1");
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("warren_dataplane_drops_total") && l.contains("rate_limited"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        dropped >= r.errors.get("ECONNREFUSED").copied().unwrap_or(0) as f64,
        "rate-limited connects counted in metrics: {dropped}, refused {r:?}"
    );

    // 2. A backend made unhealthy gets no new connections after one probe interval.
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "hc",
            "--image",
            &http,
            "--replicas",
            "2",
            "--health-cmd",
            "test ! -e /tmp/sick",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "--health-timeout",
            "1s",
            "--restart-delay",
            "30s",
        ],
    );
    wait_healthy(&env, m1, "hc", 2);
    let hvip = vip_of(&env, m1, "hc");
    let tasks = env.running(m1, "hc", 2);
    let sick = tasks[0]["id"].as_str().unwrap().to_string();
    let backends = |env: &Env| -> u64 {
        let j = env
            .c
            .json(m1, &["node", "inspect", "self", "--format", "json"])
            .unwrap();
        j["dataplane"]["backends"].as_u64().expect("a backend count")
    };
    // rl's two backends and hc's two.
    env.c
        .wait("hc's backends in the data plane", Duration::from_secs(20), || {
            (backends(&env) == 4).then_some(())
        });
    let out = env.exec_in("m1", &sick, &["/bin/busybox", "touch", "/tmp/sick"]);
    assert!(
        out.status.success(),
        "touch /tmp/sick: {}",
        warren_tests::cluster::text(&out)
    );
    // Reported unhealthy, then out of the node's data plane.
    env.c.wait(
        "the sick task to be reported unhealthy",
        Duration::from_secs(20),
        || {
            env.c
                .tasks(m1, "hc")
                .iter()
                .any(|t| t["id"] == sick.as_str() && t["status"]["health"] == "unhealthy")
                .then_some(())
        },
    );
    env.c.wait(
        "the sick backend to leave the data plane",
        Duration::from_secs(20),
        || (backends(&env) == 3).then_some(()),
    );
    let r = env.probe_run(
        &ns,
        Some(&cg),
        &["connect", "--to", &format!("{hvip}:80"), "--n", "100", "--http"],
    );
    assert!(
        !r.names.contains_key(&sick[..12]),
        "the unhealthy backend still got connections: {r:?}"
    );
    assert_eq!(r.error_count(), 0, "{r:?}");

    // 3. kill -9 of the daemon and a restart: a client connecting to the VIP the whole
    //    time sees no failure.
    let stop = env.c.dir.path().join("stop-loop");
    // Killed on drop: a failing assertion below must not leave it looping.
    let client = warren_tests::env::ChildGuard::spawn(
        env.probe(
            &ns,
            Some(&cg),
            &[
                "loop",
                "--to",
                &format!("{hvip}:80"),
                "--stop-file",
                stop.to_str().unwrap(),
                "--http",
            ],
        )
        .stdout(std::process::Stdio::piped()),
    );
    std::thread::sleep(Duration::from_secs(1));
    env.c.nodes[m1].kill9();
    std::thread::sleep(Duration::from_secs(1));
    env.c.restart(m1);
    env.c.wait_api(m1);
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").unwrap();
    let out = client.wait_with_output();
    let r = warren_tests::dataplane::Report::parse(&String::from_utf8_lossy(&out.stdout));
    assert!(r.answers() > 50, "{r:?}");
    assert_eq!(
        r.error_count(),
        0,
        "connections failed while the daemon restarted: {r:?}"
    );
}

#[test]
fn node_inspect_shows_the_data_plane_and_leave_removes_everything() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    let (ns, cg, pins) = (env.node_netns("m1"), env.node_cgroup("m1"), env.pins_dir("m1"));
    let node_id = env.c.json(m1, &["cluster", "info", "--format", "json"]).unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_string();

    // 1. A service with a published port, so that every part of the node is in use.
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
            "--publish",
            "8080:80",
        ],
    );
    env.running(m1, "web", 2);

    // 2. `node inspect` shows the attached programs and the map fill, asked of the node.
    let text = env
        .c
        .wait("the data plane to hold both backends", Duration::from_secs(10), || {
            let t = env.c.ok(m1, &["node", "inspect", "self"]);
            t.contains("Data plane:   eBPF, 1 services, 2 backends").then_some(t)
        });
    for p in [
        "warren_connect4",
        "warren_sendmsg4",
        "warren_recvmsg4",
        "warren_getpeer4",
        "warren_tc_in",
        "warren_tc_out",
        "warren_svc_v1",
        "warren_be_v1",
    ] {
        assert!(text.contains(p), "{p} is missing from node inspect:\n{text}");
    }
    let j = env.c.json(m1, &["node", "inspect", "m1", "--format", "json"]).unwrap();
    let dp = &j["dataplane"];
    assert_eq!(dp["enabled"], true, "{j}");
    assert_eq!(dp["programs"].as_array().unwrap().len(), 13, "{dp}");
    let svc = dp["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "warren_svc_v1")
        .unwrap();
    assert!(
        svc["entries"].as_u64().unwrap() > 0 && svc["capacity"].as_u64().unwrap() >= 1024,
        "{svc}"
    );

    // The programs attached for this node, to find them gone after the leave.
    let attached = env.attached_programs("m1");
    let names: BTreeSet<&str> = attached.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "warren_connect4",
            "warren_sendmsg4",
            "warren_recvmsg4",
            "warren_getpeer4",
            "warren_post_bind4",
            "warren_connect6",
            "warren_sendmsg6",
            "warren_recvmsg6",
            "warren_getpeer6",
            "warren_post_bind6",
            "warren_sockops",
            "warren_tc_in",
            "warren_tc_out"
        ]),
        "{attached:?}"
    );

    // 3. A manager does not leave without --force, and nothing changes.
    let data_dir = env.c.nodes[m1].data_dir.clone();
    let leave = |force: bool| {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(warren_tests::cluster::warren_bin())
            .args(["cluster", "leave", "--data-dir"])
            .arg(&data_dir);
        if force {
            cmd.arg("--force");
        }
        cmd.output().expect("running warren cluster leave")
    };
    let out = leave(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is a manager") && err.contains("--force"),
        "{err}"
    );
    env.c.ok(m1, &["cluster", "info"]);
    assert!(pins.exists() && data_dir.exists());

    // 4. `cluster leave --force` stops the daemon and removes everything the node left.
    let out = leave(true);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("Removed 2 container(s)."), "{said}");
    assert!(!env.c.nodes[m1].is_running(), "the daemon still runs");
    assert!(
        env.containers("m1").is_empty(),
        "containers left: {:?}",
        env.containers("m1")
    );
    assert!(!pins.exists(), "{} is still there", pins.display());
    // Every program the node had attached is unloaded (the kernel frees it once
    // no link, pin or process holds it).
    for (name, id) in &attached {
        env.c.wait(
            &format!("{name} (id {id}) to be unloaded"),
            Duration::from_secs(10),
            || {
                let e = env.bpftool("m1", &["prog", "show", "id", &id.to_string()]).err()?;
                assert!(
                    e.contains("No such file or directory"),
                    "bpftool prog show id {id}: {e}"
                );
                Some(())
            },
        );
    }
    let links = std::process::Command::new("ip")
        .args(["-n", &ns, "-o", "link", "show"])
        .output()
        .expect("ip (Debian package iproute2)");
    assert!(
        links.status.success(),
        "ip -o link: {}",
        warren_tests::cluster::text(&links)
    );
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains("eth0"), "{links}");
    assert!(!links.contains("warren0"), "the bridge is still there:\n{links}");
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&node_id))
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "task namespaces left: {left:?}");
    assert!(!data_dir.exists(), "{} is still there", data_dir.display());
    // The node's cgroup parent (here also its data plane's cgroup root) is gone.
    assert!(!cg.exists(), "{} is still there", cg.display());
}
