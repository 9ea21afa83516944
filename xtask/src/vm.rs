//! `cargo xtask vm-test`: the kernel matrix. Unpacks Debian 12's kernel packages
//! with `dpkg-deb -x` into `target/vm/` (never into the host's /boot), boots each
//! under QEMU's software emulation with virtme-ng (the host's root file system,
//! read-only over 9p, as the guest's), and runs [`VM_TESTS`] there: the suite's
//! own test binaries, built on the host, selected by name. Every result line and
//! every failure names the kernel it came from.
//!
//! KVM guests hang on this machine right after the boot loader, so the VMs run
//! under TCG (`--disable-kvm`): slow, hence a functional subset and no test that
//! measures rates.

use super::{cargo, ensure_packages, root, run, Result, PACKAGES};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests run inside each kernel, as (test binary, test name). One list, so
/// that renamed tests are updated in one place; a name that matches no test in
/// its binary fails the run.
pub const VM_TESTS: &[(&str, &str)] = &[
    // The node on this kernel: cgroup layout, eBPF load, tc attachment mode and
    // socket destroy as the kernel allows, then a one-node cluster on real
    // containerd: service create, VIP, published port from the wire, DNS, limits,
    // a rate limit refusing, `service rm`.
    ("kernel", "one_node_cluster_on_this_kernel"),
    // The data plane alone (no containerd): VIP over TCP and UDP, canary, restart
    // with pinned maps. Left to the host: `published_port_from_the_wire_via_tc`
    // (it ends by querying tcx links, which 6.1 lacks) and
    // `rate_limit_refuses_new_connections_over_the_bucket_per_client` (its client
    // must offer 500 connections/s, more than a loaded emulated CPU does).
    ("dataplane", "vip_reaches_every_backend_over_tcp_and_udp"),
    ("dataplane", "canary_weight_splits_new_connections"),
    (
        "dataplane",
        "pinned_programs_survive_the_loader_and_are_adopted_without_a_gap",
    ),
];

/// Debian packages the VMs need: QEMU, and kmod's depmod (virtme-ng indexes the
/// unpacked modules with it).
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "kmod"];

/// virtme-ng from PyPI, pinned.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// How much longer the tests' waits may be in a guest (`WARREN_TEST_TIME_SCALE`).
const TIME_SCALE: u32 = 4;

/// How long one kernel's run may take before it counts as hung.
const VM_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// A Debian 12 kernel series and how its unsigned image package is named.
struct Series {
    name: &'static str,
    package: fn(&str) -> bool,
}

