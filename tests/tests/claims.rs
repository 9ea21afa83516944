//! End-to-end tests of features the docs claim and no other test exercised: secrets
//! delivered only to the nodes that run their tasks, HTTP and TCP health checks,
//! stop signals and grace periods, CPU limits and reservations, draining and
//! `cluster leave` of a worker with real containers, `node rm` of a down node,
//! manager-token rotation, `image load --node`, `service logs --follow`,
//! `task inspect`, and the daemon's startup refusals.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use warren_tests::cluster::{text, wait_for, warren_bin, Cluster};
use warren_tests::env::{ChildGuard, Env};

/// Every file below `dir` with its contents.
fn files_below(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.insert(p.display().to_string(), std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    out
}

fn node_id(env: &Env, m: usize, node: &str) -> String {
    let j: Value = env.c.json(m, &["node", "inspect", node, "--format", "json"]).unwrap();
    j["id"].as_str().unwrap_or_else(|| panic!("no id in {j}")).to_string()
}

#[test]
fn secrets_reach_only_the_nodes_that_run_their_tasks() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let token = env.c.token(m1, "worker");
    env.join("w1", &token, m1);
    let http = env.image("warren-test/http");
    for (name, value) in [("for-m1", "value-of-m1"), ("for-w1", "value-of-w1")] {
        let f = env.c.dir.path().join(name);
        std::fs::write(&f, value).unwrap();
        env.c.ok(m1, &["secret", "create", name, f.to_str().unwrap()]);
    }
    for node in ["m1", "w1"] {
        env.c.ok(
            m1,
            &[
                "service",
                "create",
                &format!("on-{node}"),
                "--image",
                &http,
                "--secret",
                &format!("for-{node}"),
                "--constraint",
                &format!("node.hostname=={node}"),
            ],
        );
    }
    let a = env.running(m1, "on-m1", 1);
    let b = env.running(m1, "on-w1", 1);
    assert_eq!(a[0]["node_name"], "m1");
    assert_eq!(b[0]["node_name"], "w1");

    // Each task reads its own secret; each node holds only its tasks' secrets.
    for (node, task, own) in [("m1", &a[0], "value-of-m1"), ("w1", &b[0], "value-of-w1")] {
        let id = task["id"].as_str().unwrap();
        let out = env.exec_in(node, id, &["/bin/busybox", "cat", &format!("/run/secrets/for-{node}")]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), own);
        let dir = warren::worker::node_secrets_dir(&node_id(&env, m1, node));
        let held = files_below(&dir);
        assert!(held.values().any(|v| v == own), "{node} lacks its secret: {held:?}");
        let other = if own == "value-of-m1" {
            "value-of-w1"
        } else {
            "value-of-m1"
        };
        assert!(
            !held.values().any(|v| v.contains(other)),
            "{node} holds another node's secret: {held:?}"
        );
    }
}

#[test]
fn http_and_tcp_health_checks_mark_tasks_healthy_or_unhealthy() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    let cases = [
        ("http-ok", vec!["--health-http", "80/healthz"], "healthy"),
        ("http-bad", vec!["--health-http", "80/nope"], "unhealthy"),
        ("tcp-ok", vec!["--health-tcp", "80"], "healthy"),
        ("tcp-bad", vec!["--health-tcp", "81"], "unhealthy"),
    ];
    for (name, flags, _) in &cases {
        let mut args = vec!["service", "create", name, "--image", &http];
        args.extend(flags.iter().copied());
        args.extend([
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
            "--restart-delay",
            "60s",
        ]);
        env.c.ok(m1, &args);
    }
    for (name, _, expected) in &cases {
        env.c.wait(
            &format!("{name} to be reported {expected}"),
            Duration::from_secs(60),
            || {
                env.c
                    .tasks(m1, name)
                    .iter()
                    .any(|t| t["status"]["health"] == *expected)
                    .then_some(())
            },
        );
    }
    // A task failing its check is stopped, and no task of the healthy ones is.
    env.c
        .wait("the unhealthy tasks to be stopped", Duration::from_secs(60), || {
            ["http-bad", "tcp-bad"]
                .iter()
                .all(|s| env.c.tasks(m1, s).iter().any(|t| t["status"]["state"] == "Failed"))
                .then_some(())
        });
    for s in ["http-ok", "tcp-ok"] {
        let tasks = env.c.tasks(m1, s);
        assert!(
            tasks.len() == 1 && tasks[0]["status"]["state"] == "Running",
            "{s}: {tasks:?}"
        );
    }
}

