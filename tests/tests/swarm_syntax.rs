//! End-to-end test of Swarm's `service create` syntax and container flags: a real
//! `warren` node with containerd and runc, a task built from busybox-static that
//! reports from inside its own container what it got.

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use warren_tests::env::Env;

/// What the task prints about itself, one `key=value` per line, then `done`.
const REPORT: &str = r#"trap 'exit 0' TERM
echo "hostname=$(hostname)"
echo "env=$FROM_FILE,$BOTH"
if touch /written 2>/dev/null; then echo rootfs=writable; else echo rootfs=readonly; fi
echo "capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
echo "nofile=$(awk '/^Max open files/ {print $4 ":" $5}' /proc/self/limits)"
echo "somaxconn=$(cat /proc/sys/net/core/somaxconn)"
echo "nameserver=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)"
echo "pid1=$(tr '\0' ' ' < /proc/1/cmdline)"
echo done
sleep 3600 &
wait"#;

/// The report of a task, once it has printed all of it.
fn report(env: &Env, m: usize, task: &str) -> BTreeMap<String, String> {
    let out = env.c.wait(
        &format!("task {task} to print its report"),
        Duration::from_secs(30),
        || {
            let out = env.c.ok(m, &["task", "logs", task]);
            out.lines().any(|l| l == "done").then_some(out)
        },
    );
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn capability_set(hex: &str, bit: u32) -> bool {
    let mask = u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("CapEff {hex:?}: {e}"));
    mask & (1 << bit) != 0
}

/// The running task of `service` that is not `old`.
fn running_task(env: &Env, m: usize, service: &str, old: Option<&str>) -> Value {
    env.c.wait(
        &format!("a new running task of {service}"),
        Duration::from_secs(60),
        || {
            env.c.tasks(m, service).into_iter().find(|t| {
                t["status"]["state"] == "Running"
                    && t["desired_state"] == "Running"
                    && Some(t["id"].as_str().unwrap_or_default()) != old
            })
        },
    )
}

