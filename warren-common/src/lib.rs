//! Types and constants shared with the eBPF programs in `warren-ebpf`: map keys and
//! values, map names and limits. Every type here mirrors a C struct in
//! `warren-ebpf/include/warren.h` byte for byte (a test in `warren-ebpf` compares
//! them with the compiled object's BTF); nothing here does I/O. Loading and
//! filling the maps is `warren::dataplane`.
//!
//! Byte order is part of the field type: [`Be16`] and [`Be32`] hold network order,
//! every plain integer is host order.

#![no_std]

use core::{fmt, net::Ipv4Addr};

/// The highest version of a map layout. Each pinned map's name carries the
/// version of its own layout (`_v<N>`), so that a daemon never reads a map
/// written with another layout; a changed layout is a new map beside the old one,
/// which is retired once the programs use the new one ([`map_names::RETIRED`]).
pub const LAYOUT_VERSION: u32 = 2;

/// Service ids are `0..MAX_SERVICES`.
pub const MAX_SERVICES: u32 = 16384;
/// Capacity of the service map: (address, port, protocol) entries.
pub const MAX_SVC_ENTRIES: u32 = 65536;
/// Backend ids are `1..MAX_BACKENDS`; 0 means "no backend".
pub const MAX_BACKENDS: u32 = 65536;
/// Table kinds: [`KIND_ALL`] and [`KIND_LOCAL`].
pub const KINDS: u32 = 2;
/// Entries of the slot pool (`warren_slot_v2`) from which every service's
/// Maglev tables are allocated (offset 0 means "no table").
pub const SLOT_POOL: u32 = 1 << 20;
/// Capacity of the node address map.
pub const MAX_NODE_ADDRS: u32 = 64;
/// Capacity of the per-socket maps (reverse translation, UDP affinity).
pub const SOCK_ENTRIES: u32 = 65536;
/// Capacity of the token-bucket map.
pub const RL_ENTRIES: u32 = 65536;
/// Largest rate limit, new connections (UDP flows) per second per client.
pub const RL_MAX_RATE: u32 = 1_000_000;
/// Largest burst of a rate limit.
pub const RL_MAX_BURST: u32 = 1_000_000;
/// Capacity of the tc connection-tracking map (two entries per flow; a plain
/// hash: a full map refuses new flows, counted as `ct_full`).
pub const CT_ENTRIES: u32 = 131072;
/// Capacity of the map of backends whose sockets are being destroyed.
pub const KILL_ENTRIES: u32 = 4096;
/// Size in bytes of the events ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// [`Event::kind`]: a refused connection or dropped packet; `reason` is a `DROP_*`.
pub const EVENT_DROP: u32 = 1;

/// Slot table of every backend of a service.
pub const KIND_ALL: u32 = 0;
/// Slot table of the backends on this node (`mode=host` ports).
pub const KIND_LOCAL: u32 = 1;

/// [`SvcValue::flags`]: pick from local backends only.
pub const SVC_F_HOST_MODE: u8 = 0x01;
/// [`SvcValue::flags`]: a published port on the node's addresses.
pub const SVC_F_NODEPORT: u8 = 0x02;
/// [`SvcValue::flags`]: port 0, any port goes to the same port on the backend.
pub const SVC_F_WILDCARD: u8 = 0x04;
/// [`SvcValue::flags`]: a removed service's address: new connections are refused
/// (ECONNREFUSED) until the daemon removes the entry.
pub const SVC_F_REFUSE: u8 = 0x08;

/// [`SvcState::flags`]: new connections pick from the local table while it has
/// backends, then from the table of all (`--endpoint-locality prefer-local`).
pub const SVC_S_PREFER_LOCAL: u32 = 0x01;

/// [`Backend::flags`]: the id is in use.
pub const BE_F_ACTIVE: u8 = 0x01;
/// [`Backend::flags`]: the backend runs on this node (no SNAT on the tc path).
pub const BE_F_LOCAL: u8 = 0x02;
/// [`Backend::flags`]: the backend is in the canary group.
pub const BE_F_CANARY: u8 = 0x04;

