//! End-to-end tests of blue-green and stepped canary releases on real containers,
//! with an HTTP client (a new connection per request) through the VIP the whole
//! time: the blue-green switch moves every new connection at once, and back at
//! once on `service rollback` during the hold; a good canary is promoted step by
//! step; a canary whose connections fail is rolled back at its first step by the
//! analysis of the data plane's per-backend outcome counters, and `service
//! inspect` and `warren events` say why.

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use warren_tests::cluster::warren_bin;
use warren_tests::dataplane::Report;
use warren_tests::env::{ChildGuard, Env};

const HEALTH: &[&str] = &[
    "--health-cmd",
    "wget -q -O /dev/null http://127.0.0.1/healthz",
    "--health-interval",
    "1s",
    "--health-retries",
    "1",
];

fn inspect(env: &Env, m: usize, service: &str) -> Value {
    env.c
        .json(m, &["service", "inspect", service, "--format", "json"])
        .unwrap()
}

fn update_state(env: &Env, m: usize, service: &str) -> (String, String) {
    let u = &inspect(env, m, service)["update_status"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&u["state"]), s(&u["message"]))
}

/// The closed-loop client through the VIP: new connection per request.
struct Client {
    child: ChildGuard,
    stop: std::path::PathBuf,
}

impl Client {
    fn start(env: &Env, vip: &str, name: &str) -> Client {
        let (ns, cg) = (env.node_netns("m1"), env.node_cgroup("m1"));
        let stop = env.c.dir.path().join(format!("stop-{name}"));
        let child = ChildGuard::spawn(
            env.probe(
                &ns,
                Some(&cg),
                &[
                    "loop",
                    "--to",
                    &format!("{vip}:80"),
                    "--stop-file",
                    stop.to_str().unwrap(),
                    "--http",
                    "--runs",
                ],
            )
            .stdout(std::process::Stdio::piped()),
        );
        Client { child, stop }
    }

