//! The server side of `warren.v1.Raft`: decodes openraft messages from other
//! managers and hands them to the local Raft member; `Forward` applies a
//! follower's write when this member leads, and `ReadIndex` confirms a read
//! point for a follower's linearizable read. Only managers get here: the call layer
//! (`wire::calls`) refuses every other caller.

use super::node::RaftNode;
use crate::store::Command;
use serde::Serialize;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use warren_proto::v1::raft_server::Raft as RaftRpc;
use warren_proto::v1::RaftPayload;

pub struct RaftService {
    node: Arc<RaftNode>,
}

impl RaftService {
    pub fn new(node: Arc<RaftNode>) -> RaftService {
        RaftService { node }
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("encoding a raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req)?;
        encode(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let cmd: Command = decode(req)?;
        encode(&self.node.handle_forward(cmd).await)
    }

    async fn read_index(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        encode(&self.node.handle_read_index().await)
    }
}
