//! End-to-end tests of the worker runtime: real `warren` nodes, each in its own
//! network namespace on a lab LAN, a real containerd and runc, and a local registry
//! serving images built from busybox-static.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use warren_tests::cluster::wait_for;
use warren_tests::env::Env;
use warren_tests::lab::Lab;

#[test]
fn replicas_from_a_registry_run_and_answer_on_their_own_addresses() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let image = env.image("warren-test/http");

    // 1. Three replicas from the local registry.
    env.c
        .ok(m1, &["service", "create", "web", "--image", &image, "--replicas", "3"]);
    let tasks = env.running(m1, "web", 3);

    // 2. Each answers HTTP on its own address, with its own hostname.
    let ns = env.c.nodes[m1].netns.clone().unwrap();
    let mut hostnames = BTreeSet::new();
    for t in &tasks {
        let addr = t["status"]["addr"].as_str().unwrap();
        let body = wait_for(&format!("HTTP from {addr}"), Duration::from_secs(20), || {
            Lab::http_get(&ns, &format!("http://{addr}/"))
        });
        hostnames.insert(body.trim().to_string());
        assert!(
            t["id"].as_str().unwrap().starts_with(body.trim()),
            "task {} answered {body:?}",
            t["id"]
        );
    }
    assert_eq!(hostnames.len(), 3, "{hostnames:?}");

    // 3. `service ps` shows node, address and state.
    let ps = env.c.ok(m1, &["service", "ps", "web"]);
    for t in &tasks {
        let addr = t["status"]["addr"].as_str().unwrap();
        let line = ps
            .lines()
            .find(|l| l.contains(addr))
            .unwrap_or_else(|| panic!("{addr} not in:\n{ps}"));
        assert!(line.contains("m1") && line.contains("Running"), "{line}");
    }
    let ls = env.c.ok(m1, &["service", "ls"]);
    assert!(ls.contains("3/3"), "{ls}");

    // 4. Removing the service leaves no task behind.
    env.c.ok(m1, &["service", "rm", "web"]);
    wait_for("the tasks to go", Duration::from_secs(30), || {
        let info = env.c.json(m1, &["cluster", "info", "--format", "json"]).ok()?;
        (info["tasks"] == 0).then_some(())
    });
    let _ = &env.lab;
}

fn tasks_in(env: &Env, m: usize, service: &str, state: &str) -> Vec<Value> {
    env.c
        .tasks(m, service)
        .into_iter()
        .filter(|t| t["status"]["state"] == state)
        .collect()
}

