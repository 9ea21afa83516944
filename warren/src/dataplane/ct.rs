//! Expiry of the tc connection-tracking flows (`warren_ct_v2`): the timeouts per
//! flow state, which entries a GC pass removes (both halves of every flow past
//! its timeout, and halves left without their other one), and the pass itself
//! behind [`CtTable`]. It does not track packets or translate anything (the tc
//! programs do) and runs without the sync lock.

use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::maps::{HashMap, MapData, MapError};
use warren_common::{
    map_names as names, CtKey, CtValue, CT_F_REPLY, CT_REFRESH_NS, CT_S_FIN_FWD, CT_S_FIN_REPLY, CT_S_REPLIED, CT_S_RST,
};

use super::DataplaneError;

const TCP: u8 = 6;

/// How long a tc flow stays tracked after its last packet (either direction),
/// by state. The defaults are Cilium's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtTimeouts {
    /// A TCP flow whose SYN got no answer yet.
    pub tcp_syn: Duration,
    /// An established TCP flow.
    pub tcp_established: Duration,
    /// A TCP flow that ended (a RST, or a FIN each way): kept a little for the
    /// last retransmitted segments.
    pub tcp_closing: Duration,
    /// A UDP flow (there is no end to see).
    pub udp: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// The state of a flow, from its forward entry's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    SynSent,
    Established,
    /// One side sent a FIN.
    HalfClosed,
    Closed,
    Udp,
}

impl FlowState {
    pub fn of(proto: u8, flags: u32) -> Self {
        if proto != TCP {
            return Self::Udp;
        }
        let fins = flags & (CT_S_FIN_FWD | CT_S_FIN_REPLY);
        if flags & CT_S_RST != 0 || fins == CT_S_FIN_FWD | CT_S_FIN_REPLY {
            Self::Closed
        } else if fins != 0 {
            Self::HalfClosed
        } else if flags & CT_S_REPLIED != 0 {
            Self::Established
        } else {
            Self::SynSent
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SynSent => "syn-sent",
            Self::Established => "established",
            Self::HalfClosed => "half-closed",
            Self::Closed => "closed",
            Self::Udp => "udp",
        }
    }

    fn timeout(self, t: &CtTimeouts) -> Duration {
        match self {
            Self::SynSent => t.tcp_syn,
            Self::Established | Self::HalfClosed => t.tcp_established,
            Self::Closed => t.tcp_closing,
            Self::Udp => t.udp,
        }
    }
}

/// The key of the other half of the flow `v` (an entry of it) belongs to.
pub(crate) fn other_key(v: &CtValue, proto: u8) -> CtKey {
    CtKey {
        saddr: v.daddr,
        daddr: v.saddr,
        sport: v.dport,
        dport: v.sport,
        proto,
        pad: [0; 3],
    }
}

/// Whether `other` (found at `other_key(v)`) is the other half of `k`'s flow.
fn pairs(k: &CtKey, other: &CtValue) -> bool {
    other.daddr == k.saddr && other.dport == k.sport && other.saddr == k.daddr && other.sport == k.dport
}

/// A half older than this without its other half is an orphan (the programs
/// write the reply half just before the forward one).
const ORPHAN_NS: u64 = 2 * CT_REFRESH_NS;

/// The keys a GC pass at `now_ns` removes from `entries`: both halves of each
/// flow idle past its state's timeout, and halves without their other half.
pub(crate) fn expired(entries: &[(CtKey, CtValue)], now_ns: u64, t: &CtTimeouts) -> Vec<CtKey> {
    let by_key: StdHashMap<CtKey, CtValue> = entries.iter().copied().collect();
    let mut out = Vec::new();
    for (k, v) in entries {
        let other = other_key(v, k.proto);
        let peer = by_key.get(&other).filter(|p| pairs(k, p));
        let idle = now_ns.saturating_sub(v.last_seen_ns.max(peer.map_or(0, |p| p.last_seen_ns)));
        if v.flags & CT_F_REPLY != 0 {
            // Its forward entry decides (below); alone, it is an orphan.
            if peer.is_none() && idle > ORPHAN_NS {
                out.push(*k);
            }
            continue;
        }
        if peer.is_none() && idle > ORPHAN_NS {
            out.push(*k);
            continue;
        }
        let timeout = FlowState::of(k.proto, v.flags).timeout(t);
        if u128::from(idle) > timeout.as_nanos() {
            out.push(*k);
            if peer.is_some() {
                out.push(other);
            }
        }
    }
    out
}

