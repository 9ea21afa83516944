//! End-to-end tests of the rules the state machine decides, with real `warren`
//! processes: a published port belongs to one service, whether the second service
//! comes through the same manager or through another one at the same moment, and a
//! refused port leaves the node's data plane serving every other service. And the
//! CLI's every printing path, when nobody reads its output any more.

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;
use warren_tests::cluster::{text, wait_for, warren_bin, Cluster};
use warren_tests::env::Env;

fn taken(port: u16, service: &str) -> String {
    format!("error: --publish: port {port}/tcp is already published by service \"{service}\"\n")
}

/// `warren ARGS` against node `i`, not waited for.
fn spawn_cli(c: &Cluster, i: usize, args: &[&str]) -> std::process::Child {
    Command::new(warren_bin())
        .arg("-H")
        .arg(format!("unix://{}", c.nodes[i].socket.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the warren CLI")
}

/// The services and their published ports, as a manager sees them.
fn ports(c: &Cluster, i: usize) -> Vec<(String, Vec<Value>)> {
    c.json(i, &["service", "ls", "--format", "json"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ports = s["spec"]["ports"].as_array().cloned().unwrap_or_default();
            (s["name"].as_str().unwrap().to_string(), ports)
        })
        .collect()
}

#[test]
fn a_published_port_belongs_to_one_service_through_any_manager() {
    let mut c = Cluster::new();
    let m1 = c.init("m1", &[]);
    let token = c.token(m1, "manager");
    let m2 = c.join("m2", &token, m1, &[]);
    c.ok(
        m1,
        &["service", "create", "web", "--image", "img:1", "--publish", "8080:80"],
    );
    c.ok(
        m1,
        &["service", "create", "api", "--image", "img:1", "--publish", "8081:80"],
    );
    let before = c.json(m1, &["service", "ls", "--format", "json"]).unwrap();

    // 1. A second service on 8080/tcp is refused through either manager, in either
    //    mode, on create and on update, with one line naming the flag and the
    //    holder; nothing changes.
    for (via, args) in [
        (
            m1,
            &["service", "create", "dup", "--image", "img:1", "--publish", "8080:81"][..],
        ),
        (
            m2,
            &["service", "create", "dup", "--image", "img:1", "--publish", "8080:81"],
        ),
        (
            m1,
            &[
                "service",
                "create",
                "dup",
                "--image",
                "img:1",
                "--publish",
                "mode=host,8080:80",
            ],
        ),
        (m2, &["service", "update", "api", "--publish", "8080:80"]),
    ] {
        let err = c.fails(via, args);
        assert_eq!(err, taken(8080, "web"), "`warren {}`", args.join(" "));
    }
    let after = c.json(m1, &["service", "ls", "--format", "json"]).unwrap();
    assert_eq!(before, after, "a refused port changed the state");

    // 2. 8080/udp is another port; a service keeps its own ports through an
    //    update, a scale and a rollback.
    c.ok(
        m2,
        &[
            "service",
            "create",
            "dns",
            "--image",
            "img:1",
            "--publish",
            "8080:53/udp",
        ],
    );
    c.ok(
        m1,
        &[
            "service",
            "update",
            "web",
            "--detach",
            "--image",
            "img:2",
            "--publish",
            "8080:8000",
        ],
    );
    c.ok(m2, &["service", "scale", "web=3"]);
    c.ok(m1, &["service", "rollback", "--detach", "web"]);
    c.ok(
        m2,
        &["service", "update", "web", "--image", "img:3", "--canary-weight", "20"],
    );
    c.ok(m1, &["service", "promote", "web"]);

    // 3. Two creates of one port, through two managers at the same moment: exactly
    //    one succeeds, the other gets the same line naming the winner, and both
    //    managers agree on who holds the port.
    for round in 0..5u16 {
        let port = 9000 + round;
        let publish = format!("{port}:80");
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let first = spawn_cli(
            &c,
            m1,
            &["service", "create", &a, "--image", "img:1", "--publish", &publish],
        );
        let second = spawn_cli(
            &c,
            m2,
            &["service", "create", &b, "--image", "img:1", "--publish", &publish],
        );
        let outs = [first.wait_with_output().unwrap(), second.wait_with_output().unwrap()];
        let won: Vec<usize> = (0..2).filter(|&k| outs[k].status.success()).collect();
        assert_eq!(won.len(), 1, "round {round}: {}\n{}", text(&outs[0]), text(&outs[1]));
        let (winner, loser) = if won[0] == 0 { (&a, 1) } else { (&b, 0) };
        assert_eq!(
            String::from_utf8_lossy(&outs[loser].stderr),
            taken(port, winner),
            "round {round}"
        );
        for m in [m1, m2] {
            wait_for(
                &format!("{} to list {winner} alone on {port}", c.nodes[m].name),
                Duration::from_secs(10),
                || {
                    let holders: Vec<String> = ports(&c, m)
                        .into_iter()
                        .filter(|(_, p)| p.iter().any(|p| p["published"] == port))
                        .map(|(name, _)| name)
                        .collect();
                    (holders == [winner.clone()]).then_some(())
                },
            );
        }
    }

    // 4. Removing the holder frees the port.
    c.ok(m2, &["service", "rm", "web"]);
    c.ok(
        m1,
        &["service", "create", "dup", "--image", "img:1", "--publish", "8080:81"],
    );
}

/// Runs `warren ARGS` with its standard output a pipe that nobody reads.
fn closed_stdout(c: &Cluster, i: usize, args: &[&str]) -> std::process::Child {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Command::new(warren_bin())
        .arg("-H")
        .arg(format!("unix://{}", c.nodes[i].socket.display()))
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the warren CLI")
}

#[test]
fn output_to_a_closed_pipe_ends_quietly_with_status_zero() {
    let mut c = Cluster::new();
    let m1 = c.init("m1", &[]);
    std::fs::write(c.dir.path().join("secret"), "s3cret").unwrap();
    let secret = c.dir.path().join("secret").display().to_string();
    c.ok(m1, &["secret", "create", "pass", &secret]);
    c.ok(m1, &["volume", "create", "data"]);
    c.ok(
        m1,
        &[
            "service",
            "create",
            "demo",
            "--image",
            "img:1",
            "--replicas",
            "3",
            "--publish",
            "8080:80",
        ],
    );
    let task = wait_for(
        "the orchestrator to create demo's tasks",
        Duration::from_secs(20),
        || {
            let tasks = c.tasks(m1, "demo");
            (tasks.len() == 3).then(|| tasks[0]["id"].as_str().unwrap().to_string())
        },
    );

    // 1. What a user types: the first line, and a clean exit of warren itself.
    let host = format!("unix://{}", c.nodes[m1].socket.display());
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", "\"$0\" -H \"$1\" service ps demo | head -1"])
        .arg(warren_bin())
        .arg(&host)
        .output()
        .expect("running bash");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ID "),
        "{}",
        text(&out)
    );
    assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count(), 1, "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));

    // 2. Every printing path, with the reader gone before the first write.
    let commands: &[&[&str]] = &[
        &["service", "ps", "demo"],
        &["service", "ps", "demo", "--format", "json"],
        &["service", "ls"],
        &["service", "ls", "-q"],
        &["service", "ls", "--format", "json"],
        &["service", "inspect", "demo"],
        &["service", "inspect", "demo", "--format", "json"],
        &["task", "inspect", &task],
        &["task", "inspect", &task, "--format", "json"],
        &["node", "ls"],
        &["node", "ls", "--format", "json"],
        &["node", "inspect", "self"],
        &["node", "inspect", "self", "--format", "json"],
        &["secret", "ls"],
        &["secret", "ls", "--format", "json"],
        &["volume", "ls"],
        &["volume", "ls", "--format", "json"],
        &["cluster", "info"],
        &["cluster", "info", "--format", "json"],
        &["cluster", "join-token", "worker"],
        &["cluster", "join-token", "worker", "-q"],
        &["completion", "bash"],
        &["service", "scale", "demo=2"],
        &["service", "update", "demo", "--detach", "--env", "A=1"],
        &["node", "update", "m1", "--label-add", "a=b"],
    ];
    for args in commands {
        let out = closed_stdout(&c, m1, args).wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "`warren {}` to a closed pipe: {}",
            args.join(" "),
            text(&out)
        );
    }
    // A command that changes several objects still changes them all.
    c.ok(m1, &["service", "create", "more", "--image", "img:1"]);
    let out = closed_stdout(&c, m1, &["service", "scale", "demo=1", "more=4"])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", text(&out));
    let replicas = |name: &str| {
        c.json(m1, &["service", "inspect", name, "--format", "json"]).unwrap()["replicas"]["desired"].clone()
    };
    assert_eq!((replicas("demo"), replicas("more")), (1.into(), 4.into()));

    // 3. A follower (`events`) ends at its first line once the reader is gone.
    let mut events = closed_stdout(&c, m1, &["events"]);
    c.ok(m1, &["service", "create", "ping", "--image", "img:1"]);
    let status = wait_for(
        "`warren events` to end at a closed pipe",
        Duration::from_secs(20),
        || {
            if events.try_wait().unwrap().is_none() {
                // Every change is an event; keep making them until one is written.
                let _ = c.cli(m1, &["service", "scale", "ping=0"]);
                return None;
            }
            Some(events.wait().unwrap())
        },
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut events.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success() && stderr.is_empty(), "{status:?}: {stderr}");
}

