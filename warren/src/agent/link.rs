//! The agent's link to a manager: `Link` opens one session stream with a
//! dispatcher (the agent's messages out, the dispatcher's in). `TlsLink` is the
//! real one, over the cluster port with the node's certificate; `FakeLink`
//! (agent/fake.rs) stands in for managers in unit tests. Not what a session says
//! (`session`) nor when to reconnect (`run`).

use crate::pki::LiveIdentity;
use crate::wire::channel::{self, ChannelError, Dial};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use warren_proto::v1 as pb;

/// What a dispatcher sends on a session.
pub type Inbound = BoxStream<'static, Result<pb::DispatcherMessage, Status>>;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] ChannelError),
    #[error("session refused: {}", .0.message())]
    Refused(Status),
    #[error("stream broke: {}", .0.message())]
    Stream(Status),
    #[error("the dispatcher stopped reading")]
    Gone,
}

#[async_trait]
pub trait Link: Send + Sync {
    /// Opens a session with the dispatcher at `addr`, sending it `outbound`.
    async fn open(&self, addr: &str, outbound: ReceiverStream<pb::AgentMessage>) -> Result<Inbound, SessionError>;
}

/// Mutual TLS to the manager's cluster port, with keep-alives so that a dead
/// manager is noticed within seconds.
/// The node's live identity: a session opened after a renewal presents the new
/// certificate, and the sessions open meanwhile are not touched.
pub struct TlsLink {
    identity: std::sync::Arc<LiveIdentity>,
}

impl TlsLink {
    pub fn new(identity: std::sync::Arc<LiveIdentity>) -> TlsLink {
        TlsLink { identity }
    }
}

#[async_trait]
impl Link for TlsLink {
    async fn open(&self, addr: &str, outbound: ReceiverStream<pb::AgentMessage>) -> Result<Inbound, SessionError> {
        let dial = Dial::new(Duration::from_secs(2)).keepalive(Duration::from_secs(2), Duration::from_secs(3));
        let channel = channel::connect(addr, self.identity.to_managers(), dial).await?;
        let inbound = pb::dispatcher_client::DispatcherClient::new(channel)
            .session(outbound)
            .await
            .map_err(SessionError::Refused)?
            .into_inner();
        Ok(inbound.boxed())
    }
}