/// The connection-tracking map as a GC pass sees it.
pub(crate) trait CtTable {
    /// Every entry (a snapshot; entries created meanwhile may be missing).
    fn entries(&self) -> Result<Vec<(CtKey, CtValue)>, DataplaneError>;
    /// Removes `key`; absent is fine.
    fn remove(&mut self, key: &CtKey) -> Result<(), DataplaneError>;
}

impl CtTable for HashMap<MapData, CtKey, CtValue> {
    fn entries(&self) -> Result<Vec<(CtKey, CtValue)>, DataplaneError> {
        let mut out = Vec::new();
        for k in self.keys() {
            let k = k.map_err(|e| DataplaneError::map(names::CT, e))?;
            match self.get(&k, 0) {
                Ok(v) => out.push((k, v)),
                // Removed by a program between the two calls.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(DataplaneError::map(names::CT, e)),
            }
        }
        Ok(out)
    }

    fn remove(&mut self, key: &CtKey) -> Result<(), DataplaneError> {
        match HashMap::remove(self, key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(DataplaneError::map(names::CT, e)),
        }
    }
}

/// What a GC pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GcOutcome {
    pub removed: usize,
    pub left: usize,
}

/// One GC pass: removes what [`expired`] names at `now_ns`.
pub(crate) fn gc(table: &mut impl CtTable, now_ns: u64, t: &CtTimeouts) -> Result<GcOutcome, DataplaneError> {
    let entries = table.entries()?;
    let gone = expired(&entries, now_ns, t);
    for k in &gone {
        table.remove(k)?;
    }
    Ok(GcOutcome {
        removed: gone.len(),
        left: entries.len() - gone.len(),
    })
}

