//! The write seam of the replicated store: `Proposer`, the one way a manager's
//! components put a `Command` into the log, see who leads and change who is in the
//! group, and `WriteError`, what a write can fail with. The Raft member
//! (`raft::RaftNode`) implements it; `FakeProposer` (store/fake.rs) applies commands
//! to a `Store` directly for unit tests. Not how entries are replicated or stored
//! (that is `raft`, `log` and `sm`).

use super::{ApplyError, Command};
use async_trait::async_trait;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("no manager is leader: an election is under way, or fewer than a majority of managers are reachable")]
    NoLeader,
    #[error("the write was not committed within {0:?}: is a majority of managers up?")]
    Timeout(Duration),
    /// This manager cannot reach a majority of the voters: a write cannot commit
    /// and a read cannot be confirmed as current. Said at once rather than after the
    /// write timeout, so that a client on the minority side of a partition knows.
    #[error("no quorum: fewer than {needed} of the {voters} managers are reachable from this one, so the write was not committed (the cluster changes only while a majority of its managers is up)")]
    NoQuorum { voters: usize, needed: usize },
    #[error("raft: {0}")]
    Raft(String),
    /// The write was handed to Raft (proposed here or forwarded to the leader) and
    /// then the answer was lost: the leader died, the quorum went or the deadline
    /// passed while it was in flight. It may still commit. Every other variant
    /// means the write was not applied; this one must not be retried blindly (a
    /// create could happen twice), so the caller is told to read the state first.
    #[error("the write may or may not have been applied ({0}): read the current state before retrying")]
    Unconfirmed(String),
}

/// One member of the Raft group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    /// The last log index known to be replicated to it (known on the leader only).
    pub matched: Option<u64>,
}

/// A moment's view of this member's Raft state, for the API and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This member's Raft ID.
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub members: Vec<Member>,
}

impl RaftStatus {
    /// The leader's Raft ID and address, when the leader is a known member.
    pub fn leader(&self) -> Option<(u64, String)> {
        let id = self.leader?;
        let m = self.members.iter().find(|m| m.id == id)?;
        Some((id, m.addr.clone()))
    }
}

/// A manager's Raft member, as the API, membership, dispatcher and leader duties use
/// it.
#[async_trait]
pub trait Proposer: Send + Sync {
    /// Writes `cmd` and returns once this member has applied it, with the state
    /// machine's verdict (`WriteError::Apply`). A follower forwards to the leader.
    async fn propose(&self, cmd: Command) -> Result<(), WriteError>;

    fn status(&self) -> RaftStatus;

    /// Returns once this member's state includes every write acknowledged before
    /// the call (a linearizable read point), or says why it cannot tell. A reader
    /// that gets an error may still read the local state, knowing it may be stale.
    async fn linearize(&self) -> Result<(), WriteError> {
        Ok(())
    }

    /// Changes whenever the leader does; the value is the leader's Raft ID.
    fn leadership(&self) -> watch::Receiver<Option<u64>>;

    /// Leader only: adds a manager as a learner, waits until it has caught up, then
    /// makes it a voter.
    async fn add_voter(&self, id: u64, addr: &str) -> Result<(), WriteError>;

    /// Leader only: removes a manager from the group.
    async fn remove_member(&self, id: u64) -> Result<(), WriteError>;

    fn id(&self) -> u64 {
        self.status().id
    }

    /// The leader's Raft ID and address, if one is known.
    fn leader(&self) -> Option<(u64, String)> {
        self.status().leader()
    }

    fn is_leader(&self) -> bool {
        let s = self.status();
        s.leader == Some(s.id)
    }
}
