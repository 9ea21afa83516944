//! Reading a node's data plane straight from its pinned maps, for `warren
//! dataplane ...`: services with their backends and table shares, tc flows, token
//! buckets and counters. Needs only the pin directory (works with the daemon
//! stopped, as `cilium bpf lb list` does) and never writes. Formatting is the
//! CLI's.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use serde::Serialize;
use warren_common::{
    map_names as names, Backend as BeValue, BackendCounters, CtKey, CtValue, RlKey, RlValue, SvcCounters, SvcKey,
    SvcState, SvcValue, BE_F_ACTIVE, BE_F_CANARY, BE_F_LOCAL, CT_F_REPLY, CT_F_SNAT, DROP_REASONS, DROP_REASON_NAMES,
    MAX_BACKENDS, RL_TOKEN, SLOT_POOL, SVC_F_HOST_MODE, SVC_F_NODEPORT, SVC_F_REFUSE, SVC_F_WILDCARD,
};

use super::{checks::BPFFS_ROOT, DataplaneError};

/// The pin directory of the only data plane under `/sys/fs/bpf/warren`, or of
/// node `node` when given.
pub fn pin_dir(node: Option<&str>) -> Result<PathBuf, DataplaneError> {
    let root = Path::new(BPFFS_ROOT).join("warren");
    if let Some(n) = node {
        return Ok(root.join(n));
    }
    let dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| DataplaneError::io(format!("read {}", root.display()), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(names::SVC).exists())
        .collect();
    match dirs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(DataplaneError::InvalidConfig {
            field: "bpffs",
            problem: format!("no data plane is pinned under {}", root.display()),
        }),
        _ => Err(DataplaneError::InvalidConfig {
            field: "bpffs",
            problem: format!(
                "{} data planes are pinned under {}: name one with --node or --bpffs",
                dirs.len(),
                root.display()
            ),
        }),
    }
}

fn open(dir: &Path, name: &'static str) -> Result<MapData, DataplaneError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|e| DataplaneError::map(name, e))
}

fn hash<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
    lru: bool,
) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    let data = open(dir, name)?;
    let map = if lru { Map::LruHashMap(data) } else { Map::HashMap(data) };
    HashMap::try_from(map).map_err(|e| DataplaneError::map(name, e))
}

fn array<V: aya::Pod>(dir: &Path, name: &'static str) -> Result<Array<MapData, V>, DataplaneError> {
    Array::try_from(Map::Array(open(dir, name)?)).map_err(|e| DataplaneError::map(name, e))
}

fn entries<K: aya::Pod, V: aya::Pod>(
    m: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, DataplaneError> {
    m.iter()
        .collect::<Result<Vec<_>, MapError>>()
        .map_err(|e| DataplaneError::map(name, e))
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "?",
    }
}

/// An address a service answers at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    /// `10.0.0.5:80/tcp`, `10.0.0.5:*/udp` (any port), `*:8080/tcp` (published).
    pub address: String,
    /// The backends' port; 0 = the same as the client's.
    pub target_port: u16,
    pub published: bool,
    pub host_mode: bool,
    /// A removed service's VIP, refusing new connections until it goes.
    pub refusing: bool,
}

/// A backend with its share of the service's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub id: u32,
    pub addr: Ipv4Addr,
    /// On this node (`false`: remote, reached with SNAT from the wire).
    pub local: bool,
    pub canary: bool,
    /// Slots of the "all backends" table.
    pub slots: u32,
}

/// A service as the maps hold it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceView {
    pub id: u32,
    pub frontends: Vec<FrontendView>,
    pub backends: Vec<BackendView>,
    pub table_size: u32,
    /// The canary group's share of new connections, percent.
    pub canary_share: f64,
    /// 0 = no limit.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

