//! The gRPC surface of a manager: `WarrenApi` for clients (`server`, one line per
//! call, handing each to its family: `services`, `nodes`, `secrets`, `cluster`),
//! `Membership` for joining, and the calls answered by asking nodes
//! (`node_proxy`). Conversions, authorization, the call layer and the status
//! mapping are the boundary floor's (`wire`); the state and its rules are the
//! store's.

mod cluster;
mod common;
mod ingress;
pub mod membership;
pub mod node_proxy;
mod nodes;
mod secrets;
pub mod server;
mod services;

pub use membership::MembershipService;
pub use server::ApiService;

#[cfg(test)]
mod tests;
