//! The ingress: an HTTP/HTTPS reverse proxy in the node's own process. It routes
//! requests by host and longest path prefix straight to the ready tasks of a
//! service (no second hop through a VIP), terminates TLS with the certificate the
//! SNI name selects, answers ACME HTTP-01 challenges on its HTTP listener, and
//! applies each route's rules (strip-prefix and rewrite, header rules, redirect to
//! HTTPS, per-client rate limits, allow/deny lists, sticky sessions). HTTP/1.1 and
//! HTTP/2 (ALPN, and h2c), WebSocket upgrades, gRPC over h2, streaming bodies.
//!
//! It does not decide which routes, endpoints or certificates exist: the caller
//! hands them over with [`IngressHandle::update`] (the node agent, from the
//! replicated state), and a change applies to the next request or handshake while
//! open connections carry on. It does not order certificates either: [`acme`]
//! does, on one manager.
//!
//! Shape, as linkerd2-proxy's: [`IngressConfig::build`] does every fallible setup
//! (binding the listeners, the TLS configuration, the metrics) and returns an
//! [`Ingress`]; [`Ingress::spawn`] starts the worker threads (one event loop per
//! CPU, each accepting on the shared listeners and keeping its own connections to
//! tasks, as nginx's workers do) and returns a [`RunningIngress`] that owns
//! shutdown.

pub mod acme;
mod body;
#[cfg(test)]
mod fixtures;
mod live;
mod metrics;
mod proxy;
mod ratelimit;
mod server;
pub mod table;
pub mod tls;
mod upstream;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus::Registry;

use crate::model::{ingress::Ingress as Route, ServiceEndpoints};

pub use acme::{ChallengeTokens, MemoryChallenges};
pub use metrics::{IngressMetrics, UpstreamErrorKind};
pub use proxy::ACME_CHALLENGE_PREFIX;
pub use table::{Change, Issue};
pub use tls::{inspect, CertInfo, CertificatePem, TlsError};

use live::RouteTable;
use metrics::RouteMetrics;
use server::{Builders, Listener, Shutdown};
use upstream::Upstreams;

/// Timeouts of the ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For the TLS handshake, and for a request's headers once a connection is
    /// open or its previous response was sent (so also the longest an HTTP/1.1
    /// connection waits for its next request).
    pub header_read: Duration,
    /// A connection with no request in flight for this long is closed gracefully.
    pub idle: Duration,
    /// For a TCP connection to a task; the next task is tried after it.
    pub upstream_connect: Duration,
    /// For a task's response headers (not its body); None: no limit.
    pub upstream_response: Option<Duration>,
    /// How long shutdown waits for in-flight requests before dropping them.
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(120),
            upstream_connect: Duration::from_secs(3),
            upstream_response: Some(Duration::from_secs(60)),
            drain: Duration::from_secs(10),
        }
    }
}

/// Where and how the ingress of one node listens.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// Plain HTTP (and ACME HTTP-01); None: no HTTP listener.
    pub http_addr: Option<SocketAddr>,
    /// HTTPS; None: no HTTPS listener.
    pub https_addr: Option<SocketAddr>,
    /// The HTTPS port clients are redirected to; default: `https_addr`'s.
    pub public_https_port: Option<u16>,
    pub timeouts: Timeouts,
    /// Tasks tried for one request when connections fail (at most the route's count).
    pub connect_attempts: usize,
    /// TLS session resumption (tickets and a session cache).
    pub tls_resumption: bool,
    /// Idle connections kept per task (per worker thread).
    pub max_idle_per_backend: usize,
    /// Threads serving connections, each with its own event loop and connections
    /// to tasks (as nginx's workers); 0: one per CPU.
    pub workers: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            http_addr: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https_addr: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            public_https_port: None,
            timeouts: Timeouts::default(),
            connect_attempts: 3,
            tls_resumption: true,
            max_idle_per_backend: 256,
            workers: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("cannot listen for {listener} on {addr}: {source}")]
    Listen {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering the ingress metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("starting ingress worker {worker}: {source}")]
    Worker { worker: usize, source: std::io::Error },
}

/// State shared by the workers, the connections and [`IngressHandle`].
pub(crate) struct Shared {
    table: ArcSwap<RouteTable>,
    certs: Arc<tls::CertStore>,
    /// Connect timeout, idle time and idle connections per task of the upstream pools.
    upstream_pool: (Duration, Duration, usize),
    metrics: IngressMetrics,
    acme_metrics: RouteMetrics,
    unrouted_metrics: RouteMetrics,
    challenges: Arc<dyn ChallengeTokens>,
    timeouts: Timeouts,
    https_port: u16,
    connect_attempts: usize,
    builders: Builders,
    shutdown: Shutdown,
    /// Inputs of the last update that later updates reuse.
    updating: Mutex<UpdateState>,
}

/// One worker thread's view: the shared state, and its own connections to tasks
/// (a connection and the requests on it stay on one event loop).
pub(crate) struct Worker {
    shared: Arc<Shared>,
    upstreams: Upstreams,
}

