//! `warren.v1.Membership`: joining the cluster. `Join` is the one call allowed
//! without a certificate: the token's secret decides the role, the CA signs the
//! node's CSR, and the node is recorded through Raft. A new manager then calls
//! `JoinRaft`, with its fresh certificate, once its own Raft server listens; the
//! leader adds it as a learner, waits until it caught up, and makes it a voter.

use crate::manager::ManagerCtx;
use crate::model::{new_id, now_ms, validate_name, Availability, Node, NodeRole, NodeState, ValidationError};
use crate::pki::{CertificateAuthority, JoinToken};
use crate::store::Command;
use crate::wire::status::{apply_status, invalid, write_status};
use crate::wire::{auth, convert};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use warren_proto::v1 as pb;

pub struct MembershipService {
    ctx: Arc<ManagerCtx>,
}

impl MembershipService {
    pub fn new(ctx: Arc<ManagerCtx>) -> Self {
        MembershipService { ctx }
    }
}

/// "3 s ago", "2 h ago".
fn expired_ago(expires_ms: i64) -> String {
    let secs = (crate::model::now_ms() - expires_ms).max(0) / 1000;
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl pb::membership_server::Membership for MembershipService {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let req = req.into_inner();
        let token = JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let meta = self
            .ctx
            .store
            .read(|s| s.meta.clone())
            .ok_or_else(|| Status::unavailable("this manager has not loaded the cluster state yet; retry"))?;
        let digest = crate::pki::ca_digest(&meta.ca_cert_pem).map_err(|e| Status::internal(e.to_string()))?;
        if token.ca_digest != digest {
            return Err(Status::permission_denied(
                "the join token was issued by another cluster (its CA digest does not match)",
            ));
        }
        let (role, expires_ms) = if ct_eq(&token.secret, &meta.manager_token_secret) {
            (NodeRole::Manager, meta.manager_token_expires_ms)
        } else if ct_eq(&token.secret, &meta.worker_token_secret) {
            (NodeRole::Worker, meta.worker_token_expires_ms)
        } else {
            return Err(Status::permission_denied(
                "invalid join token: it was rotated, or never issued by this cluster; get a current one with `warren cluster join-token worker|manager`",
            ));
        };
        if expires_ms > 0 && crate::model::now_ms() >= expires_ms {
            return Err(Status::permission_denied(format!(
                "the {} join token expired {}; get a new one with `warren cluster join-token {} --rotate`",
                role.as_str(),
                expired_ago(expires_ms),
                role.as_str()
            )));
        }
        validate_name("node-name", &req.node_name).map_err(invalid)?;
        req.advertise_addr.parse::<std::net::SocketAddr>().map_err(|_| {
            invalid(ValidationError::new(
                "advertise-addr",
                format!("invalid address {:?}: expected IP:PORT", req.advertise_addr),
            ))
        })?;
        let ca_key = self
            .ctx
            .secrets_key
            .open(&meta.ca_key_sealed)
            .map_err(|e| Status::internal(format!("cannot unseal the CA key: {e}")))?;
        let ca = CertificateAuthority::from_parts(&meta.ca_cert_pem, &ca_key)
            .map_err(|e| Status::internal(e.to_string()))?;
        let node_id = new_id();
        let cert_pem = ca
            .sign_node(&req.csr_der, &meta.cluster_id, &node_id, role, meta.cert_expiry())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cert_expires_ms = crate::pki::Validity::of_pem(&cert_pem)
            .map_err(|e| Status::internal(e.to_string()))?
            .not_after_ms;
        let raft_id = match role {
            NodeRole::Manager => loop {
                let id: u64 = rand::random();
                if id != 0 && self.ctx.store.read(|s| s.nodes.values().all(|n| n.raft_id != id)) {
                    break id;
                }
            },
            NodeRole::Worker => 0,
        };
        let now = now_ms();
        let node = Node {
            id: node_id.clone(),
            name: req.node_name.clone(),
            role,
            availability: Availability::Active,
            labels: Default::default(),
            addr: req.advertise_addr.clone(),
            resources: convert::resources_from_pb(req.resources),
            platform: convert::platform_from_pb(req.platform),
            state: NodeState::Unknown,
            message: "joined; waiting for the agent's first heartbeat".into(),
            raft_id,
            subnet: None,
            mesh: None,
            warren_version: req.warren_version,
            created_ms: now,
            updated_ms: now,
            version: 1,
            ingress: convert::node_ingress_from_pb(req.ingress),
            metrics_port: 0,
            last_contact_ms: 0,
            cert_expires_ms,
            autonomy: String::new(),
        };
        self.ctx
            .raft
            .propose(Command::AddNode { node })
            .await
            .map_err(write_status)?;
        tracing::info!(node = %node_id, name = %req.node_name, role = role.as_str(), "node joined");
        Ok(Response::new(pb::JoinResponse {
            node_id,
            role: convert::role_to_pb(role) as i32,
            cert_pem,
            ca_pem: meta.ca_cert_pem,
            managers: self.ctx.manager_addrs(),
            cluster_id: meta.cluster_id,
            overlay: meta.overlay.as_str().to_string(),
            raft_id,
            secrets_key: match role {
                NodeRole::Manager => self.ctx.secrets_key.as_bytes().to_vec(),
                NodeRole::Worker => vec![],
            },
        }))
    }

    async fn join_raft(&self, req: Request<pb::JoinRaftRequest>) -> Result<Response<pb::Empty>, Status> {
        let peer = auth::node_of(&req)?;
        let node_id = req.into_inner().node_id;
        if node_id != peer.node_id {
            return Err(Status::permission_denied(format!(
                "the certificate belongs to node {}, not {node_id}",
                peer.node_id
            )));
        }
        let node = self
            .ctx
            .store
            .read(|s| s.node(&node_id).cloned())
            .map_err(apply_status)?;
        if node.role != NodeRole::Manager || node.raft_id == 0 {
            return Err(Status::permission_denied(format!(
                "node {} is not a manager",
                node.name
            )));
        }
        if self.ctx.raft.is_leader() {
            let already = self
                .ctx
                .raft
                .status()
                .members
                .iter()
                .any(|m| m.id == node.raft_id && m.voter);
            if already {
                return Ok(Response::new(pb::Empty {}));
            }
            self.ctx
                .raft
                .add_voter(node.raft_id, &node.addr)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            tracing::info!(node = %node.name, raft_id = node.raft_id, "manager entered the Raft group");
            return Ok(Response::new(pb::Empty {}));
        }
        // Relay to the leader with this manager's own certificate.
        let (_, leader_addr) = self
            .ctx
            .raft
            .leader()
            .ok_or_else(|| Status::unavailable("no leader at the moment; retry"))?;
        let channel = self
            .ctx
            .peers
            .channel(&leader_addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        pb::membership_client::MembershipClient::new(channel)
            .join_raft(pb::JoinRaftRequest { node_id })
            .await
    }
}
