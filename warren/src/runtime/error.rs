//! The runtime's error types: what went wrong talking to containerd, a registry or an
//! archive, each naming the object (image, container, file) and the cause. Not the
//! agent's policy on what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// Everything [`super::ContainerRuntime`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Neither the configured socket answered nor could a containerd be started.
    #[error("no containerd: {0}")]
    NoContainerd(String),

    /// A containerd RPC failed; `op` names the call and `object` what it was about.
    #[error("{op} {object}: containerd: {message}")]
    Containerd {
        op: &'static str,
        object: String,
        code: tonic::Code,
        message: String,
    },

    /// An image reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// Pulling `image` failed.
    #[error("pull {image}: {source}")]
    Pull {
        image: String,
        #[source]
        source: PullError,
    },

    /// Importing an archive failed.
    #[error("import {}: {reason}", path.display())]
    Import { path: PathBuf, reason: String },

    /// The image is not in containerd's image store (pull it first).
    #[error("image {image} not found; pull it first")]
    ImageNotFound { image: String },

    /// The image is present but its content or config is unusable.
    #[error("image {image}: {reason}")]
    BadImage { image: String, reason: String },

    /// No container with this id in the runtime's namespace.
    #[error("container {id} not found")]
    NotFound { id: String },

    /// A container with this id already exists.
    #[error("container {id} already exists")]
    AlreadyExists { id: String },

    /// The container has no running task.
    #[error("container {id} is not running")]
    NotRunning { id: String },

    /// A field of a [`super::ContainerSpec`] is invalid.
    #[error("invalid container spec: {field}: {reason}")]
    InvalidSpec { field: String, reason: String },

    /// `init` was asked for but the node has none of the init binaries.
    #[error("init: no init binary on this node (looked for {}): install Debian's tini or catatonit", tried.join(", "))]
    NoInitBinary { tried: Vec<String> },

    /// An exec did not finish in time (it was killed).
    #[error("exec {command:?} in container {id} timed out after {timeout:?}")]
    ExecTimeout {
        id: String,
        command: Vec<String>,
        timeout: Duration,
    },

    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry does not know the tag, digest or repository.
    #[error("{0}")]
    NotFound(String),
    /// The registry refused our credentials (or their absence).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Any other registry answer that is not a success.
    #[error("registry answered {status}: {message}")]
    Registry { status: u16, message: String },
    /// The registry could not be reached or the connection broke.
    #[error("{0}")]
    Transport(String),
    /// The image index has no manifest for the node's platform.
    #[error("no manifest for platform {platform} (index has: {available})")]
    NoPlatform { platform: String, available: String },
    /// Content does not match its digest, or a document does not parse.
    #[error("{0}")]
    Invalid(String),
    /// Storing or unpacking the content in containerd failed.
    #[error("{0}")]
    Store(Box<RuntimeError>),
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    /// Maps a gRPC status from containerd, turning NotFound/AlreadyExists on
    /// containers into the typed variants.
    pub(crate) fn grpc(op: &'static str, object: impl Into<String>, status: tonic::Status) -> Self {
        RuntimeError::Containerd {
            op,
            object: object.into(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// The gRPC code when this is a containerd error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            RuntimeError::Containerd { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn is_code(&self, want: tonic::Code) -> bool {
        self.code() == Some(want)
    }
}

/// Result alias of the runtime module.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_error_names_image_and_cause() {
        let e = RuntimeError::Pull {
            image: "127.0.0.1:5000/nope:1".into(),
            source: PullError::NotFound("manifest unknown".into()),
        };
        assert_eq!(e.to_string(), "pull 127.0.0.1:5000/nope:1: manifest unknown");
    }

    #[test]
    fn grpc_error_names_call_and_object() {
        let e = RuntimeError::grpc("create container", "web.1", tonic::Status::already_exists("id exists"));
        assert_eq!(e.to_string(), "create container web.1: containerd: id exists");
        assert!(e.is_code(tonic::Code::AlreadyExists));
    }

    #[test]
    fn spec_error_names_field() {
        let e = RuntimeError::InvalidSpec {
            field: "mounts[0].target".into(),
            reason: "must be an absolute path".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid container spec: mounts[0].target: must be an absolute path"
        );
    }
}
