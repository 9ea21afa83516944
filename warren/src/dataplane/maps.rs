//! The loader's typed handles on the pinned maps: taking them out of the loaded
//! object, refusing pinned maps of another layout, reading their contents back
//! (adoption), the writes of a reconciliation ([`MapOps`]) and counter sums.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuHashMap, PerCpuValues},
    Ebpf,
};
use warren_common::{
    map_names as names, Affinity, Backend as BeValue, BackendCounters, BackendOutcomes, Be32, CtKey, CtValue, KillKey,
    NodeAddr, OutcomeKey, RevNat, RlKey, RlValue, SockKey, SockState, SvcCounters, SvcKey, SvcState, SvcValue,
    BE_F_ACTIVE, CT_ENTRIES, EVENTS_BYTES, KILL_ENTRIES, KINDS, MAX_BACKENDS, MAX_NODE_ADDRS, MAX_SERVICES,
    MAX_SVC_ENTRIES, RL_ENTRIES, SLOT_POOL, SOCK_ENTRIES, SVC_F_REFUSE,
};

use super::{
    plan::{Clock, Current, CurrentService, MapOps},
    DataplaneError,
};

/// Every map: (name, kernel map type, key size, value size, max entries). A pinned
/// map that differs is refused rather than reused.
fn map_specs() -> [(&'static str, u32, usize, usize, u32); 15] {
    use std::mem::size_of;
    const HASH: u32 = 1;
    const ARRAY: u32 = 2;
    const PERCPU_ARRAY: u32 = 6;
    const LRU_HASH: u32 = 9;
    const LRU_PERCPU_HASH: u32 = 10;
    const SK_STORAGE: u32 = 24;
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
        (names::SLOT, ARRAY, 4, 4, SLOT_POOL),
        (names::BACKEND, ARRAY, 4, size_of::<BeValue>(), MAX_BACKENDS),
        (
            names::REVNAT,
            LRU_HASH,
            size_of::<SockKey>(),
            size_of::<RevNat>(),
            SOCK_ENTRIES,
        ),
        // Socket storage has no capacity: it lives with each socket.
        (names::SOCK_STATE, SK_STORAGE, 4, size_of::<SockState>(), 0),
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
        (names::CT, HASH, size_of::<CtKey>(), size_of::<CtValue>(), CT_ENTRIES),
        (names::NODE_ADDR, HASH, 4, size_of::<NodeAddr>(), MAX_NODE_ADDRS),
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
        (
            names::BACKEND_OUTCOMES,
            LRU_PERCPU_HASH,
            size_of::<OutcomeKey>(),
            size_of::<BackendOutcomes>(),
            MAX_BACKENDS,
        ),
    ]
}

/// The maps the loader writes and reads.
pub(crate) struct Maps {
    pub(crate) svc: HashMap<MapData, SvcKey, SvcValue>,
    pub(crate) state: Array<MapData, SvcState>,
    pub(crate) slot: Array<MapData, u32>,
    pub(crate) be: Array<MapData, BeValue>,
    pub(crate) naddr: HashMap<MapData, Be32, NodeAddr>,
    pub(crate) svcc: PerCpuArray<MapData, SvcCounters>,
    pub(crate) bec: PerCpuArray<MapData, BackendCounters>,
    pub(crate) beo: PerCpuHashMap<MapData, OutcomeKey, BackendOutcomes>,
    pub(crate) rnat: HashMap<MapData, SockKey, RevNat>,
    pub(crate) aff: HashMap<MapData, SockKey, Affinity>,
    pub(crate) rl: HashMap<MapData, RlKey, RlValue>,
    pub(crate) ct: HashMap<MapData, CtKey, CtValue>,
    pub(crate) ncpus: usize,
}

pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::MissingMap { map: name })?;
    T::try_from(map).map_err(|e| DataplaneError::map(name, e))
}

