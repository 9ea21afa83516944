//! From the desired peers to WireGuard and kernel state, and from the observed
//! state to the smallest list of numbered, idempotent steps that reaches it:
//!
//! 1. `Configure`: the device's private key and UDP port;
//! 2. `Peers`: peers added, changed and removed, in one atomic update (so allowed
//!    IPs move from an old key to a new one at once); after this node's own key
//!    changed, a keepalive to each ([`plan_kick`]) so every peer handshakes now;
//! 3. `SetMtu` and 4. `SetUp` on the mesh interface;
//! 5. `Route`: each peer's task subnet via the interface, and a `prohibit` route
//!    for the cluster CIDR so that a subnet without a peer is refused, never sent
//!    in clear on the underlay;
//! 6. `DeleteRoute`: mesh routes no longer wanted.
//!
//! Pure: the reconciler (`mod.rs`) reads the state, calls [`plan_device`] and
//! [`plan_link`], and applies the steps through the seams. Validation of
//! [`MeshPeer`] lives here too.
//!
//! Endpoints: a peer whose last handshake is recent keeps whatever endpoint the
//! device has, which may be one WireGuard learned from the peer's packets (a NAT's
//! public address, a roamed peer). Only a peer with no recent handshake is pointed
//! at a configured endpoint, trying each in turn.
//!
//! Key rotation: a peer listed with a `next_public_key` gets a second entry under
//! that key, with no allowed IPs, beside the current one. The first handshake on it
//! (the rotating node switched keys) moves the subnet to it and drops the old one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net};

use super::backend::{DeviceState, DeviceUpdate, PeerState, PeerUpdate};
use super::error::MeshError;
use super::keys::{PrivateKey, PublicKey};
use super::link::{LinkState, RouteState, RouteTarget};

/// A handshake younger than this counts as working: WireGuard rekeys every 120 s
/// (REKEY_AFTER_TIME) while there is traffic or keepalive, plus its retry slack.
pub const HANDSHAKE_FRESH: Duration = Duration::from_secs(135);
/// How long a configured endpoint gets to answer before the next one is tried
/// (three of WireGuard's 5 s handshake retries).
pub const TRY_ENDPOINT_FOR: Duration = Duration::from_secs(15);

/// Another node of the mesh, as the Raft state describes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeshPeer {
    pub node_id: String,
    pub public_key: PublicKey,
    /// The key the node is rotating to, while a rotation is under way.
    #[serde(default)]
    pub next_public_key: Option<PublicKey>,
    /// Where the node listens (address:UDP port), best first. May be empty for a
    /// node behind NAT: it reaches out, and its NAT's address is learned.
    pub endpoints: Vec<SocketAddr>,
    /// The node's task subnet: the allowed IPs of its peer entry.
    pub subnet: Ipv4Net,
}

/// What the plan needs from the node's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    pub listen_port: u16,
    /// Seconds, 0 is off.
    pub keepalive: u16,
    pub mtu: u32,
    pub subnet: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    pub route_src: Option<Ipv4Addr>,
    pub route_protocol: u8,
}

/// One step of a reconciliation, in the order of the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Configure(DeviceUpdate),
    Peers(DeviceUpdate),
    SetMtu(u32),
    SetUp,
    Route { destination: Ipv4Net, target: RouteTarget },
    DeleteRoute(RouteState),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Configure(u) => write!(
                f,
                "1 configure (key {}, port {:?})",
                if u.private_key.is_some() { "set" } else { "kept" },
                u.listen_port
            ),
            Step::Peers(u) => {
                let removed = u.peers.iter().filter(|p| p.remove).count();
                write!(f, "2 peers ({} set, {removed} removed)", u.peers.len() - removed)
            }
            Step::SetMtu(m) => write!(f, "3 mtu {m}"),
            Step::SetUp => write!(f, "4 up"),
            Step::Route { destination, target } => write!(f, "5 route {destination} {target:?}"),
            Step::DeleteRoute(r) => write!(f, "6 delete route {}", r.destination),
        }
    }
}

/// What the reconciler remembers of endpoints between passes.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    /// Endpoints it set, and when, so an unanswered one is given time before the
    /// next is tried.
    pub tried: HashMap<PublicKey, (SocketAddr, SystemTime)>,
    /// The last endpoint each key handshook from. A peer behind NAT that is
    /// removed and added again is reachable only there (its NAT mapping is kept
    /// alive by its keepalives to the other peers), not at its configured address.
    pub learned: HashMap<PublicKey, SocketAddr>,
}

