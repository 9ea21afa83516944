//! The few bpf(2) commands aya 0.14 does not expose on a raw link fd (open a pin,
//! read a link's target, swap a link's program, detach it), plus
//! statfs and setns. Thin unsafe wrappers; no policy here.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub(crate) const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// `union bpf_attr`, large enough for every command used here; the kernel
/// accepts a larger buffer when the tail is zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable bpf_attr-sized buffer for the duration of
    // the call; the pointers inside it (set by the callers) outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as libc::c_uint) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether bpf(2) answers at all (BPF_PROG_GET_NEXT_ID; ENOENT means "works, no
/// more programs").
pub(crate) fn bpf_syscall_works() -> io::Result<()> {
    let mut attr = Attr::new();
    match bpf(BPF_PROG_GET_NEXT_ID, &mut attr) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// BPF_OBJ_GET: opens a pinned object.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr::new();
    attr.put_u64(0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What `bpf_link_info` says about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub link_type: u32,
    pub prog_id: u32,
    /// cgroup links: the cgroup id; tcx links: the ifindex (0 once the device is gone).
    pub target: u64,
    pub attach_type: u32,
}

pub(crate) const LINK_TYPE_CGROUP: u32 = 3;
pub(crate) const LINK_TYPE_TCX: u32 = 11;

/// BPF_OBJ_GET_INFO_BY_FD on a link.
pub(crate) fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8.
    let mut info = [0u64; 12];
    let mut attr = Attr::new();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, std::mem::size_of_val(&info) as u32);
    attr.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let link_type = info[0] as u32;
    let prog_id = info[1] as u32;
    let (target, attach_type) = match link_type {
        LINK_TYPE_CGROUP => (info[2], info[3] as u32),
        LINK_TYPE_TCX => (info[2] & 0xffff_ffff, (info[2] >> 32) as u32),
        _ => (0, 0),
    };
    Ok(LinkInfo {
        link_type,
        prog_id,
        target,
        attach_type,
    })
}

/// BPF_LINK_UPDATE: atomically replaces the program behind a link; traffic never
/// sees the hook empty.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// BPF_LINK_DETACH (5.9+): detaches now, rather than when the kernel gets round
/// to releasing the link's last reference (that release is deferred to a work
/// queue, so a removed pin alone detaches "soon").
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.put_u32(0, link.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// The filesystem magic of `path` (statfs f_type).
pub(crate) fn fs_magic(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statfs fills the zeroed struct; c is a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// mount -t bpf bpf <path>
pub(crate) fn mount_bpffs(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let fstype = c"bpf";
    let data = c"mode=0700";
    // SAFETY: every argument is a valid NUL-terminated string.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the network namespace `ns`.
pub(crate) fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: ns is an open namespace file descriptor.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, 5.14+),
/// as bpf_get_netns_cookie() returns it to a program.
pub(crate) fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket syscalls on a descriptor owned by `fd`; getsockopt
    // writes at most `len` bytes into `cookie`.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    }
}

/// Runs `f` on a short-lived thread inside the network namespace `ns` (setns
/// affects only the calling thread, so the caller's own stays as it is).
pub(crate) fn in_netns<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns_net(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread in network namespace panicked"))?
    })
}
