//! A cluster on real containers for end-to-end tests: a lab network with a
//! registry, a private containerd, and `warren` nodes in their own network
//! namespaces using them. Everything is torn down in order when it drops: the
//! daemons, then containers and secret mounts, then cgroups and the network.

use crate::cluster::Cluster;
use crate::containerd::{CgroupParent, PrivateContainerd};
use crate::lab::Lab;
use crate::netns::NetnsFiles;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// One private containerd, a lab with a registry, and a cluster whose nodes use them.
pub struct Env {
    // Field order is drop order: the cluster's processes first, then containers,
    // then the network, and only then the lock that lets the next test start.
    pub c: Cluster,
    _netns_files: NetnsFiles,
    _secrets: SecretMounts,
    pub containerd: PrivateContainerd,
    _cgroups: Vec<CgroupParent>,
    pub lab: Lab,
    pub registry: String,
    pub namespace: String,
    _heavy: Option<std::sync::MutexGuard<'static, ()>>,
}

/// Secret tmpfs mounts that killed daemons leave under /run/warren/secrets.
struct SecretMounts(BTreeSet<String>);

const SECRETS_ROOT: &str = "/run/warren/secrets";

fn secret_node_dirs() -> BTreeSet<String> {
    std::fs::read_dir(SECRETS_ROOT)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for SecretMounts {
    fn drop(&mut self) {
        for dir in secret_node_dirs().difference(&self.0) {
            let path = std::path::Path::new(SECRETS_ROOT).join(dir);
            crate::containerd::unmount_below(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let mut c = Cluster::with_flags(crate::cluster::fast_flags());
        let heavy = c.take_heavy_guard();
        let mut lab = Lab::new();
        let registry = lab.registry();
        let containerd = PrivateContainerd::start().expect("starting a private containerd");
        Env {
            c,
            _netns_files: NetnsFiles::new("/run/netns", "warren-"),
            _secrets: SecretMounts(secret_node_dirs()),
            containerd,
            _cgroups: vec![],
            lab,
            registry,
            namespace: crate::containerd::unique("wrn"),
            _heavy: heavy,
        }
    }

    pub fn runtime_flags(&mut self, node: &str) -> Vec<String> {
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

    pub fn init(&mut self, name: &str) -> usize {
        let (ns, ip) = self.lab.node();
        self.c.place(name, &ns, &ip);
        let flags = self.runtime_flags(name);
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.c.init(name, &refs)
    }

    pub fn join(&mut self, name: &str, token: &str, via: usize) -> usize {
        let (ns, ip) = self.lab.node();
        self.c.place(name, &ns, &ip);
        let flags = self.runtime_flags(name);
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.c.join(name, token, via, &refs)
    }

    pub fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:1", self.registry)
    }

    /// Running tasks of `service` with their addresses, once `n` run.
    pub fn running(&self, m: usize, service: &str, n: usize) -> Vec<Value> {
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

impl Env {
    /// The containerd namespace of node `name`.
    pub fn ns_of(&self, node: &str) -> String {
        format!("{}-{node}", self.namespace)
    }

    pub fn with_runtime<T>(&self, node: &str, f: impl AsyncFnOnce(&warren::runtime::Containerd) -> T) -> T {
        let cfg = self.containerd.runtime_config(&self.ns_of(node), "/unused");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let c = warren::runtime::Containerd::connect(cfg)
                    .await
                    .expect("connecting to containerd");
                f(&c).await
            })
    }

    /// The host pid of a task's container.
    pub fn pid(&self, node: &str, task_id: &str) -> u32 {
        use warren::runtime::ContainerRuntime;
        self.with_runtime(node, async |c| {
            c.status(task_id)
                .await
                .expect("container status")
                .task
                .expect("a running task")
                .pid
        })
    }

    /// Containers in node `name`'s namespace.
    pub fn containers(&self, node: &str) -> Vec<String> {
        use warren::runtime::ContainerRuntime;
        self.with_runtime(node, async |c| {
            c.list(&Default::default())
                .await
                .expect("listing containers")
                .into_iter()
                .map(|s| s.id)
                .collect()
        })
    }

    /// Runs `args` inside a task's container (its mount and network namespaces).
    pub fn exec_in(&self, node: &str, task_id: &str, args: &[&str]) -> std::process::Output {
        let pid = self.pid(node, task_id);
        std::process::Command::new("nsenter")
            .arg("-t")
            .arg(pid.to_string())
            .args(["-m", "-n", "--"])
            .args(args)
            .output()
            .expect("running nsenter (Debian package util-linux)")
    }

    pub fn ctr(&self, node: &str, args: &[&str]) -> String {
        let out = std::process::Command::new("ctr")
            .arg("-a")
            .arg(self.containerd.socket())
            .args(["-n", &self.ns_of(node)])
            .args(args)
            .output()
            .expect("running ctr (Debian package containerd)");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}