/// Checks a peer list against this node; the error names the peer and the field.
pub fn validate_peers(
    own_key: &PublicKey,
    own_subnet: Ipv4Net,
    cluster_cidr: Ipv4Net,
    peers: &[MeshPeer],
) -> Result<(), MeshError> {
    let mut keys = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut subnets: Vec<(Ipv4Net, &str)> = Vec::new();
    for p in peers {
        let id = p.node_id.as_str();
        let bad = |field, why: String| MeshError::invalid(field, format!("peer {id:?}: {why}"));
        if id.is_empty() {
            return Err(MeshError::invalid("peers.node_id", "must not be empty"));
        }
        if !ids.insert(id) {
            return Err(bad("peers.node_id", "listed twice".into()));
        }
        for k in std::iter::once(&p.public_key).chain(p.next_public_key.as_ref()) {
            if k == own_key {
                return Err(bad("peers.public_key", format!("{k} is this node's own key")));
            }
            if !keys.insert(*k) {
                return Err(bad("peers.public_key", format!("{k} is used by another peer")));
            }
        }
        if p.subnet.trunc() != p.subnet {
            return Err(bad("peers.subnet", format!("{} has host bits set", p.subnet)));
        }
        if !cluster_cidr.contains(&p.subnet) {
            return Err(bad(
                "peers.subnet",
                format!("{} is not inside the cluster CIDR {cluster_cidr}", p.subnet),
            ));
        }
        if p.subnet.contains(&own_subnet) || own_subnet.contains(&p.subnet) {
            return Err(bad(
                "peers.subnet",
                format!("{} overlaps this node's own subnet {own_subnet}", p.subnet),
            ));
        }
        if let Some((other, oid)) = subnets
            .iter()
            .find(|(o, _)| o.contains(&p.subnet) || p.subnet.contains(o))
        {
            return Err(bad(
                "peers.subnet",
                format!("{} overlaps {other} of peer {oid:?}", p.subnet),
            ));
        }
        subnets.push((p.subnet, id));
        for e in &p.endpoints {
            if e.port() == 0 || e.ip().is_unspecified() || e.ip().is_multicast() {
                return Err(bad(
                    "peers.endpoints",
                    format!("{e} is not a reachable address and port"),
                ));
            }
        }
    }
    Ok(())
}

/// A peer entry the device should have.
struct Entry<'a> {
    key: PublicKey,
    allowed: Vec<Ipv4Net>,
    peer: &'a MeshPeer,
    /// For a rotation's new entry: the endpoint to start from (the old entry's).
    seed: Option<SocketAddr>,
    /// A rotation's new entry not yet handshaken: it follows the old entry's
    /// endpoint, which is the one known to work.
    pending: bool,
}

fn handshake_fresh(p: &PeerState, now: SystemTime) -> bool {
    p.last_handshake
        .is_some_and(|t| now.duration_since(t).unwrap_or_default() < HANDSHAKE_FRESH)
}

/// The endpoint to set on a peer entry, or `None` to leave it as it is.
fn choose_endpoint(
    configured: &[SocketAddr],
    observed: Option<&PeerState>,
    tried: Option<&(SocketAddr, SystemTime)>,
    seed: Option<SocketAddr>,
    now: SystemTime,
) -> Option<SocketAddr> {
    let Some(o) = observed else {
        return seed.or_else(|| configured.first().copied());
    };
    if configured.is_empty() || handshake_fresh(o, now) {
        return None;
    }
    let Some(cur) = o.endpoint else {
        return seed.or_else(|| configured.first().copied());
    };
    if let Some((e, at)) = tried {
        if *e == cur && now.duration_since(*at).unwrap_or_default() < TRY_ENDPOINT_FOR {
            return None;
        }
    }
    let next = match configured.iter().position(|e| *e == cur) {
        Some(i) => configured[(i + 1) % configured.len()],
        None => configured[0],
    };
    (next != cur).then_some(next)
}

fn v4_set(ips: &[IpNet]) -> BTreeSet<IpNet> {
    ips.iter().map(|n| n.trunc()).collect()
}