const SERIES: &[Series] = &[
    // linux-image-6.1.0-N-amd64-unsigned: Debian 12's own kernel.
    Series {
        name: "6.1",
        package: |p| {
            p.strip_prefix("linux-image-6.1.0-")
                .and_then(|r| r.strip_suffix("-amd64-unsigned"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        },
    },
    // linux-image-6.12.N+deb12-amd64-unsigned: bookworm's newer kernel.
    Series {
        name: "6.12",
        package: |p| {
            p.strip_prefix("linux-image-6.12.")
                .and_then(|r| r.strip_suffix("+deb12-amd64-unsigned"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        },
    },
];

/// The kernel series `arg` names (`6.1`, `6.12` or `all`).
fn series(arg: &str) -> Result<Vec<&'static Series>> {
    if arg == "all" {
        return Ok(SERIES.iter().collect());
    }
    SERIES.iter().find(|s| s.name == arg).map(|s| vec![s]).ok_or_else(|| {
        format!(
            "--kernel {arg:?}: expected one of {}, all",
            SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        )
    })
}

/// The numbers in a package name, for picking the newest of a series.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn apt_search(series: &Series) -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", "^linux-image-6\\.[0-9.]+.*-amd64-unsigned$"])
        .output()
        .map_err(|e| format!("apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| (series.package)(p))
        .max_by_key(|p| version_key(p))
        .map(str::to_string))
}

/// An unpacked kernel: its image and release.
struct Kernel {
    series: &'static str,
    vmlinuz: PathBuf,
    release: String,
}

/// Finds the newest package of `series`, downloads it into target/vm/debs and
/// unpacks it into target/vm/<package>; reuses an earlier unpack.
fn kernel(series: &'static Series) -> Result<Kernel> {
    let vm = root().join("target/vm");
    let package = match apt_search(series)? {
        Some(p) => p,
        None => {
            run(Command::new("apt-get")
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            apt_search(series)?.ok_or_else(|| {
                format!(
                    "no Debian package of kernel {} (linux-image-{}*-amd64-unsigned) in apt's lists",
                    series.name, series.name
                )
            })?
        }
    };
    let dir = vm.join(&package);
    if find_vmlinuz(&dir).is_none() {
        let debs = vm.join("debs");
        std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
        let have = |debs: &Path| {
            std::fs::read_dir(debs)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
                })
        };
        if have(&debs).is_none() {
            run(Command::new("apt-get")
                .args(["download", "-q", &package])
                .current_dir(&debs))?;
        }
        let deb =
            have(&debs).ok_or_else(|| format!("apt-get download {package} left no .deb in {}", debs.display()))?;
        let partial = vm.join(format!("{package}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        std::fs::rename(&partial, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let vmlinuz = find_vmlinuz(&dir).ok_or_else(|| format!("{} has no boot/vmlinuz-*", dir.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    Ok(Kernel {
        series: series.name,
        vmlinuz,
        release,
    })
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// The `vng` command, installed from PyPI when missing.
fn vng() -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        let scripts = Command::new("python3")
            .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(scripts)
            .chain([PathBuf::from("/usr/local/bin")])
            .map(|d| d.join("vng"))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let pip = |extra: &[&str]| {
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
            ])
            .args(extra)
            .arg(VIRTME_NG))
    };
    // A Debian-managed python refuses system-wide installs (PEP 668).
    pip(&[]).or_else(|_| pip(&["--break-system-packages"]))?;
    find().ok_or_else(|| format!("pip installed {VIRTME_NG}, but no `vng` is on PATH"))
}

/// A test binary of the host build: its name (`dataplane`) and path.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    // The end-to-end tests run the warren binary and the probe; build them first.
    run(cargo().args(["build", "-p", "warren", "-p", "warren-tests", "--bins"]))?;
    let out = cargo()
        .args(["test", "-p", "warren-tests", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo test --no-run: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo test --no-run failed with {}", out.status));
    }
    // xtask has no JSON parser: the fields are read off each artifact line.
    let field = |line: &str, key: &str| -> Option<String> {
        let at = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
        Some(line[at..].split('"').next()?.to_string())
    };
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"kind\":[\"test\"]"))
        .filter_map(|l| {
            let target = &l[l.find("\"target\":{")?..];
            Some((field(target, "name")?, PathBuf::from(field(l, "executable")?)))
        })
        .collect())
}

/// `cargo xtask vm-test [--kernel 6.1|6.12|all] [--test BINARY::NAME]...`
pub fn vm_test(args: &[String]) -> Result<()> {
    let mut kernels = "6.1".to_string();
    let mut only: Vec<(String, String)> = vec![];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kernel" => kernels = it.next().ok_or("--kernel needs 6.1, 6.12 or all")?.clone(),
            "--test" => {
                let t = it.next().ok_or("--test needs BINARY::NAME")?;
                let (b, n) = t.split_once("::").ok_or_else(|| {
                    format!("--test {t:?}: expected BINARY::NAME, e.g. dataplane::canary_weight_splits_new_connections")
                })?;
                only.push((b.to_string(), n.to_string()));
            }
            other => return Err(format!("vm-test: unknown argument {other:?}")),
        }
    }
    let tests: Vec<(String, String)> = if only.is_empty() {
        VM_TESTS.iter().map(|(b, n)| (b.to_string(), n.to_string())).collect()
    } else {
        only
    };
    let series = series(&kernels)?;
    ensure_packages(PACKAGES)?;
    ensure_packages(VM_PACKAGES)?;
    let vng = vng()?;
    let binaries = test_binaries()?;
    let started = Instant::now();
    let mut failures = vec![];
    for s in series {
        let k = kernel(s)?;
        match run_kernel(&vng, &k, &binaries, &tests) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("vm-test [{}]: {e}", k.release);
                failures.push(format!("kernel {} ({}): {e}", k.release, k.series));
            }
        }
    }
    if failures.is_empty() {
        eprintln!("vm-test: every kernel passed in {:.0?}", started.elapsed());
        Ok(())
    } else {
        Err(format!("vm-test failed on {}", failures.join("; ")))
    }
}

