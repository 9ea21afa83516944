//! Who may call what. Callers are identified by transport: the root-only unix
//! socket is the local administrator; on the cluster port, by the certificate the
//! caller presented (verified by TLS against the cluster CA). Only `Join` may be
//! called without a certificate.

use crate::model::NodeRole;
use crate::pki::{peer_identity, PeerIdentity};
use tonic::{Request, Status};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Through the local unix socket (root only by its file mode).
    Local,
    Node(PeerIdentity),
    Anonymous,
}

pub fn caller<T>(req: &Request<T>) -> Caller {
    if req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .is_some()
    {
        return Caller::Local;
    }
    match req.peer_certs() {
        Some(chain) => match peer_identity(&chain) {
            Some(id) => Caller::Node(id),
            None => Caller::Anonymous,
        },
        None => Caller::Anonymous,
    }
}

/// The local administrator or a manager's certificate.
pub fn require_manager<T>(req: &Request<T>) -> Result<Caller, Status> {
    match caller(req) {
        c @ Caller::Local => Ok(c),
        c @ Caller::Node(PeerIdentity {
            role: NodeRole::Manager,
            ..
        }) => Ok(c),
        Caller::Node(id) => Err(Status::permission_denied(format!(
            "node {} is a worker: this call needs a manager certificate",
            id.node_id
        ))),
        Caller::Anonymous => Err(Status::unauthenticated(
            "a cluster certificate is required: connect through the local socket, or pass --tls-dir with a certificate issued by this cluster",
        )),
    }
}

/// Any node of this cluster (the dispatcher's callers).
pub fn require_node<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    match caller(req) {
        Caller::Node(id) => Ok(id),
        _ => Err(Status::unauthenticated(
            "a node certificate issued by this cluster is required",
        )),
    }
}

/// A manager's certificate (Raft traffic, Raft membership).
pub fn require_manager_node<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    match caller(req) {
        Caller::Node(id) if id.role == NodeRole::Manager => Ok(id),
        _ => Err(Status::permission_denied("only managers may call this")),
    }
}
