//! Where the host's cgroup hierarchies are mounted, read from the mount table: the
//! cgroup v2 root (`/sys/fs/cgroup` on a unified host such as Debian 12,
//! `/sys/fs/cgroup/unified` on a hybrid one) and any v1 hierarchies beside it. The
//! data plane attaches its socket programs under the v2 root; `cluster leave`
//! removes the node's cgroup parent from every hierarchy. Not what goes into a
//! cgroup: runc creates the containers' cgroups and writes their limits.

use std::path::{Path, PathBuf};

/// Where the v2 root is on most hosts, when the mount table cannot be read.
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The first cgroup2 mount (there is one per host in practice).
    pub v2: Option<PathBuf>,
    /// The cgroup v1 mounts with their controllers (`name=systemd` included as is).
    pub v1: Vec<(PathBuf, Vec<String>)>,
}

/// How the hierarchies are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only cgroup v2 (systemd's default since 247; Debian 12, Ubuntu 22.04).
    Unified,
    /// v1 controllers with a controller-less v2 tree beside them.
    Hybrid,
    /// Only cgroup v1: the data plane has nowhere to attach.
    Legacy,
}

impl Hierarchies {
    /// The hierarchies of this process's mount namespace.
    pub fn current() -> Hierarchies {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| Hierarchies::parse(&t))
            .unwrap_or_default()
    }

    /// Parses `/proc/self/mountinfo`.
    pub fn parse(mountinfo: &str) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in mountinfo.lines() {
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS"
            let Some((fields, fs)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = fields.split_whitespace().nth(4) else {
                continue;
            };
            let mount = PathBuf::from(unescape(mount));
            let mut fs = fs.split_whitespace();
            match fs.next() {
                Some("cgroup2") if h.v2.is_none() => h.v2 = Some(mount),
                Some("cgroup") => {
                    let controllers = fs
                        .nth(1)
                        .unwrap_or("")
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("xattr"))
                        .map(str::to_string)
                        .collect();
                    h.v1.push((mount, controllers));
                }
                _ => {}
            }
        }
        h
    }

    pub fn layout(&self) -> Layout {
        match (&self.v2, self.v1.is_empty()) {
            (Some(_), true) => Layout::Unified,
            (Some(_), false) => Layout::Hybrid,
            (None, _) => Layout::Legacy,
        }
    }

    /// Every mount point, v2 first.
    pub fn mounts(&self) -> impl Iterator<Item = &Path> {
        self.v2
            .iter()
            .map(PathBuf::as_path)
            .chain(self.v1.iter().map(|(m, _)| m.as_path()))
    }
}

/// The cgroup v2 root of this host; `/sys/fs/cgroup` when no cgroup2 is mounted, so
/// that the data plane's check names the path it expected.
pub fn v2_root() -> PathBuf {
    Hierarchies::current().v2.unwrap_or_else(|| PathBuf::from(UNIFIED_ROOT))
}

/// Mount points escape space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&oct, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&oct);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 26 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
38 35 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
39 35 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
";

    const UNIFIED: &str = "\
22 1 0:21 / / rw - ext4 /dev/vda1 rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 22 0:27 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:5 - bpf bpf rw,mode=700
";

    #[test]
    fn a_hybrid_host_has_its_v2_root_under_unified() {
        let h = Hierarchies::parse(HYBRID);
        assert_eq!(h.layout(), Layout::Hybrid);
        assert_eq!(h.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            h.v1,
            vec![
                (
                    PathBuf::from("/sys/fs/cgroup/systemd"),
                    vec!["name=systemd".to_string()]
                ),
                (PathBuf::from("/sys/fs/cgroup/memory"), vec!["memory".to_string()]),
                (
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                    vec!["cpu".to_string(), "cpuacct".to_string()]
                ),
            ]
        );
        assert_eq!(h.mounts().count(), 4);
    }

    #[test]
    fn a_unified_host_has_its_v2_root_at_sys_fs_cgroup() {
        let h = Hierarchies::parse(UNIFIED);
        assert_eq!(h.layout(), Layout::Unified);
        assert_eq!(h.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert!(h.v1.is_empty());
    }

    #[test]
    fn without_cgroup2_the_layout_is_legacy() {
        let h = Hierarchies::parse("37 35 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n");
        assert_eq!(h.layout(), Layout::Legacy);
        assert_eq!(h.v2, None);
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        let h = Hierarchies::parse("1 2 0:3 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n");
        assert_eq!(h.v2.as_deref(), Some(Path::new("/mnt/with space")));
    }

    #[test]
    fn this_host_has_a_v2_root() {
        let root = v2_root();
        assert!(root.join("cgroup.procs").exists(), "{}", root.display());
    }
}
