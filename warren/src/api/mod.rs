//! The gRPC surface of a manager: `WarrenApi` for clients, `Membership` for joining,
//! plus authorization and the conversions between protobuf and Warren's own types
//! (`convert`), which is where protobuf stops.

pub mod auth;
pub mod convert;
pub mod membership;
pub mod node_proxy;
pub mod server;
