//! Raft for the managers: the tonic network that carries Raft RPCs between managers
//! over mutual TLS (`network`, and `service` for the server side), and `RaftNode`,
//! which starts Raft on the redb stores and implements the store's write seam,
//! `store::Proposer` (forwarding to the leader when needed). The openraft type
//! declarations live with the store (`store::types`), which the log and state
//! machine implement.

pub mod network;
pub mod node;
pub mod service;

pub use node::RaftNode;

pub use crate::store::types::{Entry, LogId, Raft, StorageError, StoredMembership, TypeConfig};
