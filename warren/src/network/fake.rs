//! `FakeNetwork`: an in-memory [`NetworkManager`] for unit tests of the agent, with
//! the real one's validation, address rules and idempotency, a call log and injected
//! failures. Touches no kernel state; never a substitute for the netlink tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use futures::future::BoxFuture;
use ipnet::Ipv4Net;

use super::error::NetworkError;
use super::ipam::{gateway_of, host_range, pick, validate_subnet};
use super::{
    host_veth_name, validate_peers, validate_task_id, NetworkManager, PeerRoute, TaskNetwork, TaskNetworkStatus,
};

/// One call the fake received, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeCall {
    Setup(String),
    Teardown(String),
    SetPeerRoutes(Vec<PeerRoute>),
    List,
}

#[derive(Default)]
struct State {
    tasks: BTreeMap<String, TaskNetwork>,
    /// Namespaces "left over" without an address, as after a crash.
    orphans: BTreeSet<String>,
    next: u32,
    peer_routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    calls: Vec<FakeCall>,
    failing: BTreeSet<String>,
}

/// An in-memory network for node subnet `subnet`.
pub struct FakeNetwork {
    subnet: Ipv4Net,
    cluster_cidr: Ipv4Net,
    netns_dir: PathBuf,
    state: Mutex<State>,
}

impl FakeNetwork {
    /// Panics on a subnet the real manager would reject: a test bug, not input.
    pub fn new(subnet: Ipv4Net, cluster_cidr: Ipv4Net) -> FakeNetwork {
        validate_subnet("subnet", subnet).expect("FakeNetwork subnet");
        FakeNetwork {
            subnet,
            cluster_cidr,
            netns_dir: PathBuf::from("/fake/netns"),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.state().calls.clone()
    }

    /// The task networks set up and not torn down.
    pub fn tasks(&self) -> Vec<TaskNetwork> {
        self.state().tasks.values().cloned().collect()
    }

    /// The peer routes last set.
    pub fn peer_routes(&self) -> BTreeMap<Ipv4Net, Ipv4Addr> {
        self.state().peer_routes.clone()
    }

    /// Makes every later `setup_task(task_id)` fail, until [`FakeNetwork::heal`].
    pub fn fail_setup(&self, task_id: &str) {
        self.state().failing.insert(task_id.to_string());
    }

    /// Undoes [`FakeNetwork::fail_setup`].
    pub fn heal(&self, task_id: &str) {
        self.state().failing.remove(task_id);
    }

    /// Pretends a namespace of `task_id` was left behind (for garbage-collection tests).
    pub fn add_orphan(&self, task_id: &str) {
        self.state().orphans.insert(task_id.to_string());
    }

    fn netns_path(&self, task_id: &str) -> PathBuf {
        self.netns_dir.join(task_id)
    }

    fn setup(&self, task_id: &str) -> Result<TaskNetwork, NetworkError> {
        let mut st = self.state();
        st.calls.push(FakeCall::Setup(task_id.to_string()));
        validate_task_id(task_id)?;
        if st.failing.contains(task_id) {
            return Err(NetworkError::Link {
                op: "create veth",
                link: host_veth_name("fake-", task_id),
                source: std::io::Error::other("injected failure"),
            });
        }
        if let Some(t) = st.tasks.get(task_id) {
            return Ok(t.clone());
        }
        let used: Vec<u32> = st
            .tasks
            .values()
            .map(|t| u32::from(t.address))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let addr = pick(&used, host_range(self.subnet), st.next)
            .ok_or(NetworkError::AddressesExhausted { subnet: self.subnet })?;
        st.next = addr.wrapping_add(1);
        st.orphans.remove(task_id);
        let t = TaskNetwork {
            task_id: task_id.to_string(),
            netns_path: self.netns_path(task_id),
            address: Ipv4Addr::from(addr),
            prefix_len: self.subnet.prefix_len(),
            gateway: gateway_of(self.subnet),
            host_veth: host_veth_name("fake-", task_id),
        };
        st.tasks.insert(task_id.to_string(), t.clone());
        Ok(t)
    }

    fn teardown(&self, task_id: &str) -> Result<(), NetworkError> {
        let mut st = self.state();
        st.calls.push(FakeCall::Teardown(task_id.to_string()));
        validate_task_id(task_id)?;
        st.tasks.remove(task_id);
        st.orphans.remove(task_id);
        Ok(())
    }

    fn routes(&self, peers: &[PeerRoute]) -> Result<(), NetworkError> {
        let mut st = self.state();
        st.calls.push(FakeCall::SetPeerRoutes(peers.to_vec()));
        st.peer_routes = validate_peers(self.subnet, self.cluster_cidr, peers)?;
        Ok(())
    }

    fn list_now(&self) -> Vec<TaskNetworkStatus> {
        let mut st = self.state();
        st.calls.push(FakeCall::List);
        let mut out: BTreeMap<String, TaskNetworkStatus> = st
            .tasks
            .values()
            .map(|t| {
                (
                    t.task_id.clone(),
                    TaskNetworkStatus {
                        task_id: t.task_id.clone(),
                        netns_path: Some(t.netns_path.clone()),
                        address: Some(t.address),
                    },
                )
            })
            .collect();
        for o in &st.orphans {
            out.entry(o.clone()).or_insert(TaskNetworkStatus {
                task_id: o.clone(),
                netns_path: Some(self.netns_path(o)),
                address: None,
            });
        }
        out.into_values().collect()
    }
}

impl NetworkManager for FakeNetwork {
    fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    fn setup_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<TaskNetwork, NetworkError>> {
        Box::pin(async move { self.setup(task_id) })
    }