/// [`CtValue::flags`]: the entry translates the reply direction.
pub const CT_F_REPLY: u32 = 0x01;
/// [`CtValue::flags`]: the source was rewritten to the node address.
pub const CT_F_SNAT: u32 = 0x02;
/// [`CtValue::flags`], flow state (in the forward entry): a packet came back.
pub const CT_S_REPLIED: u32 = 0x10;
/// Flow state: the client sent a FIN.
pub const CT_S_FIN_FWD: u32 = 0x20;
/// Flow state: the backend sent a FIN.
pub const CT_S_FIN_REPLY: u32 = 0x40;
/// Flow state: either side sent a RST.
pub const CT_S_RST: u32 = 0x80;
/// How often the programs rewrite [`CtValue::last_seen_ns`] at most.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Drop reason: over the service's rate limit.
pub const DROP_RATE_LIMITED: usize = 0;
/// Drop reason: the service has no (local, for `mode=host`) backend.
pub const DROP_NO_BACKEND: usize = 1;
/// Drop reason: the connection-tracking map refused an entry.
pub const DROP_CT_FULL: usize = 2;
/// Drop reason: no free source port for SNAT.
pub const DROP_SNAT_EXHAUSTED: usize = 3;
/// Drop reason (tc): no route to the backend, or back to the client.
pub const DROP_NO_ROUTE: usize = 4;
/// Number of drop reasons.
pub const DROP_REASONS: usize = 5;
/// Names of the drop reasons, indexed by reason (metric label values).
pub const DROP_REASON_NAMES: [&str; DROP_REASONS] =
    ["rate_limited", "no_backend", "ct_full", "snat_exhausted", "no_route"];
/// Drop reasons of layout v1 of the counters (`warren_svcc_v1`).
pub const DROP_REASONS_V1: usize = 4;

/// Map names, exactly as in the C object and under the pin directory.
pub mod map_names {
    /// (address, port, protocol) → service.
    pub const SVC: &str = "warren_svc_v1";
    /// service id → active Maglev tables, backend counts, rate limit.
    pub const STATE: &str = "warren_state_v2";
    /// The slot pool: offset + hash % size → backend id.
    pub const SLOT: &str = "warren_slot_v2";
    /// backend id → backend.
    pub const BACKEND: &str = "warren_be_v1";
    /// (socket cookie, backend) → service address, for replies and getpeername:
    /// unconnected UDP, and sockets connected where there is no socket storage.
    pub const REVNAT: &str = "warren_rnat_v1";
    /// Socket-local storage of connected sockets: backend → service address.
    pub const SOCK_STATE: &str = "warren_sks_v1";
    /// (socket cookie, service address) → backend, for unconnected UDP.
    pub const AFFINITY: &str = "warren_aff_v2";
    /// (service, client) → token bucket.
    pub const RATE_LIMIT: &str = "warren_rl_v2";
    /// tc connection tracking (a plain hash, GC by the daemon).
    pub const CT: &str = "warren_ct_v2";
    /// The node's addresses.
    pub const NODE_ADDR: &str = "warren_naddr_v1";
    /// Per-service counters (per CPU).
    pub const SVC_COUNTERS: &str = "warren_svcc_v2";
    /// Per-backend counters (per CPU).
    pub const BACKEND_COUNTERS: &str = "warren_bec_v1";
    /// Backends whose sockets are being destroyed.
    pub const KILL: &str = "warren_kill_v1";
    /// Connection outcomes per backend address (per CPU, LRU).
    pub const BACKEND_OUTCOMES: &str = "warren_beo_v1";
    /// Ring buffer of [`Event`](super::Event)s.
    pub const EVENTS: &str = "warren_event_v1";
    /// Pins of earlier layouts: unpinned once the programs use their successors.
    /// `warren_rl_v1`: milli-tokens, network-order client (its buckets are not
    /// carried over: new buckets start full).
    /// `warren_state_v1` and `warren_slot_v1`: 256-slot tables, migrated to Maglev
    /// tables at start.
    /// `warren_ct_v1`: an LRU hash (flows copied at start, state "replied").
    /// `warren_svcc_v1`: four drop reasons (counters copied at start).
    /// `warren_aff_v1`: no idle time (entries copied at start, as just seen).
    pub const RETIRED: [&str; 6] = [
        "warren_rl_v1",
        "warren_state_v1",
        "warren_slot_v1",
        "warren_ct_v1",
        "warren_svcc_v1",
        "warren_aff_v1",
    ];
    /// Every map, in a stable order.
    pub const ALL: [&str; 15] = [
        SVC,
        STATE,
        SLOT,
        BACKEND,
        REVNAT,
        SOCK_STATE,
        AFFINITY,
        RATE_LIMIT,
        CT,
        NODE_ADDR,
        SVC_COUNTERS,
        BACKEND_COUNTERS,
        KILL,
        BACKEND_OUTCOMES,
        EVENTS,
    ];
}