/// The kernel's monotonic clock, as `bpf_ktime_get_ns()` reads it.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use warren_common::{Be16, Be32, CT_F_SNAT};

    use super::*;

    const S: u64 = 1_000_000_000;

    struct FakeTable(BTreeMap<CtKey, CtValue>);

    impl CtTable for FakeTable {
        fn entries(&self) -> Result<Vec<(CtKey, CtValue)>, DataplaneError> {
            Ok(self.0.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn remove(&mut self, key: &CtKey) -> Result<(), DataplaneError> {
            self.0.remove(key);
            Ok(())
        }
    }

    fn key(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16, proto: u8) -> CtKey {
        CtKey {
            saddr: Be32::from_ip(Ipv4Addr::from(s)),
            daddr: Be32::from_ip(Ipv4Addr::from(d)),
            sport: Be16::new(sp),
            dport: Be16::new(dp),
            proto,
            pad: [0; 3],
        }
    }

    /// A SNAT flow client 10.0.0.2:40000 -> node 10.0.0.1:30000, backend
    /// 10.1.0.5:8080 from node port 61000, as the programs write it.
    fn flow(proto: u8, fwd_flags: u32, fwd_seen: u64, rep_seen: u64) -> [(CtKey, CtValue); 2] {
        flow_of(40000, 61000, proto, fwd_flags, fwd_seen, rep_seen)
    }

    fn flow_of(
        cport: u16,
        snat: u16,
        proto: u8,
        fwd_flags: u32,
        fwd_seen: u64,
        rep_seen: u64,
    ) -> [(CtKey, CtValue); 2] {
        let fk = key([10, 0, 0, 2], cport, [10, 0, 0, 1], 30000, proto);
        let fv = CtValue {
            saddr: Be32::from_ip(Ipv4Addr::new(10, 0, 0, 1)),
            daddr: Be32::from_ip(Ipv4Addr::new(10, 1, 0, 5)),
            sport: Be16::new(snat),
            dport: Be16::new(8080),
            svc_id: 1,
            backend_id: 1,
            flags: CT_F_SNAT | fwd_flags,
            last_seen_ns: fwd_seen,
        };
        let rk = other_key(&fv, proto);
        let rv = CtValue {
            saddr: fk.daddr,
            daddr: fk.saddr,
            sport: fk.dport,
            dport: fk.sport,
            svc_id: 1,
            backend_id: 1,
            flags: CT_F_SNAT | CT_F_REPLY,
            last_seen_ns: rep_seen,
        };
        [(fk, fv), (rk, rv)]
    }

    fn t() -> CtTimeouts {
        CtTimeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
        }
    }

    #[test]
    fn timeouts_follow_the_tcp_state_and_count_from_either_direction() {
        let now = 100_000 * S;
        for (flags, idle_s, gone) in [
            (0, 59, false),
            (0, 61, true),
            (CT_S_REPLIED, 3599, false),
            (CT_S_REPLIED, 3601, true),
            (CT_S_REPLIED | CT_S_FIN_FWD, 3599, false),
            (CT_S_REPLIED | CT_S_FIN_FWD | CT_S_FIN_REPLY, 9, false),
            (CT_S_REPLIED | CT_S_FIN_FWD | CT_S_FIN_REPLY, 11, true),
            (CT_S_REPLIED | CT_S_RST, 11, true),
            (CT_S_RST, 9, false),
        ] {
            let f = flow(TCP, flags, now - idle_s * S, now - 5000 * S);
            let out = expired(&f, now, &t());
            assert_eq!(!out.is_empty(), gone, "flags {flags:#x}, idle {idle_s} s: {out:?}");
            if gone {
                assert_eq!(out.len(), 2, "both halves go together");
            }
            // A recent packet on the reply half keeps the flow.
            let f = flow(TCP, flags, now - idle_s * S, now - S);
            assert!(
                expired(&f, now, &t()).is_empty(),
                "flags {flags:#x}: the reply is recent"
            );
        }
        let f = flow(17, CT_S_REPLIED, now - 31 * S, now - 31 * S);
        assert_eq!(expired(&f, now, &t()).len(), 2, "udp after its timeout");
        let f = flow(17, CT_S_REPLIED, now - 29 * S, now - 29 * S);
        assert!(expired(&f, now, &t()).is_empty());
    }

    #[test]
    fn a_half_without_its_other_half_is_removed_once_it_is_not_being_created() {
        let now = 1000 * S;
        let [fwd, rep] = flow(TCP, 0, now - 5 * S, now - 5 * S);
        assert_eq!(expired(&[fwd], now, &t()), [fwd.0]);
        assert_eq!(expired(&[rep], now, &t()), [rep.0]);
        // Just written, its forward half coming: kept.
        let [_, rep] = flow(TCP, 0, now, now);
        assert!(expired(&[rep], now, &t()).is_empty());
        // A reply half of another flow at the computed key is no pair.
        let [fwd, mut rep] = flow(TCP, CT_S_REPLIED, now - 5 * S, now - 5 * S);
        rep.1.dport = Be16::new(1);
        let out = expired(&[fwd, rep], now, &t());
        assert!(out.contains(&fwd.0) && out.contains(&rep.0), "{out:?}");
    }

    #[test]
    fn a_gc_pass_removes_expired_flows_and_keeps_live_ones() {
        let now = 1000 * S;
        let mut table = FakeTable(BTreeMap::new());
        table
            .0
            .extend(flow(TCP, CT_S_REPLIED | CT_S_RST, now - 20 * S, now - 20 * S));
        let live = flow_of(40001, 61001, TCP, CT_S_REPLIED, now - 20 * S, now - 20 * S);
        table.0.extend(live);
        let out = gc(&mut table, now, &t()).unwrap();
        assert_eq!(out, GcOutcome { removed: 2, left: 2 });
        assert!(table.0.contains_key(&live[0].0) && table.0.contains_key(&live[1].0));
        assert_eq!(FlowState::of(TCP, table.0[&live[0].0].flags), FlowState::Established);
    }
}
