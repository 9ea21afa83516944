//! Warren as a library: the CLI, the manager (Raft store, API, orchestrator,
//! scheduler, dispatcher), the node agent and the data plane. `main.rs` only calls
//! `cli::main`.

pub mod dataplane;
pub mod model;
pub mod raft;
pub mod store;

/// The version printed by `warren --version` and reported by every node.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