impl std::ops::Deref for Worker {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

#[derive(Default)]
struct UpdateState {
    certs: tls::LoadedCerts,
}

/// A certificate that could not be loaded.
#[derive(Debug)]
pub struct CertificateIssue {
    pub certificate: String,
    pub error: TlsError,
}

/// What an update did and could not do.
#[derive(Debug, Default)]
pub struct UpdateReport {
    pub changes: Vec<Change>,
    pub issues: Vec<Issue>,
    pub certificates: Vec<CertificateIssue>,
}

fn bind(listener: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, IngressError> {
    let err = |source| IngressError::Listen { listener, addr, source };
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        // [::] takes IPv4 clients too (as mapped addresses).
        sock.set_only_v6(false).map_err(err)?;
    }
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(4096).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    Ok(sock.into())
}

impl IngressConfig {
    /// Binds the listeners and registers the metrics on `registry` (the node's,
    /// so that they are `warren_ingress_*`). `challenges` answers ACME HTTP-01.
    pub fn build(self, registry: &Registry, challenges: Arc<dyn ChallengeTokens>) -> Result<Ingress, IngressError> {
        let metrics = IngressMetrics::register(registry)?;
        self.build_with(metrics, challenges)
    }

    /// As [`IngressConfig::build`], with metrics registered earlier: a node that
    /// rebuilds its ingress (new ports) keeps exporting the same series.
    pub fn build_with(
        self,
        metrics: IngressMetrics,
        challenges: Arc<dyn ChallengeTokens>,
    ) -> Result<Ingress, IngressError> {
        let http = self.http_addr.map(|a| bind("http", a)).transpose()?;
        let https = self.https_addr.map(|a| bind("https", a)).transpose()?;
        let https_port = self
            .public_https_port
            .or_else(|| https.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port()))
            .unwrap_or(443);
        let certs = Arc::new(tls::CertStore::default());
        let tls_config = Arc::new(tls::server_config(certs.clone(), self.tls_resumption)?);
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(RouteTable::empty()),
            certs,
            upstream_pool: (
                self.timeouts.upstream_connect,
                Duration::from_secs(30),
                self.max_idle_per_backend,
            ),
            acme_metrics: metrics.route(metrics::ACME_ROUTE),
            unrouted_metrics: metrics.route(metrics::NO_ROUTE),
            metrics,
            challenges,
            timeouts: self.timeouts,
            https_port,
            connect_attempts: self.connect_attempts.max(1),
            builders: Builders::new(self.timeouts.header_read),
            shutdown: Shutdown::new(),
            updating: Mutex::new(UpdateState::default()),
        });
        let workers = if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        };
        Ok(Ingress {
            shared,
            http,
            https,
            tls_config,
            workers,
        })
    }
}

/// A built ingress: listeners bound, nothing running yet.
pub struct Ingress {
    shared: Arc<Shared>,
    http: Option<std::net::TcpListener>,
    https: Option<std::net::TcpListener>,
    tls_config: Arc<rustls::ServerConfig>,
    workers: usize,
}

impl Ingress {
    /// The addresses the listeners are bound to (useful with port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Updates work before [`Ingress::spawn`] too, so the first request already
    /// sees the routes.
    pub fn handle(&self) -> IngressHandle {
        IngressHandle {
            shared: self.shared.clone(),
        }
    }

    /// Starts the worker threads, each with its own event loop accepting on
    /// the listeners (no tokio runtime is needed to call this). Returns once
    /// every worker is listening.
    pub fn spawn(self) -> Result<RunningIngress, IngressError> {
        let http_addr = self.http_addr();
        let https_addr = self.https_addr();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // On an error below, dropping `running` stops the workers already started.
        let mut running = RunningIngress {
            handle: IngressHandle {
                shared: self.shared.clone(),
            },
            threads: Vec::new(),
        };
        for worker in 0..self.workers {
            let err = |source| IngressError::Worker { worker, source };
            let clone = |l: &Option<std::net::TcpListener>| l.as_ref().map(|l| l.try_clone()).transpose();
            let (http, https) = (clone(&self.http).map_err(err)?, clone(&self.https).map_err(err)?);
            let (shared, tls, ready) = (self.shared.clone(), self.tls_config.clone(), ready_tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("warren-ingress-{worker}"))
                .spawn(move || worker_main(worker, shared, http, https, tls, ready))
                .map_err(err)?;
            running.threads.push(t);
        }
        drop(ready_tx);
        for _ in 0..self.workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(IngressError::Worker {
                        worker: 0,
                        source: std::io::Error::other("a worker ended before it was listening"),
                    })
                }
            }
        }
        tracing::info!(http = ?http_addr, https = ?https_addr, workers = self.workers, "ingress listening");
        Ok(running)
    }
}

