//! From a desired set of services to map contents, and from the current map
//! contents to the smallest ordered list of map writes that reaches them. Pure
//! logic behind the [`MapOps`] seam, so the ordering rules (a slot table is
//! complete before the service entry flips to it; a backend exists before a table
//! names it; a service address disappears before its state) are unit-tested
//! without a kernel. Validation of [`ServiceEntry`] lives here too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use warren_common::{
    Backend as BeValue, Be16, Be32, SvcKey, SvcState, SvcValue, BE_F_ACTIVE, BE_F_CANARY, BE_F_LOCAL, KINDS,
    MAX_BACKENDS, MAX_SERVICES, MAX_SVC_ENTRIES, RL_MAX_BURST, RL_MAX_RATE, SLOT_POOL, SVC_F_HOST_MODE, SVC_F_NODEPORT,
    SVC_F_REFUSE, SVC_F_WILDCARD, SVC_S_PREFER_LOCAL,
};

use super::{maglev, BackendGroup, DataplaneError, Protocol, ServiceEntry};

/// A backend as planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PlannedBackend {
    pub addr: Ipv4Addr,
    pub canary: bool,
    pub local: bool,
    /// In the backend map (its flows and sockets live on) but in no table,
    /// unless the service has nothing else.
    pub draining: bool,
}

/// A service as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedService {
    pub name: String,
    /// Sorted by address.
    pub backends: Vec<PlannedBackend>,
    pub canary_weight: u8,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub prefer_local: bool,
}

/// The desired contents of the service map and the per-service state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub services: BTreeMap<u32, PlannedService>,
    pub svc_entries: BTreeMap<SvcKey, SvcValue>,
}

fn label(s: &ServiceEntry, index: usize) -> String {
    if s.name.is_empty() {
        format!("#{index}")
    } else {
        s.name.clone()
    }
}

fn bad_addr(a: Ipv4Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("0.0.0.0 is not an address")
    } else if a.is_loopback() {
        Some("a loopback address cannot be used")
    } else if a.is_multicast() || a.is_broadcast() {
        Some("a multicast or broadcast address cannot be used")
    } else {
        None
    }
}

/// Checks a desired set of services strictly: the first invalid one is an error
/// naming the service and the field.
pub fn validate(services: &[ServiceEntry]) -> Result<(), DataplaneError> {
    match plan(services).skipped.into_iter().next() {
        None => Ok(()),
        Some(s) => Err(s.error()),
    }
}

/// A service left out of a sync, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedService {
    pub id: u32,
    /// The service's name (or `#<index>` when it has none).
    pub name: String,
    /// The offending field, e.g. `ports[1].published`.
    pub field: String,
    pub problem: String,
}

impl SkippedService {
    /// As the error a strict validation returns.
    pub fn error(&self) -> DataplaneError {
        DataplaneError::invalid(&self.name, &self.field, &self.problem)
    }
}

impl std::fmt::Display for SkippedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error().fmt(f)
    }
}

/// A plan and the services it leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Planned {
    pub plan: Plan,
    pub skipped: Vec<SkippedService>,
}

/// What the services planned so far claim: a later service that claims the same
/// id, VIP or published port is the invalid one.
#[derive(Default)]
struct Taken {
    ids: BTreeMap<u32, String>,
    vips: BTreeMap<Ipv4Addr, String>,
    published: BTreeMap<(Protocol, u16), String>,
}

/// One valid service's contribution to the plan.
struct PlannedOne {
    service: PlannedService,
    entries: BTreeMap<SvcKey, SvcValue>,
}

/// Validates `services` and computes the desired map contents. An invalid service,
/// or one that would overflow a map, is left out and reported; the others are
/// planned as if it did not exist (one bad service never blocks a node's sync).
pub(crate) fn plan(services: &[ServiceEntry]) -> Planned {
    let mut out = Planned::default();
    let mut taken = Taken::default();
    let mut backend_count = 0usize;

    for (index, s) in services.iter().enumerate() {
        let name = label(s, index);
        let one = plan_one(s, &name, &taken).and_then(|one| {
            let new_entries = one
                .entries
                .keys()
                .filter(|k| !out.plan.svc_entries.contains_key(k))
                .count();
            if out.plan.svc_entries.len() + new_entries > MAX_SVC_ENTRIES as usize {
                return Err(DataplaneError::invalid(
                    &name,
                    "ports",
                    format!("the service map is full ({MAX_SVC_ENTRIES} entries)"),
                ));
            }
            if backend_count + one.service.backends.len() >= MAX_BACKENDS as usize {
                return Err(DataplaneError::invalid(
                    &name,
                    "backends",
                    format!("the node has no backend ids left ({} in all)", MAX_BACKENDS - 1),
                ));
            }
            Ok(one)
        });
        match one {
            Ok(one) => {
                taken.ids.insert(s.id, name.clone());
                if let Some(vip) = s.vip {
                    taken.vips.insert(vip, name.clone());
                }
                for (k, v) in &one.entries {
                    if v.flags & SVC_F_NODEPORT != 0 {
                        let proto = if k.proto == Protocol::Tcp.ip_proto() {
                            Protocol::Tcp
                        } else {
                            Protocol::Udp
                        };
                        taken.published.insert((proto, k.port.get()), name.clone());
                    }
                }
                backend_count += one.service.backends.len();
                out.plan.svc_entries.extend(one.entries);
                out.plan.services.insert(s.id, one.service);
            }
            Err(error) => {
                let (field, problem) = match error {
                    DataplaneError::InvalidService { field, problem, .. } => (field, problem),
                    other => (String::new(), other.to_string()),
                };
                out.skipped.push(SkippedService {
                    id: s.id,
                    name,
                    field,
                    problem,
                })
            }
        }
    }
    out
}