#[test]
fn stop_signal_and_grace_period_apply_to_a_service() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    let out = env.c.dir.path().join("signals");
    std::fs::create_dir_all(&out).unwrap();
    let bind = format!("type=bind,source={},target=/out", out.display());
    // USR1 is the stop signal and ends the task at once: no kill.
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "polite",
            "--image",
            &http,
            "--mount",
            &bind,
            "--stop-signal",
            "SIGUSR1",
            "--stop-grace-period",
            "20s",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "trap 'echo USR1 > /out/polite; exit 0' USR1; trap 'echo TERM > /out/polite; exit 0' TERM; while true; do sleep 0.2; done",
        ],
    );
    // This one ignores its stop signal: killed when its 2s grace period ends.
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "stubborn",
            "--image",
            &http,
            "--stop-signal",
            "SIGUSR2",
            "--stop-grace-period",
            "2s",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "trap '' USR2; while true; do sleep 0.2; done",
        ],
    );
    env.running(m1, "polite", 1);
    let stubborn = env.running(m1, "stubborn", 1)[0]["id"].as_str().unwrap().to_string();
    let mark = env.c.nodes[m1].log_mark();
    let started = Instant::now();
    env.c.ok(m1, &["service", "rm", "polite", "stubborn"]);
    env.c
        .wait("both containers to be deleted", Duration::from_secs(60), || {
            env.containers("m1").is_empty().then_some(())
        });
    assert_eq!(
        std::fs::read_to_string(out.join("polite")).unwrap_or_default().trim(),
        "USR1",
        "the polite task got another signal than its stop signal"
    );
    let log = env.c.nodes[m1].log_since(mark);
    let killed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("still running after the grace period"))
        .collect();
    assert_eq!(killed.len(), 1, "exactly the stubborn task is killed: {killed:?}");
    assert!(
        killed[0].contains(&stubborn) && killed[0].contains("grace=2s"),
        "{killed:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "killed before its grace period"
    );
}

#[test]
fn cpu_limits_apply_and_reservations_are_scheduled() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    let cpus = std::thread::available_parallelism().unwrap().get();
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "capped",
            "--image",
            &http,
            "--limit-cpu",
            "0.5",
            "--reserve-cpu",
            "0.25",
        ],
    );
    let t = env.running(m1, "capped", 1);
    let pid = env.pid("m1", t[0]["id"].as_str().unwrap());
    let (quota, period) = warren_tests::cgroups::cpu_quota(pid).expect("a CPU quota");
    assert_eq!(quota * 2, period, "half a CPU");
    let node: Value = env.c.json(m1, &["node", "inspect", "m1", "--format", "json"]).unwrap();
    assert_eq!(node["reserved"]["nano_cpus"], 250_000_000u64, "{node}");

    // More than the node has left stays pending with the reason.
    let too_much = format!("{cpus}");
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "greedy",
            "--image",
            &http,
            "--reserve-cpu",
            &too_much,
        ],
    );
    let pending = env.c.wait("greedy to be unschedulable", Duration::from_secs(30), || {
        env.c.tasks(m1, "greedy").into_iter().find(|t| {
            t["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("insufficient cpu"))
        })
    });
    assert_eq!(pending["status"]["state"], "Pending", "{pending}");
    assert!(env.containers("m1").len() == 1, "{:?}", env.containers("m1"));
    // Freeing the reservation lets it run.
    env.c.ok(m1, &["service", "rm", "capped"]);
    env.running(m1, "greedy", 1);
}

