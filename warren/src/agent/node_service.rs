//! `warren.v1.NodeAgent`: what a node offers the managers about itself — its
//! containers' logs, image imports and the status of its eBPF data plane. Every
//! node serves it on its cluster port (mutual TLS; the call layer lets only managers
//! through). The work itself is the node's `NodeOps` (the executor); a node without
//! a container runtime says so.

use crate::runtime::RuntimeError;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};
use warren_proto::v1 as pb;

/// (task ID, line) pairs, ending when the logs end (or never, when following).
pub type LogLines = BoxStream<'static, Result<(String, String), NodeOpsError>>;

/// Why a node could not do what a manager asked of it.
#[derive(Debug, thiserror::Error)]
pub enum NodeOpsError {
    #[error("this node has no container runtime")]
    NoRuntime,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub trait NodeOps: Send + Sync + 'static {
    /// The output of these tasks' containers: the last `tail` lines of each (all when
    /// None), then, when `follow`, new lines as they come.
    fn logs(
        &self,
        task_ids: Vec<String>,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxFuture<'_, Result<LogLines, NodeOpsError>>;
    /// Imports an OCI or docker-save archive; returns the image names it held.
    fn load_image(&self, archive: PathBuf) -> BoxFuture<'_, Result<Vec<String>, NodeOpsError>>;
}

/// A node without a container runtime.
pub struct NoRuntime;

impl NodeOps for NoRuntime {
    fn logs(&self, _: Vec<String>, _: bool, _: Option<usize>) -> BoxFuture<'_, Result<LogLines, NodeOpsError>> {
        Box::pin(async { Err(NodeOpsError::NoRuntime) })
    }

    fn load_image(&self, _: PathBuf) -> BoxFuture<'_, Result<Vec<String>, NodeOpsError>> {
        Box::pin(async { Err(NodeOpsError::NoRuntime) })
    }
}

pub struct NodeService {
    ops: Arc<dyn NodeOps>,
    /// Where uploaded archives are staged before the import.
    spool: PathBuf,
    node_name: String,
    /// None with `--dataplane none`.
    dataplane: Option<Arc<dyn crate::dataplane::Dataplane>>,
    /// The node's mesh (wireguard overlay), for `node inspect`.
    pub mesh: Option<Arc<super::node_mesh::NodeMesh>>,
}

impl NodeService {
    pub fn new(
        ops: Arc<dyn NodeOps>,
        spool: PathBuf,
        node_name: String,
        dataplane: Option<Arc<dyn crate::dataplane::Dataplane>>,
    ) -> NodeService {
        NodeService {
            ops,
            spool,
            node_name,
            dataplane,
            mesh: None,
        }
    }
}

fn mesh_status_to_pb(s: &crate::mesh::MeshStatus) -> pb::NodeMeshStatus {
    let ms = |t: &std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    pb::NodeMeshStatus {
        interface: s.interface.clone(),
        backend: s.backend.to_string(),
        public_key: s.public_key.to_string(),
        next_public_key: s.next_public_key.map(|k| k.to_string()).unwrap_or_default(),
        listen_port: u32::from(s.listen_port),
        mtu: s.mtu,
        up: s.up,
        peers: s
            .peers
            .iter()
            .map(|p| pb::NodeMeshPeer {
                node_id: p.node_id.clone().unwrap_or_default(),
                public_key: p.public_key.to_string(),
                endpoint: p.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                allowed_ips: p.allowed_ips.iter().map(|n| n.to_string()).collect(),
                last_handshake_ms: p.last_handshake.as_ref().map_or(0, ms),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect(),
    }
}

type LineStream = Pin<Box<dyn futures::Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl pb::node_agent_server::NodeAgent for NodeService {
    type LogsStream = LineStream;

    async fn dataplane(&self, _: Request<pb::Empty>) -> Result<Response<pb::NodeDataplane>, Status> {
        let dp = self.dataplane.clone();
        // Reading every per-CPU counter map is blocking syscalls.
        let st = tokio::task::spawn_blocking(move || dp.map(|d| d.status()))
            .await
            .map_err(|e| Status::internal(format!("reading the data plane: {e}")))?;
        let mut out = crate::wire::convert::dataplane_to_pb(&self.node_name, st.as_ref());
        if let Some(m) = &self.mesh {
            match m.status().await {
                Some(Ok(s)) => out.mesh = Some(mesh_status_to_pb(&s)),
                Some(Err(e)) => out.errors.push(format!("mesh: {e}")),
                None => out.errors.push("mesh: not started yet".into()),
            }
        }
        Ok(Response::new(out))
    }

    async fn logs(&self, req: Request<pb::NodeLogsRequest>) -> Result<Response<LineStream>, Status> {
        let req = req.into_inner();
        let tail = (req.tail > 0).then_some(req.tail as usize);
        let lines = self
            .ops
            .logs(req.task_ids, req.follow, tail)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let out = lines.map(|r| {
            r.map(|(task_id, line)| pb::LogLine {
                task_id,
                line,
                task_name: String::new(),
                node_name: String::new(),
            })
            .map_err(|e| Status::internal(e.to_string()))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn load_image(&self, req: Request<Streaming<pb::ImageChunk>>) -> Result<Response<pb::LoadedImages>, Status> {
        let mut chunks = req.into_inner();
        tokio::fs::create_dir_all(&self.spool)
            .await
            .map_err(|e| Status::internal(format!("creating {}: {e}", self.spool.display())))?;
        let path = self.spool.join(format!("upload-{}.tar", crate::model::new_id()));
        let result = async {
            let mut f = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Status::internal(format!("creating {}: {e}", path.display())))?;
            while let Some(chunk) = chunks.message().await? {
                f.write_all(&chunk.data)
                    .await
                    .map_err(|e| Status::internal(format!("writing {}: {e}", path.display())))?;
            }
            f.flush().await.map_err(|e| Status::internal(e.to_string()))?;
            drop(f);
            self.ops
                .load_image(path.clone())
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        Ok(Response::new(pb::LoadedImages { images: result? }))
    }
}
