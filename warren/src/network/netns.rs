//! Task network namespaces as files (a bind mount of a thread's nsfs inode, as
//! `ip netns add` makes them), and running code or opening netlink sockets inside a
//! namespace. Not what is configured inside one (see `netlink`).
//!
//! Linux network namespaces are per thread: every switch happens on a fresh, dedicated
//! OS thread that ends right after, so no runtime worker ever changes namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::error::NetworkError;

/// `f_type` of a file on nsfs (`NSFS_MAGIC` in linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The namespace file of the calling thread.
const THREAD_SELF_NETNS: &str = "/proc/thread-self/ns/net";

/// A network namespace to enter: an open descriptor, or a namespace file.
#[derive(Clone, Debug)]
pub(crate) enum Ns {
    Fd(Arc<OwnedFd>),
    Path(PathBuf),
}

impl Ns {
    fn describe(&self) -> PathBuf {
        match self {
            Ns::Fd(_) => PathBuf::from("(node namespace)"),
            Ns::Path(p) => p.clone(),
        }
    }

    fn enter(&self) -> Result<(), NetworkError> {
        let err = |op, source| NetworkError::Netns {
            path: self.describe(),
            op,
            source,
        };
        match self {
            Ns::Fd(fd) => setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| err("enter", io::Error::from(e))),
            Ns::Path(p) => {
                let f = std::fs::File::open(p).map_err(|e| err("open", e))?;
                setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| err("enter", io::Error::from(e)))
            }
        }
    }
}

/// Opens the network namespace of the calling thread, so that later work can return
/// to it from other threads.
pub(crate) fn current_netns() -> Result<OwnedFd, NetworkError> {
    std::fs::File::open(THREAD_SELF_NETNS)
        .map(OwnedFd::from)
        .map_err(|source| NetworkError::Netns {
            path: THREAD_SELF_NETNS.into(),
            op: "open",
            source,
        })
}

/// Runs `f` on a new OS thread that has entered `ns`, and waits for it without
/// blocking the async runtime.
pub(crate) async fn in_netns<T, F>(ns: Ns, f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetworkError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = ns.describe();
    std::thread::Builder::new()
        .name("warren-netns".into())
        .spawn(move || {
            let r = ns.enter().and_then(|()| f());
            let _ = tx.send(r);
        })
        .map_err(|source| NetworkError::Netns {
            path: path.clone(),
            op: "spawn thread",
            source,
        })?;
    rx.await.map_err(|_| NetworkError::Netns {
        path,
        op: "run",
        source: io::Error::other("namespace thread panicked"),
    })?
}

/// A netlink route socket opened inside `ns`; it stays bound to that namespace
/// whichever thread uses it later.
pub(crate) async fn netlink_in(ns: Ns) -> Result<NetlinkConn, NetworkError> {
    let path = ns.describe();
    let socket = in_netns(ns, move || {
        rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE).map_err(|source| NetworkError::Netlink {
            context: format!("in {}", path.display()),
            source,
        })
    })
    .await?;
    Ok(NetlinkConn::from_socket(socket))
}

/// An rtnetlink handle whose connection task ends when this is dropped.
pub(crate) struct NetlinkConn {
    pub handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl NetlinkConn {
    /// A connection in the calling thread's namespace.
    pub(crate) fn here() -> Result<NetlinkConn, NetworkError> {
        let socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE).map_err(|source| {
            NetworkError::Netlink {
                context: "in the node namespace".into(),
                source,
            }
        })?;
        Ok(NetlinkConn::from_socket(socket))
    }

    fn from_socket(socket: rtnetlink::sys::Socket) -> NetlinkConn {
        use std::os::fd::FromRawFd;
        // SAFETY: the descriptor was just released by `into_raw_fd` and is owned by
        // nothing else; `TokioSocket` takes ownership and closes it.
        let socket = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        let task = tokio::spawn(conn);
        NetlinkConn { handle, task }
    }
}

impl Drop for NetlinkConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `path` is a mounted network namespace file.
pub(crate) fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// Makes `path` a new network namespace, unless it already is one.
pub(crate) async fn create_netns(path: &Path) -> Result<(), NetworkError> {
    if is_netns(path) {
        return Ok(());
    }
    let err = |op, source| NetworkError::Netns {
        path: path.to_path_buf(),
        op,
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("create directory", e))?;
        make_shared_mount(dir)?;
    }
    // An empty file left by a crash or a reboot (the mount is gone) is reused.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(path)
        .map_err(|e| err("create file", e))?;
    let target = path.to_path_buf();
    let r = in_netns_fresh(move || {
        mount(
            Some(THREAD_SELF_NETNS),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| NetworkError::Netns {
            path: target.clone(),
            op: "bind mount",
            source: e.into(),
        })
    })
    .await;
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Makes `dir` a shared mount point, as iproute2 and containerd do for their netns
/// directories: then unmounting a namespace file here also unmounts the copies that
/// mount namespaces cloned since (a container's) hold, instead of leaking the
/// namespace. A directory that is not a mount point yet is bind-mounted onto itself
/// first (recursively, so existing namespace files are carried over).
fn make_shared_mount(dir: &Path) -> Result<(), NetworkError> {
    let err = |op, e: Errno| NetworkError::Netns {
        path: dir.to_path_buf(),
        op,
        source: e.into(),
    };
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| err("bind mount onto itself", e))?;
            mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).map_err(|e| err("make shared", e))
        }
        Err(e) => Err(err("make shared", e)),
    }
}

/// Runs `f` on a new thread that has unshared into a brand-new network namespace.
async fn in_netns_fresh<F>(f: F) -> Result<(), NetworkError>
where
    F: FnOnce() -> Result<(), NetworkError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("warren-netns-new".into())
        .spawn(move || {
            let r = unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetworkError::Netns {
                    path: THREAD_SELF_NETNS.into(),
                    op: "unshare",
                    source: e.into(),
                })
                .and_then(|()| f());
            let _ = tx.send(r);
        })
        .map_err(|source| NetworkError::Netns {
            path: THREAD_SELF_NETNS.into(),
            op: "spawn thread",
            source,
        })?;
    rx.await.map_err(|_| NetworkError::Netns {
        path: THREAD_SELF_NETNS.into(),
        op: "create",
        source: io::Error::other("namespace thread panicked"),
    })?
}

/// Unmounts and deletes a namespace file; returns whether there was one. The namespace
/// itself lives on while a process is still in it.
pub(crate) fn remove_netns(path: &Path) -> Result<bool, NetworkError> {
    let err = |op, source| NetworkError::Netns {
        path: path.to_path_buf(),
        op,
        source,
    };
    let mut existed = false;
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => existed = true,
        // Not a mount point (a leftover empty file) or no file at all.
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(err("unmount", e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => existed = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove file", e)),
    }
    Ok(existed)
}

/// The namespace files in `dir` whose names start with `prefix`, as
/// (name without the prefix, path), sorted by name.
pub(crate) fn list_netns(dir: &Path, prefix: &str) -> Result<Vec<(String, PathBuf)>, NetworkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetworkError::Netns {
                path: dir.to_path_buf(),
                op: "list directory",
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(rest) = name.strip_prefix(prefix) {
            if !rest.is_empty() {
                out.push((rest.to_string(), entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// An open namespace file, for link messages that create a link inside it.
pub(crate) fn open_netns(path: &Path) -> Result<OwnedFd, NetworkError> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| NetworkError::Netns {
            path: path.to_path_buf(),
            op: "open",
            source,
        })
}
