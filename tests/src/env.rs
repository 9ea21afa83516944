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
    pins: std::collections::BTreeMap<String, BpfPins>,
    pub containerd: PrivateContainerd,
    _cgroups: Vec<CgroupParent>,
    pub lab: Lab,
    pub registry: String,
    pub namespace: String,
    _heavy: Option<std::sync::MutexGuard<'static, ()>>,
}

/// A node's pinned data plane: programs detached and pins removed on drop (a
/// killed daemon leaves them attached, as it should in production).
pub struct BpfPins {
    pub dir: std::path::PathBuf,
    pub cgroup_root: std::path::PathBuf,
}

impl BpfPins {
    pub fn new(cgroup_root: &str) -> BpfPins {
        BpfPins {
            dir: std::path::PathBuf::from("/sys/fs/bpf/warren-e2e").join(crate::containerd::unique("n")),
            cgroup_root: cgroup_root.into(),
        }
    }
}

impl Drop for BpfPins {
    fn drop(&mut self) {
        let mut cfg = warren::dataplane::DataplaneConfig::new("e2e");
        cfg.bpffs_dir = self.dir.clone();
        cfg.cgroup_root = self.cgroup_root.clone();
        if let Err(e) = warren::dataplane::EbpfDataplane::cleanup(&cfg) {
            eprintln!("harness: cleaning up the data plane at {}: {e}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
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
            pins: Default::default(),
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
        // Each node's data plane on its own cgroup subtree and pin directory.
        let pins = BpfPins::new(&format!("{}{}", crate::cgroups::v2_root().display(), cg.path));
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
            "--cgroup-root".into(),
            pins.cgroup_root.display().to_string(),
            "--bpffs".into(),
            pins.dir.display().to_string(),
            "--dataplane-iface".into(),
            "eth0".into(),
        ];
        self._cgroups.push(cg);
        self.pins.insert(node.to_string(), pins);
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

    /// The cgroup v2 directory whose processes node `node`'s data plane translates.
    pub fn node_cgroup(&self, node: &str) -> std::path::PathBuf {
        self.pins[node].cgroup_root.clone()
    }

    /// The bpffs directory of node `node`'s data plane.
    pub fn pins_dir(&self, node: &str) -> std::path::PathBuf {
        self.pins[node].dir.clone()
    }

    /// The network namespace node `node` runs in.
    pub fn node_netns(&self, node: &str) -> String {
        self.node(node).netns.clone().expect("the node runs in a namespace")
    }

    fn node(&self, name: &str) -> &crate::cluster::NodeProc {
        self.c
            .nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a node of that name")
    }

    /// The text of `node`'s `/metrics` page, fetched from inside its namespace.
    pub fn metrics(&self, node: &str) -> String {
        let url = format!("http://{}/metrics", self.node(node).metrics_addr);
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_netns(node)))
            .args(["--", "curl", "-sS", "--noproxy", "*", "--max-time", "5", &url])
            .output()
            .expect("running curl (Debian package curl)");
        assert!(
            out.status.success(),
            "GET {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `warren-dp-probe` client inside namespace `ns` and, when given, cgroup
    /// `cgroup` (where a node's socket programs apply).
    pub fn probe(&self, ns: &str, cgroup: Option<&std::path::Path>, args: &[&str]) -> std::process::Command {
        let probe = crate::cluster::warren_bin().with_file_name("warren-dp-probe");
        assert!(
            probe.exists(),
            "{} is missing: build it with `cargo build -p warren-tests --bins`",
            probe.display()
        );
        let mut line = String::new();
        if let Some(cg) = cgroup {
            line.push_str(&format!("echo $$ > {}/cgroup.procs && ", cg.display()));
        }
        line.push_str("exec");
        for a in std::iter::once(probe.to_str().unwrap()).chain(args.iter().copied()) {
            line.push_str(&format!(" '{a}'"));
        }
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .args(["--", "sh", "-c", &line]);
        cmd
    }

    /// Runs a probe client to completion and parses what it saw.
    pub fn probe_run(&self, ns: &str, cgroup: Option<&std::path::Path>, args: &[&str]) -> crate::dataplane::Report {
        let out = self.probe(ns, cgroup, args).output().expect("running warren-dp-probe");
        assert!(
            out.status.success(),
            "warren-dp-probe {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        crate::dataplane::Report::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Runs `args` inside a task's container (its mount and network namespaces).
    /// The process also joins the container's cgroup v2, so that the node's socket
    /// programs see it as the container.
    pub fn exec_in(&self, node: &str, task_id: &str, args: &[&str]) -> std::process::Output {
        let pid = self.pid(node, task_id);
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let v2 = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .to_string();
        let mut line = format!(
            "echo $$ > {}{v2}/cgroup.procs && exec nsenter -t {pid} -m -n --",
            crate::cgroups::v2_root().display()
        );
        for a in args {
            line.push_str(&format!(" '{a}'"));
        }
        std::process::Command::new("sh")
            .args(["-c", &line])
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
        assert!(
            out.status.success(),
            "ctr {}: {}",
            args.join(" "),
            crate::cluster::text(&out)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}