#[test]
fn draining_a_node_moves_its_containers_and_leave_on_a_worker_cleans_it() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let token = env.c.token(m1, "worker");
    let w1 = env.join("w1", &token, m1);
    let http = env.image("warren-test/http");
    env.c
        .ok(m1, &["service", "create", "web", "--image", &http, "--replicas", "2"]);
    let tasks = env.running(m1, "web", 2);
    assert!(tasks.iter().any(|t| t["node_name"] == "w1"), "{tasks:?}");
    assert_eq!(env.containers("w1").len(), 1);

    // 1. Drain w1: its container stops and is deleted; both tasks run on m1.
    env.c.ok(m1, &["node", "update", "w1", "--availability", "drain"]);
    env.c.wait("w1's container to be deleted", Duration::from_secs(60), || {
        env.containers("w1").is_empty().then_some(())
    });
    env.c.wait("both tasks on m1", Duration::from_secs(60), || {
        let t = env.running(m1, "web", 2);
        t.iter().all(|t| t["node_name"] == "m1").then_some(())
    });
    assert_eq!(env.containers("m1").len(), 2);

    // 2. Active again, and a global service puts a container on w1.
    env.c.ok(m1, &["node", "update", "w1", "--availability", "active"]);
    env.c.ok(
        m1,
        &["service", "create", "everywhere", "--image", &http, "--mode", "global"],
    );
    env.running(m1, "everywhere", 2);
    assert_eq!(env.containers("w1").len(), 1);

    // 3. `cluster leave` on the worker, without --force: its daemon stops, its
    //    container and data dir go, and the managers see it down.
    let data_dir = env.c.nodes[w1].data_dir.clone();
    let ns = env.node_netns("w1");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(warren_bin())
        .args(["cluster", "leave", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("running warren cluster leave");
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("Removed 1 container(s)."), "{said}");
    assert!(!env.c.nodes[w1].is_running(), "w1's daemon still runs");
    assert!(env.containers("w1").is_empty(), "{:?}", env.containers("w1"));
    assert!(!data_dir.exists(), "{} is still there", data_dir.display());
    env.c.wait("w1 to be down", Duration::from_secs(30), || {
        let nodes = env.c.json(m1, &["node", "ls", "--format", "json"]).ok()?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["name"] == "w1" && n["state"] == "Unreachable")
            .then_some(())
    });
}

#[test]
fn image_load_to_one_node_and_task_inspect() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let token = env.c.token(m1, "worker");
    env.join("w1", &token, m1);
    let archive = env
        .lab
        .oci_archive(warren_tests::images::TestImage::Echo, "local/only-w1:1");
    let out = env
        .c
        .ok(m1, &["image", "load", "--node", "w1", archive.to_str().unwrap()]);
    assert!(out.contains("w1: loaded") && !out.contains("m1:"), "{out}");
    for node in ["w1", "m1"] {
        env.c.ok(
            m1,
            &[
                "service",
                "create",
                &format!("on-{node}"),
                "--image",
                "local/only-w1:1",
                "--constraint",
                &format!("node.hostname=={node}"),
                "--restart-delay",
                "30s",
            ],
        );
    }
    let t = env.running(m1, "on-w1", 1);
    let rejected = env.c.wait("on-m1 to be rejected", Duration::from_secs(60), || {
        env.c
            .tasks(m1, "on-m1")
            .into_iter()
            .find(|t| t["status"]["state"] == "Rejected")
    });
    assert!(
        rejected["status"]["err"]
            .as_str()
            .unwrap_or("")
            .contains("local/only-w1"),
        "{rejected}"
    );

    // task inspect: the same task as service ps shows, with its spec and node.
    let id = t[0]["id"].as_str().unwrap();
    let j: Value = env.c.json(m1, &["task", "inspect", id, "--format", "json"]).unwrap();
    assert_eq!(j["id"], id);
    assert_eq!(j["node_name"], "w1");
    assert_eq!(j["spec"]["image"], "local/only-w1:1");
    assert_eq!(j["status"]["state"], "Running");
    let human = env.c.ok(m1, &["task", "inspect", &id[..12]]);
    assert!(human.contains(&id[..12]) && human.contains("w1"), "{human}");
    let err = env.c.fails(m1, &["task", "inspect", "nope"]);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn service_logs_follow_prints_new_lines() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "ticker",
            "--image",
            &http,
            "--no-healthcheck",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
        ],
    );
    env.running(m1, "ticker", 1);
    let host = format!("unix://{}", env.c.nodes[m1].socket.display());
    let mut follow = ChildGuard::spawn(
        Command::new(warren_bin())
            .args(["-H", &host, "service", "logs", "ticker", "--follow"])
            .stdout(Stdio::piped()),
    );
    let stdout = follow.stdout();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    // Lines keep arriving after the command started: a later tick than the first seen.
    let first = rx.recv_timeout(Duration::from_secs(30)).expect("a first log line");
    let n = |l: &str| l.rsplit("tick ").next().and_then(|n| n.trim().parse::<u64>().ok());
    let start = n(&first).unwrap_or_else(|| panic!("not a tick: {first}"));
    let later = wait_for("a later tick from --follow", Duration::from_secs(30), || {
        let l = rx.recv_timeout(Duration::from_millis(200)).ok()?;
        n(&l).filter(|&t| t >= start + 3).map(|_| l)
    });
    assert!(later.contains("ticker.1@"), "{later}");
    drop(follow);
}