    fn teardown_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(async move { self.teardown(task_id) })
    }

    fn set_peer_routes<'a>(&'a self, peers: &'a [PeerRoute]) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(async move { self.routes(peers) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskNetworkStatus>, NetworkError>> {
        Box::pin(async move { Ok(self.list_now()) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn fake() -> Arc<dyn NetworkManager> {
        Arc::new(FakeNetwork::new(
            "10.88.7.0/29".parse().unwrap(),
            "10.88.0.0/16".parse().unwrap(),
        ))
    }

    #[tokio::test]
    async fn behaves_like_the_real_one_through_the_trait() {
        let net = fake();
        let a = net.setup_task("t1").await.unwrap();
        assert_eq!(a.address, Ipv4Addr::new(10, 88, 7, 2));
        assert_eq!(a.gateway, Ipv4Addr::new(10, 88, 7, 1));
        assert_eq!(net.setup_task("t1").await.unwrap(), a);
        for t in ["t2", "t3", "t4", "t5"] {
            net.setup_task(t).await.unwrap();
        }
        let e = net.setup_task("t6").await.unwrap_err();
        assert_eq!(e.to_string(), "no free address left in subnet 10.88.7.0/29");
        net.teardown_task("t1").await.unwrap();
        net.teardown_task("t1").await.unwrap();
        assert_eq!(net.list().await.unwrap().len(), 4);
        let e = net.setup_task("bad/id").await.unwrap_err();
        assert!(e.to_string().starts_with("invalid task_id"));
        let via: Ipv4Addr = "192.168.0.2".parse().unwrap();
        net.set_peer_routes(&[("10.88.8.0/24".parse().unwrap(), via)])
            .await
            .unwrap();
        let e = net
            .set_peer_routes(&[("10.88.7.0/24".parse().unwrap(), via)])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("overlaps this node's own subnet"), "{e}");
    }

    #[tokio::test]
    async fn failures_orphans_and_call_log() {
        let f = FakeNetwork::new("10.88.7.0/24".parse().unwrap(), "10.88.0.0/16".parse().unwrap());
        f.fail_setup("t1");
        let e = f.setup_task("t1").await.unwrap_err();
        assert!(e.to_string().contains("injected failure"), "{e}");
        f.heal("t1");
        f.setup_task("t1").await.unwrap();
        f.add_orphan("old");
        let l = f.list().await.unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].task_id, "old");
        assert_eq!(l[0].address, None);
        f.teardown_task("old").await.unwrap();
        assert_eq!(
            f.calls(),
            vec![
                FakeCall::Setup("t1".into()),
                FakeCall::Setup("t1".into()),
                FakeCall::List,
                FakeCall::Teardown("old".into()),
            ]
        );
        assert_eq!(f.tasks().len(), 1);
    }
}
