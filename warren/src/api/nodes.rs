//! The API's node calls: list, read, update (availability, labels) and remove
//! nodes, and a node's data-plane status (asked of the node through `node_proxy`).

use super::common::{node_pb, read, write};
use crate::manager::ManagerCtx;
use crate::model::{now_ms, NodeRole};
use crate::store::Command;
use crate::wire::convert;
use crate::wire::status::invalid;
use tonic::Status;
use warren_proto::v1 as pb;

fn leader(ctx: &ManagerCtx) -> Option<u64> {
    ctx.raft.leader().map(|(id, _)| id)
}

fn view(ctx: &ManagerCtx, key: &str) -> Result<pb::Node, Status> {
    let leader = leader(ctx);
    read(ctx, |s| {
        let n = s.node(key)?;
        let reserved = s.reserved_by_node().get(&n.id).copied().unwrap_or_default();
        Ok(node_pb(n, reserved, leader))
    })
}

pub(super) fn list(ctx: &ManagerCtx) -> pb::ListNodesResponse {
    let leader = leader(ctx);
    let nodes = ctx.store.read(|s| {
        let reserved = s.reserved_by_node();
        let mut nodes: Vec<pb::Node> = s
            .nodes
            .values()
            .map(|n| node_pb(n, reserved.get(&n.id).copied().unwrap_or_default(), leader))
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    });
    pb::ListNodesResponse { nodes }
}

pub(super) fn get(ctx: &ManagerCtx, req: pb::GetNodeRequest) -> Result<pb::Node, Status> {
    view(ctx, &req.node)
}

pub(super) async fn dataplane(ctx: &ManagerCtx, req: pb::GetNodeRequest) -> Result<pb::NodeDataplane, Status> {
    let (id, name, addr, state) = read(ctx, |s| {
        let n = s.node(&req.node)?;
        Ok((n.id.clone(), n.name.clone(), n.addr.clone(), n.state))
    })?;
    if state.is_away() {
        return Err(Status::unavailable(format!("node {name} is {}", state.as_str())));
    }
    super::node_proxy::dataplane(ctx, &id, &name, &addr).await
}

pub(super) async fn update(ctx: &ManagerCtx, req: pb::UpdateNodeRequest) -> Result<pb::Node, Status> {
    let id = read(ctx, |s| Ok(s.node(&req.node)?.id.clone()))?;
    let availability = req
        .availability
        .map(convert::availability_from_pb)
        .transpose()
        .map_err(invalid)?;
    for k in req.label_add.keys().chain(req.label_rm.iter()) {
        if k.trim().is_empty() || k.contains('=') {
            return Err(Status::invalid_argument(format!("label: invalid label key {k:?}")));
        }
    }
    if req.rotate_key {
        // Checked before anything is written: a refused rotation changes nothing.
        ctx.store.read(|s| {
            let overlay = s.meta.as_ref().map(|m| m.overlay).unwrap_or_default();
            let n = s.node(&id).map_err(crate::wire::status::apply_status)?;
            if overlay != crate::model::Overlay::Wireguard {
                return Err(Status::failed_precondition(format!(
                    "rotate-key: the cluster's overlay is {}; only a wireguard cluster has node keys",
                    overlay.as_str()
                )));
            }
            if n.mesh.is_none() {
                return Err(Status::failed_precondition(format!(
                    "rotate-key: node {} has not published a mesh key yet (is its daemon running?)",
                    n.name
                )));
            }
            Ok(())
        })?;
    }
    if req.ingress.is_none() && req.ingress_ports.is_some() {
        return Err(Status::invalid_argument(
            "ingress-http-port: give --ingress true with the ingress ports",
        ));
    }
    if let Some(on) = req.ingress {
        let current = read(ctx, |s| Ok(s.node(&id)?.ingress))?;
        // A port left 0 keeps the node's, or the default.
        let ingress = on.then(|| {
            let base = current.unwrap_or_default();
            let asked = req.ingress_ports.unwrap_or_default();
            let port = |p: u32, keep: u16| if p == 0 { keep } else { u16::try_from(p).unwrap_or(0) };
            crate::model::ingress::NodeIngress {
                http_port: port(asked.http_port, base.http_port),
                https_port: port(asked.https_port, base.https_port),
            }
        });
        write(
            ctx,
            Command::SetNodeIngress {
                id: id.clone(),
                ingress,
                at_ms: now_ms(),
            },
        )
        .await?;
    }
    let other = availability.is_some() || !req.label_add.is_empty() || !req.label_rm.is_empty();
    if other || (!req.rotate_key && req.ingress.is_none()) {
        write(
            ctx,
            Command::UpdateNode {
                id: id.clone(),
                availability,
                label_add: req.label_add.into_iter().collect(),
                label_rm: req.label_rm,
                at_ms: now_ms(),
            },
        )
        .await?;
    }
    if req.rotate_key {
        write(
            ctx,
            Command::RotateNodeKey {
                id: id.clone(),
                at_ms: now_ms(),
            },
        )
        .await?;
    }
    view(ctx, &id)
}

pub(super) async fn remove(ctx: &ManagerCtx, req: pb::RemoveNodeRequest) -> Result<pb::Empty, Status> {
    let (node, managers) = read(ctx, |s| {
        let n = s.node(&req.node)?.clone();
        let managers = s.nodes.values().filter(|n| n.role == NodeRole::Manager).count();
        Ok((n, managers))
    })?;
    if node.id == ctx.node_id {
        return Err(Status::failed_precondition(format!(
            "node {} is the manager answering this request: run `warren node rm` on another manager",
            node.name
        )));
    }
    // An unreachable node may still run its tasks on its own; the operator who
    // removes it says that it is gone, as for a down one.
    if !node.state.is_away() && !req.force {
        return Err(Status::failed_precondition(format!(
            "node {} is {} and would keep running its tasks: stop it first, or use --force",
            node.name,
            node.state.as_str()
        )));
    }
    if node.role == NodeRole::Manager && managers <= 1 {
        return Err(Status::failed_precondition("cannot remove the last manager"));
    }
    write(ctx, Command::RemoveNode { id: node.id }).await?;
    Ok(pb::Empty {})
}
