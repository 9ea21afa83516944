//! The listeners and the life of a client connection: accept, TLS handshake (with
//! the header-read timeout as its deadline), HTTP/1.1 or HTTP/2 by ALPN (and h2c
//! by preface on plain HTTP), the idle timeout (no request in flight for that
//! long), and graceful shutdown: on [`Shutdown::begin`] a connection finishes its
//! in-flight requests (HTTP/2 gets GOAWAY) and closes; at [`Shutdown::force`]
//! whatever is left is dropped. Route and certificate changes never touch
//! open connections.

use std::{
    net::SocketAddr,
    pin::pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hyper::{body::Incoming, service::service_fn, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulConnection},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{watch, Notify},
};
use tokio_rustls::TlsAcceptor;

use super::{proxy, Shared, Worker};

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Http,
    Https,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Https => "https",
        }
    }
}

/// What a request knows about its connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub listener: Listener,
}

/// Requests in flight on one connection, and since when it has had none.
pub struct Activity {
    started: Instant,
    inflight: AtomicUsize,
    /// Milliseconds after `started` at which the last request finished.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            inflight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    pub fn enter(self: &Arc<Activity>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(Some(self.clone()))
    }

    /// How long the connection has had no request in flight, if it has none.
    fn idle_for(&self) -> Option<Duration> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.started.elapsed().saturating_sub(since))
    }
}

/// Held by a request until its response body is done (or dropped).
pub struct InflightGuard(Option<Arc<Activity>>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.idle_since_ms
                .store(a.started.elapsed().as_millis() as u64, Ordering::Release);
            a.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The HTTP protocol builders, made once.
pub struct Builders {
    /// Plain HTTP: HTTP/1.1, or h2c when the client starts with the HTTP/2 preface.
    auto: auto::Builder<TokioExecutor>,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Builders {
    pub fn new(header_read: Duration) -> Builders {
        let make = || {
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read)
                .keep_alive(true);
            // No extended CONNECT (RFC 8441): WebSocket clients use HTTP/1.1.
            b.http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(256)
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20));
            b
        };
        Builders {
            auto: make(),
            h1: make().http1_only(),
            h2: make().http2_only(),
        }
    }
}

/// Shutdown signals shared by the accept loops and every connection.
#[derive(Clone)]
pub struct Shutdown {
    graceful: watch::Sender<bool>,
    hard: watch::Sender<bool>,
    open: Arc<(AtomicUsize, Notify)>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            graceful: watch::channel(false).0,
            hard: watch::channel(false).0,
            open: Arc::new((AtomicUsize::new(0), Notify::new())),
        }
    }

    /// Stop accepting; connections finish what is in flight and close.
    pub fn begin(&self) {
        self.graceful.send_replace(true);
    }

    /// Drop every connection and tunnel that is still open.
    pub fn force(&self) {
        self.graceful.send_replace(true);
        self.hard.send_replace(true);
    }

    pub fn hard_signal(&self) -> watch::Receiver<bool> {
        self.hard.subscribe()
    }

    pub fn open_connections(&self) -> usize {
        self.open.0.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.open.1.notified();
            if self.open_connections() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn track(&self) -> OpenGuard {
        self.open.0.fetch_add(1, Ordering::AcqRel);
        OpenGuard(self.open.clone())
    }
}

struct OpenGuard(Arc<(AtomicUsize, Notify)>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .1.notify_waiters();
        }
    }
}

async fn signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Accepts until shutdown begins.
pub async fn accept_loop(shared: Arc<Worker>, listener: TcpListener, kind: Listener, tls: Option<TlsAcceptor>) {
    let mut stop = shared.shutdown.graceful.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = signalled(&mut stop) => break,
        };
        match accepted {
            Ok((stream, client)) => {
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move { connection(shared, stream, client, kind, tls).await });
            }
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                tracing::warn!(listener = kind.as_str(), error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn connection(
    shared: Arc<Worker>,
    stream: TcpStream,
    client: SocketAddr,
    kind: Listener,
    tls: Option<TlsAcceptor>,
) {
    let _open = shared.shutdown.track();
    let gauge = shared.metrics.connections(kind.as_str());
    gauge.inc();
    let _ = stream.set_nodelay(true);
    let info = Arc::new(ConnInfo { client, listener: kind });
    match tls {
        None => serve(&shared, TokioIo::new(stream), info, &shared.builders.auto).await,
        Some(acceptor) => {
            let accepted = tokio::time::timeout(shared.timeouts.header_read, acceptor.accept(stream)).await;
            match accepted {
                Ok(Ok(tls)) => {
                    shared.metrics.handshake(true);
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let builder = if h2 { &shared.builders.h2 } else { &shared.builders.h1 };
                    serve(&shared, TokioIo::new(tls), info, builder).await
                }
                Ok(Err(e)) => {
                    shared.metrics.handshake(false);
                    tracing::debug!(client = %client, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    shared.metrics.handshake(false);
                    tracing::debug!(client = %client, "TLS handshake timed out");
                }
            }
        }
    }
    gauge.dec();
}

async fn serve<I>(shared: &Arc<Worker>, io: TokioIo<I>, info: Arc<ConnInfo>, builder: &auto::Builder<TokioExecutor>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let svc = {
        let shared = shared.clone();
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let guard = activity.enter();
            proxy::handle(shared.clone(), info.clone(), req, guard)
        })
    };
    let conn = pin!(builder.serve_connection_with_upgrades(io, svc));
    drive(conn, shared, &activity).await;
}

/// Polls the connection to its end, starting a graceful close at shutdown or
/// when it has been idle too long, and dropping it at a forced shutdown.
async fn drive<C>(mut conn: std::pin::Pin<&mut C>, shared: &Shared, activity: &Activity)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut stop = shared.shutdown.graceful.subscribe();
    let mut hard = shared.shutdown.hard.subscribe();
    let idle = shared.timeouts.idle;
    let mut closing = false;
    loop {
        let check = activity
            .idle_for()
            .map_or(idle, |d| idle.saturating_sub(d))
            .max(Duration::from_millis(50));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "client connection ended");
                }
                return;
            }
            _ = signalled(&mut stop), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = signalled(&mut hard) => return,
            _ = tokio::time::sleep(check), if !closing => {
                if activity.idle_for().is_some_and(|d| d >= idle) {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
