//! The manager: what its services and duties share (`ManagerCtx`), the leader's
//! duties (`duties`: orchestrator, updater, scheduler, heartbeat monitor, Raft
//! membership),
//! the phases they compute (`orchestrator`, `updater`, `scheduler`, `filters`), the
//! diff of a manifest (`plan`) and the
//! dispatcher that holds each node agent's session. The gRPC API is `api`'s.

pub mod acme;
mod ctx;
pub mod dispatcher;
mod duties;
pub mod filters;
pub mod orchestrator;
pub mod plan;
pub mod scheduler;
pub mod updater;

pub use ctx::{ManagerCtx, ManagerSettings, Sessions};
pub use duties::run_leader_duties;