#[test]
fn node_rm_of_a_down_node_and_manager_token_rotation() {
    let mut c = Cluster::new();
    let m1 = c.init("m1", &[]);
    let worker = c.token(m1, "worker");
    let w1 = c.join("w1", &worker, m1, &[]);

    // 1. A ready node is not removed without --force; a down one is.
    let err = c.fails(m1, &["node", "rm", "w1"]);
    assert!(err.contains("w1") && err.contains("--force"), "{err}");
    c.nodes[w1].kill9();
    wait_for("w1 to be down", Duration::from_secs(30), || {
        let nodes = c.json(m1, &["node", "ls", "--format", "json"]).ok()?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["name"] == "w1" && n["state"] == "Unreachable")
            .then_some(())
    });
    c.ok(m1, &["node", "rm", "w1"]);
    let nodes = c.json(m1, &["node", "ls", "--format", "json"]).unwrap();
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, vec!["m1"], "{nodes}");

    // 1b. The removed node's certificate is refused from now on: restarted, it
    //     cannot open a session, and it does not come back.
    let mark = c.nodes[w1].log_mark();
    c.restart(w1);
    wait_for("the removed node to be refused", Duration::from_secs(30), || {
        c.nodes[w1]
            .log_since(mark)
            .contains("was removed from the cluster")
            .then_some(())
    });
    let nodes = c.json(m1, &["node", "ls", "--format", "json"]).unwrap();
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    c.nodes[w1].kill9();

    // 2. Rotating the manager token: the old one is refused, the new one joins.
    let old = c.token(m1, "manager");
    let out = c.ok(m1, &["cluster", "join-token", "manager", "--rotate", "-q"]);
    let new = out.trim().to_string();
    assert_ne!(new, old);
    assert_eq!(c.token(m1, "manager"), new);
    let refused = c.join_expect_failure("m2", &old, m1);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("token"),
        "{}",
        text(&refused)
    );
    // The worker token did not change.
    assert_eq!(c.token(m1, "worker"), worker);
    c.join("m2", &new, m1, &[]);
    let m2: Value = c.json(m1, &["node", "inspect", "m2", "--format", "json"]).unwrap();
    assert_eq!(m2["role"], "Manager", "{m2}");
}

