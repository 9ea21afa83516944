//! What a node does on the kernel it runs on: the cgroup layout it found, the tc
//! attachment mode and socket destruction the kernel allows (tcx from 6.6,
//! `bpf_sock_destroy` from 6.5, netlink filters and open sockets before), and a
//! one-node cluster on real containerd serving a VIP, a published port and DNS,
//! with limits in whichever cgroup hierarchy holds them. `cargo xtask vm-test`
//! runs this file inside Debian 12's kernels; on the host it runs on the host's.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use warren_tests::env::Env;

fn release() -> (String, (u32, u32)) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("/proc/sys/kernel/osrelease")
        .trim()
        .to_string();
    let mut n = r
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (n.next().unwrap_or(0), n.next().unwrap_or(0));
    (r, v)
}

/// `nslookup NAME` in a container; the addresses of the answers.
fn lookup(env: &Env, task: &str, name: &str) -> BTreeSet<String> {
    let out = env.exec_in("m1", task, &["/bin/busybox", "nslookup", name]);
    String::from_utf8_lossy(&out.stdout)
        .split("Name:")
        .skip(1)
        .flat_map(|b| {
            b.lines()
                .filter_map(|l| l.strip_prefix("Address:"))
                .map(|a| a.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn one_node_cluster_on_this_kernel() {
    let (release, version) = release();
    let mut env = Env::new();
    let m1 = env.init("m1");
    let http = env.image("warren-test/http");
    let ns = env.node_netns("m1");
    let cg = env.node_cgroup("m1");
    let layout = if warren_tests::cgroups::unified() {
        "pure cgroup v2"
    } else {
        "hybrid cgroups (v2 at /sys/fs/cgroup/unified)"
    };

    // 1. The data plane loaded and attached its thirteen programs: eleven socket programs (v4
    //    and v6 connect, sendmsg, recvmsg, getpeername, post_bind; sockops) at the v2 root
    //    found, two tc.
    let j = env
        .c
        .json(m1, &["node", "inspect", "self", "--format", "json"])
        .unwrap();
    let dp = &j["dataplane"];
    assert_eq!(dp["enabled"], true, "{j}");
    let programs = dp["programs"].as_array().expect("programs");
    assert_eq!(programs.len(), 13, "{dp}");
    let cgroup_target = format!("cgroup:{}", cg.display());
    assert!(
        programs
            .iter()
            .filter(|p| p["target"] == cgroup_target.as_str())
            .count()
            == 11,
        "socket programs at {cgroup_target}: {dp}"
    );

    // 2. tc programs by tcx links from 6.6, by netlink (clsact) filters before.
    //    Debian 12's bpftool (7.1) lists only the netlink filters under `net show`;
    //    a tcx link is a pinned link whose program is the tc one.
    let bpftool = |args: &[&str]| {
        // nsenter, not `ip netns exec`: that remounts /sys and hides bpffs.
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["--", "bpftool"])
            .args(args)
            .output()
            .expect("bpftool (Debian package bpftool)");
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            warren_tests::cluster::text(&out)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let net = bpftool(&["net", "show"]);
    let filter = |dir: &str, prog: &str| {
        net.lines()
            .any(|l| l.starts_with("eth0") && l.contains(&format!("clsact/{dir}")) && l.contains(prog))
    };
    let pins = env.pins_dir("m1");
    let tcx_link = |dir: &str, prog: &str| -> bool {
        let pin = pins.join(format!("link_tc_{dir}_eth0"));
        if !pin.exists() {
            return false;
        }
        let link = bpftool(&["link", "show", "pinned", pin.to_str().unwrap()]);
        let id = link
            .split_whitespace()
            .skip_while(|w| *w != "prog")
            .nth(1)
            .unwrap_or_else(|| panic!("no program in the link {}: {link}", pin.display()))
            .to_string();
        bpftool(&["prog", "show", "id", &id]).contains(prog)
    };
    let tcx = version >= (6, 6);
    let found = (
        tcx_link("in", "warren_tc_in") && tcx_link("out", "warren_tc_out"),
        filter("ingress", "warren_tc_in") && filter("egress", "warren_tc_out"),
    );
    assert_eq!(
        found,
        (tcx, !tcx),
        "kernel {release}: (tcx links, netlink filters) for warren_tc_in/out on eth0; bpftool net show:\n{net}"
    );

    // 3. Socket destruction exactly where the kernel has bpf_sock_destroy (6.5+).
    let destroy = version >= (6, 5);
    assert_eq!(dp["sock_destroy"], destroy, "kernel {release}: {dp}");
    let log = env.c.nodes[m1].log_text();
    assert_eq!(
        log.contains("kernel lacks bpf_sock_destroy"),
        !destroy,
        "kernel {release}: the daemon's log about bpf_sock_destroy:\n{log}"
    );
    println!(
        "kernel {release}: {layout}; tc programs attached by {}; socket destroy {}",
        if tcx { "tcx links" } else { "netlink filters (clsact)" },
        if destroy { "on" } else { "unsupported" }
    );

    // 4. A service on real containers, with limits, a published port and a VIP.
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
            "--limit-memory",
            "64m",
            "--limit-cpu",
            "1.5",
            // The image's health check (wget exec'd in the container within 2s) is
            // too slow under emulation; the node's own HTTP check is cheaper.
            "--health-http",
            "80/healthz",
            "--health-interval",
            "2s",
            "--health-timeout",
            "10s",
            "--health-start-period",
            "60s",
        ],
    );
    let tasks = env.running(m1, "web", 2);
    let names: BTreeSet<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap()[..12].to_string())
        .collect();
    let svc: Value = env
        .c
        .json(m1, &["service", "inspect", "web", "--format", "json"])
        .unwrap();
    let vip = svc["vip"].as_str().expect("a VIP").to_string();

    // 5. The limits are in the containers' cgroups, in whichever hierarchy has them.
    for t in &tasks {
        let pid = env.pid("m1", t["id"].as_str().unwrap());
        assert_eq!(warren_tests::cgroups::memory_limit(pid), Some(64 << 20), "task {t}");
        let (quota, period) = warren_tests::cgroups::cpu_quota(pid).expect("a CPU quota");
        assert_eq!(quota * 2, period * 3, "1.5 CPUs for task {t}");
    }

    // 6. The VIP from the node reaches both tasks.
    let r = env.c.wait("the VIP to reach both tasks", Duration::from_secs(60), || {
        let r = env.probe_run(
            &ns,
            Some(&cg),
            &["connect", "--to", &format!("{vip}:80"), "--n", "20", "--http"],
        );
        (r.error_count() == 0 && r.names.len() == 2).then_some(r)
    });
    assert_eq!(r.names.keys().cloned().collect::<BTreeSet<_>>(), names, "{r:?}");

    // 7. The published port from another host on the lab network.
    let (client, _) = env.lab.node();
    let node_ip = env.c.nodes[m1].addr.split(':').next().unwrap().to_string();
    let r = env.c.wait(
        "the published port to reach both tasks",
        Duration::from_secs(30),
        || {
            let r = env.probe_run(
                &client,
                None,
                &["connect", "--to", &format!("{node_ip}:8080"), "--n", "20", "--http"],
            );
            (r.error_count() == 0 && r.names.len() == 2).then_some(r)
        },
    );
    assert_eq!(r.names.keys().cloned().collect::<BTreeSet<_>>(), names, "{r:?}");

    // 8. The service's name resolves to its VIP inside a container.
    let task = tasks[0]["id"].as_str().unwrap().to_string();
    env.c.wait(
        "web to resolve to its VIP in a container",
        Duration::from_secs(30),
        || (lookup(&env, &task, "web") == BTreeSet::from([vip.clone()])).then_some(()),
    );

    // 9. A rate limit refuses new connections over the bucket (1/s, burst 1: any
    //    client faster than that, even under emulation, is refused).
    env.c.ok(
        m1,
        &["service", "update", "web", "--rate-limit", "1/s", "--rate-burst", "1"],
    );
    let r = env.c.wait(
        "connections over the rate limit to be refused",
        Duration::from_secs(60),
        || {
            let r = env.probe_run(
                &ns,
                Some(&cg),
                &["connect", "--to", &format!("{vip}:80"), "--n", "10", "--http"],
            );
            (r.errors.get("ECONNREFUSED").copied().unwrap_or(0) > 0).then_some(r)
        },
    );
    assert!(
        r.errors.keys().all(|e| e == "ECONNREFUSED"),
        "refusals are ECONNREFUSED (bpf_set_retval, 5.18+) and nothing else fails: {r:?}"
    );

    // 10. `service rm` removes the containers, the name and the VIP.
    env.c.ok(m1, &["service", "rm", "web"]);
    env.c
        .wait("the containers of web to be deleted", Duration::from_secs(60), || {
            env.containers("m1").is_empty().then_some(())
        });
    env.c.wait(
        "the VIP to be gone from the data plane",
        Duration::from_secs(20),
        || {
            let j = env.c.json(m1, &["node", "inspect", "self", "--format", "json"]).ok()?;
            (j["dataplane"]["services"] == 0 && j["dataplane"]["backends"] == 0).then_some(())
        },
    );
}