    fn finish(self) -> Report {
        std::fs::write(&self.stop, "").unwrap();
        let out = self.child.wait_with_output();
        Report::parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Hostname (what the http image answers: the task ID's first 12 characters) →
/// image, for every task the service ever had.
fn images_by_name(env: &Env, m: usize, service: &str) -> BTreeMap<String, String> {
    env.c
        .tasks(m, service)
        .into_iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap()[..12].to_string(),
                t["spec"]["image"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The versions that answered, in order, one entry per stretch of one version.
fn version_runs(r: &Report, images: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in &r.runs {
        let image = images.get(name).cloned().unwrap_or_else(|| format!("unknown {name}"));
        if out.last() != Some(&image) {
            out.push(image);
        }
    }
    out
}

/// `warren events --kind service` in the background; its lines on `finish`.
fn spawn_events(env: &Env, m: usize) -> ChildGuard {
    ChildGuard::spawn(
        std::process::Command::new(warren_bin())
            .arg("-H")
            .arg(format!("unix://{}", env.c.nodes[m].socket.display()))
            .args(["events", "--kind", "service"])
            .stdout(std::process::Stdio::piped()),
    )
}

#[test]
fn blue_green_switches_in_one_step_and_a_rollback_during_the_hold_flips_back() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let v1 = env.image("warren-test/http");
    let v2 = format!("{}/warren-test/http:2", env.registry);
    let mut args = vec!["service", "create", "web", "--image", &v1, "--replicas", "3"];
    args.extend_from_slice(HEALTH);
    env.c.ok(m1, &args);
    env.c.wait_healthy_on(m1, "web", &v1, 3);
    let vip = inspect(&env, m1, "web")["vip"].as_str().unwrap().to_string();
    let client = Client::start(&env, &vip, "bg");

    // 1. Blue-green with a long hold: the command returns once switched.
    let out = env.c.ok(
        m1,
        &[
            "service",
            "update",
            "web",
            "--image",
            &v2,
            "--update-strategy",
            "blue-green",
            "--blue-green-hold",
            "5m",
        ],
    );
    assert!(out.contains("all new connections switched to it"), "{out}");
    let s = inspect(&env, m1, "web");
    assert_eq!(s["canary"]["weight"], 100, "{s}");
    assert_eq!(s["spec"]["image"], v1.as_str(), "the old version is held: {s}");

    // 2. `service rollback` during the hold flips back at once and ends the release.
    let out = env.c.ok(m1, &["service", "rollback", "web"]);
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(
        update_state(&env, m1, "web"),
        ("RollbackCompleted".into(), "rolled back: requested".into())
    );
    env.c.wait_healthy_on(m1, "web", &v1, 3);

    // 3. Again with a short hold: promoted by itself once the hold passes.
    env.c.ok(
        m1,
        &[
            "service",
            "update",
            "web",
            "--image",
            &v2,
            "--update-strategy",
            "blue-green",
            "--blue-green-hold",
            "2s",
        ],
    );
    env.c.wait("the promotion after the hold", Duration::from_secs(60), || {
        let (state, message) = update_state(&env, m1, "web");
        (state == "Completed").then_some(message)
    });
    let (_, message) = update_state(&env, m1, "web");
    assert_eq!(message, "blue-green release promoted: the hold of 2s passed");
    env.c.wait_healthy_on(m1, "web", &v2, 3);
    assert_eq!(inspect(&env, m1, "web")["spec"]["image"], v2.as_str());

    // 4. Not one request failed, and the answers came from one version, then the
    //    other: old, new (switch), old (rollback), new (switch), never a mix.
    let r = client.finish();
    assert_eq!(r.error_count(), 0, "failed requests: {r:?}");
    assert!(r.answers() > 100, "{r:?}");
    let runs = version_runs(&r, &images_by_name(&env, m1, "web"));
    assert_eq!(runs, vec![v1.clone(), v2.clone(), v1.clone(), v2.clone()], "{r:?}");
}

#[test]
fn canary_steps_promote_a_good_canary_and_roll_back_one_whose_connections_fail() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let v1 = env.image("warren-test/http");
    let v2 = format!("{}/warren-test/http:2", env.registry);
    let mut args = vec!["service", "create", "web", "--image", &v1, "--replicas", "4"];
    args.extend_from_slice(HEALTH);
    env.c.ok(m1, &args);
    env.c.wait_healthy_on(m1, "web", &v1, 4);
    let vip = inspect(&env, m1, "web")["vip"].as_str().unwrap().to_string();
    let events = spawn_events(&env, m1);

    // 1. A good canary: every step passes and it is promoted, no request fails.
    let client = Client::start(&env, &vip, "good");
    let out = env.c.ok(
        m1,
        &[
            "service",
            "update",
            "web",
            "--image",
            &v2,
            "--canary-steps",
            "25,50,100",
            "--canary-interval",
            "2s",
        ],
    );
    assert!(out.contains("canary step 2/3 (50%)"), "{out}");
    let (state, message) = update_state(&env, m1, "web");
    assert_eq!(state, "Completed", "{message}");
    assert!(
        message.starts_with("canary release promoted: every step passed, the last with canary 0 of "),
        "{message}"
    );
    env.c.wait_healthy_on(m1, "web", &v2, 4);
    let r = client.finish();
    assert_eq!(r.error_count(), 0, "failed requests: {r:?}");
    let images = images_by_name(&env, m1, "web");
    let answered: BTreeMap<&str, u64> = r.names.iter().fold(BTreeMap::new(), |mut m, (n, c)| {
        *m.entry(images.get(n).map_or("unknown", |s| s.as_str())).or_default() += c;
        m
    });
    assert!(answered.get(v2.as_str()).is_some_and(|c| *c > 0), "{answered:?}");

    // 2. A canary that refuses every connection (its server listens elsewhere, and
    //    it has no health check to give it away): the counters roll it back at the
    //    first step, and inspect and the events say why.
    let client = Client::start(&env, &vip, "bad");
    let err = env.c.fails(
        m1,
        &[
            "service",
            "update",
            "web",
            "--image",
            &v1,
            "--env-add",
            "PORT=81",
            "--no-healthcheck",
            "--canary-steps",
            "50,100",
            "--canary-interval",
            "2s",
        ],
    );
    let r = client.finish();
    assert!(
        err.contains("web: rolled back: canary step 1/2 (50%): canary "),
        "{err}"
    );
    let (state, message) = update_state(&env, m1, "web");
    assert_eq!(state, "RollbackCompleted", "{message}");
    assert!(message.contains(" refused, "), "{message}");
    assert!(message.contains("exceeds the stable version's 0.00"), "{message}");
    assert!(r.error_count() > 0, "the canary did take connections: {r:?}");
    // The stable backends' outcomes are in the metrics (the canary's left with it).
    let m = env.metrics("m1");
    assert!(
        m.lines()
            .any(|l| l.starts_with("warren_dataplane_backend_outcomes_total{")
                && l.contains("outcome=\"established\"")
                && !l.ends_with(" 0")),
        "no established outcome in the metrics:\n{m}"
    );
    // The stable version kept serving; the service is on v2 still.
    env.c.wait_healthy_on(m1, "web", &v2, 4);
    let (ns, cg) = (env.node_netns("m1"), env.node_cgroup("m1"));
    let r = env.probe_run(
        &ns,
        Some(&cg),
        &["connect", "--to", &format!("{vip}:80"), "--n", "100", "--http"],
    );
    assert_eq!(r.error_count(), 0, "failed requests after the rollback: {r:?}");
    let out = events.kill_with_output();
    let lines = String::from_utf8_lossy(&out.stdout);
    assert!(
        lines.contains("web (") && lines.contains(": canary step 1/3 (25%) passed ("),
        "{lines}"
    );
    assert!(lines.contains(": rolled back: canary step 1/2 (50%)"), "{lines}");
}
