//! The API calls that a manager answers by asking nodes: service and task logs
//! (one `NodeAgent.Logs` stream per node, merged), image loads (the archive staged
//! once, then streamed to each target node) and a node's data-plane status. Nodes are reached with this manager's
//! own certificate over the cluster port.

use super::common::read;
use crate::manager::ManagerCtx;
use crate::model::NodeState;
use crate::store::{ApplyError, State};
use crate::wire::channel::ChannelError;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Status, Streaming};
use warren_proto::v1 as pb;

pub type LineStream = Pin<Box<dyn futures::Stream<Item = Result<pb::LogLine, Status>> + Send>>;

/// The tasks to read, grouped by node: node ID -> (node name, address, [(task ID, task name)]).
type ByNode = BTreeMap<String, (String, String, Vec<(String, String)>)>;

/// Why an image could not be sent to one node (reported per node, not for the call).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("reading the staged archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("{}", .0.message())]
    Node(#[from] Status),
}

/// `ServiceLogs`: the logs of every task of a service, merged.
pub(super) async fn service_logs(ctx: &ManagerCtx, req: pb::ServiceLogsRequest) -> Result<LineStream, Status> {
    let by_node = read(ctx, |s| {
        let svc = s.service(&req.service)?;
        Ok(group_by_node(s, s.tasks_of_service(&svc.id)))
    })?;
    logs(ctx, by_node, req.follow, req.tail).await
}

/// `TaskLogs`: the logs of one task, from the node it was placed on.
pub(super) async fn task_logs(ctx: &ManagerCtx, req: pb::TaskLogsRequest) -> Result<LineStream, Status> {
    let by_node = read(ctx, |s| {
        let t = s.task(&req.task)?;
        if t.node_id.is_none() {
            return Err(ApplyError::Invalid(format!(
                "task {} has not been placed on a node yet",
                t.name()
            )));
        }
        Ok(group_by_node(s, std::iter::once(t)))
    })?;
    logs(ctx, by_node, req.follow, req.tail).await
}

pub fn group_by_node<'a>(state: &State, tasks: impl Iterator<Item = &'a crate::model::Task>) -> ByNode {
    let mut by_node = ByNode::new();
    for t in tasks {
        let Some(node_id) = &t.node_id else { continue };
        let Some(node) = state.nodes.get(node_id) else { continue };
        by_node
            .entry(node_id.clone())
            .or_insert_with(|| (node.name.clone(), node.addr.clone(), vec![]))
            .2
            .push((t.id.clone(), t.name()));
    }
    by_node
}

async fn logs(ctx: &ManagerCtx, by_node: ByNode, follow: bool, tail: u64) -> Result<LineStream, Status> {
    if by_node.is_empty() {
        return Ok(Box::pin(futures::stream::empty()));
    }
    let mut streams = Vec::new();
    for (node_id, (node_name, addr, tasks)) in by_node {
        let channel = ctx
            .peers
            .node_channel(&addr, &node_id)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let names: BTreeMap<String, String> = tasks.iter().cloned().collect();
        let req = pb::NodeLogsRequest {
            task_ids: tasks.into_iter().map(|(id, _)| id).collect(),
            follow,
            tail,
        };
        let stream = pb::node_agent_client::NodeAgentClient::new(channel)
            .logs(req)
            .await
            .map_err(|s| Status::new(s.code(), format!("node {node_name}: {}", s.message())))?
            .into_inner();
        let node = node_name.clone();
        streams.push(
            stream
                .map(move |r| {
                    r.map(|mut l| {
                        l.task_name = names.get(&l.task_id).cloned().unwrap_or_default();
                        l.node_name = node.clone();
                        l
                    })
                })
                .boxed(),
        );
    }
    Ok(Box::pin(futures::stream::select_all(streams)))
}

/// Targets of an image load, (ID, name, address): named nodes, or every ready node.
pub fn load_targets(state: &State, wanted: &[String]) -> Result<Vec<(String, String, String)>, ApplyError> {
    let target = |n: &crate::model::Node| (n.id.clone(), n.name.clone(), n.addr.clone());
    if wanted.is_empty() {
        return Ok(state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Ready)
            .map(target)
            .collect());
    }
    wanted.iter().map(|w| state.node(w).map(target)).collect()
}

/// `LoadImage`: the archive staged once under the data dir's spool, then streamed
/// to each target node; every node's result is reported.
pub(super) async fn load_image(
    ctx: Arc<ManagerCtx>,
    mut chunks: Streaming<pb::LoadImageChunk>,
) -> Result<pb::LoadImageReply, Status> {
    let spool = ctx.data_dir.join("spool");
    let first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the upload is empty"))?;
    let Some(pb::load_image_chunk::Part::Header(header)) = first.part else {
        return Err(Status::invalid_argument("an image upload starts with its header"));
    };
    let targets = ctx
        .store
        .read(|s| load_targets(s, &header.nodes))
        .map_err(crate::wire::status::apply_status)?;
    if targets.is_empty() {
        return Err(Status::failed_precondition("no ready node to load the image on"));
    }
    tokio::fs::create_dir_all(&spool)
        .await
        .map_err(|e| Status::internal(format!("creating {}: {e}", spool.display())))?;
    let path = spool.join(format!("image-{}.tar", crate::model::new_id()));
    let staged = async {
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        while let Some(c) = chunks.message().await? {
            if let Some(pb::load_image_chunk::Part::Data(d)) = c.part {
                f.write_all(&d).await.map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        f.flush().await.map_err(|e| Status::internal(e.to_string()))
    }
    .await;
    if let Err(e) = staged {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    let mut results = Vec::new();
    let sends = targets.into_iter().map(|(id, name, addr)| {
        let ctx = ctx.clone();
        let path = path.clone();
        async move {
            let r = send_image(&ctx, &id, &addr, &path).await;
            match r {
                Ok(images) => pb::NodeImages {
                    node: name,
                    images,
                    error: String::new(),
                },
                Err(e) => pb::NodeImages {
                    node: name,
                    images: vec![],
                    error: e.to_string(),
                },
            }
        }
    });
    results.extend(futures::future::join_all(sends).await);
    let _ = tokio::fs::remove_file(&path).await;
    Ok(pb::LoadImageReply { results })
}

async fn send_image(
    ctx: &ManagerCtx,
    node_id: &str,
    addr: &str,
    path: &std::path::Path,
) -> Result<Vec<String>, SendError> {
    let channel = ctx.peers.node_channel(addr, node_id)?;
    let mut f = tokio::fs::File::open(path).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match f.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send(pb::ImageChunk {
                            data: buf[..n].to_vec(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let reply = pb::node_agent_client::NodeAgentClient::new(channel)
        .max_encoding_message_size(8 << 20)
        .load_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    Ok(reply.into_inner().images)
}

/// The data-plane status of one node, asked of the node itself.
pub(super) async fn dataplane(
    ctx: &ManagerCtx,
    node_id: &str,
    name: &str,
    addr: &str,
) -> Result<pb::NodeDataplane, Status> {
    let channel = ctx
        .peers
        .node_channel(addr, node_id)
        .map_err(|e| Status::unavailable(format!("node {name}: {e}")))?;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        pb::node_agent_client::NodeAgentClient::new(channel).dataplane(pb::Empty {}),
    )
    .await
    .map_err(|_| Status::unavailable(format!("node {name} did not answer within 5s")))?
    .map_err(|s| Status::new(s.code(), format!("node {name}: {}", s.message())))?;
    Ok(reply.into_inner())
}
