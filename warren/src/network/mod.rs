//! Container networking of one node: its Linux bridge, a network namespace and veth
//! per task, IPAM of the node's subnet, per-task hosts/resolv.conf files, native
//! routes to peer nodes' subnets and outbound masquerade. Not WireGuard, not service
//! load balancing (the eBPF data plane), not the DNS server.
//!
//! Everything is done through netlink in the network namespace of the thread that
//! created the [`NetlinkNetwork`] (the daemon's; in tests, a simulated node's), except
//! the one masquerade rule, which `nft` installs. The agent talks to the
//! [`NetworkManager`] trait; [`FakeNetwork`] stands in for it in unit tests.
//!
//! Task namespaces are files `<netns_dir>/<netns_prefix><task id>` (by default
//! `/run/netns/warren-<node id>-<task id>`, so `ip netns exec` finds them), each with
//! `eth0` (the task address, default route via the gateway) and `lo`. The host end of
//! the veth pair is `wv` + 12 hex digits of a hash of the namespace name, on the bridge.

mod error;
mod etc_files;
mod fake;
mod ipam;
mod mtu;
mod netlink;
pub(crate) mod netns;
mod nft;
mod rtnl;
mod sock_diag;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

pub use error::NetworkError;
pub(crate) use error::{nl_errno, nl_io};
pub use etc_files::{hosts_content, resolv_conf_content, write_etc_files, DnsConfig, EtcFiles};
pub use fake::{FakeCall, FakeNetwork};
pub use ipam::{gateway_of, validate_subnet, Ipam, IPAM_FILE};
pub use netlink::NetlinkNetwork;
pub use sock_diag::accepted_connections;

/// The bridge name unless configured otherwise.
pub const DEFAULT_BRIDGE: &str = "warren0";
/// Where task namespace files go unless configured otherwise (iproute2's directory).
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";
/// The nftables table Warren owns (family `ip`).
pub const DEFAULT_NFT_TABLE: &str = "warren";
/// The route protocol number that marks routes Warren added (`ip route show proto 87`).
/// Unassigned in iproute2's rt_protos; 0-4 are the kernel's own.
pub const RTPROT_WARREN: u8 = 87;
/// The name of the task end of every veth pair, inside the task's namespace.
pub const TASK_IFNAME: &str = "eth0";

/// How one node's network is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The node's bridge, created if missing (default `warren0`).
    pub bridge: String,
    /// The node's subnet of the cluster CIDR; its first address is the gateway.
    pub subnet: Ipv4Net,
    /// The whole cluster CIDR: traffic to it is not masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// Directory of the IPAM state (`ipam.redb`).
    pub state_dir: PathBuf,
    /// Directory of task namespace files.
    pub netns_dir: PathBuf,
    /// Prefix of this node's namespace files in `netns_dir`. Nodes sharing a machine
    /// need prefixes that are not prefixes of one another (the default embeds the
    /// fixed-length node id), or `list` and `cleanup_node` would see each other's.
    pub netns_prefix: String,
    /// nftables table (family ip) for the masquerade rule, owned wholly by Warren.
    pub nft_table: String,
    /// Install the outbound masquerade rule.
    pub masquerade: bool,
    /// Route protocol that marks Warren's peer routes.
    pub route_protocol: u8,
    /// The MTU of both ends of every task's veth (the WireGuard mesh's); `None`
    /// leaves the kernel's default (1500).
    pub mtu: Option<u32>,
}

impl NetworkConfig {
    /// The defaults for node `node_id`: bridge `warren0`, namespaces
    /// `/run/netns/warren-<node_id>-<task>`, table `ip warren`, masquerade on.
    pub fn new(node_id: &str, subnet: Ipv4Net, cluster_cidr: Ipv4Net, state_dir: impl Into<PathBuf>) -> NetworkConfig {
        NetworkConfig {
            bridge: DEFAULT_BRIDGE.to_string(),
            subnet,
            cluster_cidr,
            state_dir: state_dir.into(),
            netns_dir: PathBuf::from(DEFAULT_NETNS_DIR),
            netns_prefix: format!("warren-{node_id}-"),
            nft_table: DEFAULT_NFT_TABLE.to_string(),
            masquerade: true,
            route_protocol: RTPROT_WARREN,
            mtu: None,
        }
    }

