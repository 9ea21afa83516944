//! Project automation, run as `cargo xtask <command>`:
//!
//! - `test [--no-lint] [--no-vm]`: installs what the suite needs (Debian packages),
//!   checks formatting and lints, builds, runs every test on the host, then the
//!   kernel matrix (`vm-test`); every step runs, and every failure is reported at
//!   the end (what `.ci/run` runs);
//! - `up`: installs, builds and starts a one-node cluster with a demo service;
//! - `down`: stops what `up` started and removes its state;
//! - `bench`: runs the benchmarks (`bench/`) and regenerates `docs/benchmarks.md`;
//! - `image [--out DIR]`: builds the busybox test images as an OCI layout (default
//!   `target/test-images`), with `warren-test-images` from the test harness;
//! - `vm-test [--kernel 6.1|6.12|all] [--test BINARY::NAME]...`: runs [`VM_TESTS`]
//!   (prebuilt test binaries of the host build) inside Debian 12's kernels under
//!   QEMU (module `vm`).
//!
//! xtask itself needs nothing but std, so that it builds on a fresh machine before
//! any Debian package (protoc, clang, ...) is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod vm;

/// Debian packages the build, the demo and the test suite need.
const PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "iproute2",
    "util-linux",
    "curl",
    "ca-certificates",
    "containerd",
    "runc",
    "docker-registry",
    "skopeo",
    "busybox-static",
    "nftables",
    "bind9-dnsutils",
    // The eBPF programs: clang with the BPF target, libbpf's helper headers, the
    // kernel's uapi headers (through libc6-dev).
    "clang-19",
    "libbpf-dev",
    "libc6-dev",
    // The static UDP responder of the test images; bpftool and iptables for the
    // data-plane tests (maps print their fields; no service rules anywhere).
    "gcc",
    "bpftool",
    "iptables",
    // Userspace WireGuard for the mesh (no kernel module needed) and `wg` to
    // inspect it: the default overlay's needs, and the mesh tests'.
    "wireguard-go",
    "wireguard-tools",
    // The ingress tests: Pebble (an ACME CA) with its challenge test server, and
    // promtool (in Debian's prometheus package) to check the metrics' format.
    "pebble",
    "prometheus",
    // `service create --init`: tini-static, bind-mounted into the task as PID 1.
    "tini",
];

/// What the benchmarks compare Warren against, and drive it with.
const BENCH_PACKAGES: &[&str] = &["haproxy", "wrk", "iperf3", "nginx"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("up") => up(),
        Some("down") => down(),
        Some("bench") => bench(&args[1..]),
        Some("image") => image(&args[1..]),
        Some("vm-test") => vm::vm_test(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [--no-lint] [--no-vm] [-- TEST ARGS]|up|down|bench [--quick] [--only SCENARIO]... [--render]|image [--out DIR]|vm-test [--kernel 6.1|6.12|all] [--test BINARY::NAME]...>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the missing Debian packages, or says exactly which are missing.
fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "missing Debian packages: {} (run as root, or: sudo apt-get install -y --no-install-recommends {})",
            missing.join(" "),
            missing.join(" ")
        ));
    }
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Kernels the VM part of `cargo xtask test` boots (`WARREN_VM_KERNELS` overrides:
/// 6.1, 6.12 or all).
const TEST_KERNELS: &str = "all";

/// `cargo xtask test`: every step runs even when an earlier one failed (the suite
/// with `--no-fail-fast`), and every failure is reported at the end.
fn test(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let lint = !args.iter().any(|a| a == "--no-lint");
    let vm = !args.iter().any(|a| a == "--no-vm");
    let rest: Vec<String> = args
        .iter()
        .filter(|a| *a != "--no-lint" && *a != "--no-vm")
        .cloned()
        .collect();
    ensure_packages(PACKAGES)?;
    let mut failed: Vec<String> = vec![];
    let mut step = |what: &str, r: Result<()>| {
        if let Err(e) = r {
            eprintln!("xtask test: {what} failed: {e}");
            failed.push(format!("{what}: {e}"));
        }
    };
    if lint {
        step("formatting", run(cargo().args(["fmt", "--all", "--", "--check"])));
        step(
            "clippy",
            run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])),
        );
    }
    // The end-to-end tests run the warren binary: build it before the tests start.
    let built = run(cargo().args(["build", "-p", "warren", "-p", "warren-tests", "--bins"]));
    let built_ok = built.is_ok();
    step("build", built);
    if built_ok {
        let host = Instant::now();
        let mut cmd = cargo();
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
        cmd.args(&rest);
        step("the host suite", run(&mut cmd));
        eprintln!("xtask test: the host suite took {:.0?}", host.elapsed());
        if vm {
            let kernels = std::env::var("WARREN_VM_KERNELS").unwrap_or_else(|_| TEST_KERNELS.to_string());
            let at = Instant::now();
            step("vm-test", vm::vm_test(&["--kernel".to_string(), kernels]));
            eprintln!("xtask test: the kernel matrix took {:.0?}", at.elapsed());
        }
    }
    if failed.is_empty() {
        eprintln!("xtask test: everything passed in {:.0?}", started.elapsed());
        Ok(())
    } else {
        Err(format!(
            "{} step(s) failed after {:.0?}:\n  {}",
            failed.len(),
            started.elapsed(),
            failed.join("\n  ")
        ))
    }
}