#[test]
fn crashes_kills_and_unhealthy_tasks_are_replaced_and_missing_images_retried() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");

    // 1. kill -9 of a container's process: the task fails with the signal's exit code
    //    and the restart policy starts a replacement.
    env.c.ok(
        m1,
        &["service", "create", "web", "--image", &http, "--restart-delay", "1s"],
    );
    let first = env.running(m1, "web", 1).remove(0);
    let id = first["id"].as_str().unwrap().to_string();
    let pid = env.pid("m1", &id);
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let failed = env.c.wait("the killed task to be failed", Duration::from_secs(30), || {
        env.c
            .tasks(m1, "web")
            .into_iter()
            .find(|t| t["id"] == id.as_str() && t["status"]["state"] == "Failed")
    });
    assert_eq!(failed["status"]["exit_code"], 137, "{failed}");
    let again = env.running(m1, "web", 1).remove(0);
    assert_ne!(again["id"], first["id"]);
    assert_eq!((again["slot"].as_u64(), again["attempt"].as_u64()), (Some(1), Some(1)));

    // 2. A failing health check: the task is reported unhealthy and replaced.
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "sick",
            "--image",
            &http,
            "--health-cmd",
            "test -e /tmp/never",
            "--health-interval",
            "500ms",
            "--health-timeout",
            "1s",
            "--health-retries",
            "2",
            "--restart-delay",
            "1s",
        ],
    );
    let ps = env.c.wait("the health in service ps", Duration::from_secs(30), || {
        let ps = env.c.ok(m1, &["service", "ps", "sick"]);
        ps.contains("Running (starting)").then_some(ps)
    });
    assert!(ps.contains("sick.1"), "{ps}");
    let unhealthy = env.c.wait("an unhealthy task", Duration::from_secs(45), || {
        tasks_in(&env, m1, "sick", "Failed")
            .into_iter()
            .find(|t| t["status"]["health"] == "unhealthy")
    });
    assert!(
        unhealthy["status"]["err"].as_str().unwrap().contains("unhealthy"),
        "{unhealthy}"
    );
    env.c
        .wait("a replacement of the unhealthy task", Duration::from_secs(30), || {
            env.c
                .tasks(m1, "sick")
                .into_iter()
                .find(|t| t["attempt"].as_u64() >= Some(1))
        });

    // 3. An image that does not exist: rejected with the pull error, retried with backoff.
    let ghost = format!("{}/warren-test/nope:1", env.registry);
    env.c.ok(
        m1,
        &["service", "create", "ghost", "--image", &ghost, "--restart-delay", "1s"],
    );
    let rejected = env.c.wait("two rejected attempts", Duration::from_secs(30), || {
        let r = tasks_in(&env, m1, "ghost", "Rejected");
        (r.len() >= 2).then_some(r)
    });
    let err = rejected[0]["status"]["err"].as_str().unwrap();
    assert!(err.contains("warren-test/nope"), "{err}");
    let ps = env.c.ok(m1, &["service", "ps", "ghost"]);
    assert!(ps.contains("warren-test/nope") && ps.contains("Rejected"), "{ps}");

    // 4. on-failure with at most two restarts: three tasks, all exit code 3, then none.
    let crash = env.image("warren-test/crash");
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "crash",
            "--image",
            &crash,
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "500ms",
            "--restart-max-attempts",
            "2",
        ],
    );
    let done = env.c.wait("three failed runs", Duration::from_secs(60), || {
        let f = tasks_in(&env, m1, "crash", "Failed");
        (f.len() == 3).then_some(f)
    });
    assert!(done.iter().all(|t| t["status"]["exit_code"] == 3), "{done:?}");
    // A fourth attempt would be due 500ms * 2^2 after the last failure: wait until
    // the node's clock (the tasks' timestamps) is well past that, then count.
    let last_failed = done
        .iter()
        .map(|t| t["status"]["timestamp_ms"].as_i64().expect("a task timestamp"))
        .max()
        .unwrap();
    env.c
        .wait("the fourth attempt's due time to pass", Duration::from_secs(30), || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            (now > last_failed + 2_000 + 2_000).then_some(())
        });
    assert_eq!(env.c.tasks(m1, "crash").len(), 3, "a fourth attempt was started");
    let ps = env.c.ok(m1, &["service", "ps", "crash"]);
    assert!(ps.contains("exit code 3"), "{ps}");
}

