//! End-to-end tests of the worker runtime: real `warren` nodes, each in its own
//! network namespace on a lab LAN, a real containerd and runc, and a local registry
//! serving images built from busybox-static.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use warren_tests::cluster::{wait_for, Cluster};
use warren_tests::containerd::{CgroupParent, PrivateContainerd};
use warren_tests::lab::Lab;
use warren_tests::netns::NetnsFiles;

/// One private containerd, a lab with a registry, and a cluster whose nodes use them.
struct Env {
    // Field order is drop order: the cluster's processes first, then containers,
    // then the network.
    c: Cluster,
    _netns_files: NetnsFiles,
    containerd: PrivateContainerd,
    _cgroups: Vec<CgroupParent>,
    lab: Lab,
    registry: String,
    namespace: String,
}

impl Env {
    fn new() -> Env {
        let c = Cluster::new();
        let mut lab = Lab::new();
        let registry = lab.registry();
        let containerd = PrivateContainerd::start().expect("starting a private containerd");
        Env {
            c,
            _netns_files: NetnsFiles::new("/run/netns", "warren-"),
            containerd,
            _cgroups: vec![],
            lab,
            registry,
            namespace: warren_tests::containerd::unique("wrn"),
        }
    }

    fn runtime_flags(&mut self, node: &str) -> Vec<String> {
        let cg = CgroupParent::new(&format!("wrn-{node}"));
        let flags = vec![
            "--runtime".into(),
            "containerd".into(),
            "--containerd-socket".into(),
            self.containerd.socket().display().to_string(),
            "--containerd-namespace".into(),
            format!("{}-{node}", self.namespace),
            "--cgroup-parent".into(),
            cg.path.clone(),
            "--insecure-registry".into(),
            self.registry.clone(),
        ];
        self._cgroups.push(cg);
        flags
    }

    fn init(&mut self, name: &str) -> usize {
        let (ns, ip) = self.lab.node();
        self.c.place(name, &ns, &ip);
        let flags = self.runtime_flags(name);
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.c.init(name, &refs)
    }

    fn join(&mut self, name: &str, token: &str, via: usize) -> usize {
        let (ns, ip) = self.lab.node();
        self.c.place(name, &ns, &ip);
        let flags = self.runtime_flags(name);
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.c.join(name, token, via, &refs)
    }

    fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:1", self.registry)
    }

    /// Running tasks of `service` with their addresses, once `n` run.
    fn running(&self, m: usize, service: &str, n: usize) -> Vec<Value> {
        self.c.wait(
            &format!("{n} running tasks of {service}"),
            Duration::from_secs(60),
            || {
                let tasks: Vec<Value> = self
                    .c
                    .tasks(m, service)
                    .into_iter()
                    .filter(|t| t["status"]["state"] == "Running" && t["desired_state"] == "Running")
                    .collect();
                (tasks.len() == n
                    && tasks
                        .iter()
                        .all(|t| t["status"]["addr"].as_str().is_some_and(|a| !a.is_empty())))
                .then_some(tasks)
            },
        )
    }
}

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
