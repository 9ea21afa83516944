//! Warren as a library: the CLI, the manager (Raft store, API, orchestrator,
//! scheduler, dispatcher), the node agent, the data plane, the WireGuard mesh and
//! the ingress. `main.rs` only calls `cli::main`.

pub mod agent;
pub mod api;
pub mod backup_seal;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod dns;
#[cfg(test)]
mod fuzz;
pub mod ingress;
pub mod leave;
pub mod manager;
pub mod manifest;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod network;
pub mod pki;
pub mod raft;
pub mod runtime;
pub mod secrets;
pub mod store;
pub mod wire;
pub mod worker;

/// The version printed by `warren --version` and reported by every node.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