#[test]
fn swarm_create_syntax_and_container_flags_reach_the_container() {
    // 0. The init binary comes from Debian's tini (installed by `cargo xtask test`).
    assert!(
        warren::runtime::INIT_BINARIES
            .iter()
            .any(|p| std::path::Path::new(p).is_file()),
        "no init binary for --init: install Debian's tini (apt-get install tini)"
    );
    let mut env = Env::new();
    let m1 = env.init("m1");
    let image = env.image("warren-test/http");
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("web.env");
    std::fs::write(&env_file, "# from the file\nFROM_FILE=file-value\nBOTH=file\n").unwrap();
    let env_file = env_file.to_str().unwrap();

    // 1. A `docker service create` line with the program name changed: --name, then
    //    the image, then its command (here the arguments of --entrypoint). The
    //    command serves nothing, so the image's HTTP health check is turned off
    //    (an update waits for its new task to be healthy).
    #[rustfmt::skip]
    let id = env.c.ok(m1, &[
        "service", "create", "--name", "web", "--entrypoint", "/bin/sh", "--hostname", "swarm-web",
        "--env-file", env_file, "--env", "BOTH=flag", "--init", "--read-only",
        "--cap-add", "NET_ADMIN", "--cap-drop", "NET_RAW", "--ulimit", "nofile=1024:2048",
        "--sysctl", "net.core.somaxconn=512", "--limit-pids", "64", "--dns", "10.0.0.53",
        "--publish", "published=18080,target=80,mode=host", "--stop-grace-period", "2s",
        "--no-healthcheck", &image, "-c", REPORT,
    ]);
    assert_eq!(id.trim().len(), 25, "create prints the service ID: {id:?}");
    let task = running_task(&env, m1, "web", None);
    let task_id = task["id"].as_str().unwrap().to_string();

    // 2. Inside the container: every option as asked.
    let r = report(&env, m1, &task_id);
    assert_eq!(r["hostname"], "swarm-web", "{r:?}");
    assert_eq!(r["env"], "file-value,flag", "{r:?}");
    assert_eq!(r["rootfs"], "readonly", "{r:?}");
    let caps = &r["capeff"];
    assert!(capability_set(caps, 12), "CAP_NET_ADMIN added: {caps}");
    assert!(!capability_set(caps, 13), "CAP_NET_RAW dropped: {caps}");
    assert!(capability_set(caps, 0), "CAP_CHOWN kept from the defaults: {caps}");
    assert_eq!(r["nofile"], "1024:2048", "{r:?}");
    assert_eq!(r["somaxconn"], "512", "{r:?}");
    assert_eq!(r["nameserver"], "10.0.0.53", "{r:?}");
    assert!(
        r["pid1"].starts_with(&format!("{} -- /bin/sh -c ", warren::runtime::INIT_TARGET)),
        "PID 1 is the init running the command: {:?}",
        r["pid1"]
    );

    // 3. The pids limit is the container's cgroup's pids.max.
    let pid = env.pid("m1", &task_id);
    // On a hybrid host the pids controller is a v1 hierarchy; pids.max either way.
    let dir = warren_tests::cgroups::controller_dir(pid, "pids");
    let pids_max =
        std::fs::read_to_string(dir.join("pids.max")).unwrap_or_else(|e| panic!("{}/pids.max: {e}", dir.display()));
    assert_eq!(pids_max.trim(), "64");

    // 4. `service inspect` shows the options and the long-form port.
    let text = env.c.ok(m1, &["service", "inspect", "web"]);
    for want in [
        "Image:       ",
        "Command:     /bin/sh",
        "Hostname:    swarm-web",
        "Init:        yes",
        "Read-only:   yes",
        "Cap add:     CAP_NET_ADMIN",
        "Cap drop:    CAP_NET_RAW",
        "Ulimits:     nofile=1024:2048",
        "net.core.somaxconn=512",
        "Pids limit:  64",
        "DNS:         10.0.0.53",
        "mode=host,18080:80/tcp",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }

    // 5. `service update` with Swarm's add/rm flags: the replacement task has no
    //    init, NET_ADMIN dropped again, a writable root and Warren's resolver back.
    #[rustfmt::skip]
    env.c.ok(m1, &[
        "service", "update", "web", "--init=false", "--read-only=false", "--cap-drop", "NET_ADMIN",
        "--dns-rm", "10.0.0.53", "--sysctl-rm", "net.core.somaxconn",
    ]);
    let task2 = running_task(&env, m1, "web", Some(&task_id));
    let r = report(&env, m1, task2["id"].as_str().unwrap());
    assert!(
        r["pid1"].starts_with("/bin/sh -c "),
        "PID 1 without --init: {:?}",
        r["pid1"]
    );
    assert!(!capability_set(&r["capeff"], 12), "CAP_NET_ADMIN dropped: {r:?}");
    assert_eq!(r["rootfs"], "writable", "{r:?}");
    assert_ne!(r["somaxconn"], "512", "{r:?}");
    let addr = task2["status"]["addr"].as_str().unwrap();
    let subnet = |a: &str| a.rsplit_once('.').map(|(n, _)| n.to_string());
    assert_eq!(
        subnet(&r["nameserver"]),
        subnet(addr),
        "the default resolv.conf points at Warren's resolver on the task's bridge: {r:?}"
    );

    // 6. Bad input: one error naming the field, and nothing created.
    for (flag, value) in [
        ("--cap-add", "NET_WIZARD"),
        ("--ulimit", "nofile=2048:1024"),
        ("--sysctl", "kernel.pid_max=100"),
        ("--publish", "published=8081,targt=80"),
    ] {
        let err = env
            .c
            .fails(m1, &["service", "create", "--name", "bad", flag, value, &image]);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{flag} {value}: one line: {err}");
        assert!(
            lines[0].starts_with(&format!("error: {flag}: ")),
            "{flag} {value}: {err}"
        );
    }
    let err = env
        .c
        .fails(m1, &["service", "create", "--name", "bad", "--image", &image, &image]);
    assert!(err.starts_with("error: --image: the image is given twice"), "{err}");
    let names = env.c.ok(m1, &["service", "ls", "--format", "json"]);
    let names: Vec<Value> = serde_json::from_str(&names).unwrap();
    assert_eq!(names.len(), 1, "only web exists: {names:?}");
}
