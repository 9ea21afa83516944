//! The real data plane: loads `warren-ebpf`'s objects with aya, checks the system,
//! attaches (or adopts) the cgroup and tc programs, keeps the maps equal to the
//! last `sync`, has sockets to removed backends destroyed, reports status, and
//! removes everything on `cleanup`. Maps, links and socket destruction have their
//! own modules.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::fd::AsFd,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, Map, MapData, MapError, RingBuf},
    programs::{
        links::FdLink,
        tc::{self, NlOptions, TcAttachOptions},
        CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, SchedClassifier, SockOps, TcAttachType,
    },
    EbpfLoader,
};
use warren_common::{
    map_names as names, CtKey, CtValue, SvcKey, SvcValue, BE_F_CANARY, BE_F_LOCAL, CT_ENTRIES, DROP_CT_FULL,
    DROP_NO_BACKEND, DROP_NO_ROUTE, DROP_RATE_LIMITED, DROP_SNAT_EXHAUSTED, MAX_BACKENDS, MAX_NODE_ADDRS, MAX_SERVICES,
    MAX_SVC_ENTRIES, RL_ENTRIES, SLOT_POOL, SOCK_ENTRIES,
};
use warren_ebpf::programs as progs;

use super::{
    checks::{self, KernelSupport},
    ct,
    destroy::{netns_under, SockDestroyer},
    error::verifier_detail,
    events::EventReader,
    links::{
        attach_pinned, detach_pinned, expected_pins, ifindex, remove_stale_links, CgroupKind, BPF_TCX_EGRESS,
        BPF_TCX_INGRESS, CGROUP_PROGRAMS,
    },
    maps::{check_pinned_maps, retire_old_maps, take, Maps},
    migrate,
    plan::{self, Clock, Current, Plan},
    reserved, sys, AttachedProgram, BackendStats, Dataplane, DataplaneConfig, DataplaneError, DataplaneStatus,
    DropCounters, MapFill, ServiceEntry, ServiceStats, SkippedService, SyncReport,
};

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
            problem: format!("{} addresses, at most {MAX_NODE_ADDRS}", cfg.node_addrs.len()),
        });
    }
    if let Some(a) = cfg.node_addrs.iter().find(|a| a.is_unspecified() || a.is_multicast()) {
        return Err(DataplaneError::InvalidConfig {
            field: "node_addrs",
            problem: format!("{a} is not a node address"),
        });
    }
    let (first, last) = cfg.snat_ports;
    if first == 0 || first > last {
        return Err(DataplaneError::InvalidConfig {
            field: "snat_ports",
            problem: format!("{first}-{last} is not a range of ports (first 1 or more, at most last)"),
        });
    }
    if cfg.ct_gc_interval.is_zero() {
        return Err(DataplaneError::InvalidConfig {
            field: "ct_gc_interval",
            problem: "must be more than zero".into(),
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

/// The netns cookie of the host network namespace (`cfg.host_netns`, or the
/// loader's own), whose sockets reach published ports on 127.0.0.0/8; 0 (no
/// loopback translation) when the kernel cannot tell (SO_NETNS_COOKIE, 5.14+).
fn host_netns_cookie(cfg: &DataplaneConfig) -> u64 {
    let cookie = match &cfg.host_netns {
        None => sys::netns_cookie(),
        Some(path) => File::open(path).and_then(|ns| sys::in_netns(ns.as_fd(), sys::netns_cookie).and_then(|r| r)),
    };
    match cookie {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(node = %cfg.node_name, error = %e, "cannot read the host network namespace's cookie (Linux 5.14+): published ports do not answer on 127.0.0.0/8");
            0
        }
    }
}

/// Warren's share of the node's reserved local ports: the SNAT range and every
/// published port of `entries`.
fn reserved_ports(cfg: &DataplaneConfig, entries: &BTreeMap<SvcKey, SvcValue>) -> BTreeSet<u16> {
    let mut ports: BTreeSet<u16> = (cfg.snat_ports.0..=cfg.snat_ports.1).collect();
    ports.extend(entries.keys().filter(|k| k.addr.get() == 0).map(|k| k.port.get()));
    ports
}

struct Inner {
    /// The ports Warren last added to `ip_local_reserved_ports`.
    reserved: BTreeSet<u16>,
    maps: Maps,
    current: Current,
    /// The last plan applied, which the maintenance thread re-applies when a
    /// tombstone is due.
    last_plan: Option<Plan>,
    /// The services the last sync skipped.
    skipped: Vec<SkippedService>,
    destroyer: Option<SockDestroyer>,
    events: Option<EventReader>,
}

/// What the API calls and the maintenance thread share.
struct Shared {
    cfg: DataplaneConfig,
    epoch: Instant,
    inner: Mutex<Inner>,
    /// The connection-tracking map for the GC, apart from the sync lock.
    ct: Mutex<HashMap<MapData, CtKey, CtValue>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn clock(&self) -> Clock {
        Clock {
            now_ms: self.epoch.elapsed().as_millis() as u64,
            refuse_ms: self.cfg.refuse_removed.as_millis() as u64,
        }
    }

    /// Brings the maps to `plan` and destroys sockets to removed backends.
    fn apply(&self, inner: &mut Inner, plan: Plan) -> Result<usize, DataplaneError> {
        // Work on a copy: if a write fails midway, the cache must keep describing
        // the maps as they were, and the next sync retries.
        let mut next = inner.current.clone();
        let plan_entries = plan.svc_entries.clone();
        let outcome = match plan::reconcile(&mut next, &plan, &mut inner.maps, self.clock()) {
            Ok(o) => {
                inner.current = next;
                inner.last_plan = Some(plan);
                o
            }
            Err(e) => {
                // Re-read what actually landed, so the next sync diffs against truth.
                if let Ok(cur) = inner.maps.read_current(self.clock()) {
                    inner.current = cur;
                }
                return Err(e);
            }
        };
        let node = &self.cfg.node_name;
        let ours = reserved_ports(&self.cfg, &plan_entries);
        let sysctl = reserved::Sysctl {
            netns: self.cfg.host_netns.clone(),
        };
        match reserved::apply(&sysctl, &inner.reserved, &ours) {
            Ok(changed) => {
                if changed {
                    tracing::info!(node = %node, ports = %reserved::format(&ours), "reserved the SNAT and published ports from the node's ephemeral ports");
                }
                inner.reserved = ours;
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "cannot reserve the SNAT and published ports (net.ipv4.ip_local_reserved_ports)")
            }
        }
        if !outcome.kill.is_empty() {
            match inner.destroyer.as_mut() {
                Some(d) => {
                    let netns = netns_under(&self.cfg.cgroup_root);
                    if let Err(e) = d.destroy(&outcome.kill, &netns) {
                        tracing::warn!(node = %node, error = %e, "destroying sockets to removed backends failed");
                    } else {
                        tracing::info!(node = %node, targets = outcome.kill.len(), namespaces = netns.len(), "destroyed sockets to removed backends");
                    }
                }
                None => {
                    tracing::info!(node = %node, targets = outcome.kill.len(), "sockets to removed backends left open (no bpf_sock_destroy)")
                }
            }
        }
        Ok(outcome.writes)
    }

    /// Removes the tc flows that are over (ct::expired), without the sync lock.
    fn collect_flows(&self) {
        let mut table = self.ct.lock().unwrap_or_else(|p| p.into_inner());
        match ct::gc(&mut *table, ct::monotonic_ns(), &self.cfg.ct_timeouts) {
            Ok(o) if o.removed > 0 => {
                tracing::debug!(node = %self.cfg.node_name, removed = o.removed, left = o.left, "removed ended tc flows")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(node = %self.cfg.node_name, error = %e, "connection-tracking GC failed"),
        }
    }

    /// Periodic work: removes tombstones that are due.
    fn maintain(&self) {
        let mut inner = self.lock();
        if !inner.current.tombstone_due(self.clock().now_ms) {
            return;
        }
        let Some(plan) = inner.last_plan.clone() else {
            return;
        };
        match self.apply(&mut inner, plan) {
            Ok(writes) => tracing::debug!(node = %self.cfg.node_name, writes, "removed addresses of removed services"),
            Err(e) => {
                tracing::warn!(node = %self.cfg.node_name, error = %e, "removing addresses of removed services failed")
            }
        }
    }
}

/// The thread that runs [`Shared::maintain`] once a second; stopped on drop.
struct Maintenance {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Maintenance {
    fn start(shared: Arc<Shared>) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let gc_every = shared.cfg.ct_gc_interval;
        let tick = gc_every.min(Duration::from_secs(1));
        let thread = std::thread::Builder::new()
            .name(format!("dp-maint-{}", shared.cfg.node_name))
            .spawn(move || {
                let mut last_gc = Instant::now();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    shared.maintain();
                    if last_gc.elapsed() >= gc_every {
                        shared.collect_flows();
                        last_gc = Instant::now();
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The eBPF data plane of one node. Dropping it leaves everything attached and
/// pinned (a restarted daemon adopts it); [`EbpfDataplane::cleanup`] removes it.
pub struct EbpfDataplane {
    kernel: KernelSupport,
    programs: Vec<AttachedProgram>,
    shared: Arc<Shared>,
    _maintenance: Maintenance,
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

        let redirect_neigh = u32::from(kernel.at_least(5, 10));
        let set_retval = u32::from(kernel.at_least(5, 18));
        let atomics = u32::from(kernel.at_least(5, 12));
        let sk_storage = u32::from(kernel.at_least(5, 10));
        let udp_idle_ns = cfg.ct_timeouts.udp.as_nanos() as u64;
        let snat_min = u32::from(cfg.snat_ports.0);
        let snat_span = u32::from(cfg.snat_ports.1) - snat_min + 1;
        let host_netns = host_netns_cookie(&cfg);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&cfg.bpffs_dir)
            .override_global("warren_redirect_neigh", &redirect_neigh, true)
            .override_global("warren_set_retval", &set_retval, true)
            .override_global("warren_atomics", &atomics, true)
            .override_global("warren_sk_storage", &sk_storage, true)
            .override_global("warren_udp_idle_ns", &udp_idle_ns, true)
            .override_global("warren_host_netns", &host_netns, true)
            .override_global("warren_snat_min", &snat_min, true)
            .override_global("warren_snat_span", &snat_span, true)
            .load(warren_ebpf::warren_object())
            .map_err(|e| DataplaneError::Load {
                object: "warren.bpf.o",
                source: Box::new(e),
            })?;

        // The maps first: a node running an earlier layout gets its new maps
        // filled before any hook switches to the programs that read them.
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
        let epoch = Instant::now();
        let clock = Clock {
            now_ms: 0,
            refuse_ms: cfg.refuse_removed.as_millis() as u64,
        };
        let migrated = migrate::tables_from_v1(&cfg.bpffs_dir, &mut maps, clock)?;
        if migrated > 0 {
            tracing::info!(node = %cfg.node_name, services = migrated, "migrated the services' backend tables to Maglev tables (layout v1 to v2)");
        }
        let flows = migrate::ct_from_v1(&cfg.bpffs_dir, &mut maps.ct)?;
        if flows > 0 {
            tracing::info!(node = %cfg.node_name, entries = flows, "copied the tc flows into the connection tracking with TCP state (warren_ct_v1 to v2)");
        }
        let flows = migrate::aff_from_v1(&cfg.bpffs_dir, &mut maps.aff, ct::monotonic_ns())?;
        if flows > 0 {
            tracing::info!(node = %cfg.node_name, entries = flows, "copied the unconnected UDP flows (warren_aff_v1 to v2)");
        }
        let ids: BTreeSet<u32> = maps.svc.iter().filter_map(Result::ok).map(|(_, v)| v.svc_id).collect();
        let counted = migrate::counters_from_v1(&cfg.bpffs_dir, &mut maps.svcc, ids.into_iter())?;
        if counted > 0 {
            tracing::info!(node = %cfg.node_name, services = counted, "copied the service counters (warren_svcc_v1 to v2)");
        }

        let mut programs = Vec::new();
        let cgroup = File::open(&cfg.cgroup_root)
            .map_err(|e| DataplaneError::io(format!("open cgroup {}", cfg.cgroup_root.display()), e))?;
        let cgroup_id = cgroup
            .metadata()
            .map_err(|e| DataplaneError::io(format!("stat cgroup {}", cfg.cgroup_root.display()), e))?
            .ino();
        for (name, pin, attach_type, kind) in CGROUP_PROGRAMS {
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| DataplaneError::program(name, "missing from the object"))?;
            let expect = (sys::LINK_TYPE_CGROUP, cgroup_id, attach_type);
            // aya's cgroup program types share no trait for `attach`/`take_link`, so
            // one body serves the three through a macro.
            macro_rules! load_and_attach {
                ($ty:ty) => {{
                    let prog: &mut $ty = prog.try_into().map_err(|e| DataplaneError::program(name, e))?;
                    prog.load()
                        .map_err(|e| DataplaneError::program(name, verifier_detail(&e)))?;
                    let prog_fd = prog
                        .fd()
                        .map_err(|e| DataplaneError::program(name, e))?
                        .try_clone()
                        .map_err(|e| DataplaneError::program(name, e))?;
                    attach_pinned(&cfg.bpffs_dir.join(pin), expect, prog_fd.as_fd(), || {
                        let id = prog
                            .attach(&cgroup, CgroupAttachMode::Single)
                            .map_err(|e| DataplaneError::program(name, e))?;
                        let link = prog.take_link(id).map_err(|e| DataplaneError::program(name, e))?;
                        FdLink::try_from(link).map_err(|e| DataplaneError::program(name, e))
                    })?
                }};
            }
            let adopted = match kind {
                CgroupKind::SockAddr => load_and_attach!(CgroupSockAddr),
                CgroupKind::Sock => load_and_attach!(CgroupSock),
                CgroupKind::SockOps => load_and_attach!(SockOps),
            };
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
                (progs::TC_INGRESS, "in", TcAttachType::Ingress, BPF_TCX_INGRESS),
                (progs::TC_EGRESS, "out", TcAttachType::Egress, BPF_TCX_EGRESS),
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
                                .map_err(|e| DataplaneError::program(name, format!("{iface}: {e}")))?;
                            let link = prog.take_link(id).map_err(|e| DataplaneError::program(name, e))?;
                            FdLink::try_from(link).map_err(|e| DataplaneError::program(name, e))
                        },
                    )?
                } else {
                    // Before tcx (Linux < 6.6) a netlink filter is replaced by
                    // delete-then-add: a short gap on restart, documented.
                    let _ = tc::qdisc_add_clsact(iface);
                    let _ = tc::qdisc_detach_program(iface, attach_type, name);
                    let id = prog
                        .attach_with_options(iface, attach_type, TcAttachOptions::Netlink(NlOptions::default()))
                        .map_err(|e| DataplaneError::program(name, format!("{iface}: {e}")))?;
                    // Netlink filters outlive the process; forget the link so that
                    // dropping `ebpf` leaves the filter in place.
                    std::mem::forget(prog.take_link(id).map_err(|e| DataplaneError::program(name, e))?);
                    false
                };
                programs.push(AttachedProgram {
                    program: name.to_string(),
                    target: format!("tc-{}:{iface}", if dir == "in" { "ingress" } else { "egress" }),
                    adopted,
                });
            }
        }

        remove_stale_links(&cfg.bpffs_dir, &expected_pins(&cfg))?;
        // Every hook runs the new programs now: maps of earlier layouts are unused.
        retire_old_maps(&cfg.bpffs_dir)?;

        let current = maps.read_current(clock)?;

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
        let ct_pin = cfg.bpffs_dir.join(names::CT);
        let ct_data = MapData::from_pin(&ct_pin).map_err(|e| DataplaneError::map(names::CT, e))?;
        let ct_table = HashMap::try_from(Map::HashMap(ct_data)).map_err(|e| DataplaneError::map(names::CT, e))?;
        let shared = Arc::new(Shared {
            ct: Mutex::new(ct_table),
            inner: Mutex::new(Inner {
                reserved: reserved_ports(&cfg, &current.svc_entries),
                maps,
                current,
                last_plan: None,
                skipped: Vec::new(),
                destroyer,
                events,
            }),
            cfg,
            epoch,
        });
        let maintenance = Maintenance::start(shared.clone())
            .map_err(|e| DataplaneError::io("start the data plane maintenance thread", e))?;
        Ok(Self {
            kernel,
            programs,
            shared,
            _maintenance: maintenance,
        })
    }

    /// Detaches every program and removes every pinned link and map of `cfg`'s
    /// node (and legacy tc filters on its interfaces). Idempotent.
    pub fn cleanup(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
        // Warren's reserved ports go back to the node (the published ones are
        // read from the service map while it is still pinned).
        let svc_pin = cfg.bpffs_dir.join(names::SVC);
        if svc_pin.exists() {
            let entries: BTreeMap<SvcKey, SvcValue> = MapData::from_pin(&svc_pin)
                .ok()
                .and_then(|d| HashMap::<MapData, SvcKey, SvcValue>::try_from(Map::HashMap(d)).ok())
                .map(|m| m.iter().filter_map(Result::ok).collect())
                .unwrap_or_default();
            let sysctl = reserved::Sysctl {
                netns: cfg.host_netns.clone(),
            };
            if let Err(e) = reserved::apply(&sysctl, &reserved_ports(cfg, &entries), &BTreeSet::new()) {
                tracing::warn!(node = %cfg.node_name, error = %e, "cannot give back the reserved SNAT and published ports");
            }
        }
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
        paths.sort_by_key(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link_")));
        for p in paths {
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link_")) {
                detach_pinned(&p);
            }
            std::fs::remove_file(&p).map_err(|e| DataplaneError::io(format!("unpin {}", p.display()), e))?;
        }
        std::fs::remove_dir(dir).map_err(|e| DataplaneError::io(format!("remove {}", dir.display()), e))?;
        tracing::info!(node = %cfg.node_name, bpffs = %dir.display(), "data plane removed");
        Ok(())
    }

    /// The configuration this data plane was opened with.
    pub fn config(&self) -> &DataplaneConfig {
        &self.shared.cfg
    }

    /// What the kernel offers.
    pub fn kernel(&self) -> &KernelSupport {
        &self.kernel
    }

    fn status_of(&self, inner: &Inner) -> DataplaneStatus {
        let mut st = DataplaneStatus {
            node_name: self.shared.cfg.node_name.clone(),
            programs: self.programs.clone(),
            sock_destroy: inner.destroyer.is_some(),
            skipped: inner.skipped.clone(),
            recent_drops: inner.events.as_ref().map(EventReader::recent).unwrap_or_default(),
            ..Default::default()
        };
        let maps = &inner.maps;
        let cur = &inner.current;
        let mut fill =
            |name: &str, entries: Result<u64, MapError>, capacity: u32, errors: &mut Vec<String>| match entries {
                Ok(n) => st.maps.push(MapFill {
                    name: name.to_string(),
                    entries: n,
                    capacity: u64::from(capacity),
                }),
                Err(e) => errors.push(format!("map {name}: {e}")),
            };
        let mut errors = Vec::new();
        fn count<K: aya::Pod>(keys: impl Iterator<Item = Result<K, MapError>>) -> Result<u64, MapError> {
            let mut n = 0;
            for k in keys {
                k?;
                n += 1;
            }
            Ok(n)
        }
        fill(names::SVC, count(maps.svc.keys()), MAX_SVC_ENTRIES, &mut errors);
        fill(names::STATE, Ok(cur.services.len() as u64), MAX_SERVICES, &mut errors);
        fill(
            names::SLOT,
            Ok(cur
                .services
                .values()
                .flat_map(|s| s.tables.iter())
                .map(|t| t.len() as u64)
                .sum()),
            SLOT_POOL,
            &mut errors,
        );
        fill(names::BACKEND, Ok(cur.backends.len() as u64), MAX_BACKENDS, &mut errors);
        fill(names::REVNAT, count(maps.rnat.keys()), SOCK_ENTRIES, &mut errors);
        fill(names::AFFINITY, count(maps.aff.keys()), SOCK_ENTRIES, &mut errors);
        fill(names::RATE_LIMIT, count(maps.rl.keys()), RL_ENTRIES, &mut errors);
        fill(names::CT, count(maps.ct.keys()), CT_ENTRIES, &mut errors);
        fill(names::NODE_ADDR, count(maps.naddr.keys()), MAX_NODE_ADDRS, &mut errors);

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
                        no_route: c.drops[DROP_NO_ROUTE],
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
                    outcomes: maps.backend_outcomes(b.addr.ip()).unwrap_or_else(|e| {
                        errors.push(e.to_string());
                        Default::default()
                    }),
                }),
                Err(e) => errors.push(e.to_string()),
            }
        }
        st.errors = errors;
        st
    }
}

impl Dataplane for EbpfDataplane {
    fn sync(&self, services: &[ServiceEntry]) -> Result<SyncReport, DataplaneError> {
        let planned = plan::plan(services);
        let node = &self.shared.cfg.node_name;
        let mut inner = self.shared.lock();
        for s in &planned.skipped {
            if !inner.skipped.contains(s) {
                tracing::warn!(node = %node, service = %s.name, service_id = s.id, field = %s.field, problem = %s.problem, "data plane skips an invalid service");
            }
        }
        let writes = self.shared.apply(&mut inner, planned.plan)?;
        inner.skipped = planned.skipped.clone();
        tracing::debug!(node = %node, services = services.len(), skipped = planned.skipped.len(), writes, "data plane synced");
        Ok(SyncReport {
            skipped: planned.skipped,
        })
    }

    fn status(&self) -> DataplaneStatus {
        let inner = self.shared.lock();
        self.status_of(&inner)
    }
}
