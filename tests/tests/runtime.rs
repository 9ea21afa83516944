//! End-to-end tests of `warren::runtime` against a real containerd + runc, a local
//! docker-registry pushed to with skopeo, and network namespaces. Run as root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_client::services::v1::snapshots::StatSnapshotRequest;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, GetRequest, InfoRequest};
use futures::StreamExt;
use tonic::Request;
use warren::runtime::{
    ContainerRuntime, ContainerSpec, Containerd, Credentials, HealthTest, LogOptions, MountSpec, NetworkMode, Protocol,
    Resources, RuntimeError, TaskState, LABEL_NODE, LABEL_TASK_ID,
};
use warren_tests::containerd::{require, unique, CgroupParent, PrivateContainerd};
use warren_tests::images::{self, Layout, TestImage, HTTP_MULTI_REF};
use warren_tests::registry::{LocalRegistry, TokenAuth};

const NS: &str = "warren";

/// One test's world. Fields drop in order: runtime, containerd (deleting its
/// containers), cgroup parent, network namespaces, registry, files.
struct Env {
    rt: Containerd,
    ctd: PrivateContainerd,
    cgroup: CgroupParent,
    netns: Vec<Netns>,
    registry: LocalRegistry,
    layout: Layout,
    _layout_dir: tempfile::TempDir,
    files: tempfile::TempDir,
}

fn setup(auth: Option<TokenAuth>, creds: Option<Credentials>) -> Env {
    let layout_dir = tempfile::tempdir().expect("temp dir");
    let layout = images::build_layout(layout_dir.path()).expect("build test images");
    let registry = match auth {
        None => LocalRegistry::start(),
        Some(a) => LocalRegistry::start_with_token_auth(a),
    }
    .expect("start docker-registry");
    registry
        .push(&layout.dir, TestImage::Http.layout_ref(), "warren-test/http:1", false)
        .expect("push http");
    registry
        .push(&layout.dir, HTTP_MULTI_REF, "warren-test/http:multi", true)
        .expect("push http index");
    registry
        .push(&layout.dir, TestImage::Crash.layout_ref(), "warren-test/crash:1", false)
        .expect("push crash");
    let ctd = PrivateContainerd::start().expect("start containerd");
    let cgroup = CgroupParent::new("wrn-rt");
    let mut config = ctd.runtime_config(NS, &cgroup.path);
    config.registry.insecure = vec![registry.host()];
    if let Some(c) = creds {
        config.registry.credentials.insert(registry.host(), c);
    }
    let rt = block(Containerd::connect(config)).expect("connect to containerd");
    Env {
        rt,
        ctd,
        cgroup,
        netns: vec![],
        registry,
        layout,
        _layout_dir: layout_dir,
        files: tempfile::tempdir().expect("temp dir"),
    }
}

/// Runs a future on the current multi-thread runtime from sync setup code.
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

impl Env {
    fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host())
    }

    fn netns(&mut self) -> PathBuf {
        let n = Netns::create();
        let p = n.path();
        self.netns.push(n);
        p
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.files.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    async fn connect_again(&self) -> Containerd {
        let mut config = self.ctd.runtime_config(NS, &self.cgroup.path);
        config.registry.insecure = vec![self.registry.host()];
        Containerd::connect(config).await.expect("reconnect")
    }

    fn cd(&self) -> tonic::transport::Channel {
        block(containerd_client::connect(self.ctd.socket())).expect("connect")
    }
}

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("containerd-namespace", NS.parse().unwrap());
    r
}

