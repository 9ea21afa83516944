//! Upgrades of pinned maps from an earlier layout: the new maps are created beside
//! the old ones and filled from them here, before any hook switches to the new
//! programs, so established and new connections see no gap; the old pins are
//! retired after the switch (`maps::retire_old_maps`). Only what a layout change
//! needs; everything else is adopted as it is.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use warren_common::{
    map_names as names, Affinity, CtKey, CtValue, SockKey, SvcCounters, BE_F_CANARY, BE_F_LOCAL, CT_F_REPLY,
    CT_S_REPLIED, DROP_REASONS_V1, MAX_SERVICES,
};

use super::{
    maps::Maps,
    plan::{self, Clock, Plan, PlannedBackend, PlannedService},
    DataplaneError,
};

/// `struct warren_svc_state` of layout v1 (`warren_state_v1`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SvcStateV1 {
    table_all: u32,
    table_local: u32,
    backends_all: u16,
    backends_local: u16,
    rate_per_sec: u32,
    rate_burst: u32,
}

// SAFETY: repr(C) integers with no padding; any byte pattern is valid.
unsafe impl aya::Pod for SvcStateV1 {}

/// Slots per table and tables of layout v1 (`warren_slot_v1[table * 256 + slot]`).
const V1_SLOTS: u32 = 256;
const V1_MAX_TABLES: u32 = 16384;
const V1_STATE: &str = "warren_state_v1";
const V1_SLOT: &str = "warren_slot_v1";

fn open_array<V: aya::Pod>(path: &Path, name: &'static str) -> Result<Array<MapData, V>, DataplaneError> {
    let data = MapData::from_pin(path).map_err(|e| DataplaneError::map(name, e))?;
    Array::try_from(Map::Array(data)).map_err(|e| DataplaneError::map(name, e))
}

/// Fills the Maglev tables and service states (layout v2) from the 256-slot
/// tables of v1 when `dir` holds v1 pins and the v2 maps are still empty: the
/// backends of each service are those of its v1 table, the canary weight its
/// canary share of the 256 slots. Returns how many services were migrated.
pub(crate) fn tables_from_v1(dir: &Path, maps: &mut Maps, clock: Clock) -> Result<usize, DataplaneError> {
    let (state_pin, slot_pin) = (dir.join(V1_STATE), dir.join(V1_SLOT));
    if !state_pin.exists() || !slot_pin.exists() {
        return Ok(0);
    }
    let mut current = maps.read_current(clock)?;
    if current.services.values().any(|s| s.state.ranges().next().is_some()) {
        // Migrated already (a start that stopped before retiring the v1 pins).
        return Ok(0);
    }
    let old_state: Array<MapData, SvcStateV1> = open_array(&state_pin, V1_STATE)?;
    let old_slot: Array<MapData, u32> = open_array(&slot_pin, V1_SLOT)?;
    let mut plan = Plan {
        svc_entries: current.svc_entries.clone(),
        services: BTreeMap::new(),
    };
    for &id in current.services.keys() {
        let st = old_state.get(&id, 0).map_err(|e| DataplaneError::map(V1_STATE, e))?;
        let mut ids = BTreeSet::new();
        let mut canary_slots = 0u32;
        if st.table_all != 0 && st.table_all < V1_MAX_TABLES {
            for slot in 0..V1_SLOTS {
                let b = old_slot
                    .get(&(st.table_all * V1_SLOTS + slot), 0)
                    .map_err(|e| DataplaneError::map(V1_SLOT, e))?;
                let Some(be) = current.backends.get(&b) else { continue };
                ids.insert(b);
                canary_slots += u32::from(be.flags & BE_F_CANARY != 0);
            }
        }
        let mut backends: Vec<PlannedBackend> = ids
            .iter()
            .filter_map(|b| current.backends.get(b))
            .map(|b| PlannedBackend {
                addr: b.addr.ip(),
                canary: b.flags & BE_F_CANARY != 0,
                local: b.flags & BE_F_LOCAL != 0,
                draining: false,
            })
            .collect();
        backends.sort();
        let mixed = backends.iter().any(|b| b.canary) && backends.iter().any(|b| !b.canary);
        plan.services.insert(
            id,
            PlannedService {
                name: format!("#{id}"),
                backends,
                // v1 had no locality; the next sync sets it.
                prefer_local: false,
                canary_weight: if mixed {
                    ((canary_slots * 100 + V1_SLOTS / 2) / V1_SLOTS) as u8
                } else {
                    0
                },
                rate_per_sec: st.rate_per_sec,
                rate_burst: st.rate_burst,
            },
        );
    }
    plan::reconcile(&mut current, &plan, maps, clock)?;
    Ok(plan.services.len())
}

const V1_CT: &str = "warren_ct_v1";
const V1_SVCC: &str = "warren_svcc_v1";

