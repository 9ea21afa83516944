//! Where the tests find cgroups, on a pure cgroup v2 host (Debian 12) as on a
//! hybrid one (this machine): the v2 root, found by the file system's magic number
//! independently of the product's mount-table reading, and a process's memory and
//! CPU limits read through whichever hierarchy holds that controller.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The v2 root: `/sys/fs/cgroup` when it is cgroup2 itself, else the hybrid
/// layout's `/sys/fs/cgroup/unified`. Fails naming both when neither is.
pub fn v2_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            if nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC) {
                return PathBuf::from(p);
            }
        }
        panic!("no cgroup v2 at /sys/fs/cgroup or /sys/fs/cgroup/unified: the tests need cgroup v2");
    })
}

/// Whether the v2 root is all there is (no v1 hierarchies beside it).
pub fn unified() -> bool {
    v2_root() == Path::new("/sys/fs/cgroup")
}

/// [`v2_root`] as a constant that formats and converts like a path string, so that
/// code written against a fixed `&str` root keeps compiling.
pub struct V2Root;

impl std::fmt::Display for V2Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        v2_root().display().fmt(f)
    }
}

impl AsRef<std::ffi::OsStr> for V2Root {
    fn as_ref(&self) -> &std::ffi::OsStr {
        v2_root().as_os_str()
    }
}

impl AsRef<Path> for V2Root {
    fn as_ref(&self) -> &Path {
        v2_root()
    }
}

/// The directory of `pid`'s cgroup that holds `controller` (e.g. `memory`, `cpu`):
/// its v1 hierarchy when one has it, else its v2 cgroup when v2 has that controller.
pub fn controller_dir(pid: u32, controller: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_else(|e| panic!("/proc/{pid}/cgroup: {e}"));
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if controllers.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup")
                .join(controllers)
                .join(path.trim_start_matches('/'));
        }
    }
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("pid {pid} is in no cgroup v2 and no v1 {controller} hierarchy: {text}"));
    let dir = v2_root().join(path.trim_start_matches('/'));
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    assert!(
        available.split_whitespace().any(|c| c == controller),
        "the {controller} controller is neither in a v1 hierarchy nor enabled for {} (cgroup.controllers: {available:?})",
        dir.display()
    );
    dir
}

fn read(dir: &Path, file: &str) -> String {
    let p = dir.join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// `pid`'s memory limit in bytes, None when unlimited.
pub fn memory_limit(pid: u32) -> Option<u64> {
    let dir = controller_dir(pid, "memory");
    let v = if dir.join("memory.max").exists() {
        read(&dir, "memory.max")
    } else {
        read(&dir, "memory.limit_in_bytes")
    };
    // v1 says "unlimited" with a page-rounded i64::MAX.
    match v.as_str() {
        "max" => None,
        v => v.parse().ok().filter(|&n: &u64| n < (1 << 62)),
    }
}

/// `pid`'s CPU bandwidth limit as (quota, period) in microseconds, None when unlimited.
pub fn cpu_quota(pid: u32) -> Option<(u64, u64)> {
    let dir = controller_dir(pid, "cpu");
    if dir.join("cpu.max").exists() {
        let v = read(&dir, "cpu.max");
        let (q, p) = v.split_once(' ').unwrap_or((&v, "100000"));
        return q.parse().ok().map(|q| (q, p.parse().unwrap_or(100_000)));
    }
    let q: i64 = read(&dir, "cpu.cfs_quota_us").parse().expect("cpu.cfs_quota_us");
    let p: u64 = read(&dir, "cpu.cfs_period_us").parse().expect("cpu.cfs_period_us");
    (q > 0).then_some((q as u64, p))
}

/// The cgroup directories named `rel` in every hierarchy of this host (v2 first).
pub fn dirs(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    warren::cgroups::Hierarchies::current()
        .mounts()
        .map(|m| m.join(rel))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_v2_cgroup_and_limits_can_be_read() {
        assert!(v2_root().join("cgroup.procs").exists());
        assert_eq!(format!("{V2Root}"), v2_root().display().to_string());
        assert_eq!(Path::new(&V2Root), v2_root());
        let me = std::process::id();
        let dir = controller_dir(me, "memory");
        assert!(dir.exists(), "{}", dir.display());
        let _ = memory_limit(me);
        let _ = cpu_quota(me);
        assert!(dirs("/").iter().any(|d| d == v2_root()));
    }
}
