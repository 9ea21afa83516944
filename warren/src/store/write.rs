//! The write seam of the replicated store: what a write through Raft can fail with.
//! The Raft member (`raft::RaftNode`) implements the writing; everything above the
//! store names only this error.

use super::ApplyError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("no manager is leader: an election is under way, or fewer than a majority of managers are reachable")]
    NoLeader,
    #[error("the write was not committed within {0:?}: is a majority of managers up?")]
    Timeout(Duration),
    #[error("raft: {0}")]
    Raft(String),
}
