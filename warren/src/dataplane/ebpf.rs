//! The real data plane: loads `warren-ebpf`'s objects with aya, attaches the
//! cgroup and tc programs through pinned links (adopting and atomically updating
//! the links a previous daemon pinned, so the hooks never go empty across a
//! restart), keeps the maps equal to the last `sync`, destroys sockets to removed
//! backends, and removes everything on `cleanup`.

use std::{
    collections::BTreeSet,
    fs::File,
    io::Read,
    net::Ipv4Addr,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuValues, RingBuf},
    programs::{
        links::FdLink,
        tc::{self, NlOptions, TcAttachOptions},
        CgroupAttachMode, CgroupSockAddr, Iter, LinkOrder, SchedClassifier, TcAttachType,
    },
    Btf, Ebpf, EbpfLoader,
};
use warren_common::{
    map_names as names, slot_index, Affinity, Backend as BeValue, BackendCounters, Be16, Be32,
    CtKey, CtValue, KillKey, NodeAddr, RevNat, RlKey, RlValue, SockKey, SvcCounters, SvcKey,
    SvcState, SvcValue, BE_F_ACTIVE, BE_F_CANARY, BE_F_LOCAL, CT_ENTRIES, DROP_CT_FULL,
    DROP_NO_BACKEND, DROP_RATE_LIMITED, DROP_SNAT_EXHAUSTED, EVENTS_BYTES, KILL_ENTRIES, KINDS,
    MAX_BACKENDS, MAX_NODE_ADDRS, MAX_SERVICES, MAX_SVC_ENTRIES, RL_ENTRIES, SLOTS, SLOT_ENTRIES,
    SOCK_ENTRIES,
};
use warren_ebpf::programs as progs;

use super::{
    checks::{self, KernelSupport},
    events::EventReader,
    plan::{self, Current, CurrentService, KillTarget, MapOps},
    sys, AttachedProgram, BackendStats, Dataplane, DataplaneConfig, DataplaneError,
    DataplaneStatus, DropCounters, MapFill, ServiceEntry, ServiceStats,
};

// enum bpf_attach_type (stable kernel ABI).
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// The cgroup programs: (program, pin name, attach type).
const CGROUP_PROGRAMS: [(&str, &str, u32); 4] = [
    (progs::CONNECT4, "link_connect4", BPF_CGROUP_INET4_CONNECT),
    (progs::SENDMSG4, "link_sendmsg4", BPF_CGROUP_UDP4_SENDMSG),
    (progs::RECVMSG4, "link_recvmsg4", BPF_CGROUP_UDP4_RECVMSG),
    (
        progs::GETPEERNAME4,
        "link_getpeer4",
        BPF_CGROUP_INET4_GETPEERNAME,
    ),
];