fn plan_one(s: &ServiceEntry, name: &str, taken: &Taken) -> Result<PlannedOne, DataplaneError> {
    let invalid = |field: &str, problem: String| DataplaneError::invalid(name, field, problem);
    let mut entries = BTreeMap::new();
    let mut published = BTreeSet::new();
    if s.name.is_empty() {
        return Err(invalid("name", "must not be empty".into()));
    }
    if s.id >= MAX_SERVICES {
        return Err(invalid("id", format!("{} is out of range (0..{MAX_SERVICES})", s.id)));
    }
    if let Some(other) = taken.ids.get(&s.id) {
        return Err(invalid("id", format!("{} is also the id of service {other}", s.id)));
    }
    if s.canary_weight > 100 {
        return Err(invalid(
            "canary_weight",
            format!("{} is not a percentage (0-100)", s.canary_weight),
        ));
    }
    let (rate_per_sec, rate_burst) = match s.rate_limit {
        None => (0, 0),
        Some(r) if r.per_sec == 0 => {
            return Err(invalid(
                "rate_limit.per_sec",
                "must be at least 1 (omit rate_limit for no limit)".into(),
            ))
        }
        Some(r) if r.burst == 0 => return Err(invalid("rate_limit.burst", "must be at least 1".into())),
        Some(r) if r.per_sec > RL_MAX_RATE => {
            return Err(invalid(
                "rate_limit.per_sec",
                format!("{} is above the limit of {RL_MAX_RATE}/s", r.per_sec),
            ))
        }
        Some(r) if r.burst > RL_MAX_BURST => {
            return Err(invalid(
                "rate_limit.burst",
                format!("{} is above the limit of {RL_MAX_BURST}", r.burst),
            ))
        }
        Some(r) => (r.per_sec, r.burst),
    };

    if let Some(vip) = s.vip {
        if let Some(problem) = bad_addr(vip) {
            return Err(invalid("vip", format!("{vip}: {problem}")));
        }
        if let Some(other) = taken.vips.get(&vip) {
            return Err(invalid("vip", format!("{vip} is also the VIP of service {other}")));
        }
        for proto in [Protocol::Tcp, Protocol::Udp] {
            entries.insert(
                SvcKey {
                    addr: Be32::from_ip(vip),
                    port: Be16::new(0),
                    proto: proto.ip_proto(),
                    pad: 0,
                },
                SvcValue {
                    svc_id: s.id,
                    target_port: Be16::new(0),
                    flags: SVC_F_WILDCARD,
                    pad: 0,
                },
            );
        }
    }

    for (i, p) in s.ports.iter().enumerate() {
        if p.target == 0 {
            return Err(invalid(&format!("ports[{i}].target"), "port 0 is not a port".into()));
        }
        if let Some(vip) = s.vip {
            entries.insert(
                SvcKey {
                    addr: Be32::from_ip(vip),
                    port: Be16::new(p.target),
                    proto: p.protocol.ip_proto(),
                    pad: 0,
                },
                SvcValue {
                    svc_id: s.id,
                    target_port: Be16::new(p.target),
                    flags: 0,
                    pad: 0,
                },
            );
        }
        match p.published {
            None if p.host_mode => {
                return Err(invalid(
                    &format!("ports[{i}].host_mode"),
                    "mode=host needs a published port".into(),
                ))
            }
            None => {}
            Some(0) => {
                return Err(invalid(
                    &format!("ports[{i}].published"),
                    "port 0 cannot be published".into(),
                ))
            }
            Some(pp) => {
                let other = taken
                    .published
                    .get(&(p.protocol, pp))
                    .cloned()
                    .or_else(|| (!published.insert((p.protocol, pp))).then(|| name.to_string()));
                if let Some(other) = other {
                    return Err(invalid(
                        &format!("ports[{i}].published"),
                        format!("{}/{pp} is already published by service {other}", p.protocol.as_str()),
                    ));
                }
                entries.insert(
                    SvcKey {
                        addr: Be32::new(0),
                        port: Be16::new(pp),
                        proto: p.protocol.ip_proto(),
                        pad: 0,
                    },
                    SvcValue {
                        svc_id: s.id,
                        target_port: Be16::new(p.target),
                        flags: SVC_F_NODEPORT | if p.host_mode { SVC_F_HOST_MODE } else { 0 },
                        pad: 0,
                    },
                );
            }
        }
    }

    let mut seen = BTreeSet::new();
    let mut backends = Vec::with_capacity(s.backends.len());
    for (i, b) in s.backends.iter().enumerate() {
        if let Some(problem) = bad_addr(b.addr) {
            return Err(invalid(
                &format!("backends[{i}].addr"),
                format!("{}: {problem}", b.addr),
            ));
        }
        if !seen.insert(b.addr) {
            return Err(invalid(
                &format!("backends[{i}].addr"),
                format!("{} is listed twice", b.addr),
            ));
        }
        backends.push(PlannedBackend {
            addr: b.addr,
            canary: b.group == BackendGroup::Canary,
            local: b.local,
            draining: b.draining,
        });
    }
    backends.sort();

    Ok(PlannedOne {
        service: PlannedService {
            name: s.name.clone(),
            backends,
            canary_weight: s.canary_weight,
            rate_per_sec,
            rate_burst,
            prefer_local: s.prefer_local,
        },
        entries,
    })
}

/// The Maglev table of one kind of a service: `canary_weight`% of the slots (exact,
/// by [`maglev`] quotas) to the canary group, the rest to the stable group, each
/// group's slots spread evenly over its backends. A group without backends gives
/// its share to the other; no backends at all gives an empty table. `previous` is
/// the table this one replaces (kept where it can be, so a removed backend moves
/// only its own flows).
pub(crate) fn fill_table(
    stable: &[(u32, Ipv4Addr)],
    canary: &[(u32, Ipv4Addr)],
    canary_weight: u8,
    previous: Option<&[u32]>,
) -> Vec<u32> {
    let w = u64::from(canary_weight.min(100));
    let (ws, wc) = match (stable.is_empty(), canary.is_empty()) {
        (true, true) => return Vec::new(),
        (false, true) => (1, 0),
        (true, false) => (0, 1),
        // Group shares W% : (100-W)%, equal within a group.
        (false, false) => ((100 - w) * canary.len() as u64, w * stable.len() as u64),
    };
    let members: Vec<maglev::Member> = stable
        .iter()
        .map(|&(id, addr)| (id, addr, ws))
        .chain(canary.iter().map(|&(id, addr)| (id, addr, wc)))
        .map(|(id, addr, weight)| maglev::Member {
            id,
            key: maglev::key_of(addr),
            weight,
        })
        .collect();
    let live = members.iter().filter(|m| m.weight > 0).count();
    maglev::build(&members, maglev::table_size(live), previous)
}