/// Every service of the data plane pinned in `dir`.
pub fn services(dir: &Path) -> Result<Vec<ServiceView>, DataplaneError> {
    let svc: HashMap<MapData, SvcKey, SvcValue> = hash(dir, names::SVC, false)?;
    let state: Array<MapData, SvcState> = array(dir, names::STATE)?;
    let slot: Array<MapData, u32> = array(dir, names::SLOT)?;
    let be: Array<MapData, BeValue> = array(dir, names::BACKEND)?;

    let mut by_id: BTreeMap<u32, Vec<FrontendView>> = BTreeMap::new();
    for (k, v) in entries(&svc, names::SVC)? {
        let addr = if k.addr.get() == 0 {
            "*".to_string()
        } else {
            k.addr.ip().to_string()
        };
        let port = if k.port.get() == 0 && v.flags & SVC_F_WILDCARD != 0 {
            "*".to_string()
        } else {
            k.port.get().to_string()
        };
        by_id.entry(v.svc_id).or_default().push(FrontendView {
            address: format!("{addr}:{port}/{}", proto_name(k.proto)),
            target_port: v.target_port.get(),
            published: v.flags & SVC_F_NODEPORT != 0,
            host_mode: v.flags & SVC_F_HOST_MODE != 0,
            refusing: v.flags & SVC_F_REFUSE != 0,
        });
    }
    let mut backends: BTreeMap<u32, (u32, BeValue)> = BTreeMap::new();
    for id in 1..MAX_BACKENDS {
        let b = be.get(&id, 0).map_err(|e| DataplaneError::map(names::BACKEND, e))?;
        if b.flags & BE_F_ACTIVE != 0 {
            backends.insert(id, (b.svc_id, b));
        }
    }
    let mut out = Vec::new();
    for (id, mut frontends) in by_id {
        frontends.sort_by(|a, b| a.address.cmp(&b.address));
        let st = state.get(&id, 0).map_err(|e| DataplaneError::map(names::STATE, e))?;
        let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
        if st.table_all != 0 && st.table_all.saturating_add(st.size_all) <= SLOT_POOL {
            for i in st.table_all..st.table_all + st.size_all {
                let b = slot.get(&i, 0).map_err(|e| DataplaneError::map(names::SLOT, e))?;
                *slots.entry(b).or_default() += 1;
            }
        }
        let views: Vec<BackendView> = backends
            .iter()
            .filter(|(_, (svc, _))| *svc == id)
            .map(|(&bid, (_, b))| BackendView {
                id: bid,
                addr: b.addr.ip(),
                local: b.flags & BE_F_LOCAL != 0,
                canary: b.flags & BE_F_CANARY != 0,
                slots: slots.get(&bid).copied().unwrap_or(0),
            })
            .collect();
        let canary_slots: u32 = views.iter().filter(|b| b.canary).map(|b| b.slots).sum();
        out.push(ServiceView {
            id,
            frontends,
            backends: views,
            table_size: st.size_all,
            canary_share: if st.size_all == 0 {
                0.0
            } else {
                f64::from(canary_slots) * 100.0 / f64::from(st.size_all)
            },
            rate_per_sec: st.rate_per_sec,
            rate_burst: st.rate_burst,
        });
    }
    Ok(out)
}

/// One tc connection-tracking entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowView {
    /// `reply` (backend → client) or `forward` (client → backend).
    pub direction: &'static str,
    pub proto: &'static str,
    /// The tuple as it arrives: `a:p -> b:q`.
    pub from: String,
    /// What it is rewritten to.
    pub to: String,
    pub service_id: u32,
    pub backend_id: u32,
    pub snat: bool,
    /// The flow's TCP state as its forward entry records it (`syn-sent`,
    /// `established`, `half-closed`, `closed`; `udp`); `-` on reply entries.
    pub state: &'static str,
    /// Milliseconds since a packet last used the entry (as the programs last
    /// wrote it), from the kernel's monotonic clock.
    pub idle_ms: u64,
}

/// The tc flows of the data plane pinned in `dir` (a snapshot).
pub fn flows(dir: &Path) -> Result<Vec<FlowView>, DataplaneError> {
    let ct: HashMap<MapData, CtKey, CtValue> = hash(dir, names::CT, false)?;
    let now = super::ct::monotonic_ns();
    let mut out: Vec<FlowView> = entries(&ct, names::CT)?
        .into_iter()
        .map(|(k, v)| FlowView {
            direction: if v.flags & CT_F_REPLY != 0 { "reply" } else { "forward" },
            proto: proto_name(k.proto),
            from: format!(
                "{}:{} -> {}:{}",
                k.saddr.ip(),
                k.sport.get(),
                k.daddr.ip(),
                k.dport.get()
            ),
            to: format!(
                "{}:{} -> {}:{}",
                v.saddr.ip(),
                v.sport.get(),
                v.daddr.ip(),
                v.dport.get()
            ),
            service_id: v.svc_id,
            backend_id: v.backend_id,
            snat: v.flags & CT_F_SNAT != 0,
            state: if v.flags & CT_F_REPLY != 0 {
                "-"
            } else {
                super::ct::FlowState::of(k.proto, v.flags).as_str()
            },
            idle_ms: now.saturating_sub(v.last_seen_ns) / 1_000_000,
        })
        .collect();
    out.sort_by(|a, b| (a.service_id, &a.from).cmp(&(b.service_id, &b.from)));
    Ok(out)
}

/// One token bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketView {
    pub service_id: u32,
    /// The client's address, or `netns:<cookie>` for an unbound local socket.
    pub client: String,
    /// Tokens left at the last refill (fractional).
    pub tokens: f64,
    /// Milliseconds since the bucket was last refilled.
    pub idle_ms: u64,
}