/// `warren cluster init` with `flags` in a fresh data dir, expected to refuse to
/// start: its output, once it exited (killed and failed after 60s).
fn refused_init(dir: &Path, extra: &[&str], wrap: Option<&str>) -> std::process::Output {
    let _ = std::fs::remove_dir_all(dir.join("data"));
    let port = warren_tests::cluster::free_port();
    let mut args: Vec<String> = vec![
        "cluster".into(),
        "init".into(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--socket".into(),
        dir.join("s.sock").display().to_string(),
        "--listen-addr".into(),
        format!("127.0.0.1:{port}"),
        "--metrics-addr".into(),
        format!("127.0.0.1:{}", warren_tests::cluster::free_port()),
        "--runtime".into(),
        "none".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = match wrap {
        Some(script) => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"])
                .arg(warren_bin());
            c
        }
        None => Command::new(warren_bin()),
    };
    cmd.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(&mut cmd);
    wait_for("the daemon to exit", Duration::from_secs(60), || child.try_wait());
    child.wait_with_output()
}

#[test]
fn startup_refusals_name_what_is_missing() {
    warren_tests::netns::require_root();
    let dir = tempfile::tempdir().unwrap();
    let cg = warren_tests::containerd::CgroupParent::new("wrn-refusal");
    let cgroup_root = warren_tests::cgroups::v2_root().join(cg.path.trim_start_matches('/'));

    // 1. A pin directory that is not on bpffs.
    let not_bpf = dir.path().join("pins");
    let out = refused_init(
        dir.path(),
        &[
            "--bpffs",
            not_bpf.to_str().unwrap(),
            "--cgroup-root",
            cgroup_root.to_str().unwrap(),
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        err.contains(&format!(
            "pin directory {} is not on a bpf filesystem (bpffs)",
            not_bpf.display()
        )),
        "{err}"
    );

    // 2. An interface that does not exist.
    let pins = format!("/sys/fs/bpf/warren-refusal-{}", std::process::id());
    let out = refused_init(
        dir.path(),
        &[
            "--dataplane-iface",
            "nope0",
            "--bpffs",
            &pins,
            "--cgroup-root",
            cgroup_root.to_str().unwrap(),
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(err.contains("dataplane-iface: no interface named \"nope0\""), "{err}");

    // 3. bpffs not mounted: the daemon mounts it and starts. In a mount namespace
    //    of its own, so that the host's bpffs stays; the daemon is stopped once up,
    //    and its pins go with the namespace.
    let script = format!(
        "umount -l /sys/fs/bpf || exit 1
         if mountpoint -q /sys/fs/bpf; then echo 'bpffs is still mounted' >&2; exit 1; fi
         \"$@\" & pid=$!
         for i in $(seq 600); do [ -S {sock} ] && break; sleep 0.1; done
         mountpoint -q /sys/fs/bpf && echo BPFFS-MOUNTED
         stat -f -c %T {pins}
         kill $pid; wait $pid",
        sock = dir.path().join("s.sock").display(),
    );
    let out = refused_init(
        dir.path(),
        &["--bpffs", &pins, "--cgroup-root", cgroup_root.to_str().unwrap()],
        Some(&script),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("BPFFS-MOUNTED") && said.contains("bpf_fs"),
        "{}",
        text(&out)
    );
    assert!(err.contains("mounted bpffs"), "{err}");
    assert!(!Path::new(&pins).exists(), "{pins} appeared in the host's bpffs");
}

/// Kills, on drop, what still runs with `needle` on its command line.
struct KillMentioning(String);

impl Drop for KillMentioning {
    fn drop(&mut self) {
        for pid in warren_tests::containerd::processes_mentioning(&self.0) {
            // SAFETY: kill(2) on processes started for this test (their command
            // line names its own data dir).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn leave_after_a_kill_and_a_restart_stops_the_first_daemons_containerd() {
    let mut env = Env::new();
    let (ns, ip) = env.lab.node();
    env.c.place("m1", &ns, &ip);
    // The node's own containerd: nothing answers at the socket it is given.
    let mut flags = env.runtime_flags("m1");
    let at = flags.iter().position(|f| f == "--containerd-socket").unwrap();
    flags[at + 1] = env.c.dir.path().join("nothing.sock").display().to_string();
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let m1 = env.c.init("m1", &refs);
    let data_dir = env.c.nodes[m1].data_dir.clone();
    let config = data_dir.join("containerd/config.toml").display().to_string();
    let _guard = KillMentioning(config.clone());
    let containerd = || -> Vec<i32> {
        warren_tests::containerd::processes_mentioning(&config)
            .into_iter()
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/exe"))
                    .is_ok_and(|e| e.file_name().is_some_and(|n| n == "containerd"))
            })
            .collect()
    };
    let first = wait_for("the node's own containerd", Duration::from_secs(30), || {
        let p = containerd();
        (p.len() == 1).then_some(p[0])
    });

    // kill -9 leaves it running; the restarted daemon uses it.
    let mark = env.c.nodes[m1].log_mark();
    env.c.nodes[m1].kill9();
    assert_eq!(containerd(), vec![first], "the first containerd must outlive a kill -9");
    env.c.restart(m1);
    env.c.wait_api(m1);
    env.c.wait(
        "the restarted daemon to use the running containerd",
        Duration::from_secs(30),
        || {
            env.c.nodes[m1]
                .log_since(mark)
                .contains("using the containerd left running by an earlier start")
                .then_some(())
        },
    );

    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(warren_bin())
        .args(["cluster", "leave", "--force", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("running warren cluster leave");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!data_dir.exists(), "{} is still there", data_dir.display());
    assert_eq!(containerd(), Vec::<i32>::new(), "a containerd of the node still runs");
}
