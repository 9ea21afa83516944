//! IPAM of one node's subnet: which task holds which address, persisted in a redb file
//! so that a restarted agent never hands out an address twice. Not the links or
//! namespaces that use the addresses (see `netlink`).
//!
//! The network address, the gateway (first host, on the bridge) and the broadcast
//! address are never handed out. Allocation continues after the last address handed
//! out and wraps, so that a released address is reused as late as possible (a peer
//! may still hold an ARP or conntrack entry for it).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::error::NetworkError;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const BY_TASK: TableDefinition<&str, u32> = TableDefinition::new("by_task");
const BY_ADDR: TableDefinition<u32, &str> = TableDefinition::new("by_addr");

const META_SUBNET: &str = "subnet";
const META_NEXT: &str = "next";

/// The file name of the IPAM database inside the state directory.
pub const IPAM_FILE: &str = "ipam.redb";

/// The gateway of a node subnet: its first host address, held by the node's bridge.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The addresses tasks may get: from network + 2 (after the gateway) to broadcast - 1.
pub(crate) fn host_range(subnet: Ipv4Net) -> (u32, u32) {
    (u32::from(subnet.network()) + 2, u32::from(subnet.broadcast()) - 1)
}

/// Checks that `subnet` can be a node subnet: no host bits, room for a gateway and at
/// least one task.
pub fn validate_subnet(field: &'static str, subnet: Ipv4Net) -> Result<(), NetworkError> {
    if subnet.prefix_len() > 30 {
        return Err(NetworkError::invalid(
            field,
            format!("{subnet} is too small: a node subnet needs a prefix of /30 or shorter"),
        ));
    }
    if subnet.trunc() != subnet {
        return Err(NetworkError::invalid(
            field,
            format!("{subnet} has host bits set (did you mean {}?)", subnet.trunc()),
        ));
    }
    Ok(())
}

/// The first free address in `from..=to`, given the used addresses of that range in
/// ascending order.
pub(crate) fn first_gap(used: impl IntoIterator<Item = u32>, from: u32, to: u32) -> Option<u32> {
    if from > to {
        return None;
    }
    let mut candidate = from;
    for u in used {
        if u < candidate {
            continue;
        }
        if u > candidate {
            break;
        }
        if u == to {
            return None;
        }
        candidate = u + 1;
    }
    Some(candidate)
}

/// The address to hand out next: the first free one at or after `next`, wrapping to
/// the start of the range. `used` must be ascending.
pub(crate) fn pick(used: &[u32], range: (u32, u32), next: u32) -> Option<u32> {
    let (first, last) = range;
    let start = if (first..=last).contains(&next) { next } else { first };
    first_gap(used.iter().copied(), start, last).or_else(|| {
        if start > first {
            first_gap(used.iter().copied(), first, start - 1)
        } else {
            None
        }
    })
}

/// The persisted address allocations of one node subnet.
pub struct Ipam {
    db: Database,
    path: PathBuf,
    subnet: Ipv4Net,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam")
            .field("path", &self.path)
            .field("subnet", &self.subnet)
            .finish()
    }
}

