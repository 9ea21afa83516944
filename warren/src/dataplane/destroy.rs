//! Destroying the sockets connected to backends that left their service: the
//! iter/tcp and iter/udp programs of `sock_destroy.bpf.o` (bpf_sock_destroy, Linux
//! 6.5+), run in every network namespace that has a process under the cgroup root.

use std::{
    collections::BTreeSet,
    fs::File,
    io::Read,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData},
    programs::Iter,
    Btf, Ebpf, EbpfLoader,
};
use warren_common::{map_names as names, Be16, Be32, KillKey};
use warren_ebpf::programs as progs;

use super::{error::verifier_detail, maps::take, plan::KillTarget, sys, DataplaneError};

/// The iter/tcp and iter/udp programs and the map that tells them which sockets to
/// destroy.
pub(crate) struct SockDestroyer {
    ebpf: Ebpf,
    kill: HashMap<MapData, KillKey, u32>,
}

impl SockDestroyer {
    pub(crate) fn load(dir: &Path, btf_id: u32) -> Result<Self, DataplaneError> {
        let (obj, patched) = warren_ebpf::sock_destroy_object(btf_id);
        if patched == 0 {
            return Err(DataplaneError::program(
                progs::KILL_TCP,
                "no bpf_sock_destroy call to patch in the object",
            ));
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(&obj)
            .map_err(|e| DataplaneError::Load {
                object: "sock_destroy.bpf.o",
                source: Box::new(e),
            })?;
        let btf = Btf::from_sys_fs().map_err(|e| DataplaneError::program(progs::KILL_TCP, e))?;
        for (name, iter) in [(progs::KILL_TCP, "tcp"), (progs::KILL_UDP, "udp")] {
            let prog: &mut Iter = ebpf
                .program_mut(name)
                .ok_or_else(|| DataplaneError::program(name, "missing from the object"))?
                .try_into()
                .map_err(|e| DataplaneError::program(name, e))?;
            prog.load(iter, &btf)
                .map_err(|e| DataplaneError::program(name, verifier_detail(&e)))?;
        }
        let kill = take(&mut ebpf, names::KILL)?;
        Ok(Self { ebpf, kill })
    }

    /// Destroys every socket connected to one of `targets`, in each network
    /// namespace of `netns` (the iterators see only the namespace they run in).
    pub(crate) fn destroy(&mut self, targets: &[KillTarget], netns: &[OwnedFd]) -> Result<(), DataplaneError> {
        let keys: Vec<KillKey> = targets
            .iter()
            .map(|t| KillKey {
                addr: Be32::from_ip(t.addr),
                port: Be16::new(t.port),
                proto: t.proto,
                pad: 0,
            })
            .collect();
        for k in &keys {
            self.kill
                .insert(*k, 1, 0)
                .map_err(|e| DataplaneError::map(names::KILL, e))?;
        }
        let ebpf = &mut self.ebpf;
        let result = std::thread::scope(|s| {
            s.spawn(move || -> Result<(), DataplaneError> {
                for ns in netns {
                    // This thread is discarded afterwards, so moving it between
                    // namespaces affects nothing else.
                    sys::setns_net(ns.as_fd()).map_err(|e| DataplaneError::io("setns into a network namespace", e))?;
                    for name in [progs::KILL_TCP, progs::KILL_UDP] {
                        run_iter(ebpf, name)?;
                    }
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(DataplaneError::program(progs::KILL_TCP, "iterator thread panicked")))
        });
        for k in &keys {
            let _ = self.kill.remove(k);
        }
        result
    }
}

fn run_iter(ebpf: &mut Ebpf, name: &str) -> Result<(), DataplaneError> {
    let prog: &mut Iter = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::program(name, "missing"))?
        .try_into()
        .map_err(|e| DataplaneError::program(name, e))?;
    let id = prog.attach().map_err(|e| DataplaneError::program(name, e))?;
    let link = prog.take_link(id).map_err(|e| DataplaneError::program(name, e))?;
    let mut file = link.into_file().map_err(|e| DataplaneError::program(name, e))?;
    let mut sink = Vec::new();
    file.read_to_end(&mut sink)
        .map_err(|e| DataplaneError::io(format!("run iterator {name}"), e))?;
    Ok(())
}

/// The network namespaces of the processes under `cgroup_root` (where translated
/// sockets can live) plus this thread's own, one fd each.
pub(crate) fn netns_under(cgroup_root: &Path) -> Vec<OwnedFd> {
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup_root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push(e.path());
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let own = PathBuf::from("/proc/thread-self/ns/net");
    for path in std::iter::once(own).chain(pids.iter().map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))) {
        // A process may exit meanwhile; its namespace then needs no cleaning.
        let Ok(f) = File::open(&path) else { continue };
        let Ok(meta) = f.metadata() else { continue };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(OwnedFd::from(f));
        }
    }
    out
}