/// Steps 1 and 2 for a device as observed (`None`: it does not exist yet).
pub fn plan_device(
    cfg: &PlanConfig,
    key: &PrivateKey,
    peers: &[MeshPeer],
    device: Option<&DeviceState>,
    tries: &Endpoints,
    now: SystemTime,
) -> Vec<Step> {
    let empty = DeviceState::default();
    let dev = device.unwrap_or(&empty);
    let observed: BTreeMap<PublicKey, &PeerState> = dev.peers.iter().map(|p| (p.public_key, p)).collect();
    let mut steps = Vec::new();

    let mut configure = DeviceUpdate::default();
    if dev.public_key != Some(key.public_key()) {
        configure.private_key = Some(key.clone());
    }
    if dev.listen_port != cfg.listen_port {
        configure.listen_port = Some(cfg.listen_port);
    }
    if !configure.is_empty() {
        steps.push(Step::Configure(configure));
    }

    let mut entries: Vec<Entry> = Vec::new();
    for p in peers {
        let subnet = vec![p.subnet];
        match p.next_public_key {
            Some(next) if next != p.public_key => {
                let promoted = observed.get(&next).is_some_and(|o| o.last_handshake.is_some());
                let old_endpoint = observed.get(&p.public_key).and_then(|o| o.endpoint);
                if promoted {
                    entries.push(Entry {
                        key: next,
                        allowed: subnet,
                        peer: p,
                        seed: old_endpoint,
                        pending: false,
                    });
                } else {
                    entries.push(Entry {
                        key: p.public_key,
                        allowed: subnet,
                        peer: p,
                        seed: None,
                        pending: false,
                    });
                    entries.push(Entry {
                        key: next,
                        allowed: Vec::new(),
                        peer: p,
                        seed: old_endpoint,
                        pending: true,
                    });
                }
            }
            _ => entries.push(Entry {
                key: p.public_key,
                allowed: subnet,
                peer: p,
                seed: None,
                pending: false,
            }),
        }
    }

    let mut update = DeviceUpdate::default();
    for e in &entries {
        let o = observed.get(&e.key).copied();
        let want_ips: BTreeSet<IpNet> = e.allowed.iter().map(|&n| IpNet::V4(n)).collect();
        let endpoint = match e.seed {
            Some(seed) if e.pending => (o.and_then(|o| o.endpoint) != Some(seed)).then_some(seed),
            _ => {
                let seed = e.seed.or_else(|| tries.learned.get(&e.key).copied());
                choose_endpoint(&e.peer.endpoints, o, tries.tried.get(&e.key), seed, now)
            }
        };
        let keepalive = (o.map(|o| o.keepalive) != Some(cfg.keepalive)).then_some(cfg.keepalive);
        let allowed_ips = (o.map(|o| v4_set(&o.allowed_ips)) != Some(want_ips)).then(|| e.allowed.clone());
        if o.is_none() || endpoint.is_some() || keepalive.is_some() || allowed_ips.is_some() {
            update.peers.push(PeerUpdate {
                public_key: e.key,
                remove: false,
                endpoint,
                keepalive,
                allowed_ips,
                kick: false,
            });
        }
    }
    // Removals last: a subnet moves to its new entry before the old one goes.
    let wanted: BTreeSet<PublicKey> = entries.iter().map(|e| e.key).collect();
    for k in observed.keys() {
        if !wanted.contains(k) {
            update.peers.push(PeerUpdate::remove(*k));
        }
    }
    if !update.peers.is_empty() {
        steps.push(Step::Peers(update));
    }
    steps
}

/// After this node switched keys: a keepalive to every peer, so each handshakes
/// with the new key now rather than at its next packet (up to a keepalive
/// interval later), which would leave an idle peer's subnet on the old entry.
pub fn plan_kick(cfg: &PlanConfig, device: Option<&DeviceState>) -> Option<Step> {
    let dev = device?;
    if cfg.keepalive == 0 || dev.peers.is_empty() {
        return None;
    }
    Some(Step::Peers(DeviceUpdate {
        peers: dev
            .peers
            .iter()
            .map(|p| PeerUpdate {
                public_key: p.public_key,
                remove: false,
                endpoint: None,
                keepalive: Some(cfg.keepalive),
                allowed_ips: None,
                kick: true,
            })
            .collect(),
        ..DeviceUpdate::default()
    }))
}