/// Every map: (name, kernel map type, key size, value size, max entries). A pinned
/// map that differs is refused rather than reused.
fn map_specs() -> [(&'static str, u32, usize, usize, u32); 13] {
    use std::mem::size_of;
    const HASH: u32 = 1;
    const ARRAY: u32 = 2;
    const PERCPU_ARRAY: u32 = 6;
    const LRU_HASH: u32 = 9;
    const RINGBUF: u32 = 27;
    [
        (
            names::SVC,
            HASH,
            size_of::<SvcKey>(),
            size_of::<SvcValue>(),
            MAX_SVC_ENTRIES,
        ),
        (names::STATE, ARRAY, 4, size_of::<SvcState>(), MAX_SERVICES),
        (names::SLOT, ARRAY, 4, 4, SLOT_ENTRIES),
        (names::BACKEND, ARRAY, 4, size_of::<BeValue>(), MAX_BACKENDS),
        (
            names::REVNAT,
            LRU_HASH,
            size_of::<SockKey>(),
            size_of::<RevNat>(),
            SOCK_ENTRIES,
        ),
        (
            names::AFFINITY,
            LRU_HASH,
            size_of::<SockKey>(),
            size_of::<Affinity>(),
            SOCK_ENTRIES,
        ),
        (
            names::RATE_LIMIT,
            LRU_HASH,
            size_of::<RlKey>(),
            size_of::<RlValue>(),
            RL_ENTRIES,
        ),
        (
            names::CT,
            LRU_HASH,
            size_of::<CtKey>(),
            size_of::<CtValue>(),
            CT_ENTRIES,
        ),
        (
            names::NODE_ADDR,
            HASH,
            4,
            size_of::<NodeAddr>(),
            MAX_NODE_ADDRS,
        ),
        (
            names::SVC_COUNTERS,
            PERCPU_ARRAY,
            4,
            size_of::<SvcCounters>(),
            MAX_SERVICES,
        ),
        (
            names::BACKEND_COUNTERS,
            PERCPU_ARRAY,
            4,
            size_of::<BackendCounters>(),
            MAX_BACKENDS,
        ),
        (names::KILL, HASH, size_of::<KillKey>(), 4, KILL_ENTRIES),
        (names::EVENTS, RINGBUF, 0, 0, EVENTS_BYTES),
    ]
}

/// The maps the loader writes and reads.
struct Maps {
    svc: HashMap<MapData, SvcKey, SvcValue>,
    state: Array<MapData, SvcState>,
    slot: Array<MapData, u32>,
    be: Array<MapData, BeValue>,
    naddr: HashMap<MapData, Be32, NodeAddr>,
    svcc: PerCpuArray<MapData, SvcCounters>,
    bec: PerCpuArray<MapData, BackendCounters>,
    rnat: HashMap<MapData, SockKey, RevNat>,
    aff: HashMap<MapData, SockKey, Affinity>,
    rl: HashMap<MapData, RlKey, RlValue>,
    ct: HashMap<MapData, CtKey, CtValue>,
    ncpus: usize,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap { map: name })?;
    T::try_from(map).map_err(|e| DataplaneError::map(name, e))
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            svc: take(ebpf, names::SVC)?,
            state: take(ebpf, names::STATE)?,
            slot: take(ebpf, names::SLOT)?,
            be: take(ebpf, names::BACKEND)?,
            naddr: take(ebpf, names::NODE_ADDR)?,
            svcc: take(ebpf, names::SVC_COUNTERS)?,
            bec: take(ebpf, names::BACKEND_COUNTERS)?,
            rnat: take(ebpf, names::REVNAT)?,
            aff: take(ebpf, names::AFFINITY)?,
            rl: take(ebpf, names::RATE_LIMIT)?,
            ct: take(ebpf, names::CT)?,
            ncpus: aya::util::nr_cpus().map_err(|(what, e)| DataplaneError::io(what, e))?,
        })
    }

    /// The maps' contents as the reconciler sees them (after a restart: what the
    /// previous daemon left).
    fn read_current(&self) -> Result<Current, DataplaneError> {
        let mut cur = Current::default();
        for item in self.svc.iter() {
            let (k, v) = item.map_err(|e| DataplaneError::map(names::SVC, e))?;
            cur.svc_entries.insert(k, v);
        }
        let ids: BTreeSet<u32> = cur.svc_entries.values().map(|v| v.svc_id).collect();
        for id in ids {
            let state = self
                .state
                .get(&id, 0)
                .map_err(|e| DataplaneError::map(names::STATE, e))?;
            let mut tables: [Vec<u32>; KINDS as usize] = Default::default();
            for (kind, table) in tables.iter_mut().enumerate() {
                let n = if kind == 0 {
                    state.backends_all
                } else {
                    state.backends_local
                };
                if n == 0 {
                    continue;
                }
                for slot in 0..SLOTS {
                    let id = self
                        .slot
                        .get(&slot_index(id, state.rev, kind as u32, slot), 0)
                        .map_err(|e| DataplaneError::map(names::SLOT, e))?;
                    table.push(id);
                }
            }
            cur.services.insert(
                id,
                CurrentService {
                    name: format!("#{id}"),
                    state,
                    tables,
                },
            );
        }
        for id in 1..MAX_BACKENDS {
            let b = self
                .be
                .get(&id, 0)
                .map_err(|e| DataplaneError::map(names::BACKEND, e))?;
            if b.flags & BE_F_ACTIVE != 0 {
                cur.backends.insert(id, b);
            }
        }
        Ok(cur)
    }

    fn sync_node_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<(), DataplaneError> {
        let want: BTreeSet<Be32> = addrs.iter().map(|a| Be32::from_ip(*a)).collect();
        let have: Vec<Be32> = self
            .naddr
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| DataplaneError::map(names::NODE_ADDR, e))?;
        for a in &have {
            if !want.contains(a) {
                self.naddr
                    .remove(a)
                    .map_err(|e| DataplaneError::map(names::NODE_ADDR, e))?;
            }
        }
        for a in want {
            if !have.contains(&a) {
                self.naddr
                    .insert(a, NodeAddr::default(), 0)
                    .map_err(|e| DataplaneError::map(names::NODE_ADDR, e))?;
            }
        }
        Ok(())
    }

    fn svc_counters(&self, id: u32) -> Result<SvcCounters, DataplaneError> {
        let per_cpu = self
            .svcc
            .get(&id, 0)
            .map_err(|e| DataplaneError::map(names::SVC_COUNTERS, e))?;
        let mut sum = SvcCounters::default();
        for c in per_cpu.iter() {
            sum.conns += c.conns;
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            for (s, d) in sum.drops.iter_mut().zip(c.drops) {
                *s += d;
            }
        }
        Ok(sum)
    }

    fn backend_counters(&self, id: u32) -> Result<BackendCounters, DataplaneError> {
        let per_cpu = self
            .bec
            .get(&id, 0)
            .map_err(|e| DataplaneError::map(names::BACKEND_COUNTERS, e))?;
        let mut sum = BackendCounters::default();
        for c in per_cpu.iter() {
            sum.conns += c.conns;
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        Ok(sum)
    }
}