/// `cargo xtask image`: the test images, built by the harness's own binary so that
/// xtask needs nothing but std to build.
fn image(args: &[String]) -> Result<()> {
    ensure_packages(PACKAGES)?;
    run(cargo()
        .args(["run", "-q", "-p", "warren-tests", "--bin", "warren-test-images", "--"])
        .args(args))
}

/// `cargo xtask bench`: release builds, then every scenario side by side.
fn bench(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--render") {
        // Measures nothing: only the harness is needed to rewrite the report.
        run(cargo().args(["build", "--release", "-p", "warren-bench"]))?;
    } else {
        ensure_packages(PACKAGES)?;
        ensure_packages(BENCH_PACKAGES)?;
        // warren-tests brings warren-dp-probe, the clients and server of the data-plane scenarios.
        run(cargo().args([
            "build",
            "--release",
            "-p",
            "warren",
            "-p",
            "warren-bench",
            "-p",
            "warren-tests",
            "--bins",
        ]))?;
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let r = root();
    run(Command::new(r.join("target/release/warren-bench"))
        .arg("--warren")
        .arg(r.join("target/release/warren"))
        .args(["--commit", &commit])
        .args(args)
        .current_dir(&r))
}

const UP_DIR: &str = "/var/lib/warren";
const UP_LOG: &str = "/var/log/warren.log";
const UP_PID: &str = "/run/warren.pid";