    /// The gateway address (on the bridge): the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.subnet)
    }

    /// One clear error for the first bad field.
    pub fn validate(&self) -> Result<(), NetworkError> {
        validate_ifname("bridge", &self.bridge)?;
        validate_subnet("subnet", self.subnet)?;
        if self.cluster_cidr.trunc() != self.cluster_cidr {
            return Err(NetworkError::invalid(
                "cluster_cidr",
                format!("{} has host bits set", self.cluster_cidr),
            ));
        }
        if !self.cluster_cidr.contains(&self.subnet) {
            return Err(NetworkError::invalid(
                "subnet",
                format!("{} is not inside the cluster CIDR {}", self.subnet, self.cluster_cidr),
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(NetworkError::invalid("state_dir", "must not be empty"));
        }
        if !self.netns_dir.is_absolute() {
            return Err(NetworkError::invalid(
                "netns_dir",
                format!("{} is not an absolute path", self.netns_dir.display()),
            ));
        }
        if self.netns_prefix.is_empty() || self.netns_prefix.len() > 100 || !self.netns_prefix.chars().all(is_name_char)
        {
            return Err(NetworkError::invalid(
                "netns_prefix",
                format!(
                    "{:?} must be 1 to 100 letters, digits, '-', '_' or '.'",
                    self.netns_prefix
                ),
            ));
        }
        let t = &self.nft_table;
        if t.is_empty()
            || t.len() > 32
            || !t.starts_with(|c: char| c.is_ascii_alphabetic())
            || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(NetworkError::invalid(
                "nft_table",
                format!("{t:?} must be 1 to 32 letters, digits or '_', starting with a letter"),
            ));
        }
        if let Some(m) = self.mtu {
            if !(576..=65535).contains(&m) {
                return Err(NetworkError::invalid("mtu", format!("{m} is outside 576 to 65535")));
            }
        }
        if self.route_protocol <= 4 {
            return Err(NetworkError::invalid(
                "route_protocol",
                format!(
                    "{} is reserved for the kernel (0-4); pick another, e.g. {RTPROT_WARREN}",
                    self.route_protocol
                ),
            ));
        }
        Ok(())
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// A Linux interface name: 1 to 15 bytes, no '/', ':' or whitespace.
pub(crate) fn validate_ifname(field: &'static str, name: &str) -> Result<(), NetworkError> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || !c.is_ascii())
    {
        return Err(NetworkError::invalid(
            field,
            format!("{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"),
        ));
    }
    Ok(())
}

/// Task ids become file names: 1 to 128 letters, digits, '-', '_' or '.', starting
/// with a letter or digit.
pub fn validate_task_id(task_id: &str) -> Result<(), NetworkError> {
    if task_id.is_empty()
        || task_id.len() > 128
        || !task_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !task_id.chars().all(is_name_char)
    {
        return Err(NetworkError::invalid(
            "task_id",
            format!("{task_id:?} must be 1 to 128 letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ));
    }
    Ok(())
}

/// The host end of a task's veth pair: `wv` + 12 hex digits of SHA-256 of the
/// namespace file name, within the 15-byte limit and stable across restarts.
pub fn host_veth_name(netns_prefix: &str, task_id: &str) -> String {
    let digest = Sha256::digest(format!("{netns_prefix}{task_id}").as_bytes());
    format!("wv{}", &hex::encode(digest)[..12])
}

/// What a task's runtime needs to join its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNetwork {
    pub task_id: String,
    /// The namespace file the runtime joins (an OCI `network` namespace path).
    pub netns_path: PathBuf,
    /// The task's address on `eth0`.
    pub address: Ipv4Addr,
    /// Prefix length of the node subnet (the task's on-link network).
    pub prefix_len: u8,
    /// The default gateway: the bridge's address.
    pub gateway: Ipv4Addr,
    /// The host end of the task's veth pair.
    pub host_veth: String,
}

/// A task network found on the node, for adoption or garbage collection: a namespace
/// file, an address allocation, or both (one alone is what a crash left behind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNetworkStatus {
    pub task_id: String,
    pub netns_path: Option<PathBuf>,
    pub address: Option<Ipv4Addr>,
}

/// A route to a peer node's subnet via that node's address.
pub type PeerRoute = (Ipv4Net, Ipv4Addr);

/// The network seam of the agent: reconciled with desired state, every call
/// idempotent.
pub trait NetworkManager: Send + Sync {
    /// The node's subnet.
    fn subnet(&self) -> Ipv4Net;

    /// Creates (or finds) the task's namespace, veth, address and routes.
    fn setup_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<TaskNetwork, NetworkError>>;

    /// Removes the task's veth and namespace file and frees its address; nothing if
    /// they are already gone.
    fn teardown_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), NetworkError>>;

    /// Makes the routing table hold exactly one Warren route per peer subnet.
    fn set_peer_routes<'a>(&'a self, peers: &'a [PeerRoute]) -> BoxFuture<'a, Result<(), NetworkError>>;

    /// Every task network present on the node, by task id.
    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskNetworkStatus>, NetworkError>>;
}

/// Checks a peer list against the node's own subnet and the cluster CIDR; returns it
/// keyed by subnet with duplicates merged.
pub fn validate_peers(
    own: Ipv4Net,
    cluster_cidr: Ipv4Net,
    peers: &[PeerRoute],
) -> Result<BTreeMap<Ipv4Net, Ipv4Addr>, NetworkError> {
    let field = "peer_routes";
    let mut out: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    for &(subnet, via) in peers {
        if subnet.trunc() != subnet {
            return Err(NetworkError::invalid(
                field,
                format!("subnet {subnet} has host bits set"),
            ));
        }
        if !cluster_cidr.contains(&subnet) {
            return Err(NetworkError::invalid(
                field,
                format!("subnet {subnet} is not inside the cluster CIDR {cluster_cidr}"),
            ));
        }
        if subnet.contains(&own) || own.contains(&subnet) {
            return Err(NetworkError::invalid(
                field,
                format!("subnet {subnet} overlaps this node's own subnet {own}"),
            ));
        }
        if via.is_unspecified() || via.is_loopback() || via.is_multicast() || via.is_broadcast() {
            return Err(NetworkError::invalid(
                field,
                format!("{via} (for {subnet}) is not a node address"),
            ));
        }
        if cluster_cidr.contains(&via) {
            return Err(NetworkError::invalid(
                field,
                format!("{via} (for {subnet}) is inside the cluster CIDR {cluster_cidr}; the next hop must be the peer node's own address"),
            ));
        }
        if let Some(prev) = out.get(&subnet) {
            if *prev != via {
                return Err(NetworkError::invalid(
                    field,
                    format!("subnet {subnet} is listed via both {prev} and {via}"),
                ));
            }
            continue;
        }
        if let Some(other) = out.keys().find(|o| o.contains(&subnet) || subnet.contains(*o)) {
            return Err(NetworkError::invalid(
                field,
                format!("subnets {other} and {subnet} overlap"),
            ));
        }
        out.insert(subnet, via);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn cfg() -> NetworkConfig {
        NetworkConfig::new("n1", net("10.88.3.0/24"), net("10.88.0.0/16"), "/tmp/x")
    }

    #[test]
    fn defaults_are_valid() {
        let c = cfg();
        c.validate().unwrap();
        assert_eq!(c.bridge, "warren0");
        assert_eq!(c.netns_prefix, "warren-n1-");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 3, 1));
    }

    type Mutation = Box<dyn Fn(&mut NetworkConfig)>;

    #[test]
    fn bad_config_names_the_field() {
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.bridge = "a-very-long-bridge".into()), "invalid bridge: "),
            (Box::new(|c| c.bridge = "br/0".into()), "invalid bridge: "),
            (Box::new(|c| c.subnet = net("10.88.3.0/31")), "invalid subnet: "),
            (
                Box::new(|c| c.subnet = net("10.99.3.0/24")),
                "invalid subnet: 10.99.3.0/24 is not inside",
            ),
            (
                Box::new(|c| c.cluster_cidr = net("10.88.1.0/16")),
                "invalid cluster_cidr: ",
            ),
            (Box::new(|c| c.netns_dir = "run/netns".into()), "invalid netns_dir: "),
            (Box::new(|c| c.netns_prefix = "a/b".into()), "invalid netns_prefix: "),
            (Box::new(|c| c.nft_table = "1x".into()), "invalid nft_table: "),
            (
                Box::new(|c| c.route_protocol = 4),
                "invalid route_protocol: 4 is reserved",
            ),
            (Box::new(|c| c.state_dir = PathBuf::new()), "invalid state_dir: "),
            (Box::new(|c| c.mtu = Some(100)), "invalid mtu: 100 is outside"),
        ];
        for (mutate, want) in cases {
            let mut c = cfg();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
    }

    #[test]
    fn task_ids_and_veth_names() {
        validate_task_id("abc123xyz").unwrap();
        validate_task_id("web.1-a_b").unwrap();
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(129)] {
            let e = validate_task_id(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid task_id: "), "{e}");
        }
        let a = host_veth_name("warren-n1-", "t1");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("wv"));
        assert_eq!(a, host_veth_name("warren-n1-", "t1"));
        assert_ne!(a, host_veth_name("warren-n2-", "t1"));
        assert_ne!(a, host_veth_name("warren-n1-", "t2"));
    }

    #[test]
    fn peers_are_checked() {
        let own = net("10.88.3.0/24");
        let cl = net("10.88.0.0/16");
        let via: Ipv4Addr = "192.168.1.2".parse().unwrap();
        let ok = validate_peers(
            own,
            cl,
            &[
                (net("10.88.4.0/24"), via),
                (net("10.88.4.0/24"), via),
                (net("10.88.5.0/24"), via),
            ],
        )
        .unwrap();
        assert_eq!(ok.len(), 2);

        let cases: Vec<(Vec<PeerRoute>, &str)> = vec![
            (
                vec![(net("10.88.4.1/24"), via)],
                "subnet 10.88.4.1/24 has host bits set",
            ),
            (vec![(net("10.99.4.0/24"), via)], "is not inside the cluster CIDR"),
            (vec![(net("10.88.3.0/24"), via)], "overlaps this node's own subnet"),
            (
                vec![(net("10.88.4.0/24"), "0.0.0.0".parse().unwrap())],
                "is not a node address",
            ),
            (
                vec![(net("10.88.4.0/24"), "10.88.9.9".parse().unwrap())],
                "is inside the cluster CIDR",
            ),
            (
                vec![
                    (net("10.88.4.0/24"), via),
                    (net("10.88.4.0/24"), "192.168.1.3".parse().unwrap()),
                ],
                "is listed via both",
            ),
            (vec![(net("10.88.4.0/24"), via), (net("10.88.4.0/23"), via)], "overlap"),
        ];
        for (peers, want) in cases {
            let e = validate_peers(own, cl, &peers).unwrap_err().to_string();
            assert!(e.starts_with("invalid peer_routes: "), "{e}");
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