/// The script the guest runs: its own tmpfs for containerd's overlay snapshots
/// (overlayfs cannot use 9p as its upper dir), bpffs, then each test binary with
/// its selected tests, one at a time; outputs and exit codes go to `out`.
fn guest_script(out: &Path, runs: &[(PathBuf, Vec<String>)]) -> String {
    let mut s = format!(
        "#!/bin/bash\n\
         set -u\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export HOME=/root RUST_BACKTRACE=1 WARREN_TEST_TIME_SCALE={scale}\n\
         out={out}\n\
         uname -r > $out/release\n\
         mount -t tmpfs -o size=3g,mode=1777 tmpfs /tmp\n\
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /run/netns\n\
         echo \"vm: kernel $(uname -r), $(stat -f -c %T /sys/fs/cgroup) at /sys/fs/cgroup\"\n",
        out = out.display(),
        scale = TIME_SCALE,
    );
    for (bin, names) in runs {
        let stem = bin_stem(bin);
        s.push_str(&format!(
            "cd {tests}\n\
             {bin} --exact --test-threads=1 --show-output {names} > $out/{stem}.log 2>&1\n\
             echo $? > $out/{stem}.rc\n\
             grep -E '^test .* \\.\\.\\. ' $out/{stem}.log | sed 's/^/vm: {stem}: /'\n",
            tests = root().join("tests").display(),
            bin = bin.display(),
            names = names.join(" "),
        ));
    }
    s.push_str("echo done > $out/finished\n");
    s
}

fn bin_stem(bin: &Path) -> String {
    bin.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .unwrap_or("tests")
        .to_string()
}

