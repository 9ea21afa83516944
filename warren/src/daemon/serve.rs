//! The daemon's listeners: binding the cluster port and the root-only local
//! socket, the gRPC server every listener uses (always wrapped in the call layer,
//! which authorizes and measures each call), and one `serve` for all of them,
//! which stops when the daemon's shutdown signal turns true.

use super::error::DaemonError;
use crate::metrics::Metrics;
use crate::wire::calls::{CallLayer, Revoked};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, Router, Server};
use tower::layer::util::{Identity, Stack};

/// A gRPC server builder behind the call layer; add services to get `Routes`.
pub(super) type Grpc = Server<Stack<CallLayer, Identity>>;
pub(super) type Routes = Router<Stack<CallLayer, Identity>>;

/// The one way the daemon builds a gRPC server: no service is ever served
/// without the call layer in front of it.
/// `revoked`: on a manager's cluster port, the replicated list of removed nodes.
pub(super) fn grpc(metrics: &Metrics, revoked: Option<Revoked>) -> Grpc {
    let mut layer = CallLayer::new(metrics.api_duration.clone());
    if let Some(r) = revoked {
        layer = layer.with_revocations(r);
    }
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .layer(layer)
}

/// The removed nodes of `store`'s cluster, as the call layer asks.
pub(super) fn revocations(store: std::sync::Arc<crate::store::Store>) -> Revoked {
    std::sync::Arc::new(move |node_id: &str| {
        store.read(|s| {
            s.meta
                .as_ref()
                .is_some_and(|m| m.removed_nodes.iter().any(|r| r == node_id))
        })
    })
}

pub(super) async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// The local API socket: root-only (mode 0600 in a 0700 directory we create).
pub(super) fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source: std::io::Error| DaemonError::Listen {
        addr: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
    }
    if path.exists() {
        // A live daemon answers on it; a stale file from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another warren daemon is serving this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves `routes` on `incoming` in `servers` until `shutdown` turns true; then
/// waits for the calls in flight. `name` says which listener in the logs.
pub(super) fn serve<I, IO, IE>(
    servers: &mut JoinSet<()>,
    name: &'static str,
    routes: Routes,
    incoming: I,
    mut shutdown: watch::Receiver<bool>,
) where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    servers.spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = routes.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!(server = name, error = %e, "server failed");
        }
    });
}