/// A 16-bit value in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Be16(u16);

impl Be16 {
    /// From a host-order value.
    pub const fn new(host: u16) -> Self {
        Self(host.to_be())
    }
    /// The host-order value.
    pub const fn get(self) -> u16 {
        u16::from_be(self.0)
    }
}

impl fmt::Debug for Be16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// A 32-bit value (an IPv4 address) in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Be32(u32);

impl Be32 {
    /// From a host-order value.
    pub const fn new(host: u32) -> Self {
        Self(host.to_be())
    }
    /// The host-order value.
    pub const fn get(self) -> u32 {
        u32::from_be(self.0)
    }
    /// The address `a`.
    pub const fn from_ip(a: Ipv4Addr) -> Self {
        Self::new(a.to_bits())
    }
    /// As an address.
    pub const fn ip(self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.get())
    }
}

impl From<Ipv4Addr> for Be32 {
    fn from(a: Ipv4Addr) -> Self {
        Self::from_ip(a)
    }
}

impl fmt::Debug for Be32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip())
    }
}

/// One field of a shared struct: its name (the same in C), offset and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLayout {
    /// The field's name in both languages.
    pub name: &'static str,
    /// Byte offset.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// A Rust mirror of a C struct of `warren.h`.
pub trait SharedLayout {
    /// The C struct's name (`struct <C_NAME>`).
    const C_NAME: &'static str;
    /// Every field, in declaration order.
    const FIELDS: &'static [FieldLayout];
    /// `size_of::<Self>()`.
    const SIZE: usize;
}

macro_rules! shared_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident = $cname:literal {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl SharedLayout for $name {
            const C_NAME: &'static str = $cname;
            const FIELDS: &'static [FieldLayout] = &[
                $( FieldLayout {
                    name: stringify!($field),
                    offset: core::mem::offset_of!($name, $field),
                    size: core::mem::size_of::<$ty>(),
                }, )*
            ];
            const SIZE: usize = core::mem::size_of::<$name>();
        }

        // SAFETY: repr(C), every field is an integer or an array of integers, and
        // the padding is explicit, so every byte pattern is a valid value.
        #[cfg(feature = "aya")]
        unsafe impl aya::Pod for $name {}
    };
}

shared_struct! {
    /// Key of `warren_svc_v1`. `addr` 0 = any node address (a published port);
    /// `port` 0 = wildcard.
    pub struct SvcKey = "warren_svc_key" {
        pub addr: Be32,
        pub port: Be16,
        pub proto: u8,
        pub pad: u8,
    }
}

shared_struct! {
    /// Value of `warren_svc_v1`.
    pub struct SvcValue = "warren_svc_value" {
        pub svc_id: u32,
        /// 0 = keep the destination port.
        pub target_port: Be16,
        /// `SVC_F_*`.
        pub flags: u8,
        pub pad: u8,
    }
}

shared_struct! {
    /// Value of `warren_state_v2[svc_id]`; updating it flips the service to
    /// other Maglev tables in one map update.
    pub struct SvcState = "warren_svc_state" {
        /// Offset in the slot pool of the table of all backends; 0 = none.
        pub table_all: u32,
        /// Its size (a prime, or 1 for a single backend).
        pub size_all: u32,
        /// Offset of the table of this node's backends; 0 = none (no host-mode port).
        pub table_local: u32,
        pub size_local: u32,
        pub backends_all: u16,
        pub backends_local: u16,
        /// New connections (UDP flows) per second per client; 0 = no limit.
        pub rate_per_sec: u32,
        pub rate_burst: u32,
        /// Reserved (0).
        pub flags: u32,
    }
}

impl SvcState {
    /// (offset, size) of each kind's table, indexed by kind.
    pub const fn tables(&self) -> [(u32, u32); KINDS as usize] {
        [(self.table_all, self.size_all), (self.table_local, self.size_local)]
    }

    /// The slot-pool ranges (offset, size) this state uses.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, u32)> {
        self.tables().into_iter().filter(|&(off, size)| off != 0 && size != 0)
    }
}

