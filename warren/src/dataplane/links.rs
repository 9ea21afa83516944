//! Attachment through pinned links: a new link is created and pinned, or the link a
//! previous daemon pinned for the same hook gets the new program atomically
//! (BPF_LINK_UPDATE), so the hook is never empty across a restart; links of a
//! previous configuration are detached.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::programs::links::FdLink;
use warren_ebpf::programs as progs;

use super::{error::error_chain, sys, DataplaneConfig, DataplaneError};

// enum bpf_attach_type (stable kernel ABI).
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
const BPF_CGROUP_INET4_POST_BIND: u32 = 12;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_INET6_POST_BIND: u32 = 13;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
const BPF_CGROUP_UDP6_RECVMSG: u32 = 20;
const BPF_CGROUP_INET6_GETPEERNAME: u32 = 30;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
pub(crate) const BPF_TCX_INGRESS: u32 = 46;
pub(crate) const BPF_TCX_EGRESS: u32 = 47;

/// The program type of a cgroup program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupKind {
    /// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`: connect, sendmsg, recvmsg, getpeername.
    SockAddr,
    /// `BPF_PROG_TYPE_CGROUP_SOCK`: post_bind.
    Sock,
    /// `BPF_PROG_TYPE_SOCK_OPS`: connection outcomes per backend.
    SockOps,
}

/// The cgroup programs: (program, pin name, attach type, program type).
pub(crate) const CGROUP_PROGRAMS: [(&str, &str, u32, CgroupKind); 11] = [
    (
        progs::CONNECT4,
        "link_connect4",
        BPF_CGROUP_INET4_CONNECT,
        CgroupKind::SockAddr,
    ),
    (
        progs::SENDMSG4,
        "link_sendmsg4",
        BPF_CGROUP_UDP4_SENDMSG,
        CgroupKind::SockAddr,
    ),
    (
        progs::RECVMSG4,
        "link_recvmsg4",
        BPF_CGROUP_UDP4_RECVMSG,
        CgroupKind::SockAddr,
    ),
    (
        progs::GETPEERNAME4,
        "link_getpeer4",
        BPF_CGROUP_INET4_GETPEERNAME,
        CgroupKind::SockAddr,
    ),
    (
        progs::CONNECT6,
        "link_connect6",
        BPF_CGROUP_INET6_CONNECT,
        CgroupKind::SockAddr,
    ),
    (
        progs::SENDMSG6,
        "link_sendmsg6",
        BPF_CGROUP_UDP6_SENDMSG,
        CgroupKind::SockAddr,
    ),
    (
        progs::RECVMSG6,
        "link_recvmsg6",
        BPF_CGROUP_UDP6_RECVMSG,
        CgroupKind::SockAddr,
    ),
    (
        progs::GETPEERNAME6,
        "link_getpeer6",
        BPF_CGROUP_INET6_GETPEERNAME,
        CgroupKind::SockAddr,
    ),
    (
        progs::POST_BIND4,
        "link_post_bind4",
        BPF_CGROUP_INET4_POST_BIND,
        CgroupKind::Sock,
    ),
    (
        progs::POST_BIND6,
        "link_post_bind6",
        BPF_CGROUP_INET6_POST_BIND,
        CgroupKind::Sock,
    ),
    (progs::SOCKOPS, "link_sockops", BPF_CGROUP_SOCK_OPS, CgroupKind::SockOps),
];

/// Attaches through a pinned link: an existing pin for the same hook gets the new
/// program swapped in atomically (BPF_LINK_UPDATE); otherwise a new link is created
/// and pinned (over a stale pin, by rename, so the old link stays until the new one
/// is in place). Returns whether the link was adopted.
pub(crate) fn attach_pinned(
    pin: &Path,
    expect: (u32, u64, u32),
    prog: BorrowedFd<'_>,
    create: impl FnOnce() -> Result<FdLink, DataplaneError>,
) -> Result<bool, DataplaneError> {
    if let Ok(fd) = sys::obj_get(pin) {
        match sys::link_info(fd.as_fd()) {
            Ok(info) if (info.link_type, info.target, info.attach_type) == expect => {
                match sys::link_update(fd.as_fd(), prog) {
                    Ok(()) => return Ok(true),
                    Err(e) => {
                        tracing::warn!(pin = %pin.display(), error = %e, "pinned link refused the new program; replacing the link")
                    }
                }
            }
            Ok(info) => {
                tracing::info!(pin = %pin.display(), ?info, "pinned link points elsewhere; replacing it")
            }
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "cannot read pinned link; replacing it")
            }
        }
    }
    let link = create()?;
    // bpffs refuses names with a '.'.
    let tmp = PathBuf::from(format!("{}_new", pin.display()));
    let _ = std::fs::remove_file(&tmp);
    link.pin(&tmp).map_err(|e| DataplaneError::Link {
        path: tmp.clone(),
        detail: error_chain(&e),
    })?;
    std::fs::rename(&tmp, pin).map_err(|e| DataplaneError::Link {
        path: pin.to_path_buf(),
        detail: format!("rename from {}: {e}", tmp.display()),
    })?;
    Ok(false)
}

/// Detaches the link pinned at `pin` at once. Before Linux 5.9 there is no
/// BPF_LINK_DETACH; removing the pin then detaches it shortly after.
pub(crate) fn detach_pinned(pin: &Path) {
    match sys::obj_get(pin) {
        Ok(fd) => {
            if let Err(e) = sys::link_detach(fd.as_fd()) {
                tracing::debug!(pin = %pin.display(), error = %e, "BPF_LINK_DETACH failed; relying on unpin");
            }
        }
        Err(e) => tracing::debug!(pin = %pin.display(), error = %e, "cannot open pinned link"),
    }
}

/// The link pins a data plane with `cfg` owns.
pub(crate) fn expected_pins(cfg: &DataplaneConfig) -> BTreeSet<String> {
    let mut pins: BTreeSet<String> = CGROUP_PROGRAMS.iter().map(|(_, pin, _, _)| pin.to_string()).collect();
    for iface in &cfg.ifaces {
        pins.insert(format!("link_tc_in_{iface}"));
        pins.insert(format!("link_tc_out_{iface}"));
    }
    pins
}

/// Unpins (and so detaches) links of a previous configuration, e.g. an interface
/// no longer listed.
pub(crate) fn remove_stale_links(dir: &Path, expected: &BTreeSet<String>) -> Result<(), DataplaneError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataplaneError::io(format!("read {}", dir.display()), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("link_") && !expected.contains(&name) {
            tracing::info!(pin = %e.path().display(), "detaching a link of a previous configuration");
            detach_pinned(&e.path());
            std::fs::remove_file(e.path())
                .map_err(|err| DataplaneError::io(format!("unpin {}", e.path().display()), err))?;
        }
    }
    Ok(())
}

pub(crate) fn ifindex(iface: &str) -> Result<u32, DataplaneError> {
    let c = std::ffi::CString::new(iface).map_err(|_| DataplaneError::NoSuchInterface {
        iface: iface.to_string(),
    })?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DataplaneError::NoSuchInterface {
            iface: iface.to_string(),
        });
    }
    Ok(idx)
}
