//! Forwarding of non-Warren names to the node's upstream resolvers: one query over UDP,
//! again over TCP when the UDP answer is truncated, upstreams tried in order until one
//! answers. Owns the upstream exchange only; what the client gets back is built by
//! `server`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::DnsError;

/// The UDP payload size offered to upstreams: the DNS Flag Day 2020 value, which
/// avoids IP fragmentation on any common path.
pub(crate) const UPSTREAM_UDP_PAYLOAD: u16 = 1232;

/// Forwards queries to a list of upstream resolvers.
#[derive(Clone, Debug)]
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    pub(crate) fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder { upstreams, timeout }
    }

    pub(crate) fn has_upstreams(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// Asks the upstreams in order for `query`; the first answer of any response code
    /// (NXDOMAIN and SERVFAIL included) is returned. Fails when no upstream answers.
    pub(crate) async fn forward(
        &self,
        query: &Query,
        recursion_desired: bool,
        checking_disabled: bool,
    ) -> Result<Message, DnsError> {
        let mut last = DnsError::NoUpstream {
            name: query.name.to_string(),
        };
        for &upstream in &self.upstreams {
            let mut msg = Message::query();
            msg.add_query(query.clone());
            msg.metadata.recursion_desired = recursion_desired;
            msg.metadata.checking_disabled = checking_disabled;
            let mut edns = Edns::new();
            edns.set_max_payload(UPSTREAM_UDP_PAYLOAD);
            msg.set_edns(edns);
            match self.exchange(upstream, &msg).await {
                Ok(answer) => return Ok(answer),
                Err(source) => {
                    tracing::debug!(%upstream, name = %query.name, reason = %source, "dns: upstream did not answer");
                    last = DnsError::Upstream { addr: upstream, source };
                }
            }
        }
        Err(last)
    }

    async fn exchange(&self, upstream: SocketAddr, msg: &Message) -> Result<Message, ExchangeError> {
        let bytes = msg.to_vec().map_err(ExchangeError::Encode)?;
        let answer = tokio::time::timeout(self.timeout, udp_exchange(upstream, &bytes, msg))
            .await
            .map_err(|_| ExchangeError::Timeout("udp", self.timeout))??;
        if !answer.metadata.truncation {
            return Ok(answer);
        }
        tokio::time::timeout(self.timeout, tcp_exchange(upstream, &bytes, msg))
            .await
            .map_err(|_| ExchangeError::Timeout("tcp", self.timeout))?
    }
}

/// Why one upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("encode query: {0}")]
    Encode(hickory_server::proto::ProtoError),
    #[error("no {0} answer within {1:?}")]
    Timeout(&'static str, Duration),
    /// A socket step (`"bind udp 0.0.0.0:0"`, `"send tcp"`, ...) failed.
    #[error("{step}: {source}")]
    Io { step: String, source: std::io::Error },
    #[error("query too long for tcp")]
    TooLong,
    #[error("decode tcp answer: {0}")]
    Decode(hickory_server::proto::serialize::binary::DecodeError),
    #[error("tcp answer does not match the query")]
    Mismatch,
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExchangeError {
    let step = step.into();
    move |source| ExchangeError::Io { step, source }
}

async fn udp_exchange(upstream: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message, ExchangeError> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io(format!("bind udp {local}")))?;
    // A connected socket only receives datagrams from the upstream, and a fresh random
    // port plus the random ID make spoofed answers hard to land.
    socket.connect(upstream).await.map_err(io("connect udp"))?;
    socket.send(bytes).await.map_err(io("send udp"))?;
    let mut buf = vec![0u8; u16::MAX as usize];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io("receive udp"))?;
        match Message::from_vec(&buf[..n]) {
            Ok(answer) if answers(query, &answer) => return Ok(answer),
            // A stray or late datagram (an earlier query's answer): keep waiting.
            _ => continue,
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message, ExchangeError> {
    let mut stream = TcpStream::connect(upstream).await.map_err(io("connect tcp"))?;
    let len = u16::try_from(bytes.len()).map_err(|_| ExchangeError::TooLong)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(io("send tcp"))?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io("receive tcp"))?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await.map_err(io("receive tcp"))?;
    let answer = Message::from_vec(&buf).map_err(ExchangeError::Decode)?;
    if !answers(query, &answer) {
        return Err(ExchangeError::Mismatch);
    }
    Ok(answer)
}

/// Whether `answer` is the response to `query`: same ID, a response, same question
/// (some servers leave the question out of FORMERR and REFUSED answers).
fn answers(query: &Message, answer: &Message) -> bool {
    answer.metadata.id == query.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && (answer.queries.is_empty() || answer.queries == query.queries)
}