shared_struct! {
    /// Value of `warren_be_v1[backend_id]`.
    pub struct Backend = "warren_backend" {
        pub addr: Be32,
        pub svc_id: u32,
        /// `BE_F_*`.
        pub flags: u8,
        pub pad: [u8; 3],
    }
}

shared_struct! {
    /// Key of `warren_rnat_v1` and `warren_aff_v2`.
    pub struct SockKey = "warren_sock_key" {
        pub cookie: u64,
        pub addr: Be32,
        pub port: Be16,
        pub pad: u16,
    }
}

shared_struct! {
    /// Value of `warren_rnat_v1`: the service address the application sees.
    pub struct RevNat = "warren_revnat" {
        pub addr: Be32,
        pub port: Be16,
        pub pad: u16,
    }
}

shared_struct! {
    /// Value of `warren_sks_v1`, the socket-local storage of a connected socket:
    /// its backend and the service address the application sees.
    pub struct SockState = "warren_sock_state" {
        pub backend_addr: Be32,
        pub backend_port: Be16,
        pub pad: u16,
        pub svc_addr: Be32,
        pub svc_port: Be16,
        pub pad2: u16,
    }
}

shared_struct! {
    /// Value of `warren_aff_v2`: an unconnected UDP socket's flow to a service.
    pub struct Affinity = "warren_affinity" {
        pub backend_id: u32,
        pub svc_id: u32,
        /// CLOCK_MONOTONIC of the flow's last datagram, to an eighth of the UDP
        /// timeout.
        pub last_ns: u64,
    }
}

shared_struct! {
    /// Key of `warren_rl_v2`: the client is the source address, or (address
    /// 0.0.0.0) the netns cookie of an unbound socket.
    pub struct RlKey = "warren_rl_key" {
        pub svc_id: u32,
        /// An IPv4 address, octets in order.
        pub client: [u8; 4],
        pub netns: u64,
    }
}

/// Nano-tokens per token in [`RlValue::tokens`].
pub const RL_TOKEN: u64 = 1_000_000_000;

shared_struct! {
    /// Value of `warren_rl_v2`.
    pub struct RlValue = "warren_rl_value" {
        /// Nano-tokens ([`RL_TOKEN`] per token); transiently negative (as i64)
        /// while a CPU takes a token that is not there.
        pub tokens: u64,
        /// `bpf_ktime_get_ns()` up to which elapsed time became tokens.
        pub last_ns: u64,
    }
}

shared_struct! {
    /// Key of `warren_ct_v2` (and v1): a packet's tuple as it arrives.
    pub struct CtKey = "warren_ct_key" {
        pub saddr: Be32,
        pub daddr: Be32,
        pub sport: Be16,
        pub dport: Be16,
        pub proto: u8,
        pub pad: [u8; 3],
    }
}

shared_struct! {
    /// Value of `warren_ct_v2` (and v1): the tuple the packet is rewritten to.
    pub struct CtValue = "warren_ct_value" {
        pub saddr: Be32,
        pub daddr: Be32,
        pub sport: Be16,
        pub dport: Be16,
        pub svc_id: u32,
        /// Forward entries: the backend, whose address is `daddr`.
        pub backend_id: u32,
        /// `CT_F_*` and `CT_S_*` (layout v1: a `u8` and padding, the same bytes).
        pub flags: u32,
        /// `bpf_ktime_get_ns()` of the last packet, to [`CT_REFRESH_NS`].
        pub last_seen_ns: u64,
    }
}

shared_struct! {
    /// Value of `warren_naddr_v1` (keyed by the address, a [`Be32`]).
    pub struct NodeAddr = "warren_node_addr" {
        pub ifindex: u32,
        pub flags: u32,
    }
}

shared_struct! {
    /// Value of `warren_svcc_v2[svc_id]`, per CPU.
    pub struct SvcCounters = "warren_svc_counters" {
        pub conns: u64,
        pub packets: u64,
        pub bytes: u64,
        /// Indexed by `DROP_*`.
        pub drops: [u64; DROP_REASONS],
    }
}

shared_struct! {
    /// Value of `warren_bec_v1[backend_id]`, per CPU.
    pub struct BackendCounters = "warren_backend_counters" {
        pub conns: u64,
        pub packets: u64,
        pub bytes: u64,
    }
}

shared_struct! {
    /// Key of `warren_beo_v1`.
    pub struct OutcomeKey = "warren_outcome_key" {
        /// An IPv4 address, octets in order.
        pub addr: [u8; 4],
    }
}