/// A network namespace with loopback up; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Netns {
        let ip = require("ip", "iproute2").expect("ip");
        let name = unique("wrn-rt");
        let ok = Command::new(&ip)
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(ok.success(), "ip netns add {name} failed");
        let n = Netns { name };
        let ok = Command::new(&ip)
            .args(["-n", &n.name, "link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(ok.success(), "loopback up in {}", n.name);
        n
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs busybox inside the namespace (from the host's filesystem).
    fn busybox(&self, args: &[&str]) -> std::process::Output {
        let bb = images::busybox().expect("busybox-static");
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(bb)
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// GETs `url` from inside the namespace with curl (the host's static busybox
    /// wget crashes in glibc's resolver), retrying while the server starts.
    fn http_get(&self, url: &str) -> String {
        let curl = require("curl", "curl").expect("curl");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name])
                .arg(&curl)
                .args(["-sS", "-f", "-m", "3", url])
                .output()
                .expect("ip netns exec curl");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "GET {url} in {} kept failing: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn spec(id: &str, image: &str) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        image: image.to_string(),
        ..Default::default()
    }
}

fn sh(script: &str) -> Option<Vec<String>> {
    Some(vec!["/bin/sh".into(), "-c".into(), script.into()])
}

async fn exec_ok(rt: &Containerd, id: &str, cmd: &[&str]) -> String {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let out = rt.exec(id, &cmd, Duration::from_secs(10)).await.expect("exec");
    assert_eq!(out.exit_code, 0, "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn log_lines(rt: &Containerd, id: &str) -> Vec<String> {
    rt.logs(id, LogOptions::default())
        .await
        .expect("logs")
        .map(|l| l.expect("log line"))
        .collect()
        .await
}

/// Waits until the container's log has a line containing `needle`.
async fn wait_log(rt: &Containerd, id: &str, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = log_lines(rt, id).await;
        if lines.iter().any(|l| l.contains(needle)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared in the log of {id}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cgroup_line(pid: u32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/pid/cgroup");
    text.lines()
        .find(|l| l.split(':').nth(1) == Some(controller))
        .unwrap_or_else(|| panic!("no {controller:?} line in /proc/{pid}/cgroup: {text}"))
        .splitn(3, ':')
        .nth(2)
        .expect("path")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_index_and_run_http_in_netns() {
    let mut env = setup(None, None);
    let image = env.image("warren-test/http:multi");
    // Tasks of one service start together on a node, so their pulls of one image
    // race for the same blobs: containerd answers a write to a blob another pull has
    // just committed with "already exists", which is success, not a failed task.
    let pulls = (0..8).map(|_| env.rt.pull(&image, None));
    let mut results = futures::future::join_all(pulls).await.into_iter().enumerate();
    let (_, first) = results.next().unwrap();
    let info = first.expect("pull through the index");
    for (i, r) in results {
        let other = r.unwrap_or_else(|e| panic!("pull {i} of 8 concurrent pulls: {e}"));
        assert_eq!(other.digest, info.digest);
    }
    assert_eq!(info.name, image);
    assert_eq!(
        info.digest, env.layout.http_multi.digest,
        "image record targets the index"
    );
    assert_eq!(
        info.manifest_digest,
        env.layout.manifests[&TestImage::Http].digest,
        "amd64 manifest chosen"
    );
    assert_ne!(info.manifest_digest, env.layout.http_arm64_manifest.digest);
    assert_eq!(info.platform.architecture, "amd64");
    assert_eq!(info.config.exposed_ports, vec![(80, Protocol::Tcp)]);
    assert_eq!(info.config.entrypoint, vec!["/usr/local/bin/warren-http"]);
    assert_eq!(info.config.stop_signal.as_deref(), Some("SIGTERM"));
    let hc = info.config.healthcheck.clone().expect("healthcheck");
    assert_eq!(
        hc.test,
        HealthTest::Exec(vec![
            "wget".into(),
            "-q".into(),
            "-O".into(),
            "/dev/null".into(),
            "http://127.0.0.1/healthz".into()
        ])
    );
    assert_eq!(hc.interval, Duration::from_secs(2));

    // GC labels as containerd's own pull leaves them.
    let ch = env.cd();
    let mut content = containerd_client::services::v1::content_client::ContentClient::new(ch.clone());
    let labels = |digest: &str| {
        let mut content = content.clone();
        let digest = digest.to_string();
        async move {
            content
                .info(req(InfoRequest { digest }))
                .await
                .expect("content info")
                .into_inner()
                .info
                .expect("info")
                .labels
        }
    };
    let index_labels = labels(&env.layout.http_multi.digest).await;
    assert_eq!(index_labels["containerd.io/gc.ref.content.m.1"], info.manifest_digest);
    let manifest_labels = labels(&info.manifest_digest).await;
    assert_eq!(
        manifest_labels["containerd.io/gc.ref.content.config"],
        info.config_digest
    );
    let layer0 = manifest_labels["containerd.io/gc.ref.content.l.0"].clone();
    assert!(manifest_labels.contains_key("containerd.io/gc.ref.content.l.1"));
    let layer_labels = labels(&layer0).await;
    assert!(layer_labels["containerd.io/uncompressed"].starts_with("sha256:"));
    assert_eq!(
        layer_labels[&format!("containerd.io/distribution.source.{}", env.registry.host())],
        "warren-test/http"
    );
    let config_labels = labels(&info.config_digest).await;
    assert_eq!(config_labels["containerd.io/gc.ref.snapshot.overlayfs"], info.chain_id);
    let _ = &mut content;

    // Pulling again writes nothing: the image record is not even updated.
    let mut images_client = containerd_client::services::v1::images_client::ImagesClient::new(ch.clone());
    let updated = |c: &mut containerd_client::services::v1::images_client::ImagesClient<_>| {
        let mut c = c.clone();
        let name = image.clone();
        async move {
            c.get(req(GetImageRequest { name }))
                .await
                .expect("get image")
                .into_inner()
                .image
                .expect("image")
                .updated_at
        }
    };
    let before = updated(&mut images_client).await;
    let again = env.rt.pull(&image, None).await.expect("second pull");
    assert_eq!(again, info);
    assert_eq!(
        updated(&mut images_client).await,
        before,
        "second pull touched the image record"
    );

    // Run it in a network namespace of its own.
    let netns = env.netns();
    let ns = env.netns.last().unwrap();
    let hosts = env.file("hosts", "127.0.0.1 localhost\n10.99.0.7 warren-hosts-marker\n");
    let resolv = env.file("resolv.conf", "nameserver 10.99.0.53\n# warren-resolv-marker\n");
    let id = unique("web");
    let mut s = spec(&id, &image);
    s.hostname = Some("web-1".into());
    s.network = NetworkMode::Join(netns.clone());
    s.env = vec![("FOO".into(), "bar".into())];
    s.resources = Resources {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids_limit: Some(64),
    };
    s.mounts = vec![MountSpec::Tmpfs {
        target: "/scratch".into(),
        size_bytes: Some(4 << 20),
        mode: Some(0o1777),
    }];
    s.hosts_file = Some(hosts);
    s.resolv_conf = Some(resolv);
    s.labels.insert(LABEL_NODE.into(), "node-a".into());
    let pid = env.rt.run(&s).await.expect("run http");
    assert!(pid > 0);
    assert_eq!(
        ns.http_get("http://127.0.0.1/").trim(),
        "web-1",
        "answers with its hostname"
    );
    assert_eq!(ns.http_get("http://127.0.0.1/healthz").trim(), "ok");
    // The image's own health check command works inside the container.
    let HealthTest::Exec(check) = &hc.test else {
        panic!("exec health check")
    };
    let out = env
        .rt
        .exec(&id, check, hc.timeout * 5)
        .await
        .expect("health check exec");
    assert_eq!(
        out.exit_code,
        0,
        "health check: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(exec_ok(&env.rt, &id, &["cat", "/etc/hosts"])
        .await
        .contains("warren-hosts-marker"));
    assert!(exec_ok(&env.rt, &id, &["cat", "/etc/resolv.conf"])
        .await
        .contains("warren-resolv-marker"));
    let mounts = exec_ok(&env.rt, &id, &["cat", "/proc/mounts"]).await;
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("tmpfs /scratch tmpfs") && l.contains("size=4096k")),
        "{mounts}"
    );
    let envs = exec_ok(&env.rt, &id, &["env"]).await;
    assert!(envs.lines().any(|l| l == "FOO=bar"), "{envs}");
    assert!(envs.lines().any(|l| l == "PORT=80"), "image env kept: {envs}");
    assert_eq!(exec_ok(&env.rt, &id, &["pwd"]).await.trim(), "/www", "image workdir");

    // Exec: exit codes, separate streams, timeouts.
    let out = env
        .rt
        .exec(
            &id,
            &["sh".into(), "-c".into(), "echo out; echo err >&2; exit 7".into()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 7);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let e = env
        .rt
        .exec(&id, &["sleep".into(), "30".into()], Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::ExecTimeout { .. }), "{e}");

    // Limits in the container's cgroup, in whichever hierarchy holds each controller
    // (v1 on this hybrid machine, v2 on Debian 12).
    assert_eq!(warren_tests::cgroups::memory_limit(pid), Some(64 << 20));
    assert_eq!(warren_tests::cgroups::cpu_quota(pid), Some((50_000, 100_000)));
    let mem_dir = warren_tests::cgroups::controller_dir(pid, "memory");
    assert!(
        mem_dir.ends_with(format!("{}/{id}", env.cgroup.path.trim_start_matches('/'))),
        "{}",
        mem_dir.display()
    );
    // Where runc puts the process in the v2 hierarchy.
    let unified = cgroup_line(pid, "");
    assert_eq!(
        unified,
        format!("{}/{id}", env.cgroup.path),
        "runc places the task in the v2 tree too"
    );
    let procs = std::fs::read_to_string(
        warren_tests::cgroups::v2_root()
            .join(unified.trim_start_matches('/'))
            .join("cgroup.procs"),
    )
    .expect("v2 procs");
    assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");

    // Its stdout is in the log file, and logs(tail) returns it.
    let lines = wait_log(&env.rt, &id, "warren-test/http: serving web-1 on port 80").await;
    assert!(!lines.is_empty());
    let path = env.rt.log_path(&id);
    assert!(std::fs::read_to_string(&path).unwrap().contains("serving web-1"));
    let tail: Vec<String> = env
        .rt
        .logs(
            &id,
            LogOptions {
                tail: Some(1),
                follow: false,
            },
        )
        .await
        .expect("tail")
        .map(|l| l.unwrap())
        .collect()
        .await;
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0], *lines.last().unwrap());
    // Follow sees what the process writes later (httpd -v logs each request).
    let mut follow = env
        .rt
        .logs(
            &id,
            LogOptions {
                tail: Some(0),
                follow: true,
            },
        )
        .await
        .expect("follow");
    ns.http_get("http://127.0.0.1/healthz");
    let next = tokio::time::timeout(Duration::from_secs(20), follow.next())
        .await
        .expect("a new log line")
        .expect("stream open")
        .expect("line");
    assert!(next.contains("127.0.0.1") && next.contains("response:200"), "{next}");

    let status = env.rt.status(&id).await.expect("status");
    assert_eq!(status.task.as_ref().map(|t| t.state), Some(TaskState::Running));
    assert_eq!(status.labels[LABEL_NODE], "node-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_workdir_args_and_env_are_applied() {
    let env = setup(None, None);
    let image = env.image("warren-test/http:1");
    env.rt.ensure_image(&image, None).await.expect("pull");
    let id = unique("who");
    let mut s = spec(&id, &image);
    s.command = sh("id -u; id -g; id -G; pwd; echo \"greeting=$GREETING\"; echo \"args=$0 $1\"");
    s.args = Some(vec!["first".into(), "second".into()]);
    s.user = Some("warren".into());
    s.workdir = Some("/home/warren".into());
    s.env = vec![("GREETING".into(), "hello".into())];
    env.rt.run(&s).await.expect("run");
    let exit = env.rt.wait(&id).await.expect("wait");
    assert_eq!(exit.code, 0);
    let lines = wait_log(&env.rt, &id, "args=").await;
    assert_eq!(
        lines,
        [
            "1000",
            "1000",
            "1000 2000",
            "/home/warren",
            "greeting=hello",
            "args=first second"
        ],
        "uid, gid, groups (supplementary from /etc/group), cwd, env, args"
    );

    // A numeric user:group needs no lookup; an unknown name is refused by field.
    let id2 = unique("who");
    let mut s2 = spec(&id2, &image);
    s2.command = sh("id -u; id -g");
    s2.user = Some("4242:4343".into());
    env.rt.run(&s2).await.expect("run numeric user");
    assert_eq!(env.rt.wait(&id2).await.expect("wait").code, 0);
    // The log is written by the shim as the output comes: wait for its last line.
    assert_eq!(wait_log(&env.rt, &id2, "4343").await, ["4242", "4343"]);
    let mut s3 = spec(&unique("who"), &image);
    s3.user = Some("nosuchuser".into());
    let e = env.rt.create(&s3).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid container spec: user: no user \"nosuchuser\" in the image's /etc/passwd"
    );
    // The failed create left no snapshot or container behind.
    assert!(env
        .rt
        .list(&BTreeMap::new())
        .await
        .unwrap()
        .iter()
        .all(|c| c.id != s3.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_name_the_image_and_the_cause() {
    let env = setup(None, None);
    let host = env.registry.host();
    let e = env
        .rt
        .pull(&format!("{host}/warren-test/http:nope"), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("pull {host}/warren-test/http:nope: manifest unknown")
    );
    let e = env.rt.pull(&format!("{host}/nope:1"), None).await.unwrap_err();
    assert_eq!(e.to_string(), format!("pull {host}/nope:1: manifest unknown"));
    let e = env.rt.pull("Not A Reference", None).await.unwrap_err();
    assert!(
        e.to_string().starts_with("invalid image reference \"Not A Reference\""),
        "{e}"
    );

    // A registry not listed as insecure is spoken to over HTTPS only.
    let mut config = env.ctd.runtime_config(NS, &env.cgroup.path);
    config.registry.insecure = vec![];
    let strict = Containerd::connect(config).await.unwrap();
    let e = strict
        .pull(&format!("{host}/warren-test/http:1"), None)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("pull {host}/warren-test/http:1: GET https://{host}/v2/")),
        "{msg}"
    );

    // An index without the node's platform.
    let mut config = env.ctd.runtime_config(NS, &env.cgroup.path);
    config.registry.insecure = vec![host.clone()];
    config.platform = warren::runtime::Platform::parse("linux/s390x").unwrap();
    let s390 = Containerd::connect(config).await.unwrap();
    let e = s390
        .pull(&format!("{host}/warren-test/http:multi"), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("pull {host}/warren-test/http:multi: no manifest for platform linux/s390x (index has: linux/arm64/v8, linux/amd64)")
    );

    // Creating from an image never pulled.
    let e = env
        .rt
        .create(&spec(&unique("x"), &format!("{host}/warren-test/crash:1")))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("image {host}/warren-test/crash:1 not found; pull it first")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_and_without_credentials() {
    let auth = TokenAuth {
        username: "warren".into(),
        password: "s3cret".into(),
        anonymous_pull: false,
    };
    let creds = Credentials {
        username: auth.username.clone(),
        password: auth.password.clone(),
    };
    let env = setup(Some(auth), None);
    let image = env.image("warren-test/http:1");
    let e = env.rt.pull(&image, None).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("pull {image}: unauthorized: token server http://")),
        "{msg}"
    );
    let bad = Credentials {
        username: "warren".into(),
        password: "wrong".into(),
    };
    assert!(env
        .rt
        .pull(&image, Some(&bad))
        .await
        .unwrap_err()
        .to_string()
        .contains("unauthorized"));
    let info = env.rt.pull(&image, Some(&creds)).await.expect("pull with credentials");
    assert_eq!(info.manifest_digest, env.layout.manifests[&TestImage::Http].digest);

    // Anonymous pulls through a Bearer challenge (as from Docker Hub).
    let anon = LocalRegistry::start_with_token_auth(TokenAuth {
        username: "warren".into(),
        password: "s3cret".into(),
        anonymous_pull: true,
    })
    .expect("registry");
    anon.push(
        &env.layout.dir,
        TestImage::Crash.layout_ref(),
        "warren-test/crash:1",
        false,
    )
    .expect("push");
    let mut config = env.ctd.runtime_config(NS, &env.cgroup.path);
    config.registry.insecure = vec![anon.host()];
    let rt = Containerd::connect(config).await.unwrap();
    let info = rt
        .pull(&format!("{}/warren-test/crash:1", anon.host()), None)
        .await
        .expect("anonymous pull");
    assert_eq!(info.manifest_digest, env.layout.manifests[&TestImage::Crash].digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_oci_and_docker_archives_and_run() {
    let mut env = setup(None, None);
    let oci = env.files.path().join("crash-oci.tar");
    images::oci_archive(&env.layout, TestImage::Crash, "warren-test/crash:oci", &oci).expect("oci archive");
    let docker = env.files.path().join("echo-docker.tar");
    images::docker_archive(&env.layout, TestImage::Echo, "warren-test/echo:docker", &docker).expect("docker archive");

    let imported = env.rt.import(&oci, None).await.expect("import OCI archive");
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, "docker.io/warren-test/crash:oci");
    assert_eq!(
        imported[0].manifest_digest,
        env.layout.manifests[&TestImage::Crash].digest
    );
    let imported = env.rt.import(&docker, None).await.expect("import docker archive");
    assert_eq!(imported[0].name, "docker.io/warren-test/echo:docker");
    assert_eq!(imported[0].config.exposed_ports, vec![(7, Protocol::Tcp)]);
    // Same layers, so the same chain ID as the layout's echo image when pulled.
    let renamed = env
        .rt
        .import(&docker, Some("local/echo:renamed"))
        .await
        .expect("import with a name");
    assert_eq!(renamed[0].name, "docker.io/local/echo:renamed");
    assert_eq!(renamed[0].chain_id, imported[0].chain_id);

    let crash = unique("crash");
    env.rt
        .run(&spec(&crash, "warren-test/crash:oci"))
        .await
        .expect("run imported OCI image");
    assert_eq!(env.rt.wait(&crash).await.expect("wait").code, 3);

    let netns = env.netns();
    let ns = env.netns.last().unwrap();
    let echo = unique("echo");
    let mut s = spec(&echo, "warren-test/echo:docker");
    s.network = NetworkMode::Join(netns);
    env.rt.run(&s).await.expect("run imported docker image");
    wait_log(&env.rt, &echo, "tcp echo on port 7").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns.busybox(&["sh", "-c", "echo warren-echo-probe | /bin/busybox nc -w 2 127.0.0.1 7"]);
        if String::from_utf8_lossy(&out.stdout).trim() == "warren-echo-probe" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no echo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let bad = env.files.path().join("junk.tar");
    std::fs::write(
        &bad,
        b"not a tar at all, just some bytes that are long enough to be read",
    )
    .unwrap();
    let e = env.rt.import(&bad, None).await.unwrap_err();
    assert!(e.to_string().starts_with(&format!("import {}: ", bad.display())), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kill_and_exit_codes() {
    let env = setup(None, None);
    let http = env.image("warren-test/http:1");
    let crash = env.image("warren-test/crash:1");
    env.rt.pull(&http, None).await.expect("pull http");
    env.rt.pull(&crash, None).await.expect("pull crash");
    let mut events = env.rt.exit_events().await.expect("subscribe");

    // A process that ignores SIGTERM is killed after the grace period.
    let stubborn = unique("stubborn");
    let mut s = spec(&stubborn, &http);
    s.command = sh("trap '' TERM; echo ready; while true; do sleep 1; done");
    env.rt.run(&s).await.expect("run");
    wait_log(&env.rt, &stubborn, "ready").await;
    let exit = env
        .rt
        .stop(&stubborn, libc::SIGTERM, Duration::from_secs(2))
        .await
        .expect("stop")
        .expect("had a task");
    assert_eq!(exit.code, 128 + libc::SIGKILL as u32, "killed, not terminated");
    // A process that honours SIGTERM ends with it.
    let polite = unique("polite");
    let mut s = spec(&polite, &http);
    s.command = sh("trap 'exit 42' TERM; echo ready; while true; do sleep 1; done");
    env.rt.run(&s).await.expect("run");
    wait_log(&env.rt, &polite, "ready").await;
    let exit = env
        .rt
        .stop(&polite, libc::SIGTERM, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code, 42);
    assert!(env
        .rt
        .stop(&polite, libc::SIGTERM, Duration::from_secs(1))
        .await
        .unwrap()
        .is_some());

    // The crash image exits 3, seen by wait and by the event stream.
    let c = unique("crash");
    env.rt.run(&spec(&c, &crash)).await.expect("run crash");
    assert_eq!(env.rt.wait(&c).await.expect("wait").code, 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    let ev = loop {
        let ev = tokio::time::timeout(deadline - Instant::now(), events.next())
            .await
            .expect("exit event in time")
            .expect("stream open")
            .expect("event");
        if ev.id == c {
            break ev;
        }
    };
    assert_eq!(ev.status.code, 3);
    let st = env.rt.status(&c).await.unwrap();
    assert_eq!(st.task.as_ref().map(|t| t.state), Some(TaskState::Stopped));
    assert_eq!(st.task.unwrap().exit.unwrap().code, 3);
    // Restart: a new task for the same container.
    let pid = env.rt.start(&c).await.expect("restart");
    assert!(pid > 0);
    assert_eq!(env.rt.wait(&c).await.unwrap().code, 3);

    // kill -9 of the container's process from outside is seen as an exit.
    let victim = unique("victim");
    let pid = env.rt.run(&spec(&victim, &http)).await.expect("run");
    wait_log(&env.rt, &victim, "serving").await;
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    assert_eq!(env.rt.wait(&victim).await.unwrap().code, 137);
    let e = env.rt.kill(&victim, libc::SIGTERM).await;
    assert!(e.is_err(), "kill of an exited task fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_after_runtime_restart() {
    let env = setup(None, None);
    let http = env.image("warren-test/http:1");
    // The first agent incarnation: its own runtime object, dropped below.
    let rt1 = env.connect_again().await;
    rt1.pull(&http, None).await.expect("pull");
    let id = unique("adopt");
    let mut s = spec(&id, &http);
    s.labels.insert(LABEL_NODE.into(), "node-adopt".into());
    s.labels.insert(LABEL_TASK_ID.into(), "task-1".into());
    let pid = rt1.run(&s).await.expect("run");
    let other = unique("other");
    let mut o = spec(&other, &http);
    o.labels.insert(LABEL_NODE.into(), "node-other".into());
    rt1.create(&o).await.expect("create other");
    wait_log(&rt1, &id, "serving").await;
    drop(rt1);

    let rt2 = env.connect_again().await;
    let mut want = BTreeMap::new();
    want.insert(LABEL_NODE.to_string(), "node-adopt".to_string());
    let found = rt2.list(&want).await.expect("list");
    assert_eq!(found.len(), 1, "{found:?}");
    let task = found[0].task.clone().expect("task");
    assert_eq!(found[0].id, id);
    assert_eq!(found[0].labels[LABEL_TASK_ID], "task-1");
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(task.pid, pid, "same process: adopted, not restarted");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    want.insert(LABEL_NODE.to_string(), "node-other".to_string());
    let others = rt2.list(&want).await.unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].task, None, "created, never started");
    let serving = log_lines(&rt2, &id)
        .await
        .iter()
        .filter(|l| l.contains("serving"))
        .count();
    assert_eq!(serving, 1, "started once");
    // The adopted task can be waited on and stopped by the new runtime object.
    let exit = rt2
        .stop(&id, libc::SIGTERM, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(exit.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_task_container_and_snapshot() {
    let env = setup(None, None);
    let http = env.image("warren-test/http:1");
    env.rt.pull(&http, None).await.expect("pull");
    let id = unique("del");
    env.rt.run(&spec(&id, &http)).await.expect("run");
    env.rt.delete(&id).await.expect("delete running container");

    let ch = env.cd();
    let e = containerd_client::services::v1::containers_client::ContainersClient::new(ch.clone())
        .get(req(GetContainerRequest { id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = containerd_client::services::v1::tasks_client::TasksClient::new(ch.clone())
        .get(req(GetRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient::new(ch)
        .stat(req(StatSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(env.rt.list(&BTreeMap::new()).await.unwrap().is_empty());
    for d in warren_tests::cgroups::dirs(&format!("{}/{id}", env.cgroup.path)) {
        assert!(!d.exists(), "{} is still there", d.display());
    }
    env.rt.delete(&id).await.expect("deleting again is fine");
    assert!(matches!(env.rt.status(&id).await, Err(RuntimeError::NotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_supervises_its_own_containerd() {
    require("containerd", "containerd").expect("containerd");
    let dir = Scratch(tempfile::Builder::new().prefix("wrn-sup-").tempdir_in("/tmp").unwrap());
    let mut config = warren::runtime::RuntimeConfig::new(dir.path());
    config.socket = dir.path().join("no-such.sock");
    config.managed_dir = Some(dir.path().join("ctd"));
    let rt = Containerd::connect(config.clone())
        .await
        .expect("start our own containerd");
    assert_eq!(rt.socket(), dir.path().join("ctd/containerd.sock"));
    let sup = rt.supervisor().expect("supervised");
    let first = sup.pid().expect("pid");
    rt.list(&BTreeMap::new()).await.expect("answers");

    // Killed: it comes back under a new pid and answers again.
    unsafe {
        libc::kill(first as i32, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = sup.pid() {
            if p != first && rt.list(&BTreeMap::new()).await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "containerd was not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = sup.pid().unwrap();
    rt.shutdown().await;
    assert!(sup.pid().is_none());
    assert!(
        !Path::new(&format!("/proc/{second}")).exists() || is_zombie(second),
        "containerd stopped"
    );
}

/// A scratch dir for a containerd of the test's own: on every path, what still
/// runs from it is killed and what is mounted below it unmounted, before the dir
/// is removed.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for pid in warren_tests::containerd::processes_mentioning(&self.path().to_string_lossy()) {
            // SAFETY: kill(2) on processes whose command line names this test's dir.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        warren_tests::containerd::unmount_below(self.path());
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
        .unwrap_or(true)
}
