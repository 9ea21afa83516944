//! Startup checks of the data plane: kernel 5.8 or later, a working bpf(2), kernel
//! BTF, bpffs mounted (mounted here when missing), a cgroup v2 directory. Each
//! refusal is a [`DataplaneError`] that names what is missing. Also what the
//! kernel offers beyond 5.8 (tcx links, bpf_sock_destroy).

use std::path::{Path, PathBuf};

use aya_obj::btf::{Btf, BtfKind};

use super::{sys, DataplaneError};

/// Where the kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where bpffs is mounted (and mounted by [`ensure_bpffs`] when missing).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// What the running kernel supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSupport {
    /// `uname -r`.
    pub release: String,
    pub version: (u32, u32, u32),
    /// tcx links for tc programs (6.6+); otherwise netlink filters.
    pub tcx: bool,
    /// The BTF id of the `bpf_sock_destroy` kfunc (6.5+), if the kernel has it.
    pub sock_destroy_btf_id: Option<u32>,
}

impl KernelSupport {
    /// Whether the kernel is `major.minor` or later.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.version.0, self.version.1) >= (major, minor)
    }
}

/// `major.minor.patch` from a kernel release string such as `6.1.0-18-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// Refuses kernels older than 5.8.
pub fn check_release(release: &str) -> Result<(u32, u32, u32), DataplaneError> {
    let v = parse_release(release)
        .ok_or_else(|| DataplaneError::KernelVersion(format!("unparsable release {release:?}")))?;
    if (v.0, v.1) < (5, 8) {
        return Err(DataplaneError::KernelTooOld {
            found: release.to_string(),
        });
    }
    Ok(v)
}

fn uname_release() -> Result<String, DataplaneError> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .map_err(|e| DataplaneError::KernelVersion(format!("/proc/sys/kernel/osrelease: {e}")))
}

/// Checks the kernel version, bpf(2) and BTF, and finds the optional features.
pub fn check_kernel() -> Result<KernelSupport, DataplaneError> {
    let release = uname_release()?;
    let version = check_release(&release)?;
    sys::bpf_syscall_works().map_err(DataplaneError::BpfSyscall)?;
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(DataplaneError::BtfMissing {
            path: PathBuf::from(VMLINUX_BTF),
        });
    }
    let sock_destroy_btf_id = Btf::from_sys_fs()
        .ok()
        .and_then(|btf| btf.id_by_type_name_kind("bpf_sock_destroy", BtfKind::Func).ok());
    Ok(KernelSupport {
        release,
        version,
        tcx: (version.0, version.1) >= (6, 6),
        sock_destroy_btf_id,
    })
}

/// Mounts bpffs at /sys/fs/bpf when it is not, then creates `dir` (which must be
/// on bpffs).
pub fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new(BPFFS_ROOT);
    if dir.starts_with(root) && sys::fs_magic(root).ok() != Some(sys::BPF_FS_MAGIC) {
        std::fs::create_dir_all(root).map_err(|e| DataplaneError::io(format!("create {}", root.display()), e))?;
        sys::mount_bpffs(root).map_err(|source| DataplaneError::BpffsMount {
            path: root.to_path_buf(),
            source,
        })?;
        tracing::info!(path = %root.display(), "mounted bpffs");
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| DataplaneError::io(format!("create pin directory {}", dir.display()), e))?;
    match sys::fs_magic(dir) {
        Ok(sys::BPF_FS_MAGIC) => Ok(()),
        Ok(_) => Err(DataplaneError::NotBpffs {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(DataplaneError::io(format!("statfs {}", dir.display()), e)),
    }
}

/// Refuses a cgroup root that is not a cgroup v2 directory.
pub fn check_cgroup2(path: &Path) -> Result<(), DataplaneError> {
    match sys::fs_magic(path) {
        Ok(sys::CGROUP2_SUPER_MAGIC) => Ok(()),
        _ => Err(DataplaneError::NotCgroup2 {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(parse_release("5.8.0-63-generic"), Some((5, 8, 0)));
        assert_eq!(parse_release("6.1"), Some((6, 1, 0)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn old_kernels_are_refused_by_name() {
        let e = check_release("5.4.0-150-generic").unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel 5.4.0-150-generic is too old: the data plane needs Linux 5.8 or later"
        );
        assert!(check_release("4.19.0").is_err());
        assert_eq!(check_release("5.8.0").unwrap(), (5, 8, 0));
        assert_eq!(check_release("6.18.44-fc-v669").unwrap(), (6, 18, 44));
        assert!(matches!(check_release("x"), Err(DataplaneError::KernelVersion(_))));
    }

    #[test]
    fn a_plain_directory_is_not_cgroup2() {
        let dir = std::env::temp_dir();
        let e = check_cgroup2(&dir).unwrap_err();
        assert!(e.to_string().contains("is not a cgroup v2 directory"), "{e}");
    }
}