impl MapOps for Maps {
    fn set_backend(&mut self, id: u32, value: BeValue) -> Result<(), DataplaneError> {
        self.be
            .set(id, value, 0)
            .map_err(|e| DataplaneError::map(names::BACKEND, e))
    }

    fn zero_backend_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        let zero = PerCpuValues::try_from(vec![BackendCounters::default(); self.ncpus])
            .map_err(|e| DataplaneError::io("per-CPU values", e))?;
        self.bec
            .set(id, zero, 0)
            .map_err(|e| DataplaneError::map(names::BACKEND_COUNTERS, e))
    }

    fn zero_service_counters(&mut self, svc_id: u32) -> Result<(), DataplaneError> {
        let zero = PerCpuValues::try_from(vec![SvcCounters::default(); self.ncpus])
            .map_err(|e| DataplaneError::io("per-CPU values", e))?;
        self.svcc
            .set(svc_id, zero, 0)
            .map_err(|e| DataplaneError::map(names::SVC_COUNTERS, e))
    }

    fn write_table(
        &mut self,
        svc_id: u32,
        rev: u32,
        kind: u32,
        ids: &[u32],
    ) -> Result<(), DataplaneError> {
        for (slot, id) in ids.iter().enumerate() {
            self.slot
                .set(slot_index(svc_id, rev, kind, slot as u32), id, 0)
                .map_err(|e| DataplaneError::map(names::SLOT, e))?;
        }
        Ok(())
    }

    fn set_state(&mut self, svc_id: u32, state: SvcState) -> Result<(), DataplaneError> {
        self.state
            .set(svc_id, state, 0)
            .map_err(|e| DataplaneError::map(names::STATE, e))
    }

    fn put_svc(&mut self, key: SvcKey, value: SvcValue) -> Result<(), DataplaneError> {
        self.svc
            .insert(key, value, 0)
            .map_err(|e| DataplaneError::map(names::SVC, e))
    }

    fn del_svc(&mut self, key: SvcKey) -> Result<(), DataplaneError> {
        match self.svc.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(DataplaneError::map(names::SVC, e)),
        }
    }
}

