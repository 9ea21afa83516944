//! The gRPC surface of a manager: `WarrenApi` for clients, `Membership` for joining,
//! and the calls answered by asking nodes (`node_proxy`). Conversions, authorization
//! and status mapping are the boundary floor's (`wire`).

pub mod membership;
pub mod node_proxy;
pub mod server;
