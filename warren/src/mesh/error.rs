//! The typed errors of `warren::mesh`: every message names the interface, file,
//! peer, socket or route involved. Not the logic that raises them.

use std::io;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::network::NetworkError;

/// Everything the WireGuard backend seam can report.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// The userspace implementation is not installed.
    #[error("{path} is not installed: install the Debian package wireguard-go, or set the mesh's wireguard_go path")]
    NotInstalled { path: PathBuf },

    /// wireguard-go could not be started.
    #[error("start {path} for interface {iface}: {source}")]
    Spawn {
        path: PathBuf,
        iface: String,
        #[source]
        source: io::Error,
    },

    /// wireguard-go ran but its UAPI socket did not answer in time.
    #[error("wireguard-go for interface {iface} did not open {socket} within {secs} s{detail}")]
    NotReady {
        iface: String,
        socket: PathBuf,
        secs: u64,
        detail: String,
    },

    /// The UAPI socket (userspace) could not be reached or broke mid-exchange.
    #[error("uapi socket {socket}: {source}")]
    Uapi {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The implementation answered a UAPI request with an error number.
    #[error("uapi socket {socket}: {op} refused with errno {errno}")]
    UapiErrno {
        socket: PathBuf,
        op: &'static str,
        errno: i32,
    },

    /// The implementation sent a line this client does not understand.
    #[error("uapi socket {socket}: cannot parse {line:?}")]
    UapiParse { socket: PathBuf, line: String },

    /// The kernel backend (netlink, through wireguard-control) failed.
    #[error("wireguard kernel interface {iface}: {op}: {source}")]
    Kernel {
        iface: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Everything that can go wrong while building or running the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Bad configuration or a bad peer; `field` names what was wrong.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    /// The key file or its directory could not be read or written.
    #[error("wireguard key {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The key file holds something other than one base64 WireGuard key.
    #[error("wireguard key {path} holds no WireGuard private key (32 bytes in base64)")]
    BadKey { path: PathBuf },

    /// The key file can be read by other users.
    #[error("wireguard key {path} has mode {mode:o}; a private key must be 0600 (chmod 600 it)")]
    KeyMode { path: PathBuf, mode: u32 },

    /// `commit_rotation` without a prepared key.
    #[error("no key rotation is under way on this node (prepare one first)")]
    NoRotation,

    #[error(transparent)]
    Wg(#[from] WgError),

    #[error(transparent)]
    Network(#[from] NetworkError),

    /// A netlink operation on the mesh interface failed.
    #[error("{op} {link}: {source}")]
    Link {
        op: &'static str,
        link: String,
        #[source]
        source: io::Error,
    },

    /// A route operation failed.
    #[error("{op} route to {destination} dev {link}: {source}")]
    Route {
        op: &'static str,
        destination: Ipv4Net,
        link: String,
        #[source]
        source: io::Error,
    },

    /// A mesh route would replace a route that the mesh did not add.
    #[error(
        "route to {destination} already exists with protocol {protocol}, which the mesh does not own; not replacing it"
    )]
    RouteConflict { destination: Ipv4Net, protocol: u8 },

    /// The mesh's task has stopped.
    #[error("the mesh has shut down")]
    Closed,
}

impl MeshError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        MeshError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object() {
        let e = MeshError::KeyMode {
            path: "/var/lib/warren/wireguard/private.key".into(),
            mode: 0o644,
        };
        assert_eq!(
            e.to_string(),
            "wireguard key /var/lib/warren/wireguard/private.key has mode 644; a private key must be 0600 (chmod 600 it)"
        );
        let e = MeshError::from(WgError::UapiErrno {
            socket: "/run/wireguard/warren-wg.sock".into(),
            op: "set",
            errno: 22,
        });
        assert_eq!(
            e.to_string(),
            "uapi socket /run/wireguard/warren-wg.sock: set refused with errno 22"
        );
        let e = MeshError::invalid("listen_port", "must not be 0");
        assert_eq!(e.to_string(), "invalid listen_port: must not be 0");
    }
}
