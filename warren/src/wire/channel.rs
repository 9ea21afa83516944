//! The one way a Warren process opens a gRPC channel to another node's cluster port:
//! `https://ADDR` with the given rustls client settings (anonymous with the cluster
//! CA while joining, the node's own certificate otherwise), a connect timeout, TCP
//! no-delay and, for long-lived streams, HTTP/2 keep-alives. Not which certificate
//! to present (that is `pki`), nor retries (each caller has its own policy).

use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

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

/// The endpoint for `addr` (IP:PORT), not yet connected.
pub fn endpoint(addr: &str, tls: ClientTlsConfig, dial: Dial) -> Result<Endpoint, ChannelError> {
    let bad = |e: tonic::transport::Error| ChannelError::BadAddr {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let mut e = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(bad)?
        .tls_config(tls)
        .map_err(bad)?
        .connect_timeout(dial.connect_timeout)
        .tcp_nodelay(true);
    if let Some((interval, timeout)) = dial.keepalive {
        e = e.http2_keep_alive_interval(interval).keep_alive_timeout(timeout);
    }
    Ok(e)
}

/// Connects now; the error carries the whole cause chain (a TLS refusal is
/// otherwise reported only as "transport error").
pub async fn connect(addr: &str, tls: ClientTlsConfig, dial: Dial) -> Result<Channel, ChannelError> {
    endpoint(addr, tls, dial)?
        .connect()
        .await
        .map_err(|e| ChannelError::Connect {
            addr: addr.to_string(),
            reason: with_sources(&e),
        })
}

/// Connects on first use and reconnects by itself.
pub fn lazy(addr: &str, tls: ClientTlsConfig, dial: Dial) -> Result<Channel, ChannelError> {
    Ok(endpoint(addr, tls, dial)?.connect_lazy())
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
            ClientTlsConfig::new(),
            Dial::new(Duration::from_secs(1)),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid address \"not an address\""), "{e}");
    }
}