/// Steps 3 to 6, and the destinations held by routes the mesh does not own.
pub fn plan_link(
    cfg: &PlanConfig,
    peers: &[MeshPeer],
    link: Option<&LinkState>,
    routes: &[RouteState],
) -> (Vec<Step>, Vec<(Ipv4Net, u8)>) {
    let Some(link) = link else {
        return (Vec::new(), Vec::new());
    };
    let mut steps = Vec::new();
    if link.mtu != cfg.mtu {
        steps.push(Step::SetMtu(cfg.mtu));
    }
    if !link.up {
        steps.push(Step::SetUp);
    }
    let mut desired: BTreeMap<Ipv4Net, RouteTarget> = peers
        .iter()
        .map(|p| {
            (
                p.subnet,
                RouteTarget::Dev {
                    index: link.index,
                    src: cfg.route_src,
                },
            )
        })
        .collect();
    desired.insert(cfg.cluster_cidr, RouteTarget::Prohibit);
    let ours: BTreeMap<Ipv4Net, &RouteState> = routes
        .iter()
        .filter(|r| r.protocol == cfg.route_protocol)
        .map(|r| (r.destination, r))
        .collect();
    let mut conflicts = Vec::new();
    for (&dst, &target) in &desired {
        if ours.get(&dst).and_then(|r| r.target) == Some(target) {
            continue;
        }
        if !ours.contains_key(&dst) {
            if let Some(f) = routes.iter().find(|r| r.destination == dst) {
                conflicts.push((dst, f.protocol));
                continue;
            }
        }
        steps.push(Step::Route {
            destination: dst,
            target,
        });
    }
    for (dst, r) in ours {
        if !desired.contains_key(&dst) {
            steps.push(Step::DeleteRoute(*r));
        }
    }
    (steps, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn cfg() -> PlanConfig {
        PlanConfig {
            listen_port: 51820,
            keepalive: 25,
            mtu: 1420,
            subnet: net("10.88.1.0/24"),
            cluster_cidr: net("10.88.0.0/16"),
            route_src: Some("10.88.1.1".parse().unwrap()),
            route_protocol: 88,
        }
    }

    fn key(n: u8) -> PublicKey {
        PrivateKey::from_bytes([n; 32]).public_key()
    }

    fn peer(id: &str, n: u8, subnet: &str, endpoints: &[&str]) -> MeshPeer {
        MeshPeer {
            node_id: id.into(),
            public_key: key(n),
            next_public_key: None,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            subnet: net(subnet),
        }
    }

    fn me() -> PrivateKey {
        PrivateKey::from_bytes([1; 32])
    }

    /// The device after applying `steps` with WireGuard's semantics.
    fn apply(dev: &mut DeviceState, steps: &[Step]) {
        let fake = super::super::backend::FakeBackend::up();
        *fake.device.lock().unwrap() = Some(dev.clone());
        for s in steps {
            if let Step::Configure(u) | Step::Peers(u) = s {
                futures::executor::block_on(super::super::backend::WgBackend::set(&fake, u)).unwrap();
            }
        }
        *dev = fake.device.lock().unwrap().clone().unwrap();
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_fresh_device_gets_key_port_and_peers_then_nothing() {
        let peers = vec![
            peer("n2", 2, "10.88.2.0/24", &["192.0.2.2:51820"]),
            peer("n3", 3, "10.88.3.0/24", &[]),
        ];
        let mut dev = DeviceState::default();
        let steps = plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(0));
        assert_eq!(steps.len(), 2, "{steps:?}");
        let Step::Configure(c) = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(c.listen_port, Some(51820));
        assert!(c.private_key.is_some());
        let Step::Peers(p) = &steps[1] else { panic!("{steps:?}") };
        assert_eq!(p.peers[0].endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(p.peers[0].keepalive, Some(25));
        assert_eq!(p.peers[0].allowed_ips, Some(vec![net("10.88.2.0/24")]));
        assert_eq!(
            p.peers[1].endpoint, None,
            "a peer without endpoints waits to be reached"
        );
        apply(&mut dev, &steps);
        let again = plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(1));
        // No handshake yet, but the endpoint set is the only one configured.
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn removed_peers_go_and_changed_subnets_move() {
        let mut dev = DeviceState::default();
        let peers = vec![
            peer("n2", 2, "10.88.2.0/24", &["192.0.2.2:51820"]),
            peer("n3", 3, "10.88.3.0/24", &["192.0.2.3:51820"]),
        ];
        apply(
            &mut dev,
            &plan_device(&cfg(), &me(), &peers, None, &Endpoints::default(), t(0)),
        );
        let peers = vec![peer("n2", 2, "10.88.4.0/24", &["192.0.2.2:51820"])];
        let steps = plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(1));
        let Step::Peers(u) = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(u.peers.len(), 2);
        // Added again after its removal: back where it last handshook from.
        let learned: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let mut mem = Endpoints::default();
        mem.learned.insert(key(3), learned);
        let mut dev2 = dev.clone();
        apply(&mut dev2, &steps);
        let back = vec![peers[0].clone(), peer("n3", 3, "10.88.3.0/24", &["192.0.2.3:51820"])];
        let steps2 = plan_device(&cfg(), &me(), &back, Some(&dev2), &mem, t(2));
        let Step::Peers(u2) = &steps2[0] else {
            panic!("{steps2:?}")
        };
        assert_eq!(u2.peers[0].endpoint, Some(learned));
        assert_eq!(u.peers[0].allowed_ips, Some(vec![net("10.88.4.0/24")]));
        assert_eq!(u.peers[0].endpoint, None);
        assert!(u.peers[1].remove && u.peers[1].public_key == key(3));
    }

    #[test]
    fn a_working_roamed_endpoint_is_kept_and_a_dead_one_replaced() {
        let mut dev = DeviceState::default();
        let peers = vec![peer(
            "n2",
            2,
            "10.88.2.0/24",
            &["192.0.2.2:51820", "198.51.100.2:51820"],
        )];
        apply(
            &mut dev,
            &plan_device(&cfg(), &me(), &peers, None, &Endpoints::default(), t(0)),
        );
        // The peer reached us from its NAT's address; handshakes keep coming.
        let nat: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        dev.peers[0].endpoint = Some(nat);
        dev.peers[0].last_handshake = Some(t(100));
        let steps = plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(200));
        assert!(
            steps.is_empty(),
            "a fresh handshake keeps the learned endpoint: {steps:?}"
        );
        // Silent for longer than a rekey: back to the first configured endpoint.
        let steps = plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(300));
        let Step::Peers(u) = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(u.peers[0].endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        apply(&mut dev, &steps);
        // Just tried: wait. Unanswered after the try window: the next one.
        let mut tries = Endpoints::default();
        tries.tried.insert(key(2), ("192.0.2.2:51820".parse().unwrap(), t(300)));
        assert!(plan_device(&cfg(), &me(), &peers, Some(&dev), &tries, t(305)).is_empty());
        let steps = plan_device(&cfg(), &me(), &peers, Some(&dev), &tries, t(320));
        let Step::Peers(u) = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(u.peers[0].endpoint, Some("198.51.100.2:51820".parse().unwrap()));
    }

    #[test]
    fn a_rotation_adds_the_new_key_then_moves_the_subnet_on_its_handshake() {
        let mut dev = DeviceState::default();
        let mut peers = vec![peer("n2", 2, "10.88.2.0/24", &["192.0.2.2:51820"])];
        apply(
            &mut dev,
            &plan_device(&cfg(), &me(), &peers, None, &Endpoints::default(), t(0)),
        );
        let learned: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        dev.peers[0].endpoint = Some(learned);
        dev.peers[0].last_handshake = Some(t(1));
        // 1. Announced: a second entry, no allowed IPs, starting at the working endpoint.
        peers[0].next_public_key = Some(key(9));
        let steps = plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(2));
        let Step::Peers(u) = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(u.peers.len(), 1);
        assert_eq!(u.peers[0].public_key, key(9));
        assert_eq!(u.peers[0].allowed_ips, Some(vec![]));
        assert_eq!(u.peers[0].endpoint, Some(learned));
        apply(&mut dev, &steps);
        let old = dev.peers.iter().find(|p| p.public_key == key(2)).unwrap();
        assert_eq!(old.allowed_ips.len(), 1, "traffic stays on the old key");
        assert!(plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(3)).is_empty());
        // 2. The rotating node switched: a handshake on the new key.
        dev.peers
            .iter_mut()
            .find(|p| p.public_key == key(9))
            .unwrap()
            .last_handshake = Some(t(4));
        let steps = plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(4));
        let Step::Peers(u) = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(u.peers[0].public_key, key(9));
        assert_eq!(u.peers[0].allowed_ips, Some(vec![net("10.88.2.0/24")]));
        assert!(u.peers[1].remove && u.peers[1].public_key == key(2));
        apply(&mut dev, &steps);
        // 3. Committed in the state: the new key is the key; nothing more to do.
        peers[0].public_key = key(9);
        peers[0].next_public_key = None;
        assert!(plan_device(&cfg(), &me(), &peers, Some(&dev), &Endpoints::default(), t(5)).is_empty());
    }

    #[test]
    fn a_new_own_key_is_configured() {
        let mut dev = DeviceState::default();
        apply(
            &mut dev,
            &plan_device(&cfg(), &me(), &[], None, &Endpoints::default(), t(0)),
        );
        let next = PrivateKey::from_bytes([5; 32]);
        let steps = plan_device(&cfg(), &next, &[], Some(&dev), &Endpoints::default(), t(1));
        assert_eq!(
            steps,
            vec![Step::Configure(DeviceUpdate {
                private_key: Some(next),
                ..DeviceUpdate::default()
            })]
        );
    }

    #[test]
    fn link_steps_set_mtu_up_routes_and_guard() {
        let peers = vec![peer("n2", 2, "10.88.2.0/24", &[])];
        let link = LinkState {
            index: 7,
            mtu: 1500,
            up: false,
        };
        let foreign = RouteState {
            destination: net("10.88.9.0/24"),
            protocol: 4,
            target: None,
        };
        let stale = RouteState {
            destination: net("10.88.3.0/24"),
            protocol: 88,
            target: Some(RouteTarget::Dev { index: 7, src: None }),
        };
        let (steps, conflicts) = plan_link(&cfg(), &peers, Some(&link), &[foreign, stale]);
        let src = cfg().route_src;
        assert_eq!(
            steps,
            vec![
                Step::SetMtu(1420),
                Step::SetUp,
                Step::Route {
                    destination: net("10.88.0.0/16"),
                    target: RouteTarget::Prohibit
                },
                Step::Route {
                    destination: net("10.88.2.0/24"),
                    target: RouteTarget::Dev { index: 7, src }
                },
                Step::DeleteRoute(stale),
            ]
        );
        assert!(conflicts.is_empty());
        // A foreign route at a peer's subnet is reported, not replaced.
        let peers = vec![peer("n9", 9, "10.88.9.0/24", &[])];
        let (steps, conflicts) = plan_link(&cfg(), &peers, Some(&link), &[foreign]);
        assert!(!steps
            .iter()
            .any(|s| matches!(s, Step::Route { destination, .. } if *destination == net("10.88.9.0/24"))));
        assert_eq!(conflicts, vec![(net("10.88.9.0/24"), 4)]);
        assert_eq!(
            plan_link(&cfg(), &peers, None, &[]).0,
            vec![],
            "no link yet, nothing to do"
        );
    }

    #[test]
    fn bad_peers_name_the_field() {
        let own = me().public_key();
        let ok = peer("n2", 2, "10.88.2.0/24", &["192.0.2.2:51820"]);
        let c = cfg();
        validate_peers(&own, c.subnet, c.cluster_cidr, std::slice::from_ref(&ok)).unwrap();
        type Mutation = Box<dyn Fn(&mut Vec<MeshPeer>)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|p| p[0].node_id.clear()),
                "invalid peers.node_id: must not be empty",
            ),
            (
                Box::new(|p| p.push(p[0].clone())),
                "invalid peers.node_id: peer \"n2\": listed twice",
            ),
            (
                Box::new(|p| p[0].public_key = me().public_key()),
                "is this node's own key",
            ),
            (
                Box::new(|p| {
                    let mut q = p[0].clone();
                    q.node_id = "n3".into();
                    q.subnet = net("10.88.3.0/24");
                    p.push(q)
                }),
                "is used by another peer",
            ),
            (Box::new(|p| p[0].subnet = net("10.88.2.1/24")), "has host bits set"),
            (
                Box::new(|p| p[0].subnet = net("10.99.2.0/24")),
                "is not inside the cluster CIDR",
            ),
            (
                Box::new(|p| p[0].subnet = net("10.88.0.0/23")),
                "overlaps this node's own subnet",
            ),
            (
                Box::new(|p| {
                    let mut q = peer("n3", 3, "10.88.2.128/25", &[]);
                    q.node_id = "n3".into();
                    p.push(q)
                }),
                "overlaps 10.88.2.0/24 of peer \"n2\"",
            ),
            (
                Box::new(|p| p[0].endpoints = vec!["0.0.0.0:51820".parse().unwrap()]),
                "invalid peers.endpoints: peer \"n2\": 0.0.0.0:51820 is not a reachable",
            ),
        ];
        for (mutate, want) in cases {
            let mut peers = vec![ok.clone()];
            mutate(&mut peers);
            let e = validate_peers(&own, c.subnet, c.cluster_cidr, &peers)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