/// One worker thread: a current-thread runtime that accepts on both listeners
/// and serves what it accepted, until the forced end of a shutdown.
fn worker_main(
    index: usize,
    shared: Arc<Shared>,
    http: Option<std::net::TcpListener>,
    https: Option<std::net::TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    ready: std::sync::mpsc::Sender<Result<(), IngressError>>,
) {
    let err = |source| IngressError::Worker { worker: index, source };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(err(e)));
            return;
        }
    };
    rt.block_on(async move {
        let (connect, idle, max_idle) = shared.upstream_pool;
        let worker = Arc::new(Worker {
            shared: shared.clone(),
            upstreams: Upstreams::new(connect, idle, max_idle),
        });
        let mut tasks = Vec::new();
        for (l, kind) in [(http, Listener::Http), (https, Listener::Https)] {
            let Some(l) = l else { continue };
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(err(e)));
                    return;
                }
            };
            let acceptor = (kind == Listener::Https).then(|| tokio_rustls::TlsAcceptor::from(tls.clone()));
            tasks.push(tokio::spawn(server::accept_loop(worker.clone(), l, kind, acceptor)));
        }
        let upkeep = {
            let worker = worker.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    let live = worker.table.load().plan.backend_addrs();
                    worker.upstreams.retain(&live);
                }
            })
        };
        let _ = ready.send(Ok(()));
        let mut hard = shared.shutdown.hard_signal();
        let _ = hard.wait_for(|v| *v).await;
        upkeep.abort();
        for t in tasks {
            t.abort();
        }
    });
    // Dropping the runtime drops every connection and tunnel still on it.
}

/// Hands routes, endpoints and certificates to the ingress; cheap to clone.
#[derive(Clone)]
pub struct IngressHandle {
    shared: Arc<Shared>,
}

impl IngressHandle {
    /// Replaces the ingress's view of the world: the routes, every service's
    /// endpoints (the same stream the data plane gets; only ready tasks take
    /// requests) and the certificates with their keys. New requests and
    /// handshakes see the new state at once; open connections and requests in
    /// flight carry on. What cannot be served as given is reported, and the
    /// rest still applies.
    pub fn update(&self, routes: &[Route], endpoints: &[ServiceEndpoints], certs: &[CertificatePem]) -> UpdateReport {
        let sh = &self.shared;
        let mut st = sh.updating.lock().unwrap_or_else(|p| p.into_inner());
        let (loaded, cert_errors) = tls::load_all(certs, &st.certs);
        for (name, error) in &cert_errors {
            tracing::warn!(certificate = %name, error = %error, "certificate not loaded");
        }
        let names: BTreeSet<String> = loaded.keys().cloned().collect();
        let (plan, issues) = table::plan(routes, endpoints, &names);
        for i in &issues {
            tracing::warn!(route = %i.route, dropped = i.dropped, "{}", i.message);
        }
        let previous = sh.table.load_full();
        let changes = table::diff(&previous.plan, &plan);
        for c in &changes {
            match c {
                Change::Backends { route, added, removed } => {
                    tracing::debug!(route = %route, added, removed, "route backends changed")
                }
                other => tracing::info!(change = ?other, "route table changed"),
            }
        }
        // Certificates first: a new route's first handshake must find its certificate.
        sh.certs.set(tls::CertIndex::build(
            &loaded,
            &plan.certificates_by_host(),
            plan.default_certificate().as_deref(),
        ));
        for (name, c) in &loaded {
            sh.metrics.set_certificate_expiry(name, c.info.not_after_ms);
        }
        for name in st.certs.keys().filter(|n| !loaded.contains_key(*n)) {
            sh.metrics.forget_certificate(name);
        }
        st.certs = loaded;
        let kept: BTreeSet<&str> = plan.routes.iter().map(|r| r.name.as_str()).collect();
        let gone: Vec<String> = previous
            .plan
            .routes
            .iter()
            .map(|r| r.name.clone())
            .filter(|n| !kept.contains(n.as_str()))
            .collect();
        sh.table
            .store(Arc::new(RouteTable::build(plan, &previous, &sh.metrics)));
        for name in gone {
            sh.metrics.forget_route(&name);
        }
        UpdateReport {
            changes,
            issues,
            certificates: cert_errors
                .into_iter()
                .map(|(certificate, error)| CertificateIssue { certificate, error })
                .collect(),
        }
    }

    /// Connections open on both listeners.
    pub fn open_connections(&self) -> usize {
        self.shared.shutdown.open_connections()
    }
}

/// The running ingress. Dropping it without [`RunningIngress::shutdown`] stops
/// it at once, dropping open connections.
pub struct RunningIngress {
    handle: IngressHandle,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RunningIngress {
    pub fn handle(&self) -> IngressHandle {
        self.handle.clone()
    }

    /// Stops accepting, lets requests in flight finish (HTTP/2 clients get
    /// GOAWAY) for up to the drain timeout, then drops what is left and waits
    /// for the workers to end.
    pub async fn shutdown(mut self) {
        let sh = self.handle.shared.clone();
        sh.shutdown.begin();
        if tokio::time::timeout(sh.timeouts.drain, sh.shutdown.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                open = sh.shutdown.open_connections(),
                "ingress connections still open after the drain timeout; closing them"
            );
        }
        sh.shutdown.force();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for RunningIngress {
    fn drop(&mut self) {
        self.handle.shared.shutdown.force();
    }
}