/// First fit of `size` slots in the pool `[1, SLOT_POOL)` (0 means "no table")
/// beside the `busy` ranges (offset → size).
fn alloc_range(busy: &BTreeMap<u32, u32>, size: u32) -> Option<u32> {
    let mut at = 1u32;
    for (&off, &len) in busy {
        if off >= at && off - at >= size {
            return Some(at);
        }
        at = at.max(off.saturating_add(len));
    }
    (SLOT_POOL.checked_sub(at)? >= size).then_some(at)
}

/// A service as it is in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CurrentService {
    pub name: String,
    pub state: SvcState,
    /// The active tables, indexed by kind.
    pub tables: [Vec<u32>; KINDS as usize],
}

/// What the maps hold (cached; rebuilt from the maps on adoption).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Current {
    pub svc_entries: BTreeMap<SvcKey, SvcValue>,
    pub services: BTreeMap<u32, CurrentService>,
    /// Active backend entries by id.
    pub backends: BTreeMap<u32, BeValue>,
    /// Slot-pool ranges (offset, size) replaced by the last reconciliation: free
    /// from the next one on.
    pub cooling: BTreeSet<(u32, u32)>,
    /// Addresses of removed services that refuse new connections (`SVC_F_REFUSE`)
    /// until the given time ([`Clock`] milliseconds), then disappear.
    pub tombstones: BTreeMap<SvcKey, u64>,
}

impl Current {
    /// Whether a tombstone is due for removal at `now_ms`.
    pub fn tombstone_due(&self, now_ms: u64) -> bool {
        self.tombstones.values().any(|&until| until <= now_ms)
    }
}

/// The time of a reconciliation and how long a removed service's VIP keeps
/// refusing new connections: clients may still resolve the name to it until
/// their DNS answer expires, and an address that is simply gone would send their
/// connects out of the node untranslated, through the default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    /// Milliseconds of a monotonic clock.
    pub now_ms: u64,
    pub refuse_ms: u64,
}

/// The map writes a reconciliation needs; implemented over the real maps and, in
/// tests, by a recorder.
pub(crate) trait MapOps {
    fn set_backend(&mut self, id: u32, value: BeValue) -> Result<(), DataplaneError>;
    fn zero_backend_counters(&mut self, id: u32) -> Result<(), DataplaneError>;
    fn zero_service_counters(&mut self, svc_id: u32) -> Result<(), DataplaneError>;
    fn write_table(&mut self, table: u32, ids: &[u32]) -> Result<(), DataplaneError>;
    fn set_state(&mut self, svc_id: u32, state: SvcState) -> Result<(), DataplaneError>;
    fn put_svc(&mut self, key: SvcKey, value: SvcValue) -> Result<(), DataplaneError>;
    fn del_svc(&mut self, key: SvcKey) -> Result<(), DataplaneError>;
}

/// A socket destination whose connections must be destroyed: port 0 = any port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KillTarget {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

/// What a reconciliation removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub kill: Vec<KillTarget>,
    pub writes: usize,
}

/// The ports through which `svc_id` reached its backends, from the service map.
fn service_ports(entries: &BTreeMap<SvcKey, SvcValue>, svc_id: u32) -> BTreeSet<(u8, u16)> {
    entries
        .iter()
        .filter(|(_, v)| v.svc_id == svc_id)
        .map(|(k, v)| {
            if v.flags & SVC_F_WILDCARD != 0 {
                (k.proto, 0)
            } else {
                (k.proto, v.target_port.get())
            }
        })
        .collect()
}

