//! How Warren's typed errors reach a gRPC caller: one mapping from the state
//! machine's `ApplyError`, the store's `WriteError` and a model `ValidationError` to
//! a `tonic::Status`, used by every service on the cluster port and the local socket.

use crate::model::ValidationError;
use crate::store::{ApplyError, WriteError};
use tonic::Status;

pub fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::Apply(a) => apply_status(a),
        WriteError::NoLeader | WriteError::Timeout(_) => Status::unavailable(e.to_string()),
        WriteError::Raft(_) => Status::internal(e.to_string()),
    }
}

pub fn apply_status(e: ApplyError) -> Status {
    match e {
        ApplyError::NotFound(m) => Status::not_found(m),
        ApplyError::AlreadyExists(m) => Status::already_exists(m),
        ApplyError::Conflict(m) => Status::aborted(m),
        ApplyError::Invalid(m) => Status::invalid_argument(m),
    }
}

pub fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}
