//! [`FakeProposer`]: a [`Proposer`] for unit tests of the API, the dispatcher and the
//! leader duties (no Raft, no disk). It applies each command to a `Store`'s state at
//! once, as a one-member group would, so callers see the state machine's real
//! verdicts and the store's event stream. A test can hand leadership to another
//! member and read back what was proposed. Never used outside tests.

use super::write::{Member, Proposer, RaftStatus, WriteError};
use super::{Applied, Command, Store};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub struct FakeProposer {
    store: Arc<Store>,
    id: u64,
    leader: watch::Sender<Option<u64>>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    index: u64,
    members: Vec<Member>,
    proposed: Vec<Command>,
}

impl FakeProposer {
    /// Member 1 at `127.0.0.1:2377`, the leader of a group of one.
    pub fn new(store: Arc<Store>) -> Arc<FakeProposer> {
        let (leader, _) = watch::channel(Some(1));
        Arc::new(FakeProposer {
            store,
            id: 1,
            leader,
            inner: Mutex::new(Inner {
                members: vec![member(1, "127.0.0.1:2377")],
                ..Default::default()
            }),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes member `id` (at `addr`) the leader, or leaves the group without one.
    pub fn set_leader(&self, leader: Option<(u64, &str)>) {
        if let Some((id, addr)) = leader {
            let mut inner = self.inner();
            if !inner.members.iter().any(|m| m.id == id) {
                inner.members.push(member(id, addr));
            }
        }
        self.leader.send_replace(leader.map(|(id, _)| id));
    }

    /// Every command proposed so far, in order (refused ones too).
    pub fn proposed(&self) -> Vec<Command> {
        self.inner().proposed.clone()
    }
}

fn member(id: u64, addr: &str) -> Member {
    Member {
        id,
        addr: addr.to_string(),
        voter: true,
        matched: None,
    }
}

#[async_trait]
impl Proposer for FakeProposer {
    async fn propose(&self, cmd: Command) -> Result<(), WriteError> {
        // A follower would forward to the leader; without one, nothing commits.
        if self.leader.borrow().is_none() {
            return Err(WriteError::NoLeader);
        }
        let index = {
            let mut inner = self.inner();
            inner.proposed.push(cmd.clone());
            inner.index += 1;
            inner.index
        };
        let mut changes = Vec::new();
        let result = self.store.write(|s| s.apply(&cmd, &mut changes));
        self.store.publish(Applied {
            index,
            changes,
            reset: false,
        });
        result.map_err(WriteError::Apply)
    }

    fn status(&self) -> RaftStatus {
        let inner = self.inner();
        RaftStatus {
            id: self.id,
            leader: *self.leader.borrow(),
            term: 1,
            last_log_index: inner.index,
            applied_index: inner.index,
            snapshot_index: 0,
            purged_index: 0,
            members: inner.members.clone(),
        }
    }

    fn leadership(&self) -> watch::Receiver<Option<u64>> {
        self.leader.subscribe()
    }

    async fn add_voter(&self, id: u64, addr: &str) -> Result<(), WriteError> {
        let mut inner = self.inner();
        inner.members.retain(|m| m.id != id);
        inner.members.push(member(id, addr));
        Ok(())
    }

    async fn remove_member(&self, id: u64) -> Result<(), WriteError> {
        self.inner().members.retain(|m| m.id != id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ApplyError;

    #[tokio::test]
    async fn applies_with_the_state_machines_verdict_and_publishes() {
        let store = Store::new();
        let p = FakeProposer::new(store.clone());
        let mut events = store.subscribe();
        let cmd = Command::RemoveSecret {
            id: "nope".into(),
            rules: crate::store::Rules::CURRENT,
        };
        let e = p.propose(cmd.clone()).await.unwrap_err();
        assert!(matches!(e, WriteError::Apply(ApplyError::NotFound { .. })), "{e}");
        assert_eq!(events.recv().await.unwrap().index, 1);
        assert_eq!(p.proposed(), vec![cmd]);
        assert!(p.is_leader());

        p.set_leader(Some((2, "10.0.0.2:2377")));
        assert!(!p.is_leader());
        assert_eq!(p.leader(), Some((2, "10.0.0.2:2377".to_string())));
        p.set_leader(None);
        assert!(matches!(
            p.propose(Command::Batch(vec![])).await,
            Err(WriteError::NoLeader)
        ));
    }
}
