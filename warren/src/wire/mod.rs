//! The boundary floor between Warren's own types and the wire: protobuf conversions
//! (`convert`, the only place that knows both), who may call what (`auth`), the one
//! wrapper around every call a node serves (`calls`: authorization and metrics), how
//! typed errors become gRPC statuses (`status`) and how a channel to another node is
//! opened (`channel`). The CLI, the API, the dispatcher, the agent, the Raft service
//! and the daemon build on it; it builds only on `model`, `store`, `pki` and the
//! data plane's status type.

pub mod auth;
pub mod calls;
pub mod channel;
pub mod convert;
pub mod status;