#[test]
fn secrets_stay_off_disk_volumes_outlive_tasks_anonymous_ones_do_not_and_limits_apply() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    let plaintext = "s3cr3t-plaintext-7f3a9";

    // 1. A secret, a volume, a memory limit.
    let host = format!("unix://{}", env.c.nodes[m1].socket.display());
    let mut child = std::process::Command::new(warren_tests::cluster::warren_bin())
        .args(["-H", &host, "secret", "create", "db-pass", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), plaintext.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    env.c.ok(m1, &["volume", "create", "data"]);
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "db",
            "--image",
            &http,
            "--secret",
            "db-pass",
            "--secret",
            "source=db-pass,target=/etc/app/password",
            "--mount",
            "type=volume,source=data,target=/data",
            "--mount",
            "type=volume,target=/cache",
            "--limit-memory",
            "64m",
        ],
    );
    let t = env.running(m1, "db", 1).remove(0);
    let pid = env.pid("m1", t["id"].as_str().unwrap());
    let root = format!("/proc/{pid}/root");

    // 2. The secret is readable in the container, mode 0400, on a tmpfs...
    for path in ["run/secrets/db-pass", "etc/app/password"] {
        let p = format!("{root}/{path}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), plaintext, "{p}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o400);
        let fs = std::process::Command::new("stat")
            .args(["-f", "-c", "%T", &p])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&fs.stdout).trim(), "tmpfs", "{p}");
    }
    // ... and its plaintext appears nowhere under the node's data dir.
    let mut stack = vec![env.c.nodes[m1].data_dir.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files += 1;
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                assert!(
                    !bytes.windows(plaintext.len()).any(|w| w == plaintext.as_bytes()),
                    "the secret's plaintext is in {}",
                    e.path().display()
                );
            }
        }
    }
    assert!(files > 10, "the data dir walk found only {files} files");

    // 3. The memory limit is in the container's cgroup (whichever hierarchy has it).
    assert_eq!(warren_tests::cgroups::memory_limit(pid), Some(64 << 20));

    // 4. A file in the volume survives the task's replacement; the volume cannot be
    //    removed while in use. The anonymous volume is the task's own: the
    //    replacement starts with an empty one, and the old one goes with its task.
    std::fs::write(format!("{root}/data/hello"), "kept").unwrap();
    std::fs::write(format!("{root}/cache/mine"), "task 1").unwrap();
    let old_dir = env.c.nodes[m1].data_dir.join("tasks").join(t["id"].as_str().unwrap());
    assert!(
        old_dir.join("volumes").exists(),
        "the anonymous volume is in the task's dir"
    );
    env.c.ok(m1, &["service", "update", "db", "--env", "GENERATION=2"]);
    let t2 = env.c.wait("the replacement", Duration::from_secs(60), || {
        env.running(m1, "db", 1).into_iter().find(|x| x["id"] != t["id"])
    });
    let pid2 = env.pid("m1", t2["id"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid2}/root/data/hello")).unwrap(),
        "kept"
    );
    let cache: Vec<_> = std::fs::read_dir(format!("/proc/{pid2}/root/cache")).unwrap().collect();
    assert!(cache.is_empty(), "the replacement got the old task's anonymous volume");
    env.c
        .wait("the old task's anonymous volume to go", Duration::from_secs(60), || {
            (!old_dir.exists()).then_some(())
        });
    let err = env.c.fails(m1, &["volume", "rm", "data"]);
    assert!(err.contains("volume data is in use by service db"), "{err}");
    env.c.ok(m1, &["service", "rm", "db"]);
    env.c.wait("the volume to be free", Duration::from_secs(30), || {
        env.c.cli(m1, &["volume", "rm", "data"]).status.success().then_some(())
    });
}

