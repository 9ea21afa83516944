//! The one way a Warren process opens a gRPC channel to another node's cluster port:
//! TLS to ADDR (tonic's, fixed, while joining and in the CLI; the node's live
//! identity otherwise, reread at every reconnect so that a renewed certificate is
//! used at once), a connect timeout, TCP no-delay and, for long-lived streams,
//! HTTP/2 keep-alives. Not which certificate to present (that is `pki`), nor
//! retries (each caller has its own policy).

use crate::pki::NodeConnector;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How a channel does TLS.
#[derive(Clone)]
pub enum ClientTls {
    /// Tonic's own, with what it was built with: joining (anonymous) and the CLI.
    Fixed(ClientTlsConfig),
    /// The node's certificate as it is at each connection (see `pki::live`).
    Node(NodeConnector),
}

impl ClientTls {
    /// The same, verifying the server by `name` (a node ID) instead.
    pub fn for_server(&self, name: &str) -> ClientTls {
        match self {
            ClientTls::Fixed(c) => ClientTls::Fixed(c.clone().domain_name(name)),
            ClientTls::Node(c) => ClientTls::Node(c.for_server(name)),
        }
    }
}

impl From<ClientTlsConfig> for ClientTls {
    fn from(c: ClientTlsConfig) -> ClientTls {
        ClientTls::Fixed(c)
    }
}

impl From<NodeConnector> for ClientTls {
    fn from(c: NodeConnector) -> ClientTls {
        ClientTls::Node(c)
    }
}

/// How a channel is dialled.
#[derive(Clone, Copy, Debug)]
pub struct Dial {
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval and how long to wait for its answer; `None` for
    /// channels that carry only short calls.
    pub keepalive: Option<(Duration, Duration)>,
}

impl Dial {
    pub const fn new(connect_timeout: Duration) -> Dial {
        Dial {
            connect_timeout,
            keepalive: None,
        }
    }

    pub const fn keepalive(mut self, interval: Duration, timeout: Duration) -> Dial {
        self.keepalive = Some((interval, timeout));
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("invalid address {addr:?}: {reason}")]
    BadAddr { addr: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
}

/// The endpoint for `addr` (IP:PORT), not yet connected. With the node's
/// connector the URI is `http://`: the connector does the TLS itself.
fn endpoint(addr: &str, tls: &ClientTls, dial: Dial) -> Result<Endpoint, ChannelError> {
    let bad = |e: tonic::transport::Error| ChannelError::BadAddr {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let mut e = match tls {
        ClientTls::Fixed(c) => Endpoint::from_shared(format!("https://{addr}"))
            .map_err(bad)?
            .tls_config(c.clone())
            .map_err(bad)?,
        ClientTls::Node(_) => Endpoint::from_shared(format!("http://{addr}")).map_err(bad)?,
    }
    .connect_timeout(dial.connect_timeout)
    .tcp_nodelay(true);
    if let Some((interval, timeout)) = dial.keepalive {
        e = e.http2_keep_alive_interval(interval).keep_alive_timeout(timeout);
    }
    Ok(e)
}

/// Connects now; the error carries the whole cause chain (a TLS refusal is
/// otherwise reported only as "transport error").
pub async fn connect(addr: &str, tls: impl Into<ClientTls>, dial: Dial) -> Result<Channel, ChannelError> {
    let tls = tls.into();
    let e = endpoint(addr, &tls, dial)?;
    let r = match tls {
        ClientTls::Fixed(_) => e.connect().await,
        ClientTls::Node(c) => e.connect_with_connector(c).await,
    };
    r.map_err(|e| ChannelError::Connect {
        addr: addr.to_string(),
        reason: with_sources(&e),
    })
}

/// Connects on first use and reconnects by itself.
pub fn lazy(addr: &str, tls: impl Into<ClientTls>, dial: Dial) -> Result<Channel, ChannelError> {
    let tls = tls.into();
    let e = endpoint(addr, &tls, dial)?;
    Ok(match tls {
        ClientTls::Fixed(_) => e.connect_lazy(),
        ClientTls::Node(c) => e.connect_with_connector_lazy(c),
    })
}

/// An error followed by its sources, `outer: inner: innermost`.
pub fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_is_named() {
        let e = endpoint(
            "not an address",
            &ClientTlsConfig::new().into(),
            Dial::new(Duration::from_secs(1)),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid address \"not an address\""), "{e}");
    }
}