/// Brings the maps from `current` to `plan` through `ops`, in an order where no
/// program ever reads a half-written table or a backend that does not exist yet.
/// On success `current` equals the new contents.
pub(crate) fn reconcile(
    current: &mut Current,
    plan: &Plan,
    ops: &mut dyn MapOps,
    clock: Clock,
) -> Result<Outcome, DataplaneError> {
    let mut out = Outcome::default();

    // 1. Service addresses that go away (or move to another service) stop matching
    //    first, so no new connection reaches a service being removed. A VIP that
    //    no service claims any more becomes a tombstone first: it refuses new
    //    connections (ECONNREFUSED) until clients' DNS answers for it expired.
    let stale: Vec<SvcKey> = current
        .svc_entries
        .iter()
        .filter(|(k, v)| plan.svc_entries.get(k).is_none_or(|nv| nv.svc_id != v.svc_id))
        .map(|(k, _)| *k)
        .collect();
    let old_entries = current.svc_entries.clone();
    for k in &stale {
        let entombable = k.addr.get() != 0 && clock.refuse_ms > 0 && !plan.svc_entries.contains_key(k);
        match current.tombstones.get(k) {
            Some(&until) if entombable && until > clock.now_ms => continue,
            None if entombable => {
                let mut v = current.svc_entries[k];
                v.flags |= SVC_F_REFUSE;
                ops.put_svc(*k, v)?;
                out.writes += 1;
                current.svc_entries.insert(*k, v);
                current.tombstones.insert(*k, clock.now_ms + clock.refuse_ms);
                continue;
            }
            _ => {}
        }
        ops.del_svc(*k)?;
        out.writes += 1;
        current.svc_entries.remove(k);
        current.tombstones.remove(k);
    }

    // 2. Backend ids: keep the id of a (service, address) that stays, allocate new
    //    ones, and write every new or changed entry before a table refers to it.
    let mut by_key: BTreeMap<(u32, Ipv4Addr), u32> = current
        .backends
        .iter()
        .map(|(id, b)| ((b.svc_id, b.addr.ip()), *id))
        .collect();
    let mut used: BTreeSet<u32> = current.backends.keys().copied().collect();
    let mut next_free = 1u32;
    let mut wanted: BTreeSet<u32> = BTreeSet::new();
    let mut ids_of: BTreeMap<u32, Vec<(u32, PlannedBackend)>> = BTreeMap::new();
    for (&svc_id, svc) in &plan.services {
        for b in &svc.backends {
            let id = match by_key.get(&(svc_id, b.addr)) {
                Some(&id) => id,
                None => {
                    while used.contains(&next_free) {
                        next_free += 1;
                    }
                    if next_free >= MAX_BACKENDS {
                        return Err(DataplaneError::Exhausted {
                            what: "backend ids",
                            limit: MAX_BACKENDS - 1,
                        });
                    }
                    let id = next_free;
                    used.insert(id);
                    by_key.insert((svc_id, b.addr), id);
                    ops.zero_backend_counters(id)?;
                    id
                }
            };
            let value = BeValue {
                addr: Be32::from_ip(b.addr),
                svc_id,
                flags: BE_F_ACTIVE | if b.local { BE_F_LOCAL } else { 0 } | if b.canary { BE_F_CANARY } else { 0 },
                pad: [0; 3],
            };
            if current.backends.get(&id) != Some(&value) {
                ops.set_backend(id, value)?;
                out.writes += 1;
                current.backends.insert(id, value);
            }
            wanted.insert(id);
            ids_of.entry(svc_id).or_default().push((id, *b));
        }
    }

    // 3. Per service: a changed Maglev table is written into a free range of the
    //    slot pool, then one state update flips the service to it. The range it
    //    replaces is only reused after the next reconciliation, so a program that
    //    read the old state an instant before the flip never sees it rewritten.
    let host_mode: BTreeSet<u32> = plan
        .svc_entries
        .values()
        .filter(|v| v.flags & SVC_F_HOST_MODE != 0)
        .map(|v| v.svc_id)
        .collect();
    let mut busy: BTreeMap<u32, u32> = current.services.values().flat_map(|c| c.state.ranges()).collect();
    let mut cooling = BTreeSet::new();
    for (&svc_id, svc) in &plan.services {
        let mut members = ids_of.remove(&svc_id).unwrap_or_default();
        // Draining backends get no new connections while any other backend can
        // take them; a service left with draining ones only still answers.
        if members.iter().any(|(_, b)| !b.draining) {
            members.retain(|(_, b)| !b.draining);
        }
        let existing = current.services.get(&svc_id);
        let group = |local_only: bool, canary: bool| -> Vec<(u32, Ipv4Addr)> {
            members
                .iter()
                .filter(|(_, b)| b.canary == canary && (!local_only || b.local))
                .map(|(id, b)| (*id, b.addr))
                .collect()
        };
        let table = |kind: usize, local_only: bool| {
            let previous = existing.map(|c| &c.tables[kind][..]);
            fill_table(
                &group(local_only, false),
                &group(local_only, true),
                svc.canary_weight,
                previous,
            )
        };
        // Only host-mode ports and prefer-local services pick from local
        // backends; other services need no local table.
        let tables = [
            table(0, false),
            if host_mode.contains(&svc_id) || svc.prefer_local {
                table(1, true)
            } else {
                Vec::new()
            },
        ];
        let count = |local_only: bool| -> u16 { members.iter().filter(|(_, b)| !local_only || b.local).count() as u16 };
        if existing.is_none() {
            ops.zero_service_counters(svc_id)?;
        }
        let old = existing.map_or([(0, 0); KINDS as usize], |c| c.state.tables());
        let mut placed = [(0u32, 0u32); KINDS as usize];
        for (kind, table) in tables.iter().enumerate() {
            if table.is_empty() {
                continue;
            }
            if old[kind].0 != 0 && existing.is_some_and(|c| c.tables[kind] == *table) {
                placed[kind] = old[kind];
                continue;
            }
            let size = table.len() as u32;
            let off = alloc_range(&busy, size).ok_or(DataplaneError::Exhausted {
                what: "slot pool entries",
                limit: SLOT_POOL - 1,
            })?;
            busy.insert(off, size);
            ops.write_table(off, table)?;
            out.writes += table.len();
            placed[kind] = (off, size);
        }
        let state = SvcState {
            table_all: placed[0].0,
            size_all: placed[0].1,
            table_local: placed[1].0,
            size_local: placed[1].1,
            backends_all: count(false),
            backends_local: count(true),
            rate_per_sec: svc.rate_per_sec,
            rate_burst: svc.rate_burst,
            flags: if svc.prefer_local { SVC_S_PREFER_LOCAL } else { 0 },
        };
        if existing.map(|c| c.state) != Some(state) {
            ops.set_state(svc_id, state)?;
            out.writes += 1;
        }
        cooling.extend(
            old.iter()
                .zip(placed)
                .filter(|(o, n)| o.0 != 0 && **o != *n)
                .map(|(o, _)| *o),
        );
        current.services.insert(
            svc_id,
            CurrentService {
                name: svc.name.clone(),
                state,
                tables,
            },
        );
    }

    // 4. Service addresses that are new or changed, now that their state exists.
    for (k, v) in &plan.svc_entries {
        if current.svc_entries.get(k) != Some(v) {
            ops.put_svc(*k, *v)?;
            out.writes += 1;
            current.svc_entries.insert(*k, *v);
        }
        current.tombstones.remove(k);
    }

    // 5. Removed services lose their state once nothing points at it.
    let removed: Vec<u32> = current
        .services
        .keys()
        .filter(|id| !plan.services.contains_key(id))
        .copied()
        .collect();
    for svc_id in removed {
        ops.set_state(svc_id, SvcState::default())?;
        out.writes += 1;
        if let Some(c) = current.services.remove(&svc_id) {
            cooling.extend(c.state.ranges());
        }
    }
    current.cooling = cooling;

    // 6. Backends no table refers to any more are freed, and their sockets listed
    //    for destruction.
    let still_backend: BTreeSet<Ipv4Addr> = wanted
        .iter()
        .filter_map(|id| current.backends.get(id))
        .map(|b| b.addr.ip())
        .collect();
    let gone: Vec<u32> = current
        .backends
        .keys()
        .filter(|id| !wanted.contains(id))
        .copied()
        .collect();
    let mut kill = BTreeSet::new();
    for id in gone {
        let b = current.backends.remove(&id).expect("listed above");
        ops.set_backend(id, BeValue::default())?;
        out.writes += 1;
        let addr = b.addr.ip();
        let mut ports = service_ports(&old_entries, b.svc_id);
        if still_backend.contains(&addr) {
            // A wildcard would also hit the address's connections through other
            // services it still serves; keep to this service's declared ports.
            ports.retain(|&(_, port)| port != 0);
        }
        let wild: BTreeSet<u8> = ports.iter().filter(|p| p.1 == 0).map(|p| p.0).collect();
        for (proto, port) in ports {
            if port == 0 || !wild.contains(&proto) {
                kill.insert(KillTarget { addr, port, proto });
            }
        }
    }
    out.kill = kill.into_iter().collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Backend, RateLimit, ServicePort};

    const NOW: Clock = Clock {
        now_ms: 1_000,
        refuse_ms: 0,
    };

    /// The plan of services that must all be valid.
    fn plan(services: &[ServiceEntry]) -> Result<Plan, DataplaneError> {
        let p = super::plan(services);
        match p.skipped.first() {
            None => Ok(p.plan),
            Some(s) => Err(s.error()),
        }
    }

    #[test]
    fn an_invalid_service_is_skipped_and_the_others_planned() {
        let mut bad = svc(5, "bad");
        bad.canary_weight = 150;
        // Claims web's VIP and published port: the later claimant is the invalid one.
        let mut thief = svc(6, "thief");
        thief.vip = svc(3, "x").vip;
        let p = super::plan(&[svc(3, "web"), bad, thief.clone(), svc(4, "api")]);
        assert_eq!(p.plan.services.keys().copied().collect::<Vec<_>>(), [3, 4]);
        let skipped: Vec<_> = p
            .skipped
            .iter()
            .map(|s| (s.id, s.name.as_str(), s.field.as_str()))
            .collect();
        assert_eq!(skipped, [(5, "bad", "canary_weight"), (6, "thief", "vip")]);
        assert_eq!(
            p.skipped[1].to_string(),
            "invalid service thief: vip: 10.99.0.4 is also the VIP of service web"
        );
        // Nothing of a skipped service reaches the maps, not even its valid parts.
        assert!(p.plan.svc_entries.values().all(|v| v.svc_id == 3 || v.svc_id == 4));
        // A published port claimed twice: only the second service is skipped.
        thief.vip = None;
        thief.ports[0].published = Some(8003);
        let p = super::plan(&[svc(3, "web"), thief]);
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].field, "ports[0].published");
        assert_eq!(p.plan.services.len(), 1);
    }

    /// reconcile() at [`NOW`], without tombstones.
    fn reconcile(current: &mut Current, plan: &Plan, ops: &mut dyn MapOps) -> Result<Outcome, DataplaneError> {
        super::reconcile(current, plan, ops, NOW)
    }

    fn svc(id: u32, name: &str) -> ServiceEntry {
        ServiceEntry {
            id,
            name: name.into(),
            vip: Some(Ipv4Addr::new(10, 99, 0, id as u8 + 1)),
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                target: 80,
                published: Some(8000 + id as u16),
                host_mode: false,
            }],
            backends: vec![
                Backend {
                    addr: Ipv4Addr::new(10, 1, 0, 2),
                    group: BackendGroup::Stable,
                    local: true,
                    draining: false,
                },
                Backend {
                    addr: Ipv4Addr::new(10, 1, 0, 3),
                    group: BackendGroup::Stable,
                    local: false,
                    draining: false,
                },
            ],
            canary_weight: 0,
            rate_limit: None,
            prefer_local: false,
        }
    }

    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        tables: BTreeMap<u32, Vec<u32>>,
        states: BTreeMap<u32, SvcState>,
        backends: BTreeMap<u32, BeValue>,
    }

    impl MapOps for Recorder {
        fn set_backend(&mut self, id: u32, value: BeValue) -> Result<(), DataplaneError> {
            self.log.push(format!("backend {id} {:?}", value.addr));
            self.backends.insert(id, value);
            Ok(())
        }
        fn zero_backend_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
            self.log.push(format!("zero backend {id}"));
            Ok(())
        }
        fn zero_service_counters(&mut self, svc_id: u32) -> Result<(), DataplaneError> {
            self.log.push(format!("zero service {svc_id}"));
            Ok(())
        }
        fn write_table(&mut self, table: u32, ids: &[u32]) -> Result<(), DataplaneError> {
            self.log.push(format!("table {table}"));
            self.tables.insert(table, ids.to_vec());
            Ok(())
        }
        fn set_state(&mut self, svc_id: u32, state: SvcState) -> Result<(), DataplaneError> {
            self.log.push(format!(
                "state {svc_id} all {} local {}",
                state.table_all, state.table_local
            ));
            self.states.insert(svc_id, state);
            Ok(())
        }
        fn put_svc(&mut self, key: SvcKey, value: SvcValue) -> Result<(), DataplaneError> {
            self.log
                .push(format!("put {:?}:{} -> {}", key.addr, key.port.get(), value.svc_id));
            Ok(())
        }
        fn del_svc(&mut self, key: SvcKey) -> Result<(), DataplaneError> {
            self.log.push(format!("del {:?}:{}", key.addr, key.port.get()));
            Ok(())
        }
    }

    fn pos(log: &[String], prefix: &str) -> usize {
        log.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {log:#?}"))
    }

    #[test]
    fn table_follows_canary_weight() {
        let be = |id: u32| (id, Ipv4Addr::new(10, 1, 0, id as u8));
        let stable = [be(1), be(2), be(3)];
        let canary = [be(9)];
        for w in [0u8, 10, 20, 50, 100] {
            let t = fill_table(&stable, &canary, w, None);
            let size = if w == 100 {
                1
            } else {
                maglev::table_size(if w == 0 { 3 } else { 4 })
            } as usize;
            assert_eq!(t.len(), size, "weight {w}");
            let share = t.iter().filter(|&&id| id == 9).count() as f64 / t.len() as f64;
            assert!(
                (share - f64::from(w) / 100.0).abs() < 0.01,
                "weight {w}: canary share {share}"
            );
        }
        // Stable slots are spread evenly over the stable backends.
        let t = fill_table(&stable, &canary, 0, None);
        for (id, _) in stable {
            let n = t.iter().filter(|&&x| x == id).count();
            assert!(n.abs_diff(t.len() / 3) <= 1, "backend {id}: {n} slots of {}", t.len());
        }
        assert!(fill_table(&[], &[], 50, None).is_empty());
        assert!(fill_table(&[], &[be(7)], 0, None).iter().all(|&id| id == 7));
        assert!(fill_table(&[be(4)], &[], 100, None).iter().all(|&id| id == 4));
    }

    #[test]
    fn pool_ranges_are_allocated_first_fit() {
        let busy = BTreeMap::from([(1, 101), (300, 10)]);
        assert_eq!(alloc_range(&busy, 100), Some(102));
        assert_eq!(alloc_range(&busy, 200), Some(310));
        assert_eq!(alloc_range(&BTreeMap::new(), SLOT_POOL - 1), Some(1));
        assert_eq!(alloc_range(&BTreeMap::new(), SLOT_POOL), None);
    }

    #[test]
    fn first_sync_writes_backends_then_tables_then_state_then_addresses() {
        let plan = plan(&[svc(3, "web")]).unwrap();
        let mut cur = Current::default();
        let mut rec = Recorder::default();
        let out = reconcile(&mut cur, &plan, &mut rec).unwrap();
        assert!(out.kill.is_empty());
        let log = &rec.log;
        assert!(pos(log, "backend 1") < pos(log, "table 1"));
        assert!(pos(log, "backend 2") < pos(log, "table 1"));
        assert!(pos(log, "table 1") < pos(log, "state 3 all 1 local 0"));
        assert!(pos(log, "state 3") < pos(log, "put"));
        // No host-mode port: no local table.
        assert_eq!(rec.tables.len(), 1);
        assert_eq!(rec.states[&3].backends_all, 2);
        assert_eq!(rec.states[&3].backends_local, 1);
        // VIP wildcard (tcp, udp) + VIP:80 + published 8003.
        assert_eq!(cur.svc_entries.len(), 4);
    }

    #[test]
    fn a_draining_backend_leaves_the_tables_but_keeps_its_entry_and_sockets() {
        let mut s = svc(3, "web");
        let mut cur = Current::default();
        reconcile(
            &mut cur,
            &plan(std::slice::from_ref(&s)).unwrap(),
            &mut Recorder::default(),
        )
        .unwrap();
        let table_before = cur.services[&3].tables[0].clone();
        s.backends[1].draining = true;
        let mut rec = Recorder::default();
        let out = reconcile(&mut cur, &plan(std::slice::from_ref(&s)).unwrap(), &mut rec).unwrap();
        assert!(
            out.kill.is_empty(),
            "its established connections live on: {:?}",
            out.kill
        );
        assert_eq!(cur.backends.len(), 2, "its flows still find it");
        assert_eq!(cur.services[&3].state.backends_all, 1);
        let table = &cur.services[&3].tables[0];
        assert_ne!(*table, table_before);
        assert!(table
            .iter()
            .all(|id| cur.backends[id].addr.ip() == Ipv4Addr::new(10, 1, 0, 2)));
        // When every backend drains, they still take connections: none is refused.
        s.backends[0].draining = true;
        reconcile(
            &mut cur,
            &plan(std::slice::from_ref(&s)).unwrap(),
            &mut Recorder::default(),
        )
        .unwrap();
        assert_eq!(cur.services[&3].state.backends_all, 2);
        // Its container exited: it leaves the list, and only now are sockets destroyed.
        s.backends.remove(1);
        let out = reconcile(
            &mut cur,
            &plan(std::slice::from_ref(&s)).unwrap(),
            &mut Recorder::default(),
        )
        .unwrap();
        assert!(
            out.kill.iter().any(|k| k.addr == Ipv4Addr::new(10, 1, 0, 3)),
            "{:?}",
            out.kill
        );
    }

    #[test]
    fn an_unchanged_sync_writes_nothing() {
        let services = [svc(3, "web"), svc(4, "api")];
        let plan = plan(&services).unwrap();
        let mut cur = Current::default();
        reconcile(&mut cur, &plan, &mut Recorder::default()).unwrap();
        let mut rec = Recorder::default();
        let out = reconcile(&mut cur, &plan, &mut rec).unwrap();
        assert_eq!(out.writes, 0);
        assert!(rec.log.is_empty(), "{:#?}", rec.log);
    }

    #[test]
    fn a_backend_change_flips_to_a_new_table_and_kills_its_sockets() {
        let mut s = svc(3, "web");
        let mut cur = Current::default();
        reconcile(
            &mut cur,
            &plan(std::slice::from_ref(&s)).unwrap(),
            &mut Recorder::default(),
        )
        .unwrap();
        s.backends.remove(1);
        let mut rec = Recorder::default();
        let out = reconcile(&mut cur, &plan(&[s]).unwrap(), &mut rec).unwrap();
        let log = &rec.log;
        // One backend left: a one-slot table beside the active 101-slot one.
        assert!(pos(log, "table 102") < pos(log, "state 3 all 102"));
        assert!(pos(log, "state 3 all 102") < pos(log, "backend 2 0.0.0.0"));
        assert_eq!(rec.tables[&102], [1]);
        assert_eq!(
            out.kill,
            [
                KillTarget {
                    addr: Ipv4Addr::new(10, 1, 0, 3),
                    port: 0,
                    proto: 6
                },
                KillTarget {
                    addr: Ipv4Addr::new(10, 1, 0, 3),
                    port: 0,
                    proto: 17
                },
            ]
        );
        assert_eq!(
            (cur.services[&3].state.table_all, cur.services[&3].state.size_all),
            (102, 1)
        );
        assert_eq!(
            cur.cooling,
            BTreeSet::from([(1, 101)]),
            "the old table rests for one reconciliation"
        );
    }

    #[test]
    fn a_replaced_table_is_reused_only_after_the_next_reconciliation() {
        let mut s = svc(3, "web");
        let mut other = svc(4, "api");
        other.backends.truncate(1);
        let mut cur = Current::default();
        let mut rec = Recorder::default();
        reconcile(&mut cur, &plan(&[s.clone(), other.clone()]).unwrap(), &mut rec).unwrap();
        assert_eq!(
            (cur.services[&3].state.table_all, cur.services[&4].state.table_all),
            (1, 102)
        );
        // Service 3 moves off its table and service 4 changes in the same pass: table 1
        // is not handed to service 4 while a program may still read it.
        s.backends.remove(1);
        other.canary_weight = 0;
        other.backends.push(Backend {
            addr: Ipv4Addr::new(10, 1, 0, 9),
            group: BackendGroup::Stable,
            local: false,
            draining: false,
        });
        reconcile(&mut cur, &plan(&[s.clone(), other.clone()]).unwrap(), &mut rec).unwrap();
        assert_eq!(
            (cur.services[&3].state.table_all, cur.services[&4].state.table_all),
            (103, 104)
        );
        assert_eq!(cur.cooling, BTreeSet::from([(1, 101), (102, 1)]));
        // One pass later both are free again.
        other.backends.pop();
        reconcile(&mut cur, &plan(&[s, other]).unwrap(), &mut rec).unwrap();
        assert_eq!(cur.services[&4].state.table_all, 1);
        assert_eq!(cur.cooling, BTreeSet::from([(104, 101)]));
    }

    #[test]
    fn host_mode_ports_get_a_table_of_local_backends() {
        let mut s = svc(3, "web");
        s.ports[0].host_mode = true;
        let mut cur = Current::default();
        let mut rec = Recorder::default();
        reconcile(&mut cur, &plan(&[s]).unwrap(), &mut rec).unwrap();
        let st = rec.states[&3];
        assert_ne!(st.table_local, 0);
        assert!(
            rec.tables[&st.table_local].iter().all(|&id| id == 1),
            "only the local backend"
        );
        assert!(rec.tables[&st.table_all].contains(&2));
        assert_eq!((st.backends_all, st.backends_local), (2, 1));
    }

    #[test]
    fn prefer_local_services_get_a_local_table_and_the_flag() {
        let mut s = svc(3, "web");
        s.prefer_local = true;
        let mut cur = Current::default();
        let mut rec = Recorder::default();
        reconcile(&mut cur, &plan(std::slice::from_ref(&s)).unwrap(), &mut rec).unwrap();
        let st = rec.states[&3];
        assert_eq!(st.flags, SVC_S_PREFER_LOCAL);
        assert!(rec.tables[&st.table_local].iter().all(|&id| id == 1));
        assert_eq!((st.backends_all, st.backends_local), (2, 1));

        // The local task drains: the local table empties, so the programs fall back
        // to the table of all backends.
        s.backends[0].draining = true;
        let mut rec = Recorder::default();
        reconcile(&mut cur, &plan(std::slice::from_ref(&s)).unwrap(), &mut rec).unwrap();
        let st = rec.states[&3];
        assert_eq!((st.backends_local, st.table_local), (0, 0));
        assert_eq!(st.flags, SVC_S_PREFER_LOCAL);

        // Back to any: no local table, no flag.
        s.backends[0].draining = false;
        s.prefer_local = false;
        let mut rec = Recorder::default();
        reconcile(&mut cur, &plan(&[s]).unwrap(), &mut rec).unwrap();
        let st = rec.states[&3];
        assert_eq!((st.flags, st.table_local), (0, 0));
    }

    #[test]
    fn a_rate_limit_change_updates_state_in_place() {
        let mut s = svc(3, "web");
        let mut cur = Current::default();
        reconcile(
            &mut cur,
            &plan(std::slice::from_ref(&s)).unwrap(),
            &mut Recorder::default(),
        )
        .unwrap();
        s.rate_limit = Some(RateLimit {
            per_sec: 50,
            burst: 100,
        });
        let mut rec = Recorder::default();
        reconcile(&mut cur, &plan(&[s]).unwrap(), &mut rec).unwrap();
        assert_eq!(rec.log, ["state 3 all 1 local 0"]);
        assert_eq!(rec.states[&3].rate_per_sec, 50);
        assert_eq!(rec.states[&3].rate_burst, 100);
    }

    #[test]
    fn a_removed_service_loses_its_addresses_before_its_state() {
        let mut cur = Current::default();
        reconcile(
            &mut cur,
            &plan(&[svc(3, "web"), svc(4, "api")]).unwrap(),
            &mut Recorder::default(),
        )
        .unwrap();
        let mut rec = Recorder::default();
        let out = reconcile(&mut cur, &plan(&[svc(4, "api")]).unwrap(), &mut rec).unwrap();
        let log = &rec.log;
        assert!(pos(log, "del") < pos(log, "state 3 all 0 local 0"));
        assert!(pos(log, "state 3") < pos(log, "backend 1 0.0.0.0"));
        // The addresses still serve service 4, so only service 3's declared port dies.
        assert_eq!(
            out.kill,
            [
                KillTarget {
                    addr: Ipv4Addr::new(10, 1, 0, 2),
                    port: 80,
                    proto: 6
                },
                KillTarget {
                    addr: Ipv4Addr::new(10, 1, 0, 3),
                    port: 80,
                    proto: 6
                },
            ]
        );
        assert!(!cur.services.contains_key(&3));
        assert_eq!(cur.svc_entries.len(), 4);
    }

    #[test]
    fn a_removed_vip_refuses_connections_until_its_tombstone_is_due() {
        let clock = |now_ms| Clock {
            now_ms,
            refuse_ms: 5_000,
        };
        let mut cur = Current::default();
        let both = plan(&[svc(3, "web"), svc(4, "api")]).unwrap();
        super::reconcile(&mut cur, &both, &mut Recorder::default(), clock(0)).unwrap();
        let only_api = plan(&[svc(4, "api")]).unwrap();
        let mut rec = Recorder::default();
        super::reconcile(&mut cur, &only_api, &mut rec, clock(1_000)).unwrap();
        let vip = Be32::from_ip(Ipv4Addr::new(10, 99, 0, 4));
        // The VIP's three entries refuse; the published port goes at once.
        let refusing: Vec<_> = cur
            .svc_entries
            .iter()
            .filter(|(_, v)| v.flags & SVC_F_REFUSE != 0)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(refusing.len(), 3, "{:#?}", cur.svc_entries);
        assert!(refusing.iter().all(|k| k.addr == vip));
        assert_eq!(cur.tombstones.len(), 3);
        assert!(rec.log.iter().any(|l| l == "del 0.0.0.0:8003"), "{:#?}", rec.log);
        assert!(
            !rec.log.iter().any(|l| l.starts_with("del 10.99.0.4")),
            "{:#?}",
            rec.log
        );
        assert!(!cur.tombstone_due(5_999) && cur.tombstone_due(6_000));

        let mut rec = Recorder::default();
        let out = super::reconcile(&mut cur, &only_api, &mut rec, clock(3_000)).unwrap();
        assert_eq!(out.writes, 0, "not due yet: {:#?}", rec.log);
        let mut rec = Recorder::default();
        super::reconcile(&mut cur, &only_api, &mut rec, clock(6_000)).unwrap();
        assert_eq!(rec.log.iter().filter(|l| l.starts_with("del 10.99.0.4")).count(), 3);
        assert!(cur.tombstones.is_empty());
        assert_eq!(cur.svc_entries.len(), 4, "only api's entries are left");

        // A service that comes back within the grace takes its entries back.
        super::reconcile(&mut cur, &both, &mut Recorder::default(), clock(7_000)).unwrap();
        super::reconcile(&mut cur, &only_api, &mut Recorder::default(), clock(8_000)).unwrap();
        super::reconcile(&mut cur, &both, &mut Recorder::default(), clock(9_000)).unwrap();
        assert!(cur.tombstones.is_empty());
        assert!(cur.svc_entries.values().all(|v| v.flags & SVC_F_REFUSE == 0));
        assert_eq!(cur.svc_entries.len(), 8);
    }

    #[test]
    fn backend_ids_are_kept_and_reused() {
        let mut s = svc(3, "web");
        let mut cur = Current::default();
        reconcile(
            &mut cur,
            &plan(std::slice::from_ref(&s)).unwrap(),
            &mut Recorder::default(),
        )
        .unwrap();
        let ids: Vec<_> = cur.backends.keys().copied().collect();
        assert_eq!(ids, [1, 2]);
        s.backends[0].group = BackendGroup::Canary;
        s.canary_weight = 50;
        let mut rec = Recorder::default();
        reconcile(&mut cur, &plan(std::slice::from_ref(&s)).unwrap(), &mut rec).unwrap();
        assert_eq!(cur.backends.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert!(cur.backends[&1].flags & BE_F_CANARY != 0);
        s.backends.remove(0);
        reconcile(
            &mut cur,
            &plan(std::slice::from_ref(&s)).unwrap(),
            &mut Recorder::default(),
        )
        .unwrap();
        s.backends.push(Backend {
            addr: Ipv4Addr::new(10, 1, 0, 9),
            group: BackendGroup::Stable,
            local: true,
            draining: false,
        });
        reconcile(&mut cur, &plan(&[s]).unwrap(), &mut Recorder::default()).unwrap();
        assert_eq!(cur.backends.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(cur.backends[&1].addr.ip(), Ipv4Addr::new(10, 1, 0, 9));
    }

    #[test]
    fn invalid_services_name_the_field() {
        type Mutation = Box<dyn Fn(&mut Vec<ServiceEntry>)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|v| v[0].id = MAX_SERVICES),
                "invalid service web: id: 16384 is out of range (0..16384)",
            ),
            (
                Box::new(|v| v[1].id = 3),
                "invalid service api: id: 3 is also the id of service web",
            ),
            (
                Box::new(|v| v[0].canary_weight = 101),
                "invalid service web: canary_weight: 101 is not a percentage (0-100)",
            ),
            (
                Box::new(|v| v[0].vip = Some(Ipv4Addr::LOCALHOST)),
                "invalid service web: vip: 127.0.0.1: a loopback address cannot be used",
            ),
            (
                Box::new(|v| v[1].vip = v[0].vip),
                "invalid service api: vip: 10.99.0.4 is also the VIP of service web",
            ),
            (
                Box::new(|v| v[0].ports[0].target = 0),
                "invalid service web: ports[0].target: port 0 is not a port",
            ),
            (
                Box::new(|v| v[0].ports[0].published = Some(0)),
                "invalid service web: ports[0].published: port 0 cannot be published",
            ),
            (
                Box::new(|v| v[1].ports[0].published = Some(8003)),
                "invalid service api: ports[0].published: tcp/8003 is already published by service web",
            ),
            (
                Box::new(|v| {
                    v[0].ports[0].published = None;
                    v[0].ports[0].host_mode = true;
                }),
                "invalid service web: ports[0].host_mode: mode=host needs a published port",
            ),
            (
                Box::new(|v| v[0].backends[1].addr = v[0].backends[0].addr),
                "invalid service web: backends[1].addr: 10.1.0.2 is listed twice",
            ),
            (
                Box::new(|v| v[0].backends[0].addr = Ipv4Addr::UNSPECIFIED),
                "invalid service web: backends[0].addr: 0.0.0.0: 0.0.0.0 is not an address",
            ),
            (
                Box::new(|v| v[0].rate_limit = Some(RateLimit { per_sec: 0, burst: 1 })),
                "invalid service web: rate_limit.per_sec: must be at least 1 (omit rate_limit for no limit)",
            ),
            (
                Box::new(|v| v[0].rate_limit = Some(RateLimit { per_sec: 1, burst: 0 })),
                "invalid service web: rate_limit.burst: must be at least 1",
            ),
            (
                Box::new(|v| {
                    v[0].rate_limit = Some(RateLimit {
                        per_sec: 1_000_001,
                        burst: 1,
                    })
                }),
                "invalid service web: rate_limit.per_sec: 1000001 is above the limit of 1000000/s",
            ),
            (
                Box::new(|v| {
                    v[0].rate_limit = Some(RateLimit {
                        per_sec: 1,
                        burst: 1_000_001,
                    })
                }),
                "invalid service web: rate_limit.burst: 1000001 is above the limit of 1000000",
            ),
            (
                Box::new(|v| v[1].name.clear()),
                "invalid service #1: name: must not be empty",
            ),
        ];
        for (mutate, expected) in cases {
            let mut v = vec![svc(3, "web"), svc(4, "api")];
            validate(&v).unwrap();
            mutate(&mut v);
            assert_eq!(validate(&v).unwrap_err().to_string(), expected);
        }
    }
}
