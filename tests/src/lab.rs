//! A private network for multi-node tests: a "lan" namespace with a bridge, one
//! namespace per node plugged into it by a veth, and an OCI registry (Debian's
//! docker-registry) serving the test images from the lan, so that nodes pull over
//! the lab network and nothing touches the host's own network configuration.
//! Dropping the lab kills the registry and deletes every namespace and link.

use crate::images::{self, TestImage};
use crate::netns::{bridge, veth_pair, Link, NetNs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub lan: NetNs,
    _bridge: Link,
    /// `10.X.0` of this lab's /24.
    pub prefix: String,
    tag: String,
    nodes: Vec<(NetNs, Link)>,
    registry: Option<Child>,
    pub dir: tempfile::TempDir,
    registry_addr: Option<String>,
}

fn require(bin: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(found, "{bin} is missing: install the Debian package {package}");
}

impl Lab {
    pub fn new() -> Lab {
        crate::netns::require_root();
        crate::netns::require_network_tools();
        // Several labs in one test binary get distinct /24s (10.200.0.0 and up).
        let seq = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let n = seq + (std::process::id() % 20) * 2;
        let prefix = format!("10.{}.0", 200 + n % 50);
        let tag = format!("lab{}x{seq}", std::process::id() % 100_000);
        let lan = NetNs::new(&format!("{tag}-lan"));
        let br = bridge(&lan, "lanbr");
        lan.ip(&["addr", "add", &format!("{prefix}.254/24"), "dev", "lanbr"]);
        Lab {
            lan,
            _bridge: br,
            prefix,
            tag,
            nodes: vec![],
            registry: None,
            dir: tempfile::Builder::new()
                .prefix("warren-lab-")
                .tempdir()
                .expect("temp dir"),
            registry_addr: None,
        }
    }

    /// A new node namespace on the lan; returns its name and address.
    pub fn node(&mut self) -> (String, String) {
        let i = self.nodes.len() + 1;
        let ns = NetNs::new(&format!("{}-n{i}", self.tag));
        // The lan side lives in the lab's own namespace: a short name is unique enough.
        let host_end = format!("n{i}");
        let link = veth_pair(&self.lan, &host_end, &ns, "eth0");
        self.lan.ip(&["link", "set", &host_end, "master", "lanbr"]);
        let ip = format!("{}.{i}", self.prefix);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["route", "add", "default", "via", &format!("{}.254", self.prefix)]);
        let name = ns.name().to_string();
        self.nodes.push((ns, link));
        (name, ip)
    }

    /// Builds the test images, starts a registry in the lan and pushes them to it;
    /// returns `HOST:PORT` for image references and `--insecure-registry`.
    pub fn registry(&mut self) -> String {
        if let Some(a) = &self.registry_addr {
            return a.clone();
        }
        require("docker-registry", "docker-registry");
        require("skopeo", "skopeo");
        let layout = self.dir.path().join("layout");
        images::build_layout(&layout).expect("building the test images");
        let storage = self.dir.path().join("registry");
        std::fs::create_dir_all(&storage).unwrap();
        let addr = format!("{}.254:5000", self.prefix);
        let config = self.dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.path().join("registry.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.lan.name(), "docker-registry", "serve"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        self.registry = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15) * crate::cluster::time_scale();
        loop {
            if Lab::http_get(self.lan.name(), &format!("http://{addr}/v2/")).is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not start: {}",
                self.registry_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for image in TestImage::ALL {
            self.push(&layout, image.layout_ref(), &format!("{addr}/{}:1", image.repository()));
        }
        // A second tag of the HTTP image, for updates and canaries.
        self.push(
            &layout,
            TestImage::Http.layout_ref(),
            &format!("{addr}/warren-test/http:2"),
        );
        self.registry_addr = Some(addr.clone());
        addr
    }

    fn push(&self, layout: &Path, layout_ref: &str, dest: &str) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.lan.name(),
                "skopeo",
                "--insecure-policy",
                "copy",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{layout_ref}", layout.display()))
            .arg(format!("docker://{dest}"))
            .env("HOME", self.dir.path())
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn registry_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// An OCI archive of a test image, for `warren image load`.
    pub fn oci_archive(&self, image: TestImage, name: &str) -> PathBuf {
        let layout = self.dir.path().join("layout");
        if !layout.join("index.json").exists() {
            images::build_layout(&layout).expect("building the test images");
        }
        let layout = images::build_layout(&layout).expect("reading the layout");
        let out = self.dir.path().join(format!("{}.tar", image.layout_ref()));
        images::oci_archive(&layout, image, name, &out).expect("writing an OCI archive");
        out
    }

    /// GET `url` from inside namespace `ns` (curl; the host's static busybox wget
    /// crashes in glibc's resolver); the body, or None.
    pub fn http_get(ns: &str, url: &str) -> Option<String> {
        require("curl", "curl");
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "3", url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.registry.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Node namespaces before the lan; NetNs and Link clean up after themselves.
        self.nodes.clear();
    }
}
