//! Who may call what. Callers are identified by transport: the root-only unix
//! socket is the local administrator; on the cluster port, by the certificate the
//! caller presented (verified by TLS against the cluster CA). `policy` says, for
//! every gRPC method a node serves, which callers it takes; `authorize` decides.
//! Only `Membership.Join` may be called without a certificate. The decision is
//! made once per call, by the call layer (`wire::calls`), which leaves the
//! `Caller` in the request for handlers that need to know who called.

use crate::model::NodeRole;
use crate::pki::{peer_identity, PeerIdentity};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::{Request, Status};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Through the local unix socket (root only by its file mode).
    Local,
    Node(PeerIdentity),
    Anonymous,
}

/// Which callers a method takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Anyone who reaches the port (joining: the token is checked by the handler).
    Anyone,
    /// Any node of this cluster (the dispatcher's callers).
    Node,
    /// A manager's certificate (Raft traffic, Raft membership, asking nodes).
    ManagerNode,
    /// The local administrator or a manager's certificate (the client API).
    Manager,
}

/// The policy of a gRPC path, `/warren.v1.Service/Method`. A path no service
/// serves gets the strictest client policy; the router then answers it
/// `Unimplemented`.
pub fn policy(path: &str) -> Policy {
    let (service, method) = split_path(path);
    match (service, method) {
        ("warren.v1.Membership", "Join") => Policy::Anyone,
        ("warren.v1.Membership", _) | ("warren.v1.Raft", _) | ("warren.v1.NodeAgent", _) => Policy::ManagerNode,
        ("warren.v1.Dispatcher", _) => Policy::Node,
        _ => Policy::Manager,
    }
}

/// `("warren.v1.WarrenApi", "CreateService")` from `/warren.v1.WarrenApi/CreateService`.
pub fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// Who is calling, from what the transport put in the request.
pub fn caller_of(extensions: &http::Extensions) -> Caller {
    if extensions.get::<UdsConnectInfo>().is_some() {
        return Caller::Local;
    }
    let certs = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs());
    match certs.and_then(|chain| peer_identity(&chain)) {
        Some(id) => Caller::Node(id),
        None => Caller::Anonymous,
    }
}

/// Whether `caller` may call a method with `policy`; the refusal says what is missing.
pub fn authorize(policy: Policy, caller: &Caller) -> Result<(), Status> {
    let manager_node = |c: &Caller| matches!(c, Caller::Node(id) if id.role == NodeRole::Manager);
    match policy {
        Policy::Anyone => Ok(()),
        Policy::Node => match caller {
            Caller::Node(_) => Ok(()),
            _ => Err(Status::unauthenticated(
                "a node certificate issued by this cluster is required",
            )),
        },
        Policy::ManagerNode if manager_node(caller) => Ok(()),
        Policy::ManagerNode => Err(Status::permission_denied("only managers may call this")),
        Policy::Manager => match caller {
            Caller::Local => Ok(()),
            Caller::Node(id) if id.role == NodeRole::Manager => Ok(()),
            Caller::Node(id) => Err(Status::permission_denied(format!(
                "node {} is a worker: this call needs a manager certificate",
                id.node_id
            ))),
            Caller::Anonymous => Err(Status::unauthenticated(
                "a cluster certificate is required: connect through the local socket, or pass --tls-dir with a certificate issued by this cluster",
            )),
        },
    }
}

/// The node that made this call, as the call layer identified it. Fails closed: a
/// request that did not pass the layer has no identity.
pub fn node_of<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    match req.extensions().get::<Caller>() {
        Some(Caller::Node(id)) => Ok(id.clone()),
        _ => Err(Status::unauthenticated(
            "a node certificate issued by this cluster is required",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(role: NodeRole) -> Caller {
        Caller::Node(PeerIdentity {
            node_id: "n1".into(),
            role,
        })
    }

    #[test]
    fn every_service_has_its_policy() {
        assert_eq!(policy("/warren.v1.Membership/Join"), Policy::Anyone);
        assert_eq!(policy("/warren.v1.Membership/JoinRaft"), Policy::ManagerNode);
        assert_eq!(policy("/warren.v1.Raft/AppendEntries"), Policy::ManagerNode);
        assert_eq!(policy("/warren.v1.NodeAgent/Logs"), Policy::ManagerNode);
        assert_eq!(policy("/warren.v1.Dispatcher/Session"), Policy::Node);
        assert_eq!(policy("/warren.v1.WarrenApi/CreateService"), Policy::Manager);
        assert_eq!(policy("/grpc.reflection.v1.ServerReflection/Info"), Policy::Manager);
    }

    #[test]
    fn anonymous_and_worker_callers_are_refused_what_needs_a_manager() {
        let anon = authorize(Policy::Manager, &Caller::Anonymous).unwrap_err();
        assert_eq!(anon.code(), tonic::Code::Unauthenticated);
        assert!(anon.message().contains("--tls-dir"), "{}", anon.message());
        let worker = authorize(Policy::Manager, &node(NodeRole::Worker)).unwrap_err();
        assert_eq!(worker.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            worker.message(),
            "node n1 is a worker: this call needs a manager certificate"
        );
        assert!(authorize(Policy::Manager, &Caller::Local).is_ok());
        assert!(authorize(Policy::Manager, &node(NodeRole::Manager)).is_ok());

        for c in [Caller::Anonymous, Caller::Local, node(NodeRole::Worker)] {
            let e = authorize(Policy::ManagerNode, &c).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{c:?}");
        }
        assert!(authorize(Policy::ManagerNode, &node(NodeRole::Manager)).is_ok());

        assert!(authorize(Policy::Node, &node(NodeRole::Worker)).is_ok());
        for c in [Caller::Anonymous, Caller::Local] {
            assert_eq!(
                authorize(Policy::Node, &c).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        assert!(authorize(Policy::Anyone, &Caller::Anonymous).is_ok());
    }

    #[test]
    fn the_caller_comes_from_the_transport() {
        let mut ext = http::Extensions::new();
        assert_eq!(caller_of(&ext), Caller::Anonymous);
        ext.insert(UdsConnectInfo {
            peer_addr: None,
            peer_cred: None,
        });
        assert_eq!(caller_of(&ext), Caller::Local);
    }

    #[test]
    fn a_request_that_skipped_the_layer_has_no_identity() {
        let mut req = Request::new(());
        assert_eq!(node_of(&req).unwrap_err().code(), tonic::Code::Unauthenticated);
        req.extensions_mut().insert(Caller::Local);
        assert!(node_of(&req).is_err());
        req.extensions_mut().insert(node(NodeRole::Worker));
        assert_eq!(node_of(&req).unwrap().node_id, "n1");
    }
}