#[test]
fn daemon_restarts_adopt_containers_and_removal_leaves_nothing() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    env.c
        .ok(m1, &["service", "create", "web", "--image", &http, "--replicas", "2"]);
    let before: BTreeSet<String> = env
        .running(m1, "web", 2)
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    let pids: Vec<u32> = before.iter().map(|id| env.pid("m1", id)).collect();

    for how in ["SIGTERM", "SIGKILL"] {
        let mark = env.c.nodes[m1].log_mark();
        // 1. Stop the daemon; the containers keep running.
        if how == "SIGTERM" {
            env.c.nodes[m1].stop();
        } else {
            env.c.nodes[m1].kill9();
        }
        for pid in &pids {
            assert!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{how}: container process {pid} died"
            );
        }
        // 2. Restart it: the same tasks run, adopted, with no duplicates.
        env.c.restart(m1);
        env.c.wait_api(m1);
        let after: BTreeSet<String> = env
            .running(m1, "web", 2)
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(after, before, "{how}: the tasks changed");
        // This run of the daemon adopted both containers (its own log lines only).
        env.c.wait(
            &format!("{how}: both containers adopted"),
            Duration::from_secs(20),
            || {
                (env.c.nodes[m1]
                    .log_since(mark)
                    .matches("found a container of this node")
                    .count()
                    >= 2)
                    .then_some(())
            },
        );
        let containers: BTreeSet<String> = env.containers("m1").into_iter().collect();
        assert_eq!(containers, before, "{how}: containers");
        for (id, pid) in before.iter().zip(&pids) {
            assert_eq!(env.pid("m1", id), *pid, "{how}: {id} was restarted");
        }
    }

    // 3. service rm leaves no container, snapshot, netns, veth or address.
    env.c.ok(m1, &["service", "rm", "web"]);
    env.c.wait("no containers", Duration::from_secs(30), || {
        env.containers("m1").is_empty().then_some(())
    });
    let snapshots = env.ctr("m1", &["snapshots", "ls"]);
    assert!(!before.iter().any(|id| snapshots.contains(id.as_str())), "{snapshots}");
    let node_id = env.c.json(m1, &["cluster", "info", "--format", "json"]).unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(&node_id))
        .collect();
    assert!(netns.is_empty(), "{netns:?}");
    let ns = env.c.nodes[m1].netns.clone().unwrap();
    let links = std::process::Command::new("ip")
        .args(["-n", &ns, "-o", "link"])
        .output()
        .unwrap();
    assert!(
        links.status.success(),
        "ip -o link: {}",
        warren_tests::cluster::text(&links)
    );
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains("warren0"), "{links}");
    assert!(!links.contains(" wv"), "{links}");
    env.c.nodes[m1].stop();
    let ipam = warren::network::Ipam::open(
        &env.c.nodes[m1].data_dir.join("network"),
        "10.88.0.0/24".parse().unwrap(),
    )
    .unwrap();
    assert!(ipam.allocations().unwrap().is_empty());
}

#[test]
fn logs_image_load_and_two_nodes_reaching_each_other() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let token = env.c.token(m1, "worker");
    let _w1 = env.join("w1", &token, m1);
    let http = env.image("warren-test/http");

    // 1. One task per node (spread); the two reach each other by address.
    env.c
        .ok(m1, &["service", "create", "web", "--image", &http, "--replicas", "2"]);
    let tasks = env.running(m1, "web", 2);
    let on = |node: &str| {
        tasks
            .iter()
            .find(|t| t["node_name"] == node)
            .unwrap_or_else(|| panic!("no task on {node}: {tasks:?}"))
    };
    let (a, b) = (on("m1"), on("w1"));
    let pid_a = env.pid("m1", a["id"].as_str().unwrap());
    let addr_b = b["status"]["addr"].as_str().unwrap();
    let body = env.c.wait("m1's task to reach w1's task", Duration::from_secs(20), || {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{pid_a}/ns/net"))
            .args(["curl", "-sf", "--max-time", "3", &format!("http://{addr_b}/")])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    assert!(b["id"].as_str().unwrap().starts_with(body.trim()), "{body}");

    // 2. `service logs` shows the containers' output, from both nodes.
    let logs = env.c.ok(m1, &["service", "logs", "web"]);
    assert!(logs.contains("web.1@") && logs.contains("web.2@"), "{logs}");
    assert!(logs.contains("warren-test/http: serving"), "{logs}");
    let one = env
        .c
        .ok(m1, &["task", "logs", b["id"].as_str().unwrap(), "--tail", "1"]);
    assert_eq!(one.lines().count(), 1, "{one}");

    // 3. `image load` puts an archive on every node; a service runs from it without a registry.
    let archive = env
        .lab
        .oci_archive(warren_tests::images::TestImage::Echo, "local/echo:1");
    let out = env.c.ok(m1, &["image", "load", archive.to_str().unwrap()]);
    assert!(out.contains("m1: loaded") && out.contains("w1: loaded"), "{out}");
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "echo",
            "--image",
            "local/echo:1",
            "--replicas",
            "2",
        ],
    );
    let echo = env.running(m1, "echo", 2);
    let ns = env.c.nodes[m1].netns.clone().unwrap();
    for t in echo {
        let addr = t["status"]["addr"].as_str().unwrap();
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "sh",
                "-c",
                &format!("echo hello | busybox nc -w 2 {addr} 7"),
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello", "echo on {addr}");
    }
}
