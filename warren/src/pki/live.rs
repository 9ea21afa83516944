//! The node's TLS identity while it runs: its credentials and the rustls server
//! and client settings built from them, behind one swap. A renewed certificate
//! reaches every handshake from then on — the cluster port's server, the agent's
//! link, Raft and the node proxy — while the connections already open (and the
//! sessions and streams on them) keep going: TLS authenticates a connection once,
//! at its handshake. Also the connector that dials with it and the acceptor that
//! serves with it; not when to renew (`renew`).

use super::{pem_to_der, NodeCredentials, PkiError, Validity, MANAGER_SERVER_NAME};
use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

/// How long a client has to finish its TLS handshake on the cluster port.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// The credentials in use and the settings every new connection takes.
struct Current {
    creds: NodeCredentials,
    validity: Validity,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// A node's identity, swapped whole on renewal.
pub struct LiveIdentity {
    current: ArcSwap<Current>,
}

fn bad(e: impl std::fmt::Display) -> PkiError {
    PkiError::BadCredentials(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Current {
    fn build(creds: NodeCredentials) -> Result<Current, PkiError> {
        let validity = Validity::of_pem(&creds.cert_pem)?;
        let leaf = pem_to_der(&creds.cert_pem)?;
        let ca = pem_to_der(&creds.ca_pem)?;
        let key = || PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).map_err(bad);
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(bad)?;
        let roots = Arc::new(roots);
        // Asks for, but does not require, a client certificate: only `Join` may be
        // called without one, which the call layer checks per call. The CA goes in
        // the chain so that joining nodes can check it against their token.
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(bad)?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(bad)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.clone(), ca], key()?)
            .map_err(bad)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(bad)?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf], key()?)
            .map_err(bad)?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Current {
            creds,
            validity,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

impl LiveIdentity {
    pub fn new(creds: NodeCredentials) -> Result<Arc<LiveIdentity>, PkiError> {
        Ok(Arc::new(LiveIdentity {
            current: ArcSwap::from_pointee(Current::build(creds)?),
        }))
    }

    pub fn credentials(&self) -> NodeCredentials {
        self.current.load().creds.clone()
    }

    pub fn validity(&self) -> Validity {
        self.current.load().validity.clone()
    }

    /// Puts `creds` in use for every handshake from now on; credentials that do
    /// not make a working TLS identity (a key that does not match) change nothing.
    pub fn swap(&self, creds: NodeCredentials) -> Result<(), PkiError> {
        self.current.store(Arc::new(Current::build(creds)?));
        Ok(())
    }

    /// A connector to managers (verified by the name every manager certificate
    /// carries) presenting the current certificate.
    pub fn to_managers(self: &Arc<Self>) -> NodeConnector {
        self.connector(MANAGER_SERVER_NAME)
    }

    /// A connector that verifies the server by `server_name` (a node ID, for the
    /// node proxy).
    pub fn connector(self: &Arc<Self>, server_name: &str) -> NodeConnector {
        NodeConnector {
            identity: self.clone(),
            server_name: server_name.to_string(),
        }
    }

    /// The cluster port's connections, each through a TLS handshake with the
    /// certificate current at its start. Handshakes run side by side, so a slow
    /// client holds up no other; the accept loop ends with the server.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: pause rather than spin.
                            tracing::warn!(error = %e, "cluster port: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(me.current.load().server.clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "cluster port: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "cluster port: TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Dials a cluster port with the node's current identity: tonic's channels take it
/// as their connector (with an `http://` URI, TLS being done here), so every
/// reconnect presents the certificate current at that moment.
#[derive(Clone)]
pub struct NodeConnector {
    identity: Arc<LiveIdentity>,
    server_name: String,
}

impl NodeConnector {
    /// The same identity, verifying the server by `name` instead.
    pub fn for_server(&self, name: &str) -> NodeConnector {
        NodeConnector {
            identity: self.identity.clone(),
            server_name: name.to_string(),
        }
    }
}

pub type NodeStream = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower::Service<http::Uri> for NodeConnector {
    type Response = NodeStream;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<NodeStream, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.identity.current.load().client.clone();
        let name = self.server_name.clone();
        Box::pin(async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let addr = uri
                .authority()
                .ok_or_else(|| invalid(format!("no address in {uri}")))?
                .as_str()
                .to_string();
            let name = ServerName::try_from(name).map_err(|e| invalid(e.to_string()))?;
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeRole;
    use crate::pki::{new_node_key, CertificateAuthority};

    fn creds(ca: &CertificateAuthority, node_id: &str, role: NodeRole) -> NodeCredentials {
        let (key, csr) = new_node_key(node_id).unwrap();
        NodeCredentials {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: ca
                .sign_node(&csr, "c", node_id, role, Duration::from_secs(3600))
                .unwrap(),
            key_pem: key.serialize_pem(),
        }
    }

    #[test]
    fn a_swap_changes_the_identity_and_a_mismatched_key_changes_nothing() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let a = creds(&ca, "n1", NodeRole::Manager);
        let live = LiveIdentity::new(a.clone()).unwrap();
        let first = live.validity().serial;
        let renewed = NodeCredentials {
            cert_pem: ca
                .sign_node(
                    &crate::pki::csr_for_key(&a.key_pem, "n1").unwrap(),
                    "c",
                    "n1",
                    NodeRole::Manager,
                    Duration::from_secs(3600),
                )
                .unwrap(),
            ..a.clone()
        };
        live.swap(renewed).unwrap();
        assert_ne!(live.validity().serial, first);
        let other = creds(&ca, "n1", NodeRole::Manager);
        let mismatched = NodeCredentials {
            key_pem: other.key_pem,
            ..a
        };
        let before = live.validity().serial;
        assert!(live.swap(mismatched).is_err());
        assert_eq!(live.validity().serial, before);
    }
}
