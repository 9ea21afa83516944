//! The API's cluster-wide calls: join tokens (shown or rotated), the cluster's
//! identity and Raft status, the stream of committed changes (`events`), and the
//! sealed snapshot of `cluster backup`, and the node certificates' lifetime.

use super::common::write;
use crate::manager::ManagerCtx;
use crate::model::{self, now_ms, NodeRole};
use crate::pki::JoinToken;
use crate::store::Command;
use crate::wire::convert;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::Status;
use warren_proto::v1 as pb;

pub(super) type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

pub(super) async fn join_token(ctx: &ManagerCtx, req: pb::GetJoinTokenRequest) -> Result<pb::JoinToken, Status> {
    let role = convert::role_from_pb(req.role);
    if req.rotate || req.expire_ms > 0 {
        let expires_ms = match req.expire_ms {
            0 => 0,
            d => now_ms().saturating_add(i64::try_from(d).unwrap_or(i64::MAX)),
        };
        write(
            ctx,
            Command::RotateJoinToken {
                role,
                secret: crate::pki::new_token_secret(),
                expires_ms,
            },
        )
        .await?;
    }
    let meta = ctx
        .store
        .read(|s| s.meta.clone())
        .ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
    let expires_ms = match role {
        NodeRole::Worker => meta.worker_token_expires_ms,
        NodeRole::Manager => meta.manager_token_expires_ms,
    };
    let token = JoinToken {
        ca_digest: crate::pki::ca_digest(&meta.ca_cert_pem).map_err(|e| Status::internal(e.to_string()))?,
        secret: match role {
            NodeRole::Worker => meta.worker_token_secret,
            NodeRole::Manager => meta.manager_token_secret,
        },
    };
    Ok(pb::JoinToken {
        role: convert::role_to_pb(role) as i32,
        token: token.to_string(),
        managers: ctx.manager_addrs(),
        expires_ms,
    })
}

pub(super) fn info(ctx: &ManagerCtx) -> pb::ClusterInfo {
    let raft = ctx.raft.status();
    let leader_addr = raft.leader().map(|(_, a)| a).unwrap_or_default();
    ctx.store.read(|s| {
        let meta = s.meta.clone().unwrap_or_default();
        let by_raft: std::collections::HashMap<u64, &model::Node> = s
            .nodes
            .values()
            .filter(|n| n.raft_id != 0)
            .map(|n| (n.raft_id, n))
            .collect();
        let leader_node = raft.leader.and_then(|id| by_raft.get(&id));
        pb::ClusterInfo {
            overlay: meta.overlay.as_str().to_string(),
            cluster_id: meta.cluster_id.clone(),
            created_ms: meta.created_ms,
            leader_node_id: leader_node.map(|n| n.id.clone()).unwrap_or_default(),
            leader_addr,
            term: raft.term,
            last_log_index: raft.last_log_index,
            applied_index: raft.applied_index,
            members: raft
                .members
                .iter()
                .map(|m| pb::RaftMember {
                    raft_id: m.id,
                    node_id: by_raft.get(&m.id).map(|n| n.id.clone()).unwrap_or_default(),
                    addr: m.addr.clone(),
                    leader: raft.leader == Some(m.id),
                    voter: m.voter,
                    matched_index: m.matched.unwrap_or(0),
                })
                .collect(),
            ca_digest: crate::pki::ca_digest(&meta.ca_cert_pem).unwrap_or_default(),
            acme: Some(convert::acme_to_pb(&s.acme)),
            nodes: s.nodes.len() as u64,
            services: s.services.len() as u64,
            tasks: s.tasks.len() as u64,
            pod_cidr: meta.pod_cidr.clone(),
            node_id: ctx.node_id.clone(),
            service_cidr: meta.service_cidr.clone(),
            cert_expiry_ms: meta.cert_expiry().as_millis() as i64,
            snapshot_index: raft.snapshot_index,
            purged_index: raft.purged_index,
        }
    })
}

/// `cluster update --cert-expiry`: the lifetime of the node certificates issued from
/// now on (each node's next renewal); the ones in use keep theirs.
pub(super) async fn update_certs(
    ctx: &ManagerCtx,
    req: pb::UpdateClusterCertsRequest,
) -> Result<pb::UpdateClusterCertsResponse, Status> {
    let d = std::time::Duration::from_millis(u64::try_from(req.cert_expiry_ms).unwrap_or(0));
    model::validate_cert_expiry("cert-expiry", d).map_err(crate::wire::status::invalid)?;
    write(
        ctx,
        Command::SetCertExpiry {
            expiry_ms: req.cert_expiry_ms,
        },
    )
    .await?;
    Ok(pb::UpdateClusterCertsResponse {
        cert_expiry_ms: req.cert_expiry_ms,
    })
}

/// Committed changes of the given kinds (all when empty), from now on. A watcher
/// that falls behind gets `DataLoss` and must re-read.
pub(super) fn events(ctx: &ManagerCtx, req: pb::WatchEventsRequest) -> EventStream {
    let kinds: Vec<i32> = req.kinds;
    let mut rx = ctx.store.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let applied = match rx.recv().await {
                Ok(a) => a,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let msg = format!("the watcher fell behind by {n} batches of events; resubscribe and re-read");
                    let _ = tx.send(Err(Status::data_loss(msg))).await;
                    return;
                }
                Err(_) => return,
            };
            let at = now_ms();
            for c in &applied.changes {
                let ev = convert::event_to_pb(c, applied.index, at);
                if !kinds.is_empty() && !kinds.contains(&ev.kind) {
                    continue;
                }
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}

/// `warren cluster backup`: the state as of a linearizable read point (every write
/// acknowledged before the call is in it), sealed by the caller's passphrase. The
/// secrets key never leaves the manager but sealed.
pub(super) async fn backup(ctx: &ManagerCtx, req: pb::BackupClusterRequest) -> Result<pb::BackupClusterReply, Status> {
    if req.passphrase.is_empty() {
        return Err(Status::invalid_argument("passphrase: must not be empty"));
    }
    // A backup must not miss an acknowledged write: no fallback to a stale read.
    ctx.raft
        .linearize()
        .await
        .map_err(|e| Status::unavailable(format!("cannot take a consistent backup: {e}")))?;
    let (state, index) = ctx.store.read(|s| (s.clone(), ctx.store.applied_index()));
    let Some(meta) = state.meta.as_ref() else {
        return Err(Status::unavailable("the cluster is not initialized yet"));
    };
    let mut reply = pb::BackupClusterReply {
        file: vec![],
        cluster_id: meta.cluster_id.clone(),
        applied_index: index,
        services: state.services.len() as u32,
        secrets: state.secrets.len() as u32,
        configs: state.configs.len() as u32,
        volumes: state.volumes.len() as u32,
        nodes: state.nodes.len() as u32,
    };
    let body = crate::store::backup::Snapshot::new(state, index, now_ms()).encode();
    let key = ctx.secrets_key.clone();
    // Argon2id takes its 64 MiB and a good fraction of a second: off the runtime.
    reply.file = tokio::task::spawn_blocking(move || crate::backup_seal::seal(&req.passphrase, &key, &body))
        .await
        .map_err(|e| Status::internal(format!("sealing the backup: {e}")))?
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    tracing::info!(
        cluster = %reply.cluster_id,
        index,
        bytes = reply.file.len(),
        services = reply.services,
        "cluster backup taken"
    );
    Ok(reply)
}
