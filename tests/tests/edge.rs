//! Edge autonomy (issue 16, item 1): a worker whose only link goes down keeps its
//! tasks answering on its own VIP, restarts a crashed one itself, takes an
//! unhealthy one out of its own backend set, and on heal the cluster has exactly
//! the desired replicas, with the node's untouched tasks never restarted. Real
//! nodes in network namespaces, real containers, the real data plane.
//!
//! The issue asks for a 3-minute cut; what matters is that the cut outlasts the
//! managers' heartbeat grace (3 s with the harness's fast flags) and the agent's
//! own cut-off delay (`CUT_OFF_AFTER`, 3 s), and stays within the service's
//! `--reschedule-after` (5 min, the default): the link stays down for as long as
//! steps 3-5 take (about 20 s), so the test fits the suite's budget.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use warren_tests::env::Env;

/// The host pid of task `id`'s container on `node`, if it runs.
fn try_pid(env: &Env, node: &str, id: &str) -> Option<u32> {
    use warren::runtime::ContainerRuntime;
    env.with_runtime(node, async |c| Some(c.status(id).await.ok()?.task?.pid))
}

/// Live tasks of `service` on node `node`, by ID.
fn live_on(env: &Env, m: usize, service: &str, node: &str) -> BTreeSet<String> {
    env.c
        .live_tasks(m, service)
        .into_iter()
        .filter(|t| t["node_name"] == node)
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// Which backends answer through `vip` from inside node `node`, and how many
/// requests failed.
fn through_vip(env: &Env, node: &str, vip: &str) -> (BTreeSet<String>, u64) {
    let r = env.probe_run(
        &env.node_netns(node),
        Some(&env.node_cgroup(node)),
        &["connect", "--to", &format!("{vip}:80"), "--n", "30", "--http"],
    );
    (r.names.keys().cloned().collect(), r.error_count())
}

#[test]
fn a_cut_off_worker_keeps_serving_restarts_locally_and_heals_without_duplicates() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let token = env.c.token(m1, "worker");
    let _w1 = env.join("w1", &token, m1);
    let http = env.image("warren-test/http");

    // 1. Four replicas over both nodes, with a health check a test can fail (a file
    //    in the container) and the edge default for rescheduling.
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "web",
            "--image",
            &http,
            "--replicas",
            "6",
            "--health-cmd",
            "test ! -e /tmp/sick",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
            "--restart-delay",
            "3s",
            "--reschedule-after",
            "5m",
        ],
    );
    env.c.wait_healthy_on(m1, "web", &http, 6);
    let on_w1 = live_on(&env, m1, "web", "w1");
    assert_eq!(on_w1.len(), 3, "the scheduler spreads 6 replicas over 2 nodes");
    let ids: Vec<String> = on_w1.iter().cloned().collect();
    let (killed, sick, untouched) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let name = |id: &str| id[..12].to_string();
    let svc: Value = env
        .c
        .json(m1, &["service", "inspect", "web", "--format", "json"])
        .unwrap();
    let vip = svc["vip"].as_str().expect("a VIP").to_string();
    let before_pids: BTreeMap<String, u32> = ids
        .iter()
        .map(|id| (id.clone(), try_pid(&env, "w1", id).expect("a running container")))
        .collect();
    let m1_before = live_on(&env, m1, "web", "m1");
    let m1_pids: BTreeMap<String, u32> = m1_before
        .iter()
        .map(|id| (id.clone(), try_pid(&env, "m1", id).expect("a running container")))
        .collect();
    env.c
        .wait("all six backends through w1's VIP", Duration::from_secs(20), || {
            let (names, _) = through_vip(&env, "w1", &vip);
            (names.len() == 6).then_some(())
        });

    // Every task the service has had so far (a replacement made before the cut, say
    // for a failed pull, is not the cut's doing).
    let tasks_before = env.c.tasks(m1, "web").len();

    // 2. w1's only link goes down: the manager marks it unreachable, not down.
    let started = std::time::Instant::now();
    let w1_ns = env.node_netns("w1");
    let link = |state: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &w1_ns, "link", "set", "eth0", state])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip link set eth0 {state}: {}",
            warren_tests::cluster::text(&out)
        );
    };
    link("down");
    env.c.wait("w1 to be unreachable", Duration::from_secs(20), || {
        let n = env.c.json(m1, &["node", "inspect", "w1", "--format", "json"]).ok()?;
        (n["state"] == "Unreachable").then_some(())
    });

    // 3. From w1 its VIP keeps answering, from its own three tasks only (m1's are out
    //    of reach), with no failed request.
    let own: BTreeSet<String> = ids.iter().map(|id| name(id)).collect();
    env.c.wait(
        "w1's VIP to answer from its own tasks only",
        Duration::from_secs(20),
        || {
            let (names, errors) = through_vip(&env, "w1", &vip);
            (names == own && errors == 0).then_some(())
        },
    );

    // 4. A task killed meanwhile is restarted by w1 itself (a new container process
    //    under the same task) and answers again.
    let pid = before_pids[&killed];
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    env.c.wait(
        "the killed task to be restarted locally",
        Duration::from_secs(30),
        || {
            let p = try_pid(&env, "w1", &killed)?;
            let (names, errors) = through_vip(&env, "w1", &vip);
            (p != pid && names == own && errors == 0).then_some(())
        },
    );

    // 5. A task made unhealthy leaves w1's backend set (the VIP answers from the
    //    other two alone, without errors), then comes back once restarted healthy.
    let out = env.exec_in("w1", &sick, &["/bin/busybox", "touch", "/tmp/sick"]);
    assert!(
        out.status.success(),
        "touch in the container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let without: BTreeSet<String> = [&killed, &untouched].into_iter().map(|id| name(id)).collect();
    env.c.wait(
        "the unhealthy task to leave w1's backends",
        Duration::from_secs(20),
        || {
            let (names, errors) = through_vip(&env, "w1", &vip);
            (names == without && errors == 0).then_some(())
        },
    );
    env.c.wait(
        "the unhealthy task to be back, healthy",
        Duration::from_secs(30),
        || {
            let (names, errors) = through_vip(&env, "w1", &vip);
            (names == own && errors == 0).then_some(())
        },
    );
    let cut_for = started.elapsed();

    // 6. The link is back: w1 is ready, says what it did, and the cluster has
    //    exactly six live tasks, the same ones as before the cut.
    link("up");
    let node = env.c.wait("w1 to be ready again", Duration::from_secs(30), || {
        let n = env.c.json(m1, &["node", "inspect", "w1", "--format", "json"]).ok()?;
        (n["state"] == "Ready").then_some(n)
    });
    let report = node["autonomy"].as_str().unwrap_or_default().to_string();
    assert!(report.contains("restarted 2 task(s) locally"), "{node}");
    let text = env.c.ok(m1, &["node", "inspect", "w1"]);
    assert!(
        text.contains("Last contact:") && text.contains("Autonomy:     last cut off: ran on its own"),
        "{text}"
    );
    env.c
        .wait("the tasks to settle after the heal", Duration::from_secs(20), || {
            let live = env.c.live_tasks(m1, "web");
            let all_running = live
                .iter()
                .all(|t| t["status"]["state"] == "Running" && t["status"]["health"] == "healthy");
            (live.len() == 6 && all_running).then_some(())
        });
    assert_eq!(live_on(&env, m1, "web", "w1"), on_w1, "w1 keeps its own tasks");
    assert_eq!(
        live_on(&env, m1, "web", "m1"),
        m1_before,
        "nothing was placed elsewhere"
    );
    let all = env.c.tasks(m1, "web");
    assert_eq!(
        all.len(),
        tasks_before,
        "no task was created during the cut: {}",
        serde_json::to_string_pretty(&all).unwrap_or_default()
    );

    // 7. No task restarted that did not need to: w1's untouched task and m1's
    //    tasks keep their processes.
    assert_eq!(
        try_pid(&env, "w1", &untouched),
        Some(before_pids[&untouched]),
        "w1's untouched task was restarted"
    );
    for (id, pid) in &m1_pids {
        assert_eq!(try_pid(&env, "m1", id), Some(*pid), "m1's task {id} was restarted");
    }
    eprintln!("edge: link down for {:.1}s", cut_for.as_secs_f64());
}