fn up() -> Result<()> {
    if !is_root() {
        return Err("`cargo xtask up` starts a cluster node and must run as root".into());
    }
    ensure_packages(PACKAGES)?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "warren",
        "-p",
        "warren-tests",
        "--bin",
        "warren",
        "--bin",
        "warren-test-images",
    ]))?;
    let built = root().join("target/release/warren");
    run(Command::new("install")
        .args(["-m", "0755"])
        .arg(&built)
        .arg("/usr/local/bin/warren"))?;
    let _ = std::fs::remove_file("/usr/local/bin/wrn");
    std::os::unix::fs::symlink("warren", "/usr/local/bin/wrn").map_err(|e| format!("linking wrn: {e}"))?;

    let socket = Path::new("/run/warren/warren.sock");
    let running = Command::new("warren")
        .args(["cluster", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !running {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(UP_LOG)
            .map_err(|e| format!("{UP_LOG}: {e}"))?;
        let fresh = !Path::new(UP_DIR).join("node.json").exists();
        let mut cmd = Command::new("/usr/local/bin/warren");
        if fresh {
            cmd.args([
                "cluster",
                "init",
                "--listen-addr",
                "127.0.0.1:2377",
                "--metrics-addr",
                "127.0.0.1:9090",
            ]);
        } else {
            cmd.args(["daemon"]);
        }
        cmd.args(["--data-dir", UP_DIR]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting warren: {e}"))?;
        std::fs::write(UP_PID, child.id().to_string()).map_err(|e| format!("{UP_PID}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() || !warren_ok(&["cluster", "info"]) {
            if Instant::now() > deadline {
                return Err(format!("the node did not come up within 30s; see {UP_LOG}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if !warren_ok(&["service", "inspect", "demo"]) {
        // No image can be downloaded here: build the demo image from busybox-static
        // and load it into the node, as `docker load` would.
        let archive = std::env::temp_dir().join("warren-demo-http.tar");
        run(Command::new(root().join("target/release/warren-test-images"))
            .arg("--out")
            .arg(root().join("target/test-images"))
            .args(["--archive", "http", "warren-test/http:1"])
            .arg(&archive))?;
        run(Command::new("warren").arg("image").arg("load").arg(&archive))?;
        let _ = std::fs::remove_file(&archive);
        run(Command::new("warren").args([
            "service",
            "create",
            "demo",
            "--image",
            "warren-test/http:1",
            "--replicas",
            "2",
            "--publish",
            "8080:80",
        ]))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let addrs = loop {
        let out = Command::new("warren")
            .args(["service", "ps", "demo", "--format", "json"])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        // xtask has no JSON parser: count the running tasks and pick their addresses.
        let running = text.matches("\"state\": \"Running\"").count();
        let addrs: Vec<String> = text
            .split("\"addr\": \"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if running >= 2 && addrs.len() >= 2 {
            break addrs;
        }
        if Instant::now() > deadline {
            let _ = Command::new("warren").args(["service", "ps", "demo"]).status();
            return Err(format!(
                "the demo service did not reach 2 running tasks within 60s; see {UP_LOG}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let inspect = Command::new("warren")
        .args(["service", "inspect", "demo", "--format", "json"])
        .output()
        .map_err(|e| e.to_string())?;
    let inspect = String::from_utf8_lossy(&inspect.stdout).to_string();
    let vip = inspect
        .split("\"vip\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .ok_or_else(|| format!("the demo service has no VIP: {inspect}"))?
        .to_string();
    // The data plane is synced right after the tasks report running; both paths
    // must answer before the demo is declared up.
    let urls = [format!("http://{vip}/"), "http://127.0.0.1:8080/".to_string()];
    for url in &urls {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new("curl")
            .args(["-sf", "--noproxy", "*", "--max-time", "2", "-o", "/dev/null", url])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            if Instant::now() > deadline {
                return Err(format!("the demo service does not answer on {url}; see {UP_LOG}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    run(Command::new("warren").args(["node", "ls"]))?;
    run(Command::new("warren").args(["service", "ls"]))?;
    run(Command::new("warren").args(["service", "ps", "demo"]))?;
    println!(
        "\nWarren is running as a one-node cluster (log: {UP_LOG}, state: {UP_DIR}).\n\
         The demo service answers with a task's hostname on its VIP (balanced by eBPF),\n\
         on the published port 8080 of every node address, and on each task's address:\n"
    );
    let line = |cmd: String, what: &str| println!("    {cmd:<36} # {what}");
    line(format!("curl -s http://{vip}/"), "the service VIP");
    line("curl -s http://127.0.0.1:8080/".into(), "the published port");
    for a in &addrs {
        line(format!("curl -s http://{a}/"), "one task");
    }
    println!(
        "\nMore: warren service inspect demo | warren node inspect self | bpftool map dump pinned \
         /sys/fs/bpf/warren/<node>/warren_svc_v1\n      warren service logs demo | warren service scale demo=4 | \
         curl -s 127.0.0.1:9090/metrics | grep warren_dataplane\n\
         Stop and remove it with: cargo xtask down (warren cluster leave --force)"
    );
    Ok(())
}

fn warren_ok(args: &[&str]) -> bool {
    Command::new("warren")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn down() -> Result<()> {
    // Remove the services first so that the node stops and deletes their containers.
    if warren_ok(&["cluster", "info"]) {
        let out = Command::new("warren")
            .args(["service", "ls", "-q"])
            .output()
            .map_err(|e| e.to_string())?;
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("warren").args(["service", "rm", id]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let out = Command::new("warren")
                .args(["cluster", "info", "--format", "json"])
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"tasks\": 0")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // `cluster leave` stops the daemon and removes its containers, network, pinned
    // eBPF programs and maps, and the data dir.
    if Path::new(UP_DIR).join("node.json").exists() {
        run(Command::new("warren").args(["cluster", "leave", "--force", "--data-dir", UP_DIR]))?;
    }
    let _ = std::fs::remove_file(UP_PID);
    let _ = std::fs::remove_dir_all("/run/warren");
    println!("stopped the demo node and removed {UP_DIR}");
    Ok(())
}

#[cfg(test)]
mod feature_sets {
    use super::cargo;
    use std::collections::BTreeMap;

    /// Every package of the build with the features it is built with, for one
    /// package selection (`-p warren`, `--workspace`, ...).
    fn features(selection: &[&str]) -> BTreeMap<String, String> {
        let out = cargo()
            .args([
                "tree",
                "--offline",
                "-e",
                "normal,build",
                "--prefix",
                "none",
                "-f",
                "{p}|{f}",
            ])
            .args(selection)
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "cargo tree {selection:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(p, f)| {
                (
                    p.replace(" (*)", "").trim().to_string(),
                    f.replace(" (*)", "").trim().to_string(),
                )
            })
            .collect()
    }

    /// `cargo build --release -p warren`, `xtask up` (warren with the test images)
    /// and `xtask bench` (warren, the bench and the tests) must build warren's
    /// dependencies with the same features, or alternating them rebuilds warren.
    #[test]
    fn every_package_set_builds_warren_alike() {
        let alone = features(&["-p", "warren"]);
        for selection in [
            &["-p", "warren", "-p", "warren-tests"][..],
            &["-p", "warren", "-p", "warren-bench", "-p", "warren-tests"],
            &["--workspace"],
        ] {
            let with = features(selection);
            let differ: Vec<String> = alone
                .iter()
                .filter_map(|(p, f)| {
                    let g = with.get(p)?;
                    (g != f).then(|| format!("{p}: [{f}] alone, [{g}] with {selection:?}"))
                })
                .collect();
            assert!(
                differ.is_empty(),
                "features differ (add them to the workspace's or warren's Cargo.toml):\n{}",
                differ.join("\n")
            );
        }
    }
}