/// The iter/tcp and iter/udp programs and the map that tells them which sockets to
/// destroy.
struct SockDestroyer {
    ebpf: Ebpf,
    kill: HashMap<MapData, KillKey, u32>,
}

impl SockDestroyer {
    fn load(dir: &Path, btf_id: u32) -> Result<Self, DataplaneError> {
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
    fn destroy(&mut self, targets: &[KillTarget], netns: &[OwnedFd]) -> Result<(), DataplaneError> {
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
                    sys::setns_net(ns.as_fd())
                        .map_err(|e| DataplaneError::io("setns into a network namespace", e))?;
                    for name in [progs::KILL_TCP, progs::KILL_UDP] {
                        run_iter(ebpf, name)?;
                    }
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(DataplaneError::program(
                    progs::KILL_TCP,
                    "iterator thread panicked",
                ))
            })
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
    let id = prog
        .attach()
        .map_err(|e| DataplaneError::program(name, e))?;
    let link = prog
        .take_link(id)
        .map_err(|e| DataplaneError::program(name, e))?;
    let mut file = link
        .into_file()
        .map_err(|e| DataplaneError::program(name, e))?;
    let mut sink = Vec::new();
    file.read_to_end(&mut sink)
        .map_err(|e| DataplaneError::io(format!("run iterator {name}"), e))?;
    Ok(())
}

/// An error and its sources on one line (aya's pin errors hide the errno in the
/// source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The verifier log is the useful part of a load failure.
fn verifier_detail(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("{io_error}; verifier log:\n{verifier_log}")
        }
        other => other.to_string(),
    }
}

/// The network namespaces of the processes under `cgroup_root` (where translated
/// sockets can live) plus this thread's own, one fd each.
fn netns_under(cgroup_root: &Path) -> Vec<OwnedFd> {
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
    for path in std::iter::once(own).chain(
        pids.iter()
            .map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))),
    ) {
        // A process may exit meanwhile; its namespace then needs no cleaning.
        let Ok(f) = File::open(&path) else { continue };
        let Ok(meta) = f.metadata() else { continue };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push(OwnedFd::from(f));
        }
    }
    out
}