shared_struct! {
    /// Value of `warren_beo_v1[addr]`, per CPU: how connections to the backend ended.
    pub struct BackendOutcomes = "warren_backend_outcomes" {
        pub established: u64,
        pub reset: u64,
        pub refused: u64,
        pub timed_out: u64,
    }
}

shared_struct! {
    /// Key of `warren_kill_v1`; `port` 0 matches any port.
    pub struct KillKey = "warren_kill_key" {
        pub addr: Be32,
        pub port: Be16,
        pub proto: u8,
        pub pad: u8,
    }
}

shared_struct! {
    /// A record of the `warren_event_v1` ring buffer.
    pub struct Event = "warren_event" {
        pub ts_ns: u64,
        /// `EVENT_*`.
        pub kind: u32,
        pub svc_id: u32,
        /// The client's address (0 for an unbound local socket).
        pub addr: Be32,
        /// The service port the client used.
        pub port: Be16,
        pub proto: u8,
        /// `DROP_*` for [`EVENT_DROP`].
        pub reason: u8,
        /// 0 = socket (connect/sendmsg), 1 = tc.
        pub source: u8,
        pub pad: [u8; 7],
    }
}

// SAFETY: repr(transparent) over an integer.
#[cfg(feature = "aya")]
unsafe impl aya::Pod for Be32 {}
// SAFETY: repr(transparent) over an integer.
#[cfg(feature = "aya")]
unsafe impl aya::Pod for Be16 {}

/// Every shared struct: (C name, size, fields), for the layout test.
pub const SHARED_LAYOUTS: [(&str, usize, &[FieldLayout]); 19] = [
    layout_of::<SvcKey>(),
    layout_of::<SvcValue>(),
    layout_of::<SvcState>(),
    layout_of::<Backend>(),
    layout_of::<SockKey>(),
    layout_of::<RevNat>(),
    layout_of::<SockState>(),
    layout_of::<Affinity>(),
    layout_of::<RlKey>(),
    layout_of::<RlValue>(),
    layout_of::<CtKey>(),
    layout_of::<CtValue>(),
    layout_of::<NodeAddr>(),
    layout_of::<SvcCounters>(),
    layout_of::<BackendCounters>(),
    layout_of::<KillKey>(),
    layout_of::<OutcomeKey>(),
    layout_of::<BackendOutcomes>(),
    layout_of::<Event>(),
];

const fn layout_of<T: SharedLayout>() -> (&'static str, usize, &'static [FieldLayout]) {
    (T::C_NAME, T::SIZE, T::FIELDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_in_the_type() {
        assert_eq!(Be16::new(0x1234).0.to_ne_bytes(), [0x12, 0x34]);
        assert_eq!(Be32::from_ip(Ipv4Addr::new(10, 1, 2, 3)).0.to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(
            Be32::from_ip(Ipv4Addr::new(10, 1, 2, 3)).ip(),
            Ipv4Addr::new(10, 1, 2, 3)
        );
        assert_eq!(Be16::new(8080).get(), 8080);
    }

    fn version_of(name: &str) -> u32 {
        let (_, v) = name.rsplit_once("_v").unwrap_or_else(|| panic!("{name} has no _v<N>"));
        v.parse().unwrap_or_else(|_| panic!("{name}: _v{v} is not a version"))
    }

    #[test]
    fn map_names_carry_their_layout_version() {
        for name in map_names::ALL.iter().chain(&map_names::RETIRED) {
            assert!(name.starts_with("warren_"), "{name}");
            assert!((1..=LAYOUT_VERSION).contains(&version_of(name)), "{name}");
            // The kernel keeps 15 characters of a map's name.
            assert!(name.len() <= 15, "{name} is longer than BPF_OBJ_NAME_LEN - 1");
        }
        assert!(map_names::ALL.iter().any(|n| version_of(n) == LAYOUT_VERSION));
        // A retired pin is an earlier version of a live map, never a live name.
        for old in map_names::RETIRED {
            assert!(!map_names::ALL.contains(&old), "{old} is live");
            let (stem, _) = old.rsplit_once("_v").unwrap();
            let live = map_names::ALL.iter().find(|n| n.rsplit_once("_v").unwrap().0 == stem);
            assert!(
                live.is_some_and(|n| version_of(n) > version_of(old)),
                "{old} has no successor"
            );
        }
    }
}
