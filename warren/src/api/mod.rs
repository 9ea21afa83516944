//! The gRPC surface of a manager: `WarrenApi` for clients (`server`, one line per
//! call, handing each to its family: `services`, `nodes`, `secrets`, `cluster`,
//! `apply`),
//! `Membership` for joining, and the calls answered by asking nodes
//! (`node_proxy`); reads are linearized in front of them (`reads`). Conversions, authorization, the call layer and the status
//! mapping are the boundary floor's (`wire`); the state and its rules are the
//! store's.

mod apply;
mod cluster;
mod common;
mod ingress;
pub mod membership;
pub mod node_proxy;
mod nodes;
pub mod reads;
mod secrets;
pub mod server;
mod services;

pub use membership::MembershipService;
pub use server::ApiService;

use crate::manager::ManagerCtx;
use std::sync::Arc;
use warren_proto::v1::warren_api_server::WarrenApiServer;

/// The client API as every listener serves it: reads linearized (`reads`).
pub fn client_api(ctx: Arc<ManagerCtx>) -> reads::Linearized<WarrenApiServer<ApiService>> {
    let raft = ctx.raft.clone();
    reads::Linearized::new(WarrenApiServer::new(ApiService::new(ctx)), raft)
}

#[cfg(test)]
mod tests;