/// Backend hostnames that answered `n` HTTP connections to `to`.
fn answered(env: &Env, ns: &str, cgroup: Option<&std::path::Path>, to: &str) -> warren_tests::dataplane::Report {
    env.probe_run(ns, cgroup, &["connect", "--to", to, "--n", "40", "--http"])
}

/// The hostnames the test image answers with: the tasks' short IDs.
fn hostnames(tasks: &[Value]) -> BTreeSet<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap()[..12].to_string())
        .collect()
}

#[test]
fn a_refused_port_leaves_the_data_plane_serving_every_other_service() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    env.c.ok(
        m1,
        &["service", "create", "web", "--image", &http, "--publish", "8080:80"],
    );
    env.c.ok(
        m1,
        &["service", "create", "api", "--image", &http, "--publish", "8081:80"],
    );
    let web = hostnames(&env.running(m1, "web", 1));
    let api = hostnames(&env.running(m1, "api", 1));
    let ns = env.node_netns("m1");
    let cg = env.node_cgroup("m1");
    let (client_ns, _) = env.lab.node();
    let node_ip = env.c.nodes[m1].addr.split(':').next().unwrap().to_string();
    let api_vip = env
        .c
        .json(m1, &["service", "inspect", "api", "--format", "json"])
        .unwrap()["vip"]
        .as_str()
        .expect("a VIP")
        .to_string();

    // 1. A third service on web's port is refused, on create and on update.
    let err = env.c.fails(
        m1,
        &["service", "create", "dup", "--image", &http, "--publish", "8080:80"],
    );
    assert_eq!(err, taken(8080, "web"));
    let err = env.c.fails(m1, &["service", "update", "api", "--publish", "8080:80"]);
    assert_eq!(err, taken(8080, "web"));

    // 2. Both published ports and api's VIP still answer, each from its own service.
    for (to, ns, cgroup, want) in [
        (format!("{node_ip}:8080"), &client_ns, None, &web),
        (format!("{node_ip}:8081"), &client_ns, None, &api),
        (format!("{api_vip}:80"), &ns, Some(cg.as_path()), &api),
    ] {
        let r = env.c.wait(&format!("{to} to answer"), Duration::from_secs(20), || {
            let r = answered(&env, ns, cgroup, &to);
            (r.error_count() == 0).then_some(r)
        });
        assert_eq!(&r.names.keys().cloned().collect::<BTreeSet<_>>(), want, "{to}: {r:?}");
    }

    // 3. An endpoint change after the refusal reaches the maps: api's new task
    //    becomes a backend of its VIP and of its published port.
    env.c.ok(m1, &["service", "scale", "api=2"]);
    let api = hostnames(&env.running(m1, "api", 2));
    for (to, ns, cgroup) in [
        (format!("{api_vip}:80"), &ns, Some(cg.as_path())),
        (format!("{node_ip}:8081"), &client_ns, None),
    ] {
        env.c.wait(
            &format!("both api backends to answer on {to}"),
            Duration::from_secs(30),
            || {
                let r = answered(&env, ns, cgroup, &to);
                (r.error_count() == 0 && r.names.keys().cloned().collect::<BTreeSet<_>>() == api).then_some(())
            },
        );
    }
}