fn run_kernel(vng: &Path, k: &Kernel, binaries: &[(String, PathBuf)], tests: &[(String, String)]) -> Result<()> {
    let out = root().join("target/vm/run").join(&k.release);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut runs: Vec<(PathBuf, Vec<String>)> = vec![];
    for (b, n) in tests {
        let path = binaries
            .iter()
            .find(|(name, _)| name == b)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| format!("no test binary named {b} in warren-tests (see VM_TESTS in xtask/src/vm.rs)"))?;
        match runs.iter_mut().find(|(p, _)| *p == path) {
            Some((_, names)) => names.push(n.clone()),
            None => runs.push((path, vec![n.clone()])),
        }
    }
    let script = out.join("guest.sh");
    std::fs::write(&script, guest_script(&out, &runs)).map_err(|e| format!("{}: {e}", script.display()))?;
    let console = out.join("console.log");
    eprintln!(
        "vm-test [{}]: booting {} under QEMU (software emulation); console in {}",
        k.release,
        k.vmlinuz.display(),
        console.display()
    );
    let started = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=30s", &format!("{}s", VM_TIMEOUT.as_secs())])
        .arg(vng)
        .args([
            "--verbose",
            "--disable-kvm",
            "--disable-microvm",
            "--memory",
            "4G",
            "--cpus",
            "2",
            // One host thread runs both vCPUs. Multi-threaded TCG lets a vCPU run a
            // stale translation of kernel text another vCPU has just patched (a
            // static key flipped by a cgroup's CPU quota or a BPF attach): Debian's
            // 6.12 guest died of `Oops: int3` in the scheduler twice in CI that way.
            "--qemu-opts=-accel tcg,thread=single",
        ])
        // Quiet kernel messages on the console, so that the tests' lines stand out.
        .args(["--append", "loglevel=4"])
        .arg("--rwdir")
        .arg(&out)
        .arg("--run")
        .arg(&k.vmlinuz)
        .arg("--")
        .arg(format!("bash {}", script.display()))
        .current_dir(root())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", vng.display()))?;
    let mut log = std::fs::File::create(&console).map_err(|e| format!("{}: {e}", console.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
            .collect::<Vec<_>>()
    });
    let release = k.release.clone();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(std::result::Result::ok)
    {
        use std::io::Write;
        let _ = writeln!(log, "{line}");
        if let Some(rest) = line.split_once("vm: ").map(|(_, r)| r) {
            eprintln!("vm-test [{release}] {rest}");
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let vng_err = err_thread.join().unwrap_or_default();
    {
        use std::io::Write;
        for l in &vng_err {
            let _ = writeln!(log, "{l}");
        }
    }
    let booted = std::fs::read_to_string(out.join("release")).unwrap_or_default();
    if booted.trim() != k.release {
        return Err(format!(
            "the VM did not run the tests (vng exited with {status}; booted {:?}); see {}",
            booted.trim(),
            console.display()
        ));
    }
    if !out.join("finished").exists() {
        return Err(format!(
            "the VM stopped before the tests finished ({status} after {:.0?}); see {}",
            started.elapsed(),
            console.display()
        ));
    }
    let mut failed = vec![];
    for (bin, names) in &runs {
        let stem = bin_stem(bin);
        let text = std::fs::read_to_string(out.join(format!("{stem}.log"))).unwrap_or_default();
        let rc = std::fs::read_to_string(out.join(format!("{stem}.rc"))).unwrap_or_default();
        for n in names {
            let result = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("test {n} ... ")))
                .map(str::trim);
            eprintln!(
                "vm-test [{}] {stem}::{n} ... {}",
                k.release,
                result.unwrap_or("NOT RUN (no such test?)")
            );
            if result != Some("ok") {
                failed.push(format!("{stem}::{n}"));
            }
        }
        // What the tests found out about the kernel (kernel.rs prints one line).
        for l in text.lines().filter(|l| l.starts_with("kernel ")) {
            eprintln!("vm-test [{}] {l}", k.release);
        }
        if rc.trim() != "0" && failed.is_empty() {
            failed.push(format!("{stem} (exit {})", rc.trim()));
        }
        if rc.trim() != "0" {
            eprintln!(
                "vm-test [{}] ----- {stem} output ({}) -----\n{text}",
                k.release,
                out.join(format!("{stem}.log")).display()
            );
        }
    }
    eprintln!(
        "vm-test [{}]: {} of {} tests passed in {:.0?}",
        k.release,
        tests.len() - failed.len().min(tests.len()),
        tests.len(),
        started.elapsed()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_select_the_series_and_the_newest() {
        let one = &SERIES[0];
        let twelve = &SERIES[1];
        assert!((one.package)("linux-image-6.1.0-57-amd64-unsigned"));
        assert!(!(one.package)("linux-image-6.1.0-57-cloud-amd64-unsigned"));
        assert!(!(one.package)("linux-image-6.12.117+deb12-amd64-unsigned"));
        assert!((twelve.package)("linux-image-6.12.117+deb12-amd64-unsigned"));
        assert!(!(twelve.package)("linux-image-6.12.117+deb12-rt-amd64-unsigned"));
        let newest = [
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-unsigned",
        ]
        .into_iter()
        .max_by_key(|p| version_key(p));
        assert_eq!(newest, Some("linux-image-6.1.0-57-amd64-unsigned"));
        assert!(series("5.10").is_err());
        assert_eq!(series("all").unwrap().len(), 2);
    }
}