impl Ipam {
    /// Opens (or creates) `state_dir/ipam.redb` for `subnet`. Fails if the file was
    /// written for another subnet, or is open in another `Ipam` (redb locks it).
    pub fn open(state_dir: &Path, subnet: Ipv4Net) -> Result<Ipam, NetworkError> {
        validate_subnet("subnet", subnet)?;
        std::fs::create_dir_all(state_dir).map_err(|source| NetworkError::File {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(IPAM_FILE);
        let db = Database::create(&path).map_err(|e| NetworkError::Ipam {
            path: path.clone(),
            source: e.into(),
        })?;
        let ipam = Ipam { db, path, subnet };
        ipam.init()?;
        Ok(ipam)
    }

    fn err(&self, e: impl Into<redb::Error>) -> NetworkError {
        NetworkError::Ipam {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    fn init(&self) -> Result<(), NetworkError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let stored = meta
                .get(META_SUBNET)
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_string());
            match stored {
                Some(s) if s != self.subnet.to_string() => {
                    return Err(NetworkError::IpamSubnetMismatch {
                        path: self.path.clone(),
                        stored: s,
                        requested: self.subnet,
                    })
                }
                Some(_) => {}
                None => {
                    meta.insert(META_SUBNET, self.subnet.to_string().as_str())
                        .map_err(|e| self.err(e))?;
                }
            }
            txn.open_table(BY_TASK).map_err(|e| self.err(e))?;
            txn.open_table(BY_ADDR).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The subnet this IPAM hands addresses out of.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The address of `task_id`: the one it already holds, or a new free one.
    /// Allocation and its record happen in one redb write transaction, and redb runs
    /// one write transaction at a time, so concurrent callers never get the same
    /// address.
    pub fn allocate(&self, task_id: &str) -> Result<Ipv4Addr, NetworkError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let addr = {
            let mut by_task = txn.open_table(BY_TASK).map_err(|e| self.err(e))?;
            if let Some(a) = by_task.get(task_id).map_err(|e| self.err(e))? {
                return Ok(Ipv4Addr::from(a.value()));
            }
            let mut by_addr = txn.open_table(BY_ADDR).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let next = meta
                .get(META_NEXT)
                .map_err(|e| self.err(e))?
                .and_then(|v| v.value().parse::<u32>().ok())
                .unwrap_or(0);
            let range = host_range(self.subnet);
            let used = by_addr
                .range(range.0..=range.1)
                .map_err(|e| self.err(e))?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<Vec<u32>, _>>()
                .map_err(|e| self.err(e))?;
            let addr = pick(&used, range, next).ok_or(NetworkError::AddressesExhausted { subnet: self.subnet })?;
            by_task.insert(task_id, addr).map_err(|e| self.err(e))?;
            by_addr.insert(addr, task_id).map_err(|e| self.err(e))?;
            meta.insert(META_NEXT, addr.wrapping_add(1).to_string().as_str())
                .map_err(|e| self.err(e))?;
            addr
        };
        txn.commit().map_err(|e| self.err(e))?;
        let addr = Ipv4Addr::from(addr);
        tracing::debug!(task = task_id, %addr, subnet = %self.subnet, "allocated address");
        Ok(addr)
    }

    /// The address `task_id` holds, if any.
    pub fn get(&self, task_id: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let by_task = txn.open_table(BY_TASK).map_err(|e| self.err(e))?;
        let a = by_task.get(task_id).map_err(|e| self.err(e))?;
        Ok(a.map(|a| Ipv4Addr::from(a.value())))
    }

    /// Frees the address of `task_id`; returns it, or `None` if it held none.
    pub fn release(&self, task_id: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let released = {
            let mut by_task = txn.open_table(BY_TASK).map_err(|e| self.err(e))?;
            let mut by_addr = txn.open_table(BY_ADDR).map_err(|e| self.err(e))?;
            let addr = by_task.remove(task_id).map_err(|e| self.err(e))?.map(|a| a.value());
            if let Some(a) = addr {
                by_addr.remove(a).map_err(|e| self.err(e))?;
            }
            addr
        };
        txn.commit().map_err(|e| self.err(e))?;
        if let Some(a) = released {
            tracing::debug!(task = task_id, addr = %Ipv4Addr::from(a), "released address");
        }
        Ok(released.map(Ipv4Addr::from))
    }

    /// Every allocation, ordered by task id.
    pub fn allocations(&self) -> Result<Vec<(String, Ipv4Addr)>, NetworkError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let by_task = txn.open_table(BY_TASK).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in by_task.iter().map_err(|e| self.err(e))? {
            let (k, v) = r.map_err(|e| self.err(e))?;
            out.push((k.value().to_string(), Ipv4Addr::from(v.value())));
        }
        Ok(out)
    }

    /// Forgets every allocation and the subnet the state was written for.
    pub fn clear(&self) -> Result<(), NetworkError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut by_task = txn.open_table(BY_TASK).map_err(|e| self.err(e))?;
            by_task.retain(|_, _| false).map_err(|e| self.err(e))?;
            let mut by_addr = txn.open_table(BY_ADDR).map_err(|e| self.err(e))?;
            by_addr.retain(|_, _| false).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.remove(META_NEXT).map_err(|e| self.err(e))?;
            // Keep the subnet: this object still serves it after a cleanup.
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn first_gap_finds_holes() {
        assert_eq!(first_gap([], 2, 5), Some(2));
        assert_eq!(first_gap([2, 3], 2, 5), Some(4));
        assert_eq!(first_gap([2, 4], 2, 5), Some(3));
        assert_eq!(first_gap([2, 3, 4, 5], 2, 5), None);
        assert_eq!(first_gap([1, 7], 2, 5), Some(2));
        assert_eq!(first_gap([3, 4], 3, 4), None);
        assert_eq!(first_gap([], 5, 4), None);
    }

    #[test]
    fn pick_continues_after_next_and_wraps() {
        let range = (2, 6);
        assert_eq!(pick(&[], range, 0), Some(2));
        assert_eq!(pick(&[2], range, 3), Some(3));
        assert_eq!(pick(&[3], range, 3), Some(4));
        // Released 2 is reused only after the end of the range.
        assert_eq!(pick(&[3, 4], range, 5), Some(5));
        assert_eq!(pick(&[3, 4, 5, 6], range, 7), Some(2));
        assert_eq!(pick(&[2, 3, 4, 5, 6], range, 4), None);
    }

    #[test]
    fn gateway_and_range() {
        let s = net("10.88.3.0/24");
        assert_eq!(gateway_of(s), Ipv4Addr::new(10, 88, 3, 1));
        let (a, b) = host_range(s);
        assert_eq!(Ipv4Addr::from(a), Ipv4Addr::new(10, 88, 3, 2));
        assert_eq!(Ipv4Addr::from(b), Ipv4Addr::new(10, 88, 3, 254));
    }

    #[test]
    fn subnet_validation_names_the_field() {
        let e = validate_subnet("subnet", net("10.88.3.5/30")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid subnet: 10.88.3.5/30 has host bits set (did you mean 10.88.3.4/30?)"
        );
        let e = validate_subnet("subnet", net("10.88.3.0/31")).unwrap_err();
        assert!(e.to_string().starts_with("invalid subnet: 10.88.3.0/31 is too small"));
        validate_subnet("subnet", net("10.88.3.0/24")).unwrap();
        validate_subnet("subnet", net("10.88.3.4/30")).unwrap();
    }

    #[test]
    fn allocate_is_stable_and_skips_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), net("10.1.2.0/29")).unwrap();
        let a = ipam.allocate("t1").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(ipam.allocate("t1").unwrap(), a);
        let mut seen = HashSet::from([a]);
        for t in ["t2", "t3", "t4", "t5"] {
            let b = ipam.allocate(t).unwrap();
            assert!(seen.insert(b), "{b} handed out twice");
            assert!(b != Ipv4Addr::new(10, 1, 2, 1) && b != Ipv4Addr::new(10, 1, 2, 7));
        }
        let e = ipam.allocate("t6").unwrap_err();
        assert_eq!(e.to_string(), "no free address left in subnet 10.1.2.0/29");
        assert_eq!(ipam.release("t3").unwrap(), Some(Ipv4Addr::new(10, 1, 2, 4)));
        assert_eq!(ipam.release("t3").unwrap(), None);
        assert_eq!(ipam.allocate("t6").unwrap(), Ipv4Addr::new(10, 1, 2, 4));
    }

    #[test]
    fn state_survives_reopen_and_rejects_other_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let (a1, a2) = {
            let ipam = Ipam::open(dir.path(), net("10.1.3.0/24")).unwrap();
            (ipam.allocate("t1").unwrap(), ipam.allocate("t2").unwrap())
        };
        let ipam = Ipam::open(dir.path(), net("10.1.3.0/24")).unwrap();
        assert_eq!(ipam.get("t1").unwrap(), Some(a1));
        assert_eq!(ipam.allocate("t2").unwrap(), a2);
        let a3 = ipam.allocate("t3").unwrap();
        assert!(a3 != a1 && a3 != a2);
        assert_eq!(ipam.allocations().unwrap().len(), 3);
        drop(ipam);

        let e = Ipam::open(dir.path(), net("10.1.4.0/24")).unwrap_err();
        assert!(
            e.to_string().contains("belongs to subnet 10.1.3.0/24, not 10.1.4.0/24"),
            "{e}"
        );
    }

    #[test]
    fn clear_forgets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), net("10.1.5.0/24")).unwrap();
        ipam.allocate("t1").unwrap();
        ipam.allocate("t2").unwrap();
        ipam.clear().unwrap();
        assert!(ipam.allocations().unwrap().is_empty());
        assert_eq!(ipam.get("t1").unwrap(), None);
        assert_eq!(ipam.allocate("t3").unwrap(), Ipv4Addr::new(10, 1, 5, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_allocations_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Arc::new(Ipam::open(dir.path(), net("10.1.6.0/25")).unwrap());
        let mut handles = Vec::new();
        for i in 0..140 {
            let ipam = ipam.clone();
            handles.push(tokio::spawn(async move { (i, ipam.allocate(&format!("task-{i}"))) }));
        }
        let mut got = HashSet::new();
        let mut exhausted = 0;
        for h in handles {
            match h.await.unwrap() {
                (_, Ok(a)) => assert!(got.insert(a), "{a} handed out twice"),
                (_, Err(NetworkError::AddressesExhausted { subnet })) => {
                    assert_eq!(subnet, net("10.1.6.0/25"));
                    exhausted += 1;
                }
                (i, Err(e)) => panic!("task-{i}: {e}"),
            }
        }
        // A /25 has 128 addresses: minus network, gateway and broadcast.
        assert_eq!(got.len(), 125);
        assert_eq!(exhausted, 15);
    }
}
