//! Why the state machine refused a command: one typed `ApplyError` with a variant per
//! cause a caller can act on. The messages reach API clients as they are, so they name
//! the object and the problem; `wire::status` maps each variant to a gRPC status.

use super::state::ObjectKind;
use crate::model::Protocol;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// No object of `kind` answers to `key` (an ID, a name or an ID prefix).
    #[error("{kind} {key:?} not found")]
    NotFound { kind: ObjectKind, key: String },
    #[error("{0}")]
    AlreadyExists(String),
    /// A spec names a secret or volume that does not exist.
    #[error("{}", missing_message(*kind, name))]
    Missing { kind: ObjectKind, name: String },
    /// The object is still used and cannot be removed until its user lets go of it.
    #[error("{}", in_use_message(*kind, name, user))]
    InUse { kind: ObjectKind, name: String, user: User },
    /// Another service already publishes this port (for this protocol, in any mode).
    #[error("publish: port {port}/{} is already published by service {service:?}", protocol.as_str())]
    PortTaken {
        port: u16,
        protocol: Protocol,
        service: String,
    },
    /// One of a node's own listeners uses this port: no service may publish it.
    #[error("publish: port {port}/{} is the {} of node {node:?}", protocol.as_str(), what.as_str())]
    DaemonPortTaken {
        port: u16,
        protocol: Protocol,
        node: String,
        what: crate::model::DaemonPort,
    },
    /// A node's ingress listens on this port: no service may publish it.
    #[error("publish: port {port}/tcp is where the ingress of node {node:?} listens")]
    IngressPortTaken { port: u16, node: String },
    /// A service publishes the port a node's ingress is to listen on.
    #[error("{}: port {port}/tcp is already published by service {service:?}", flag.as_str())]
    PortPublished {
        flag: IngressPortFlag,
        port: u16,
        service: String,
    },
    /// The object changed since the caller read it at version `read`.
    #[error("{kind} {name:?} changed since it was read (version {read} read, now {now}): read it again and retry")]
    Stale {
        kind: ObjectKind,
        name: String,
        read: u64,
        now: u64,
    },
    /// The service changed since the caller read it at version `read`.
    #[error("service {service:?} changed since it was read (version {read} read, now {now}): read it again and retry")]
    Conflict { service: String, read: u64, now: u64 },
    #[error("{0}")]
    Invalid(String),
    /// A step of a manifest's apply failed: `field` is the manifest's field path
    /// (`services.web.ports[0].published`), which the CLI maps to a file and line.
    #[error("{field}: {}", strip_field(error))]
    Field { field: String, error: Box<ApplyError> },
}

/// The message of `e` without its own leading `field: ` (a manifest's field path
/// replaces it).
fn strip_field(e: &ApplyError) -> String {
    let text = e.to_string();
    match e.field() {
        Some(f) => text.strip_prefix(&format!("{f}: ")).map(str::to_string).unwrap_or(text),
        None => text,
    }
}

/// Which of a node's ingress ports an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IngressPortFlag {
    Http,
    Https,
}

impl IngressPortFlag {
    pub fn as_str(&self) -> &'static str {
        match self {
            IngressPortFlag::Http => "ingress-http-port",
            IngressPortFlag::Https => "ingress-https-port",
        }
    }
}

/// What keeps an object in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum User {
    /// A service whose spec (or canary) names the object.
    Service(String),
    /// A task that is still stopping, named `service.slot`.
    Task(String),
    /// An ingress route that names the object (a service or a certificate).
    Ingress(String),
}

impl ApplyError {
    pub(crate) fn not_found(kind: ObjectKind, key: &str) -> ApplyError {
        ApplyError::NotFound {
            kind,
            key: key.to_string(),
        }
    }

    /// The spec field the error is about, when it is one: the message then starts
    /// with `field: `, and a client that set the field from a flag can say which.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ApplyError::Missing {
                kind: ObjectKind::Secret,
                ..
            } => Some("secret"),
            ApplyError::Missing {
                kind: ObjectKind::Config,
                ..
            } => Some("config"),
            ApplyError::Missing { .. } => Some("mount"),
            ApplyError::PortTaken { .. } | ApplyError::IngressPortTaken { .. } | ApplyError::DaemonPortTaken { .. } => {
                Some("publish")
            }
            ApplyError::PortPublished { flag, .. } => Some(flag.as_str()),
            _ => None,
        }
    }
}

fn missing_message(kind: ObjectKind, name: &str) -> String {
    match kind {
        ObjectKind::Secret => {
            format!("secret: secret {name:?} not found (create it with `warren secret create {name} FILE`)")
        }
        ObjectKind::Config => {
            format!("config: config {name:?} not found (create it with `warren config create {name} FILE`)")
        }
        _ => format!("mount: {kind} {name:?} not found (create it with `warren {kind} create {name}`)"),
    }
}

fn in_use_message(kind: ObjectKind, name: &str, user: &User) -> String {
    match (kind, user) {
        (ObjectKind::Secret, User::Service(s)) => {
            format!("secret {name} is in use by service {s}: remove it from the service first")
        }
        (_, User::Service(s)) => format!("{kind} {name} is in use by service {s}"),
        (_, User::Task(t)) => format!("{kind} {name} is in use by task {t} (still stopping)"),
        (_, User::Ingress(i)) => {
            format!("{kind} {name} is in use by ingress route {i}: remove it from the route first")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object_and_the_field() {
        let cases = [
            (
                ApplyError::not_found(ObjectKind::Service, "nope"),
                "service \"nope\" not found",
            ),
            (
                ApplyError::Missing {
                    kind: ObjectKind::Secret,
                    name: "db".into(),
                },
                "secret: secret \"db\" not found (create it with `warren secret create db FILE`)",
            ),
            (
                ApplyError::Missing {
                    kind: ObjectKind::Volume,
                    name: "data".into(),
                },
                "mount: volume \"data\" not found (create it with `warren volume create data`)",
            ),
            (
                ApplyError::InUse {
                    kind: ObjectKind::Secret,
                    name: "db".into(),
                    user: User::Service("web".into()),
                },
                "secret db is in use by service web: remove it from the service first",
            ),
            (
                ApplyError::InUse {
                    kind: ObjectKind::Volume,
                    name: "data".into(),
                    user: User::Service("db".into()),
                },
                "volume data is in use by service db",
            ),
            (
                ApplyError::InUse {
                    kind: ObjectKind::Volume,
                    name: "data".into(),
                    user: User::Task("db.1".into()),
                },
                "volume data is in use by task db.1 (still stopping)",
            ),
            (
                ApplyError::PortTaken {
                    port: 8080,
                    protocol: Protocol::Tcp,
                    service: "web".into(),
                },
                "publish: port 8080/tcp is already published by service \"web\"",
            ),
            (
                ApplyError::Conflict {
                    service: "web".into(),
                    read: 1,
                    now: 2,
                },
                "service \"web\" changed since it was read (version 1 read, now 2): read it again and retry",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
            if let Some(field) = e.field() {
                assert!(text.starts_with(&format!("{field}: ")), "{text}");
            }
        }
    }
}
