//! A cluster on real containers for end-to-end tests: a lab network with a
//! registry, a private containerd, and `warren` nodes in their own network
//! namespaces using them. Everything is torn down in order when it drops: the
//! daemons, then containers and secret mounts, then cgroups and the network.

use crate::cluster::Cluster;
use crate::containerd::{CgroupParent, PrivateContainerd};
use crate::lab::Lab;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// One private containerd, a lab with a registry, and a cluster whose nodes use them.
pub struct Env {
    // Field order is drop order: the cluster's processes (and their task namespace
    // files and secret mounts) first, then containers, then the network, and only
    // then the lock that lets the next test start.
    pub c: Cluster,
    pins: std::collections::BTreeMap<String, BpfPins>,
    pub containerd: PrivateContainerd,
    _cgroups: Vec<CgroupParent>,
    pub lab: Lab,
    pub registry: String,
    pub namespace: String,
    _heavy: Option<std::sync::MutexGuard<'static, ()>>,
}

/// A child process killed (and reaped) on drop, so that a client started by a test
/// does not outlive the test when an assertion fails.
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    pub fn spawn(cmd: &mut std::process::Command) -> ChildGuard {
        ChildGuard(Some(cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))))
    }

    /// The child's piped stdout.
    pub fn stdout(&mut self) -> std::process::ChildStdout {
        self.0
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("a child with a piped stdout")
    }

    /// Some once the child has exited (std keeps its status for `wait_with_output`).
    /// A child that fills its pipes before exiting never does: for short outputs.
    pub fn try_wait(&mut self) -> Option<()> {
        self.0.as_mut()?.try_wait().ok().flatten().map(|_| ())
    }

    /// Ends a process that runs until stopped (e.g. `warren events`); its output.
    pub fn kill_with_output(mut self) -> std::process::Output {
        let mut child = self.0.take().expect("a child");
        let _ = child.kill();
        child.wait_with_output().expect("waiting for a child")
    }

    /// Waits for the process to exit by itself; its output.
    pub fn wait_with_output(mut self) -> std::process::Output {
        self.0
            .take()
            .expect("a child")
            .wait_with_output()
            .expect("waiting for a child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

    /// `bpftool ARGS` in node `node`'s network namespace (nsenter: `ip netns exec`
    /// remounts /sys and hides bpffs); its stdout, or the failure.
    pub fn bpftool(&self, node: &str, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_netns(node)))
            .args(["--", "bpftool"])
            .args(args)
            .output()
            .expect("running bpftool (Debian package bpftool)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(crate::cluster::text(&out))
        }
    }

    /// The ids of the programs attached for node `node`, by program name: socket
    /// programs on its cgroup, tc programs as netlink filters (`net show`) or as
    /// pinned tcx links (Debian 12's bpftool does not list tcx under `net show`).
    pub fn attached_programs(&self, node: &str) -> BTreeMap<String, u32> {
        let mut found = BTreeMap::new();
        let cg = self.node_cgroup(node);
        let cgroup = self
            .bpftool(node, &["cgroup", "show", cg.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("bpftool cgroup show {}: {e}", cg.display()));
        for l in cgroup.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if let (Some(id), Some(name)) = (w.first().and_then(|i| i.parse().ok()), w.last()) {
                found.insert(name.to_string(), id);
            }
        }
        let net = self
            .bpftool(node, &["net", "show"])
            .unwrap_or_else(|e| panic!("bpftool net show: {e}"));
        for l in net.lines().filter(|l| l.contains("warren_")) {
            let w: Vec<&str> = l.split_whitespace().collect();
            let name = w.iter().find(|x| x.starts_with("warren_")).unwrap();
            let id = w.iter().skip_while(|x| **x != "id").nth(1).and_then(|i| i.parse().ok());
            if let Some(id) = id {
                found.insert(
                    name.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '_')
                        .to_string(),
                    id,
                );
            }
        }
        let pins = self.pins_dir(node);
        for e in std::fs::read_dir(&pins).into_iter().flatten().flatten() {
            let pin = e.path();
            if !e.file_name().to_string_lossy().starts_with("link_tc_") {
                continue;
            }
            let link = self
                .bpftool(node, &["link", "show", "pinned", pin.to_str().unwrap()])
                .unwrap_or_else(|e| panic!("bpftool link show pinned {}: {e}", pin.display()));
            let id: u32 = link
                .split_whitespace()
                .skip_while(|w| *w != "prog")
                .nth(1)
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("no program in the link {}: {link}", pin.display()));
            let prog = self
                .bpftool(node, &["prog", "show", "id", &id.to_string()])
                .unwrap_or_else(|e| panic!("bpftool prog show id {id}: {e}"));
            if let Some(name) = prog.split_whitespace().skip_while(|w| *w != "name").nth(1) {
                found.insert(name.to_string(), id);
            }
        }
        found
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

    /// A `warren-dp-probe` client inside namespace `ns` and, when given, a leaf
    /// below cgroup `cgroup` (where a node's socket programs apply).
    pub fn probe(&self, ns: &str, cgroup: Option<&std::path::Path>, args: &[&str]) -> std::process::Command {
        let probe = crate::cluster::warren_bin().with_file_name("warren-dp-probe");
        assert!(
            probe.exists(),
            "{} is missing: build it with `cargo build -p warren-tests --bins`",
            probe.display()
        );
        let mut line = String::new();
        if let Some(cg) = cgroup {
            // A leaf below: on pure cgroup v2 a cgroup whose controllers are enabled
            // for its children (runc does so for the containers' parent) takes no
            // processes itself. The node's programs apply to its descendants.
            let leaf = cg.join("warren-e2e-clients");
            std::fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("mkdir {}: {e}", leaf.display()));
            line.push_str(&format!("echo $$ > {}/cgroup.procs && ", leaf.display()));
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

#[cfg(test)]
mod tests {
    use super::ChildGuard;

    #[test]
    fn a_guarded_child_is_killed_when_the_test_panics() {
        let mut pid = 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let g = ChildGuard::spawn(std::process::Command::new("sleep").arg("600"));
            pid = g.0.as_ref().unwrap().id();
            panic!("a failing assertion");
        }));
        assert!(r.is_err());
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the child {pid} outlived the panic"
        );
    }
}
