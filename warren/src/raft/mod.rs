//! Raft for the managers: the openraft type configuration, the tonic network that
//! carries Raft RPCs between managers over mutual TLS, and `RaftNode`, which starts
//! Raft on the redb stores and offers `write` (forwarding to the leader when needed).

pub mod network;
pub mod node;
pub mod service;

pub use node::{RaftNode, WriteError};

use crate::store::{Command, Response};
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
