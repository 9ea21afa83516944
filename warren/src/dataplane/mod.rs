//! The node data plane: loads Warren's eBPF programs (socket load balancing at a
//! cgroup v2 root, published ports with tc on the node's interfaces, socket
//! destruction), pins and adopts them, and keeps their maps equal to the desired
//! set of services given to [`Dataplane::sync`]. It does not decide which services
//! or backends exist (the node agent does, from the manager's assignments), nor
//! allocate VIPs, nor configure interfaces and routes.
//!
//! The map layouts are in `warren-common` (mirrors of `warren-ebpf/include/warren.h`);
//! `docs/dataplane.md` describes the design and how to inspect every map.

mod checks;
mod ct;
mod destroy;
mod ebpf;
mod error;
mod events;
mod fake;
pub mod inspect;
mod links;
mod maglev;
mod maps;
mod metrics;
mod migrate;
mod plan;
mod reserved;
mod sys;

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

/// [`DataplaneConfig::refuse_removed`] by default: the DNS TTL of service names
/// (`crate::dns::DEFAULT_TTL`, 5 s).
pub const DEFAULT_REFUSE_REMOVED: Duration = Duration::from_secs(5);

pub use checks::{check_kernel, ensure_bpffs, KernelSupport};
pub use ct::CtTimeouts;
pub use ebpf::EbpfDataplane;
pub use error::DataplaneError;
pub use events::DropEvent;
pub use fake::FakeDataplane;
pub use metrics::register_metrics;
pub use plan::{validate, SkippedService};

/// Where and how the data plane of one node is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// The node's name (part of the default pin directory and of log records).
    pub node_name: String,
    /// Directory on bpffs for the pinned maps and links, e.g.
    /// `/sys/fs/bpf/warren/<node>`; created when missing.
    pub bpffs_dir: PathBuf,
    /// cgroup v2 directory whose processes get socket load balancing.
    pub cgroup_root: PathBuf,
    /// Interfaces whose ingress/egress carry published-port traffic (tc programs).
    pub ifaces: Vec<String>,
    /// The node's addresses: published ports answer on these (and on 127.0.0.0/8
    /// for sockets of the host network namespace).
    pub node_addrs: Vec<Ipv4Addr>,
    /// The host network namespace (a netns file such as `/run/netns/<name>`):
    /// only its sockets reach published ports through 127.0.0.0/8, and only its
    /// sockets are refused a bind to a published port. `None`: the loader's own.
    pub host_netns: Option<PathBuf>,
    /// How long the VIP of a removed service keeps refusing new connections
    /// (ECONNREFUSED) before it disappears: the DNS TTL of service names, so that
    /// a client with a cached answer is refused rather than routed out of the node
    /// untranslated. Zero removes it at once.
    pub refuse_removed: Duration,
    /// How long a tc flow stays tracked after its last packet, by state.
    pub ct_timeouts: CtTimeouts,
    /// How often the daemon removes expired tc flows.
    pub ct_gc_interval: Duration,
    /// Source ports for SNAT on the tc path (first, last): reserved from the
    /// node's ephemeral ports (`net.ipv4.ip_local_reserved_ports`, with every
    /// published port) and never taken while a node socket uses one.
    pub snat_ports: (u16, u16),
}

/// [`DataplaneConfig::snat_ports`] by default: above Linux's default
/// `ip_local_port_range` (32768-60999).
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61000, 65535);
/// [`DataplaneConfig::ct_gc_interval`] by default.
pub const DEFAULT_CT_GC_INTERVAL: Duration = Duration::from_secs(10);

impl DataplaneConfig {
    /// The defaults for `node_name`: pins under `/sys/fs/bpf/warren/<node_name>`,
    /// the cgroup v2 root ([`default_cgroup_root`]), no interfaces, no addresses.
    pub fn new(node_name: impl Into<String>) -> Self {
        let node_name = node_name.into();
        Self {
            bpffs_dir: PathBuf::from("/sys/fs/bpf/warren").join(&node_name),
            node_name,
            cgroup_root: default_cgroup_root(),
            ifaces: Vec::new(),
            node_addrs: Vec::new(),
            host_netns: None,
            refuse_removed: DEFAULT_REFUSE_REMOVED,
            ct_timeouts: CtTimeouts::default(),
            ct_gc_interval: DEFAULT_CT_GC_INTERVAL,
            snat_ports: DEFAULT_SNAT_PORTS,
        }
    }
}

/// The cgroup v2 root: `/sys/fs/cgroup` on a unified hierarchy, otherwise the
/// hybrid layout's `/sys/fs/cgroup/unified`.
pub fn default_cgroup_root() -> PathBuf {
    crate::cgroups::v2_root()
}

/// A transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// Lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Which group a backend belongs to for canary weighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendGroup {
    Stable,
    Canary,
}

