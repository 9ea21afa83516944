//! The client side of Raft RPCs between managers: one lazily connected, mutually
//! authenticated tonic channel per peer address, carrying serde-encoded openraft
//! messages in `warren.v1.Raft`. The server side is `raft::service`.

use super::TypeConfig;
use crate::wire::channel::{self, ChannelError, ClientTls, Dial};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;
use warren_proto::v1::raft_client::RaftClient;
use warren_proto::v1::RaftPayload;

/// Channels to other managers, shared by Raft replication and write forwarding.
#[derive(Clone)]
pub struct Peers {
    tls: ClientTls,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    pub fn new(tls: impl Into<ClientTls>) -> Peers {
        Peers {
            tls: tls.into(),
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A channel to `addr` (IP:PORT); connects on first use and reconnects by itself.
    pub fn channel(&self, addr: &str) -> Result<Channel, ChannelError> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let dial = Dial::new(Duration::from_millis(500)).keepalive(Duration::from_secs(5), Duration::from_secs(5));
        let channel = channel::lazy(addr, self.tls.clone(), dial)?;
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A channel to any node's cluster port, verifying that it is node `node_id`
    /// (every node certificate names its node ID).
    pub fn node_channel(&self, addr: &str, node_id: &str) -> Result<Channel, ChannelError> {
        let key = format!("{addr}#{node_id}");
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let channel = channel::lazy(addr, self.tls.for_server(node_id), Dial::new(Duration::from_secs(2)))?;
        map.insert(key, channel.clone());
        Ok(channel)
    }

    pub fn raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, ChannelError> {
        Ok(RaftClient::new(self.channel(addr)?).max_decoding_message_size(256 << 20))
    }
}

impl openraft::RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            client: self.raft_client(&node.addr),
        }
    }
}

pub struct PeerConnection {
    target: u64,
    client: Result<RaftClient<Channel>, ChannelError>,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
        };
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&reply.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum Method {
    Append,
    Vote,
    Snapshot,
}

impl openraft::RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