/// Attaches through a pinned link: an existing pin for the same hook gets the new
/// program swapped in atomically (BPF_LINK_UPDATE); otherwise a new link is created
/// and pinned (over a stale pin, by rename, so the old link stays until the new one
/// is in place). Returns whether the link was adopted.
fn attach_pinned(
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
fn detach_pinned(pin: &Path) {
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
fn expected_pins(cfg: &DataplaneConfig) -> BTreeSet<String> {
    let mut pins: BTreeSet<String> = CGROUP_PROGRAMS
        .iter()
        .map(|(_, pin, _)| pin.to_string())
        .collect();
    for iface in &cfg.ifaces {
        pins.insert(format!("link_tc_in_{iface}"));
        pins.insert(format!("link_tc_out_{iface}"));
    }
    pins
}

/// Unpins (and so detaches) links of a previous configuration, e.g. an interface
/// no longer listed.
fn remove_stale_links(dir: &Path, expected: &BTreeSet<String>) -> Result<(), DataplaneError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| DataplaneError::io(format!("read {}", dir.display()), e))?;
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

fn ifindex(iface: &str) -> Result<u32, DataplaneError> {
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

fn validate_config(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    if cfg.node_name.is_empty() || cfg.node_name.contains('/') {
        return Err(DataplaneError::InvalidConfig {
            field: "node_name",
            problem: format!("{:?} must be non-empty and contain no '/'", cfg.node_name),
        });
    }
    if cfg.node_addrs.len() > MAX_NODE_ADDRS as usize {
        return Err(DataplaneError::InvalidConfig {
            field: "node_addrs",
            problem: format!(
                "{} addresses, at most {MAX_NODE_ADDRS}",
                cfg.node_addrs.len()
            ),
        });
    }
    if let Some(a) = cfg
        .node_addrs
        .iter()
        .find(|a| a.is_unspecified() || a.is_multicast())
    {
        return Err(DataplaneError::InvalidConfig {
            field: "node_addrs",
            problem: format!("{a} is not a node address"),
        });
    }
    let mut seen = BTreeSet::new();
    for iface in &cfg.ifaces {
        if !seen.insert(iface) {
            return Err(DataplaneError::InvalidConfig {
                field: "ifaces",
                problem: format!("{iface} is listed twice"),
            });
        }
        ifindex(iface)?;
    }
    Ok(())
}

/// Refuses pinned maps whose type or sizes differ from this build's.
fn check_pinned_maps(dir: &Path) -> Result<(), DataplaneError> {
    for (name, ty, key, value, max) in map_specs() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| DataplaneError::IncompatiblePin {
            path: path.clone(),
            detail: format!("cannot read it: {e}"),
        })?;
        let found = (
            info.map_type_raw(),
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if found != (ty, key, value, max) {
            return Err(DataplaneError::IncompatiblePin {
                path,
                detail: format!(
                    "type/key/value/max_entries {found:?}, expected {:?}",
                    (ty, key, value, max)
                ),
            });
        }
    }
    Ok(())
}

trait MapTypeRaw {
    fn map_type_raw(&self) -> u32;
}

impl MapTypeRaw for MapInfo {
    fn map_type_raw(&self) -> u32 {
        use aya::maps::MapType;
        match self.map_type() {
            Ok(MapType::Hash) => 1,
            Ok(MapType::Array) => 2,
            Ok(MapType::PerCpuArray) => 6,
            Ok(MapType::LruHash) => 9,
            Ok(MapType::RingBuf) => 27,
            _ => u32::MAX,
        }
    }
}

struct Inner {
    maps: Maps,
    current: Current,
    destroyer: Option<SockDestroyer>,
    events: Option<EventReader>,
}

/// The eBPF data plane of one node. Dropping it leaves everything attached and
/// pinned (a restarted daemon adopts it); [`EbpfDataplane::cleanup`] removes it.
pub struct EbpfDataplane {
    cfg: DataplaneConfig,
    kernel: KernelSupport,
    programs: Vec<AttachedProgram>,
    inner: Mutex<Inner>,
}

impl EbpfDataplane {
    /// Checks the system, loads the programs (reusing pinned maps), attaches them
    /// or adopts the pinned links, and reads back what the maps hold so that the
    /// next `sync` only writes differences.
    pub fn open(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        validate_config(&cfg)?;
        let kernel = checks::check_kernel()?;
        checks::ensure_bpffs(&cfg.bpffs_dir)?;
        checks::check_cgroup2(&cfg.cgroup_root)?;
        check_pinned_maps(&cfg.bpffs_dir)?;

        let redirect_neigh = u32::from((kernel.version.0, kernel.version.1) >= (5, 10));
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&cfg.bpffs_dir)
            .override_global("warren_redirect_neigh", &redirect_neigh, true)
            .load(warren_ebpf::warren_object())
            .map_err(|e| DataplaneError::Load {
                object: "warren.bpf.o",
                source: Box::new(e),
            })?;

        let mut programs = Vec::new();
        let cgroup = File::open(&cfg.cgroup_root).map_err(|e| {
            DataplaneError::io(format!("open cgroup {}", cfg.cgroup_root.display()), e)
        })?;
        let cgroup_id = cgroup
            .metadata()
            .map_err(|e| {
                DataplaneError::io(format!("stat cgroup {}", cfg.cgroup_root.display()), e)
            })?
            .ino();
        for (name, pin, attach_type) in CGROUP_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| DataplaneError::program(name, "missing from the object"))?
                .try_into()
                .map_err(|e| DataplaneError::program(name, e))?;
            prog.load()
                .map_err(|e| DataplaneError::program(name, verifier_detail(&e)))?;
            let prog_fd = prog
                .fd()
                .map_err(|e| DataplaneError::program(name, e))?
                .try_clone()
                .map_err(|e| DataplaneError::program(name, e))?;
            let adopted = attach_pinned(
                &cfg.bpffs_dir.join(pin),
                (sys::LINK_TYPE_CGROUP, cgroup_id, attach_type),
                prog_fd.as_fd(),
                || {
                    let id = prog
                        .attach(&cgroup, CgroupAttachMode::Single)
                        .map_err(|e| DataplaneError::program(name, e))?;
                    let link = prog
                        .take_link(id)
                        .map_err(|e| DataplaneError::program(name, e))?;
                    FdLink::try_from(link).map_err(|e| DataplaneError::program(name, e))
                },
            )?;
            programs.push(AttachedProgram {
                program: name.to_string(),
                target: format!("cgroup:{}", cfg.cgroup_root.display()),
                adopted,
            });
        }

        for name in [progs::TC_INGRESS, progs::TC_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| DataplaneError::program(name, "missing from the object"))?
                .try_into()
                .map_err(|e| DataplaneError::program(name, e))?;
            prog.load()
                .map_err(|e| DataplaneError::program(name, verifier_detail(&e)))?;
        }
        for iface in &cfg.ifaces {
            for (name, dir, attach_type, tcx_type) in [
                (
                    progs::TC_INGRESS,
                    "in",
                    TcAttachType::Ingress,
                    BPF_TCX_INGRESS,
                ),
                (
                    progs::TC_EGRESS,
                    "out",
                    TcAttachType::Egress,
                    BPF_TCX_EGRESS,
                ),
            ] {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .ok_or_else(|| DataplaneError::program(name, "missing from the object"))?
                    .try_into()
                    .map_err(|e| DataplaneError::program(name, e))?;
                let adopted = if kernel.tcx {
                    let prog_fd = prog
                        .fd()
                        .map_err(|e| DataplaneError::program(name, e))?
                        .try_clone()
                        .map_err(|e| DataplaneError::program(name, e))?;
                    attach_pinned(
                        &cfg.bpffs_dir.join(format!("link_tc_{dir}_{iface}")),
                        (sys::LINK_TYPE_TCX, u64::from(ifindex(iface)?), tcx_type),
                        prog_fd.as_fd(),
                        || {
                            let id = prog
                                .attach_with_options(
                                    iface,
                                    attach_type,
                                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                                )
                                .map_err(|e| {
                                    DataplaneError::program(name, format!("{iface}: {e}"))
                                })?;
                            let link = prog
                                .take_link(id)
                                .map_err(|e| DataplaneError::program(name, e))?;
                            FdLink::try_from(link).map_err(|e| DataplaneError::program(name, e))
                        },
                    )?
                } else {
                    // Before tcx (Linux < 6.6) a netlink filter is replaced by
                    // delete-then-add: a short gap on restart, documented.
                    let _ = tc::qdisc_add_clsact(iface);
                    let _ = tc::qdisc_detach_program(iface, attach_type, name);
                    let id = prog
                        .attach_with_options(
                            iface,
                            attach_type,
                            TcAttachOptions::Netlink(NlOptions::default()),
                        )
                        .map_err(|e| DataplaneError::program(name, format!("{iface}: {e}")))?;
                    // Netlink filters outlive the process; forget the link so that
                    // dropping `ebpf` leaves the filter in place.
                    std::mem::forget(
                        prog.take_link(id)
                            .map_err(|e| DataplaneError::program(name, e))?,
                    );
                    false
                };
                programs.push(AttachedProgram {
                    program: name.to_string(),
                    target: format!(
                        "tc-{}:{iface}",
                        if dir == "in" { "ingress" } else { "egress" }
                    ),
                    adopted,
                });
            }
        }

        remove_stale_links(&cfg.bpffs_dir, &expected_pins(&cfg))?;

        let mut maps = Maps::take(&mut ebpf)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, names::EVENTS)?;
        let events = match EventReader::start(cfg.node_name.clone(), ring) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(node = %cfg.node_name, error = %e, "cannot start the data plane event reader");
                None
            }
        };
        maps.sync_node_addrs(&cfg.node_addrs)?;
        let current = maps.read_current()?;

        let destroyer = match kernel.sock_destroy_btf_id {
            None => {
                tracing::warn!(node = %cfg.node_name, kernel = %kernel.release, "kernel lacks bpf_sock_destroy (Linux 6.5+): sockets to removed backends stay open until the client notices");
                None
            }
            Some(id) => match SockDestroyer::load(&cfg.bpffs_dir, id) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(node = %cfg.node_name, error = %e, "cannot load the socket-destroy programs: sockets to removed backends stay open until the client notices");
                    None
                }
            },
        };

        let adopted = programs.iter().filter(|p| p.adopted).count();
        tracing::info!(
            node = %cfg.node_name,
            bpffs = %cfg.bpffs_dir.display(),
            cgroup = %cfg.cgroup_root.display(),
            programs = programs.len(),
            adopted,
            services = current.services.len(),
            backends = current.backends.len(),
            sock_destroy = destroyer.is_some(),
            "data plane ready"
        );
        // The programs stay attached through their pinned links; the maps were
        // taken out, so dropping the object only closes our program fds.
        drop(ebpf);
        Ok(Self {
            cfg,
            kernel,
            programs,
            inner: Mutex::new(Inner {
                maps,
                current,
                destroyer,
                events,
            }),
        })
    }

    /// Detaches every program and removes every pinned link and map of `cfg`'s
    /// node (and legacy tc filters on its interfaces). Idempotent.
    pub fn cleanup(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
        for iface in &cfg.ifaces {
            for (name, t) in [
                (progs::TC_INGRESS, TcAttachType::Ingress),
                (progs::TC_EGRESS, TcAttachType::Egress),
            ] {
                // Only netlink filters (pre-tcx kernels) need this; absence is fine.
                let _ = tc::qdisc_detach_program(iface, t, name);
            }
        }
        let dir = &cfg.bpffs_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(DataplaneError::io(format!("read {}", dir.display()), e)),
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        // Links first, so no program runs against half-removed maps.
        paths.sort_by_key(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
        });
        for p in paths {
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
            {
                detach_pinned(&p);
            }
            std::fs::remove_file(&p)
                .map_err(|e| DataplaneError::io(format!("unpin {}", p.display()), e))?;
        }
        std::fs::remove_dir(dir)
            .map_err(|e| DataplaneError::io(format!("remove {}", dir.display()), e))?;
        tracing::info!(node = %cfg.node_name, bpffs = %dir.display(), "data plane removed");
        Ok(())
    }

    /// The configuration this data plane was opened with.
    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// What the kernel offers.
    pub fn kernel(&self) -> &KernelSupport {
        &self.kernel
    }

    fn status_of(&self, inner: &Inner) -> DataplaneStatus {
        let mut st = DataplaneStatus {
            node_name: self.cfg.node_name.clone(),
            programs: self.programs.clone(),
            sock_destroy: inner.destroyer.is_some(),
            recent_drops: inner
                .events
                .as_ref()
                .map(EventReader::recent)
                .unwrap_or_default(),
            ..Default::default()
        };
        let maps = &inner.maps;
        let cur = &inner.current;
        let mut fill = |name: &str,
                        entries: Result<u64, MapError>,
                        capacity: u32,
                        errors: &mut Vec<String>| {
            match entries {
                Ok(n) => st.maps.push(MapFill {
                    name: name.to_string(),
                    entries: n,
                    capacity: u64::from(capacity),
                }),
                Err(e) => errors.push(format!("map {name}: {e}")),
            }
        };
        let mut errors = Vec::new();
        fn count<K: aya::Pod>(
            keys: impl Iterator<Item = Result<K, MapError>>,
        ) -> Result<u64, MapError> {
            let mut n = 0;
            for k in keys {
                k?;
                n += 1;
            }
            Ok(n)
        }
        fill(
            names::SVC,
            count(maps.svc.keys()),
            MAX_SVC_ENTRIES,
            &mut errors,
        );
        fill(
            names::STATE,
            Ok(cur.services.len() as u64),
            MAX_SERVICES,
            &mut errors,
        );
        fill(
            names::SLOT,
            Ok(cur
                .services
                .values()
                .flat_map(|s| s.tables.iter())
                .map(|t| t.len() as u64)
                .sum()),
            SLOT_ENTRIES,
            &mut errors,
        );
        fill(
            names::BACKEND,
            Ok(cur.backends.len() as u64),
            MAX_BACKENDS,
            &mut errors,
        );
        fill(
            names::REVNAT,
            count(maps.rnat.keys()),
            SOCK_ENTRIES,
            &mut errors,
        );
        fill(
            names::AFFINITY,
            count(maps.aff.keys()),
            SOCK_ENTRIES,
            &mut errors,
        );
        fill(
            names::RATE_LIMIT,
            count(maps.rl.keys()),
            RL_ENTRIES,
            &mut errors,
        );
        fill(names::CT, count(maps.ct.keys()), CT_ENTRIES, &mut errors);
        fill(
            names::NODE_ADDR,
            count(maps.naddr.keys()),
            MAX_NODE_ADDRS,
            &mut errors,
        );

        for (&id, svc) in &cur.services {
            match maps.svc_counters(id) {
                Ok(c) => st.services.push(ServiceStats {
                    id,
                    name: svc.name.clone(),
                    connections: c.conns,
                    packets: c.packets,
                    bytes: c.bytes,
                    drops: DropCounters {
                        rate_limited: c.drops[DROP_RATE_LIMITED],
                        no_backend: c.drops[DROP_NO_BACKEND],
                        ct_full: c.drops[DROP_CT_FULL],
                        snat_exhausted: c.drops[DROP_SNAT_EXHAUSTED],
                    },
                }),
                Err(e) => errors.push(e.to_string()),
            }
        }
        for (&id, b) in &cur.backends {
            match maps.backend_counters(id) {
                Ok(c) => st.backends.push(BackendStats {
                    service_id: b.svc_id,
                    service: cur
                        .services
                        .get(&b.svc_id)
                        .map_or_else(|| format!("#{}", b.svc_id), |s| s.name.clone()),
                    addr: b.addr.ip(),
                    canary: b.flags & BE_F_CANARY != 0,
                    local: b.flags & BE_F_LOCAL != 0,
                    connections: c.conns,
                    packets: c.packets,
                    bytes: c.bytes,
                }),
                Err(e) => errors.push(e.to_string()),
            }
        }
        st.errors = errors;
        st
    }
}

