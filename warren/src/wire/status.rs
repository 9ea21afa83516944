//! How Warren's typed errors reach a gRPC caller: one mapping from the state
//! machine's `ApplyError`, the store's `WriteError` and a model `ValidationError` to
//! a `tonic::Status`, used by every service on the cluster port and the local socket.
//!
//! An error about a spec field (`publish: port 8080/tcp is ...`) also carries the
//! field's name in the `warren-field` metadata entry, so that a client can name the
//! field its own way (the CLI says `--publish`) without parsing the message.

use crate::model::ValidationError;
use crate::store::{ApplyError, WriteError};
use tonic::{Code, Status};

/// The metadata key naming the spec field a status is about.
pub const FIELD_KEY: &str = "warren-field";

pub fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::Apply(a) => apply_status(a),
        WriteError::NoLeader | WriteError::Timeout(_) | WriteError::NoQuorum { .. } => {
            Status::unavailable(e.to_string())
        }
        WriteError::Raft(_) => Status::internal(e.to_string()),
        // gRPC's own word for "the operation may have completed".
        WriteError::Unconfirmed(_) => Status::unknown(e.to_string()),
    }
}

pub fn apply_status(e: ApplyError) -> Status {
    let inner = match &e {
        ApplyError::Field { error, .. } => error.as_ref(),
        other => other,
    };
    let code = match inner {
        ApplyError::NotFound { .. } => Code::NotFound,
        ApplyError::AlreadyExists(_) => Code::AlreadyExists,
        // The request names something that is not there: fix the request.
        ApplyError::Missing { .. } | ApplyError::Invalid(_) => Code::InvalidArgument,
        // The request is fine but the cluster must change first (free the port,
        // stop using the object).
        ApplyError::InUse { .. }
        | ApplyError::PortTaken { .. }
        | ApplyError::IngressPortTaken { .. }
        | ApplyError::DaemonPortTaken { .. }
        | ApplyError::PortPublished { .. } => Code::FailedPrecondition,
        // Read again and retry.
        ApplyError::Conflict { .. } | ApplyError::Stale { .. } => Code::Aborted,
        ApplyError::Field { .. } => Code::InvalidArgument,
    };
    let mut status = Status::new(code, e.to_string());
    if let ApplyError::Field { field, .. } = &e {
        // A manifest's field path (`services.web.ports[0].published`): the CLI maps
        // it to the file and line it came from.
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(field.as_str()) {
            status.metadata_mut().insert(FIELD_KEY, v);
        }
    } else if let Some(field) = e.field() {
        status
            .metadata_mut()
            .insert(FIELD_KEY, tonic::metadata::MetadataValue::from_static(field));
    }
    status
}

/// The spec field a status is about, if the server said.
pub fn field_of(status: &Status) -> Option<&str> {
    status.metadata().get(FIELD_KEY)?.to_str().ok()
}

pub fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::store::{ObjectKind, User};

    #[test]
    fn every_apply_error_maps_to_the_code_a_caller_acts_on() {
        let cases = [
            (ApplyError::not_found(ObjectKind::Service, "web"), Code::NotFound, None),
            (
                ApplyError::AlreadyExists("service \"web\" already exists".into()),
                Code::AlreadyExists,
                None,
            ),
            (
                ApplyError::Missing {
                    kind: ObjectKind::Secret,
                    name: "db".into(),
                },
                Code::InvalidArgument,
                Some("secret"),
            ),
            (
                ApplyError::Missing {
                    kind: ObjectKind::Volume,
                    name: "data".into(),
                },
                Code::InvalidArgument,
                Some("mount"),
            ),
            (
                ApplyError::InUse {
                    kind: ObjectKind::Volume,
                    name: "data".into(),
                    user: User::Service("db".into()),
                },
                Code::FailedPrecondition,
                None,
            ),
            (
                ApplyError::PortTaken {
                    port: 8080,
                    protocol: Protocol::Tcp,
                    service: "web".into(),
                },
                Code::FailedPrecondition,
                Some("publish"),
            ),
            (
                ApplyError::Conflict {
                    service: "web".into(),
                    read: 1,
                    now: 2,
                },
                Code::Aborted,
                None,
            ),
            (ApplyError::Invalid("replicas: bad".into()), Code::InvalidArgument, None),
        ];
        for (e, code, field) in cases {
            let message = e.to_string();
            let status = apply_status(e.clone());
            assert_eq!(status.code(), code, "{e:?}");
            assert_eq!(status.message(), message, "{e:?}");
            assert_eq!(field_of(&status), field, "{e:?}");
            // Through a write, the same status.
            let written = write_status(WriteError::Apply(e.clone()));
            assert_eq!((written.code(), written.message()), (code, message.as_str()));
            assert_eq!(field_of(&written), field, "{e:?}");
        }
    }

    #[test]
    fn write_failures_that_are_not_refusals_are_unavailable_or_internal() {
        assert_eq!(write_status(WriteError::NoLeader).code(), Code::Unavailable);
        assert_eq!(
            write_status(WriteError::Timeout(std::time::Duration::from_secs(1))).code(),
            Code::Unavailable
        );
        assert_eq!(write_status(WriteError::Raft("x".into())).code(), Code::Internal);
        let unsure = write_status(WriteError::Unconfirmed("the leader went away".into()));
        assert_eq!(unsure.code(), Code::Unknown);
        assert!(
            unsure.message().contains("may or may not have been applied"),
            "{}",
            unsure.message()
        );
    }
}