impl Maps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            svc: take(ebpf, names::SVC)?,
            state: take(ebpf, names::STATE)?,
            slot: take(ebpf, names::SLOT)?,
            be: take(ebpf, names::BACKEND)?,
            naddr: take(ebpf, names::NODE_ADDR)?,
            svcc: take(ebpf, names::SVC_COUNTERS)?,
            bec: take(ebpf, names::BACKEND_COUNTERS)?,
            beo: take(ebpf, names::BACKEND_OUTCOMES)?,
            rnat: take(ebpf, names::REVNAT)?,
            aff: take(ebpf, names::AFFINITY)?,
            rl: take(ebpf, names::RATE_LIMIT)?,
            ct: take(ebpf, names::CT)?,
            ncpus: aya::util::nr_cpus().map_err(|(what, e)| DataplaneError::io(what, e))?,
        })
    }

    /// The maps' contents as the reconciler sees them (after a restart: what the
    /// previous daemon left).
    /// Tombstones found (addresses with `SVC_F_REFUSE`) stay for `clock.refuse_ms`
    /// from now: when they were made is not recorded.
    pub(crate) fn read_current(&self, clock: Clock) -> Result<Current, DataplaneError> {
        let mut cur = Current::default();
        for item in self.svc.iter() {
            let (k, v) = item.map_err(|e| DataplaneError::map(names::SVC, e))?;
            if v.flags & SVC_F_REFUSE != 0 {
                cur.tombstones.insert(k, clock.now_ms + clock.refuse_ms);
            }
            cur.svc_entries.insert(k, v);
        }
        let ids: BTreeSet<u32> = cur.svc_entries.values().map(|v| v.svc_id).collect();
        for id in ids {
            let state = self
                .state
                .get(&id, 0)
                .map_err(|e| DataplaneError::map(names::STATE, e))?;
            let mut tables: [Vec<u32>; KINDS as usize] = Default::default();
            for (table, (off, size)) in tables.iter_mut().zip(state.tables()) {
                if off == 0 || size == 0 || off.checked_add(size).is_none_or(|end| end > SLOT_POOL) {
                    continue;
                }
                for idx in off..off + size {
                    table.push(
                        self.slot
                            .get(&idx, 0)
                            .map_err(|e| DataplaneError::map(names::SLOT, e))?,
                    );
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

    pub(crate) fn sync_node_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<(), DataplaneError> {
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

    pub(crate) fn svc_counters(&self, id: u32) -> Result<SvcCounters, DataplaneError> {
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

    pub(crate) fn backend_counters(&self, id: u32) -> Result<BackendCounters, DataplaneError> {
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

impl Maps {
    /// How connections to `addr` ended, summed over CPUs; zero for a backend no
    /// connection was counted for (or whose entry the LRU evicted).
    pub(crate) fn backend_outcomes(&self, addr: Ipv4Addr) -> Result<BackendOutcomes, DataplaneError> {
        let key = OutcomeKey { addr: addr.octets() };
        let per_cpu = match self.beo.get(&key, 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => return Ok(BackendOutcomes::default()),
            Err(e) => return Err(DataplaneError::map(names::BACKEND_OUTCOMES, e)),
        };
        let mut sum = BackendOutcomes::default();
        for c in per_cpu.iter() {
            sum.established += c.established;
            sum.reset += c.reset;
            sum.refused += c.refused;
            sum.timed_out += c.timed_out;
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

    fn write_table(&mut self, offset: u32, ids: &[u32]) -> Result<(), DataplaneError> {
        for (i, id) in ids.iter().enumerate() {
            self.slot
                .set(offset + i as u32, id, 0)
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

/// Unpins the maps of earlier layouts (`map_names::RETIRED`), once no attached
/// program uses them; the kernel frees each when its last reference goes.
pub(crate) fn retire_old_maps(dir: &Path) -> Result<(), DataplaneError> {
    for name in names::RETIRED {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(pin = %path.display(), "retired a map of an earlier layout"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataplaneError::io(format!("unpin {}", path.display()), e)),
        }
    }
    Ok(())
}

/// Refuses pinned maps whose type or sizes differ from this build's.
pub(crate) fn check_pinned_maps(dir: &Path) -> Result<(), DataplaneError> {
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
            Ok(MapType::LruPerCpuHash) => 10,
            Ok(MapType::SkStorage) => 24,
            Ok(MapType::RingBuf) => 27,
            _ => u32::MAX,
        }
    }
}