/// The token buckets of the data plane pinned in `dir`.
pub fn buckets(dir: &Path) -> Result<Vec<BucketView>, DataplaneError> {
    let rl: HashMap<MapData, RlKey, RlValue> = hash(dir, names::RATE_LIMIT, true)?;
    let now = super::ct::monotonic_ns();
    let mut out: Vec<BucketView> = entries(&rl, names::RATE_LIMIT)?
        .into_iter()
        .map(|(k, v)| BucketView {
            service_id: k.svc_id,
            client: if k.client == [0; 4] {
                format!("netns:{}", k.netns)
            } else {
                Ipv4Addr::from(k.client).to_string()
            },
            tokens: (v.tokens as i64).max(0) as f64 / RL_TOKEN as f64,
            idle_ms: now.saturating_sub(v.last_ns) / 1_000_000,
        })
        .collect();
    out.sort_by(|a, b| (a.service_id, &a.client).cmp(&(b.service_id, &b.client)));
    Ok(out)
}

/// Counters of one service, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CounterView {
    pub service_id: u32,
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
    /// reason → count
    pub drops: BTreeMap<&'static str, u64>,
    pub backends: Vec<BackendCounterView>,
}

/// Counters of one backend, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendCounterView {
    pub id: u32,
    pub addr: Ipv4Addr,
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// The counters of every service of the data plane pinned in `dir`.
pub fn counters(dir: &Path) -> Result<Vec<CounterView>, DataplaneError> {
    let svcc: PerCpuArray<MapData, SvcCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, names::SVC_COUNTERS)?))
            .map_err(|e| DataplaneError::map(names::SVC_COUNTERS, e))?;
    let bec: PerCpuArray<MapData, BackendCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, names::BACKEND_COUNTERS)?))
            .map_err(|e| DataplaneError::map(names::BACKEND_COUNTERS, e))?;
    let mut out = Vec::new();
    for s in services(dir)? {
        let per_cpu = svcc
            .get(&s.id, 0)
            .map_err(|e| DataplaneError::map(names::SVC_COUNTERS, e))?;
        let mut view = CounterView {
            service_id: s.id,
            connections: 0,
            packets: 0,
            bytes: 0,
            drops: BTreeMap::new(),
            backends: Vec::new(),
        };
        let mut drops = [0u64; DROP_REASONS];
        for c in per_cpu.iter() {
            view.connections += c.conns;
            view.packets += c.packets;
            view.bytes += c.bytes;
            for (d, n) in drops.iter_mut().zip(c.drops) {
                *d += n;
            }
        }
        view.drops = DROP_REASON_NAMES.iter().copied().zip(drops).collect();
        for b in &s.backends {
            let per_cpu = bec
                .get(&b.id, 0)
                .map_err(|e| DataplaneError::map(names::BACKEND_COUNTERS, e))?;
            let mut bv = BackendCounterView {
                id: b.id,
                addr: b.addr,
                connections: 0,
                packets: 0,
                bytes: 0,
            };
            for c in per_cpu.iter() {
                bv.connections += c.conns;
                bv.packets += c.packets;
                bv.bytes += c.bytes;
            }
            view.backends.push(bv);
        }
        out.push(view);
    }
    Ok(out)
}

/// The active "all backends" Maglev table of service `svc_id`: slot → backend id.
pub fn table(dir: &Path, svc_id: u32) -> Result<Vec<u32>, DataplaneError> {
    let state: Array<MapData, SvcState> = array(dir, names::STATE)?;
    let slot: Array<MapData, u32> = array(dir, names::SLOT)?;
    let st = state
        .get(&svc_id, 0)
        .map_err(|e| DataplaneError::map(names::STATE, e))?;
    if st.table_all == 0 || st.table_all.saturating_add(st.size_all) > SLOT_POOL {
        return Ok(Vec::new());
    }
    (st.table_all..st.table_all + st.size_all)
        .map(|i| slot.get(&i, 0).map_err(|e| DataplaneError::map(names::SLOT, e)))
        .collect()
}

/// Kernel memory charged to the maps pinned in `dir` (the `memlock` of each map
/// as /proc reports it for an open map), in bytes, by map name.
pub fn locked_memory(dir: &Path) -> Result<BTreeMap<String, u64>, DataplaneError> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| DataplaneError::io(format!("read {}", dir.display()), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("link_") {
            continue;
        }
        let Ok(map) = MapData::from_pin(e.path()) else { continue };
        let fdinfo = format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd());
        let text = std::fs::read_to_string(&fdinfo).map_err(|err| DataplaneError::io(format!("read {fdinfo}"), err))?;
        if let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
        {
            out.insert(name, v);
        }
    }
    Ok(out)
}