/// One task that serves a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The task's address.
    pub addr: Ipv4Addr,
    pub group: BackendGroup,
    /// The task runs on this node: published-port traffic reaches it without SNAT
    /// (the client's address is preserved) and `mode=host` ports use only these.
    pub local: bool,
    /// The task is to stop: it gets no new connections (weight 0) while its
    /// established ones continue and its sockets are left alone, unless the
    /// service has no other backend, when it still takes them rather than
    /// refusing.
    pub draining: bool,
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub protocol: Protocol,
    /// The port the tasks listen on.
    pub target: u16,
    /// The port published on the node's addresses, if any.
    pub published: Option<u16>,
    /// `mode=host`: the published port goes to this node's tasks only.
    pub host_mode: bool,
}

/// A per-client limit of new connections (UDP datagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

/// One service as the data plane should serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Stable small service number chosen by the caller, `0..MAX_SERVICES`.
    pub id: u32,
    pub name: String,
    /// The virtual IP: every port of it (TCP and UDP) goes to the same port of a
    /// backend (Swarm semantics).
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// Healthy backends only; an empty list refuses new connections.
    pub backends: Vec<Backend>,
    /// Percentage (0-100) of new connections that go to the canary group.
    pub canary_weight: u8,
    pub rate_limit: Option<RateLimit>,
    /// New connections go to the local backends while any is in the set, then to
    /// all (`--endpoint-locality prefer-local`); host-mode ports are local-only
    /// regardless.
    pub prefer_local: bool,
}

/// What a [`Dataplane::sync`] left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Invalid or over-limit services, left out of the maps (a service that was
    /// in them before is removed); the others are synced all the same.
    pub skipped: Vec<SkippedService>,
}

/// A node data plane: the maps follow the last complete set of services.
pub trait Dataplane: Send + Sync {
    /// The complete desired set of services; idempotent; only differences touch
    /// the maps. An invalid service is skipped and reported, naming the
    /// offending field; the error is for failures to write the maps.
    fn sync(&self, services: &[ServiceEntry]) -> Result<SyncReport, DataplaneError>;
    /// Attached programs, map fill and counters.
    fn status(&self) -> DataplaneStatus;
}

/// A program and where it is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    pub program: String,
    /// `cgroup:<path>`, `tc-ingress:<iface>`, `tc-egress:<iface>`.
    pub target: String,
    /// The link was adopted from the pin directory rather than created.
    pub adopted: bool,
}

/// How full a map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    pub name: String,
    /// Entries in use (for arrays: the slots Warren uses).
    pub entries: u64,
    pub capacity: u64,
}

/// Drops of new connections or packets, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub rate_limited: u64,
    pub no_backend: u64,
    pub ct_full: u64,
    pub snat_exhausted: u64,
    /// tc: no route to the backend or back to the client.
    pub no_route: u64,
}

impl DropCounters {
    /// (reason label, count) pairs.
    pub fn iter(&self) -> [(&'static str, u64); warren_common::DROP_REASONS] {
        let n = warren_common::DROP_REASON_NAMES;
        [
            (n[warren_common::DROP_RATE_LIMITED], self.rate_limited),
            (n[warren_common::DROP_NO_BACKEND], self.no_backend),
            (n[warren_common::DROP_CT_FULL], self.ct_full),
            (n[warren_common::DROP_SNAT_EXHAUSTED], self.snat_exhausted),
            (n[warren_common::DROP_NO_ROUTE], self.no_route),
        ]
    }

    /// Sum over every reason.
    pub fn total(&self) -> u64 {
        self.iter().iter().map(|(_, v)| v).sum()
    }
}

/// Counters of one service (summed over CPUs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStats {
    pub id: u32,
    pub name: String,
    /// New connections (and new UDP flows) translated.
    pub connections: u64,
    /// Packets seen on the tc path plus datagrams sent through sendmsg.
    pub packets: u64,
    /// Bytes seen on the tc path.
    pub bytes: u64,
    pub drops: DropCounters,
}

/// Counters of one backend (summed over CPUs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStats {
    pub service_id: u32,
    pub service: String,
    pub addr: Ipv4Addr,
    pub canary: bool,
    pub local: bool,
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
    /// How this node's connections to it ended (the sockops program's counters).
    pub outcomes: warren_common::BackendOutcomes,
}

/// What [`Dataplane::status`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneStatus {
    pub node_name: String,
    pub programs: Vec<AttachedProgram>,
    pub maps: Vec<MapFill>,
    pub services: Vec<ServiceStats>,
    pub backends: Vec<BackendStats>,
    /// Sockets to removed backends are destroyed (bpf_sock_destroy, Linux 6.5+).
    pub sock_destroy: bool,
    /// The most recent drops reported through the events ring buffer (oldest first).
    pub recent_drops: Vec<DropEvent>,
    /// Services the last sync left out, and why.
    pub skipped: Vec<SkippedService>,
    /// Problems met while reading the status (a map that could not be read).
    pub errors: Vec<String>,
}
