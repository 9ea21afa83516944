//! The typed errors of `warren::network`: every message names the link, namespace,
//! address, route or file involved. Not the logic that raises them.

use std::io;
use std::path::PathBuf;

use ipnet::Ipv4Net;

/// Everything that can go wrong while wiring a node's or a task's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Bad configuration or arguments; `field` names what was wrong.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    /// Every host address of the node's subnet is taken.
    #[error("no free address left in subnet {subnet}")]
    AddressesExhausted { subnet: Ipv4Net },

    /// The IPAM state on disk was written for another subnet.
    #[error("ipam state {path} belongs to subnet {stored}, not {requested}; run cleanup_node to reset it")]
    IpamSubnetMismatch {
        path: PathBuf,
        stored: String,
        requested: Ipv4Net,
    },

    /// The IPAM database could not be opened, read or written.
    #[error("ipam state {path}: {source}")]
    Ipam {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },

    /// A netlink socket could not be opened.
    #[error("open netlink socket {context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A link operation failed (`op` is e.g. "create bridge", `link` the interface).
    #[error("{op} {link}: {source}")]
    Link {
        op: &'static str,
        link: String,
        #[source]
        source: io::Error,
    },

    /// A link of the wanted name exists but is of another kind.
    #[error("link {link} exists but is a {kind}, not a {wanted}")]
    WrongLinkKind {
        link: String,
        kind: String,
        wanted: &'static str,
    },

    /// An address operation failed.
    #[error("{op} address {address} on {link}: {source}")]
    Address {
        op: &'static str,
        address: String,
        link: String,
        #[source]
        source: io::Error,
    },

    /// A route operation failed.
    #[error("{op} route to {destination} via {via}: {source}")]
    Route {
        op: &'static str,
        destination: String,
        via: String,
        #[source]
        source: io::Error,
    },

    /// A peer route would replace a route that Warren did not add.
    #[error(
        "route to {destination} already exists with protocol {protocol}, which warren does not own; not replacing it"
    )]
    RouteConflict { destination: Ipv4Net, protocol: u8 },

    /// A network namespace file could not be created, entered or removed.
    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A per-namespace sysctl could not be read or written.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: io::Error,
    },

    /// `nft` failed or is missing.
    #[error("nftables table ip {table}: {reason}")]
    Nft { table: String, reason: String },

    /// A per-task file (hosts, resolv.conf) or directory could not be written.
    #[error("write {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl NetworkError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        NetworkError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Turns an rtnetlink error into the kernel's errno where there is one, so that
/// messages read "File exists (os error 17)" rather than a debug dump.
pub(crate) fn nl_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// The errno of a netlink error reply, if it is one.
pub(crate) fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object() {
        let e = NetworkError::AddressesExhausted {
            subnet: "10.88.3.0/24".parse().unwrap(),
        };
        assert_eq!(e.to_string(), "no free address left in subnet 10.88.3.0/24");

        let e = NetworkError::Link {
            op: "create bridge",
            link: "warren0".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(e.to_string().starts_with("create bridge warren0: "), "{e}");

        let e = NetworkError::Route {
            op: "add",
            destination: "10.88.2.0/24".into(),
            via: "10.210.0.2".into(),
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
        };
        assert!(
            e.to_string().starts_with("add route to 10.88.2.0/24 via 10.210.0.2: "),
            "{e}"
        );

        let e = NetworkError::invalid("bridge", "must be 1 to 15 characters");
        assert_eq!(e.to_string(), "invalid bridge: must be 1 to 15 characters");

        let e = NetworkError::RouteConflict {
            destination: "10.88.2.0/24".parse().unwrap(),
            protocol: 4,
        };
        assert_eq!(
            e.to_string(),
            "route to 10.88.2.0/24 already exists with protocol 4, which warren does not own; not replacing it"
        );
    }
}
