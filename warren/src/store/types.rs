//! The openraft type declarations of Warren's Raft group: the log carries store
//! `Command`s and answers `Response`s. They live below the log store and state
//! machine that implement them, so that `raft` (the network and the member) builds on
//! the store and never the other way round.

use super::{Command, Response};
use std::io::Cursor;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<u64>;