impl Dataplane for EbpfDataplane {
    fn sync(&self, services: &[ServiceEntry]) -> Result<(), DataplaneError> {
        let plan = plan::plan(services)?;
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        // Work on a copy: if a write fails midway, the cache must keep describing
        // the maps as they were, and the next sync retries.
        let mut next = inner.current.clone();
        let result = plan::reconcile(&mut next, &plan, &mut inner.maps);
        let outcome = match result {
            Ok(o) => {
                inner.current = next;
                o
            }
            Err(e) => {
                // Re-read what actually landed, so the next sync diffs against truth.
                if let Ok(cur) = inner.maps.read_current() {
                    inner.current = cur;
                }
                return Err(e);
            }
        };
        tracing::debug!(node = %self.cfg.node_name, services = services.len(), writes = outcome.writes, "data plane synced");
        if !outcome.kill.is_empty() {
            match inner.destroyer.as_mut() {
                Some(d) => {
                    let netns = netns_under(&self.cfg.cgroup_root);
                    if let Err(e) = d.destroy(&outcome.kill, &netns) {
                        tracing::warn!(node = %self.cfg.node_name, error = %e, "destroying sockets to removed backends failed");
                    } else {
                        tracing::info!(node = %self.cfg.node_name, targets = outcome.kill.len(), namespaces = netns.len(), "destroyed sockets to removed backends");
                    }
                }
                None => {
                    tracing::info!(node = %self.cfg.node_name, targets = outcome.kill.len(), "sockets to removed backends left open (no bpf_sock_destroy)")
                }
            }
        }
        Ok(())
    }

    fn status(&self) -> DataplaneStatus {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.status_of(&inner)
    }
}
