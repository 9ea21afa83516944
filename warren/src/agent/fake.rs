//! [`FakeLink`]: managers for unit tests of the agent (no network, no TLS). Every
//! session the agent opens is handed to the test as a [`FakeSession`] — what the
//! agent sends, and a sender for what the dispatcher answers — and managers can be
//! made unreachable. Never used outside tests.

use super::link::{Inbound, Link, SessionError};
use crate::wire::channel::ChannelError;
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::Status;
use warren_proto::v1 as pb;
use warren_proto::v1::dispatcher_message::Msg as DispatcherMsg;

pub struct FakeLink {
    sessions: mpsc::UnboundedSender<FakeSession>,
    unreachable: Mutex<BTreeSet<String>>,
    attempts: Mutex<Vec<String>>,
}

/// One session as the dispatcher at `addr` sees it.
pub struct FakeSession {
    pub addr: String,
    from_agent: ReceiverStream<pb::AgentMessage>,
    to_agent: mpsc::UnboundedSender<Result<pb::DispatcherMessage, Status>>,
}

impl FakeLink {
    /// The link, and the sessions the agent opens through it, in order.
    pub fn new() -> (FakeLink, mpsc::UnboundedReceiver<FakeSession>) {
        let (sessions, rx) = mpsc::unbounded_channel();
        let link = FakeLink {
            sessions,
            unreachable: Mutex::default(),
            attempts: Mutex::default(),
        };
        (link, rx)
    }

    /// Connections to `addr` fail from now on.
    pub fn unreachable(&self, addr: &str) {
        self.unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr.to_string());
    }

    /// Every address the agent tried, in order (unreachable ones too).
    pub fn attempts(&self) -> Vec<String> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl Link for FakeLink {
    async fn open(&self, addr: &str, outbound: ReceiverStream<pb::AgentMessage>) -> Result<Inbound, SessionError> {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(addr.to_string());
        if self
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(addr)
        {
            return Err(SessionError::Connect(ChannelError::Connect {
                addr: addr.to_string(),
                reason: "connection refused".into(),
            }));
        }
        let (to_agent, inbound) = mpsc::unbounded_channel();
        let _ = self.sessions.send(FakeSession {
            addr: addr.to_string(),
            from_agent: outbound,
            to_agent,
        });
        Ok(UnboundedReceiverStream::new(inbound).boxed())
    }
}

impl FakeSession {
    /// The agent's next message; None once it closed the session.
    pub async fn next(&mut self) -> Option<pb::agent_message::Msg> {
        self.from_agent.next().await.and_then(|m| m.msg)
    }

    /// Answers as the dispatcher; false when the agent is gone.
    pub fn send(&self, msg: DispatcherMsg) -> bool {
        self.to_agent.send(Ok(pb::DispatcherMessage { msg: Some(msg) })).is_ok()
    }

    /// Ends the session with an error status, as a failing dispatcher does.
    pub fn fail(&self, status: Status) -> bool {
        self.to_agent.send(Err(status)).is_ok()
    }
}