/// Copies the tc flows of `warren_ct_v1` (an LRU hash) into `warren_ct_v2`,
/// where the programs about to be attached look them up, so that established
/// flows from the wire keep their translation and SNAT port. The v1 layout has
/// no state: a flow whose both halves are there counts as replied
/// (established), and a half without its other half is left out (the LRU
/// evicted its twin; the flow is broken already). Entries already in v2 (a
/// start that stopped before retiring v1) are kept. Returns the entries copied.
pub(crate) fn ct_from_v1(dir: &Path, ct: &mut HashMap<MapData, CtKey, CtValue>) -> Result<usize, DataplaneError> {
    let Some(old) = open_v1_lru::<CtKey, CtValue>(dir, V1_CT)? else {
        return Ok(0);
    };
    let entries = super::ct::CtTable::entries(&old)?;
    let by_key: BTreeMap<CtKey, CtValue> = entries.iter().copied().collect();
    let mut copied = 0;
    for (k, v) in &entries {
        let other = super::ct::other_key(v, k.proto);
        if !by_key.contains_key(&other) {
            continue;
        }
        let mut v = *v;
        // v1 wrote a u8 of flags and zero padding: the same bytes as v2's flags.
        v.flags &= 0xff;
        if v.flags & CT_F_REPLY == 0 {
            v.flags |= CT_S_REPLIED;
        }
        match ct.insert(k, v, 1 /* BPF_NOEXIST */) {
            Ok(()) => copied += 1,
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(DataplaneError::map(names::CT, e)),
        }
    }
    Ok(copied)
}

/// `struct warren_svc_counters` of layout v1 (four drop reasons).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SvcCountersV1 {
    conns: u64,
    packets: u64,
    bytes: u64,
    drops: [u64; DROP_REASONS_V1],
}

// SAFETY: repr(C) integers with no padding; any byte pattern is valid.
unsafe impl aya::Pod for SvcCountersV1 {}

/// Carries each service's per-CPU counters from `warren_svcc_v1` into
/// `warren_svcc_v2` (the new drop reason starts at zero) for the services
/// `ids`, unless v2 already counts for them. Returns the services copied.
pub(crate) fn counters_from_v1(
    dir: &Path,
    svcc: &mut PerCpuArray<MapData, SvcCounters>,
    ids: impl Iterator<Item = u32>,
) -> Result<usize, DataplaneError> {
    let pin = dir.join(V1_SVCC);
    if !pin.exists() {
        return Ok(0);
    }
    let data = MapData::from_pin(&pin).map_err(|e| DataplaneError::map(V1_SVCC, e))?;
    let old: PerCpuArray<MapData, SvcCountersV1> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|e| DataplaneError::map(V1_SVCC, e))?;
    let mut copied = 0;
    for id in ids.filter(|&id| id < MAX_SERVICES) {
        let now = svcc
            .get(&id, 0)
            .map_err(|e| DataplaneError::map(names::SVC_COUNTERS, e))?;
        if now.iter().any(|c| c.conns != 0 || c.packets != 0) {
            continue;
        }
        let was = old.get(&id, 0).map_err(|e| DataplaneError::map(V1_SVCC, e))?;
        let values: Vec<SvcCounters> = was
            .iter()
            .map(|c| {
                let mut n = SvcCounters {
                    conns: c.conns,
                    packets: c.packets,
                    bytes: c.bytes,
                    ..Default::default()
                };
                n.drops[..DROP_REASONS_V1].copy_from_slice(&c.drops);
                n
            })
            .collect();
        let values = PerCpuValues::try_from(values).map_err(|e| DataplaneError::io("per-CPU values", e))?;
        svcc.set(id, values, 0)
            .map_err(|e| DataplaneError::map(names::SVC_COUNTERS, e))?;
        copied += 1;
    }
    Ok(copied)
}

const V1_AFFINITY: &str = "warren_aff_v1";

/// `struct warren_affinity` of layout v1 (no idle time).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct AffinityV1 {
    backend_id: u32,
    svc_id: u32,
}

// SAFETY: repr(C) integers with no padding; any byte pattern is valid.
unsafe impl aya::Pod for AffinityV1 {}

/// Copies the unconnected UDP sockets' backends from `warren_aff_v1` into
/// `warren_aff_v2`, each as seen at `now_ns` (CLOCK_MONOTONIC, the clock of
/// `bpf_ktime_get_ns`), so that a flow in progress keeps its backend through the
/// upgrade and then ages like a new one. Entries already in v2 stay.
pub(crate) fn aff_from_v1(
    dir: &Path,
    aff: &mut HashMap<MapData, SockKey, Affinity>,
    now_ns: u64,
) -> Result<usize, DataplaneError> {
    let Some(old) = open_v1_lru::<SockKey, AffinityV1>(dir, V1_AFFINITY)? else {
        return Ok(0);
    };
    let mut copied = 0;
    for entry in old.iter() {
        // An LRU entry may go while the walk runs: skip it.
        let Ok((k, v)) = entry else { continue };
        let value = Affinity {
            backend_id: v.backend_id,
            svc_id: v.svc_id,
            last_ns: now_ns,
        };
        match aff.insert(k, value, 1 /* BPF_NOEXIST */) {
            Ok(()) => copied += 1,
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(DataplaneError::map(names::AFFINITY, e)),
        }
    }
    Ok(copied)
}

/// The pinned v1 LRU hash `name` in `dir`, if the node still has it.
fn open_v1_lru<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<Option<HashMap<MapData, K, V>>, DataplaneError> {
    let pin = dir.join(name);
    if !pin.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&pin).map_err(|e| DataplaneError::map(name, e))?;
    HashMap::try_from(Map::LruHashMap(data))
        .map(Some)
        .map_err(|e| DataplaneError::map(name, e))
}
