//! Fixtures of the ingress tests (`tests/tests/ingress.rs`): Warren's ingress run
//! as a library on loopback ports, real backend servers (an HTTP/1.1 echo that
//! reports what it received, a WebSocket echo, an h2c gRPC-style echo with
//! trailers), a test CA for certificates, clients (curl, and an in-process
//! HTTP/HTTPS request loop that counts failures), and Debian's Pebble with its
//! challenge test server as a real ACME CA. Every server and process stops when its
//! guard drops.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::{net::TcpStream, task::JoinSet};

use warren::{
    ingress::{CertificatePem, IngressConfig, IngressHandle, MemoryChallenges, RunningIngress, Timeouts},
    model::{
        ingress::{Ingress, IngressSpec},
        Endpoint, EndpointMode, ServiceEndpoints,
    },
};

pub use crate::cluster::free_port;

/// Waits for `cond` up to `limit`, panicking with `what` if it never holds.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------ model values

pub fn route(name: &str, host: &str, path: &str, service: &str, f: impl FnOnce(&mut IngressSpec)) -> Ingress {
    let mut spec = IngressSpec {
        host: host.into(),
        path: path.into(),
        service: service.into(),
        ..Default::default()
    };
    f(&mut spec);
    spec.validate().unwrap_or_else(|e| panic!("test route {name}: {e}"));
    Ingress {
        id: format!("ing-{name}"),
        name: name.into(),
        spec,
        version: 1,
        created_ms: 0,
        updated_ms: 0,
    }
}

/// A service whose tasks listen on `port` at `addrs` (all ready).
pub fn service(name: &str, port: u16, addrs: &[Ipv4Addr]) -> ServiceEndpoints {
    ServiceEndpoints {
        id: format!("svc-{name}"),
        name: name.into(),
        dp_id: 1,
        vip: None,
        endpoint_mode: EndpointMode::Vip,
        ports: vec![warren::model::PortConfig {
            published: 0,
            target: port,
            protocol: warren::model::Protocol::Tcp,
            mode: warren::model::PublishMode::Host,
        }],
        canary_weight: 0,
        rate_limit: None,
        endpoint_locality: Default::default(),
        stack: String::new(),
        endpoints: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Endpoint {
                task_id: format!("task-{name}-{i}"),
                slot: i as u64 + 1,
                addr: *a,
                node_id: "node".into(),
                canary: false,
                ready: true,
                draining: false,
            })
            .collect(),
        removed: false,
    }
}

// ------------------------------------------------------------------ certificates

/// A CA for test certificates, trusted by the test's clients and curl.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let pem = issuer.pem();
        TestCa { issuer, pem }
    }

    /// A leaf for `hosts` (DNS names, or IP addresses) with an ECDSA P-256 key.
    pub fn leaf(&self, name: &str, hosts: &[&str]) -> CertificatePem {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        CertificatePem {
            name: name.into(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.pem)
    }
}

/// A rustls client that trusts the PEM roots given, with HTTP/1.1 by ALPN.
pub fn client_config(roots_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.expect("root PEM")).expect("root certificate");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every new connection is a full handshake: it sees the certificate served now.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// The same client speaking HTTP/2 by ALPN.
pub fn h2_client_config(roots_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*client_config(roots_pem)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    p
}

// ------------------------------------------------------------------ the ingress

/// Warren's ingress on 127.0.0.1, ports chosen by the kernel.
pub struct TestIngress {
    pub handle: IngressHandle,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub registry: prometheus::Registry,
    pub challenges: Arc<MemoryChallenges>,
    running: Option<RunningIngress>,
}

impl TestIngress {
    pub fn start() -> TestIngress {
        Self::start_with(|_| {})
    }

    pub fn start_with(f: impl FnOnce(&mut IngressConfig)) -> TestIngress {
        let mut cfg = IngressConfig {
            http_addr: Some("127.0.0.1:0".parse().unwrap()),
            https_addr: Some("127.0.0.1:0".parse().unwrap()),
            timeouts: Timeouts {
                drain: Duration::from_secs(2),
                ..Timeouts::default()
            },
            ..IngressConfig::default()
        };
        f(&mut cfg);
        let registry = prometheus::Registry::new_custom(Some("warren".into()), None).expect("registry");
        let challenges = Arc::new(MemoryChallenges::default());
        let ingress = cfg.build(&registry, challenges.clone()).expect("building the ingress");
        let http = ingress.http_addr().expect("an http listener");
        let https = ingress.https_addr().expect("an https listener");
        let running = ingress.spawn().expect("starting the ingress");
        TestIngress {
            handle: running.handle(),
            http,
            https,
            registry,
            challenges,
            running: Some(running),
        }
    }

    /// Routes, endpoints and certificates; panics on any issue unless `allow_issues`.
    pub fn update(&self, routes: &[Ingress], endpoints: &[ServiceEndpoints], certs: &[CertificatePem]) {
        let r = self.handle.update(routes, endpoints, certs);
        assert!(
            r.certificates.is_empty(),
            "certificates not loaded: {:?}",
            r.certificates
        );
        assert!(r.issues.is_empty(), "route issues: {:?}", r.issues);
    }

    pub fn metrics(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

// ------------------------------------------------------------------ backends

/// An HTTP/1.1 backend that answers with JSON describing the request it got:
/// `{"backend", "method", "uri", "version", "headers": {..}, "body_len"}`.
/// `?delay_ms=N` makes it wait before answering.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    active: Arc<AtomicU64>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Backend {
    pub async fn start(name: &str, addr: SocketAddr) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("backend {name} cannot listen on {addr}: {e}"));
        let hits = Arc::new(AtomicU64::new(0));
        let active = Arc::new(AtomicU64::new(0));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (n, h, a, t) = (name.to_string(), hits.clone(), active.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h, a) = (n.clone(), h.clone(), a.clone());
                t.lock().unwrap().spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (n, h, a) = (n.clone(), h.clone(), a.clone());
                        async move { Ok::<_, Infallible>(echo(&n, &h, &a, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            name: name.into(),
            addr,
            hits,
            active,
            tasks,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests being answered right now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection.
    pub fn stop(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn echo(name: &str, hits: &AtomicU64, active: &AtomicU64, req: Request<Incoming>) -> Response<Full<Bytes>> {
    active.fetch_add(1, Ordering::SeqCst);
    hits.fetch_add(1, Ordering::SeqCst);
    let delay = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
        .and_then(|v| v.parse::<u64>().ok());
    let mut headers = BTreeMap::<String, String>::new();
    for (k, v) in req.headers() {
        let v = v.to_str().unwrap_or("").to_string();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body_len = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = serde_json::json!({
        "backend": name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_len": body_len,
    });
    active.fetch_sub(1, Ordering::SeqCst);
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("x-backend-secret", hyper::header::HeaderValue::from_static("internal"));
    r
}

/// A WebSocket backend that echoes every message.
pub struct WsBackend {
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl WsBackend {
    pub async fn start(addr: SocketAddr) -> WsBackend {
        use futures::{SinkExt, StreamExt};
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("websocket backend cannot listen on {addr}: {e}"));
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            let reply = match msg {
                                tokio_tungstenite::tungstenite::Message::Text(t) => {
                                    tokio_tungstenite::tungstenite::Message::text(format!("echo: {t}"))
                                }
                                other => other,
                            };
                            if ws.send(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        WsBackend { addr, tasks }
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// A gRPC-style backend over h2c: every request body frame is sent straight back
/// as a response frame (a bidirectional stream), then `grpc-status: 0` trailers.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl GrpcBackend {
    pub async fn start(addr: SocketAddr) -> GrpcBackend {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("grpc backend cannot listen on {addr}: {e}"));
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(8);
                        let te = req.headers().get("te").map(|v| v.to_str().unwrap_or("").to_string());
                        let mut body = req.into_body();
                        tokio::spawn(async move {
                            while let Some(Ok(frame)) = body.frame().await {
                                if let Ok(data) = frame.into_data() {
                                    if tx.send(Ok(hyper::body::Frame::data(data))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                            let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
                        });
                        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                        let mut r = Response::new(body);
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/grpc"),
                        );
                        if let Some(te) = te {
                            r.headers_mut()
                                .insert("x-seen-te", hyper::header::HeaderValue::from_str(&te).unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        GrpcBackend { addr, tasks }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

// ------------------------------------------------------------------ clients

/// What curl got.
#[derive(Debug)]
pub struct CurlResponse {
    pub status: u16,
    /// `1.1` or `2`.
    pub version: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl CurlResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap_or_default().to_string()
    }
}

/// Runs curl (`-sS -i`) with `args` and parses the last response it printed.
pub async fn curl(args: &[&str]) -> CurlResponse {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--noproxy", "*"])
        .args(args)
        .output()
        .await
        .expect("running curl (Debian package curl)");
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    // With HTTP/2 upgrades or 100-continue curl prints several heads; the last counts.
    let start = text.rfind("\nHTTP/").map(|i| i + 1).unwrap_or(0);
    let (head, body) = text[start..].split_once("\n\n").unwrap_or((&text[start..], ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("").trim_start_matches("HTTP/").to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in curl's output: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    CurlResponse {
        status,
        version,
        headers,
        body: body.to_string(),
    }
}

/// `--resolve host:port:127.0.0.1` for `addr`.
pub fn resolve(host: &str, addr: SocketAddr) -> String {
    format!("{host}:{}:{}", addr.port(), addr.ip())
}

/// A TCP connection from `from` (a loopback address) to `to`.
pub async fn connect_from(from: Option<IpAddr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    match from {
        None => TcpStream::connect(to).await,
        Some(ip) => {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(ip, 0))?;
            s.connect(to).await
        }
    }
}

type ReqBody = Full<Bytes>;

/// One HTTP/1.1 connection (TLS when `tls` names the SNI and client config).
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<ReqBody>,
    /// The DER of the certificate the server presented.
    pub leaf: Option<Vec<u8>>,
}

impl Conn {
    pub async fn open(to: SocketAddr, tls: Option<(&str, Arc<rustls::ClientConfig>)>) -> Result<Conn, String> {
        let tcp = TcpStream::connect(to).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("http handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(Conn { sender, leaf: None })
            }
            Some((sni, cfg)) => {
                let name = ServerName::try_from(sni.to_string()).map_err(|e| format!("sni: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                let leaf = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("http handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(Conn { sender, leaf })
            }
        }
    }

    /// GET `path` with `Host: host`; the status and body, or what failed.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, String), String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// How a loop client talks to the ingress.
#[derive(Clone)]
pub enum LoopKind {
    /// One HTTP/1.1 connection, reused.
    KeepAlive,
    /// A new connection (and TLS handshake) per request.
    NewConnection,
}

/// A loop client's TLS: the SNI name and the client configuration.
pub type LoopTls = (String, Arc<rustls::ClientConfig>);

/// What a request loop saw.
#[derive(Debug, Default)]
pub struct LoopReport {
    pub ok: u64,
    pub failed: u64,
    /// The first failures, with what failed.
    pub errors: Vec<String>,
    /// Answers by backend name.
    pub backends: BTreeMap<String, u64>,
    /// Every leaf certificate (DER) the loop's TLS connections were shown.
    pub leaves: BTreeSet<Vec<u8>>,
}

/// Clients sending requests to the ingress as fast as they get answers until
/// stopped; a request fails unless it gets a 200 whose JSON names a backend.
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoopReport>>,
    tasks: JoinSet<()>,
}

impl RequestLoop {
    /// `clients`: (kind, TLS (SNI, config) or plain) per client; all ask for
    /// `host` and `path` at `to`.
    pub fn start(
        to_http: SocketAddr,
        to_https: SocketAddr,
        host: &str,
        path: &str,
        clients: Vec<(LoopKind, Option<LoopTls>)>,
    ) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoopReport::default()));
        let mut tasks = JoinSet::new();
        for (kind, tls) in clients {
            let (stop, report, host, path) = (stop.clone(), report.clone(), host.to_string(), path.to_string());
            let to = if tls.is_some() { to_https } else { to_http };
            tasks.spawn(async move {
                let mut conn: Option<Conn> = None;
                while !stop.load(Ordering::SeqCst) {
                    let tls = tls.as_ref().map(|(sni, cfg)| (sni.as_str(), cfg.clone()));
                    let mut c = match conn.take() {
                        Some(c) => c,
                        None => match Conn::open(to, tls).await {
                            Ok(c) => c,
                            Err(e) => {
                                record(&report, Err(e), None);
                                continue;
                            }
                        },
                    };
                    let r = c.get(&host, &path).await;
                    let ok = r.is_ok();
                    record(&report, r, c.leaf.clone());
                    if ok && matches!(kind, LoopKind::KeepAlive) {
                        conn = Some(c);
                    }
                }
            });
        }
        RequestLoop { stop, report, tasks }
    }

    pub fn answers(&self) -> u64 {
        self.report.lock().unwrap().ok
    }

    /// Waits until `n` more requests have been answered.
    pub async fn wait_answers(&self, n: u64) {
        let target = self.answers() + n;
        wait_for(
            &format!("{n} more answers from the request loop"),
            Duration::from_secs(20),
            || self.answers() >= target,
        )
        .await;
    }

    pub async fn stop(mut self) -> LoopReport {
        self.stop.store(true, Ordering::SeqCst);
        while self.tasks.join_next().await.is_some() {}
        std::mem::take(&mut *self.report.lock().unwrap())
    }
}

fn record(report: &Mutex<LoopReport>, r: Result<(u16, String), String>, leaf: Option<Vec<u8>>) {
    let mut rep = report.lock().unwrap();
    if let Some(l) = leaf {
        rep.leaves.insert(l);
    }
    let failure = match r {
        Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) if v["backend"].is_string() => {
                rep.ok += 1;
                *rep.backends
                    .entry(v["backend"].as_str().unwrap().to_string())
                    .or_default() += 1;
                return;
            }
            _ => format!("200 without a backend's answer: {body}"),
        },
        Ok((status, body)) => format!("status {status}: {}", body.trim()),
        Err(e) => e,
    };
    rep.failed += 1;
    if rep.errors.len() < 10 {
        rep.errors.push(failure);
    }
}

// ------------------------------------------------------------------ Pebble

/// `program`, run inside network namespace `netns` when one is given (nsenter
/// execs it: the child's pid is the program's).
fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A child process killed on drop.
pub struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's Pebble (an ACME CA for tests) and pebble-challtestsrv as its DNS: every
/// name resolves to 127.0.0.1, where the ingress's HTTP listener answers HTTP-01
/// on `http_port`. Pebble's own HTTPS certificate comes from a test CA (`tls_ca`).
pub struct Pebble {
    pub directory_url: String,
    /// Trusts Pebble's ACME endpoint (give it as the settings' `ca_pem`).
    pub tls_ca_pem: String,
    management: SocketAddr,
    dir: tempfile::TempDir,
    netns: Option<String>,
    _procs: Vec<KillOnDrop>,
}

impl Pebble {
    pub async fn start(http_port: u16) -> Pebble {
        Pebble::start_in(None, http_port).await
    }

    /// Runs inside network namespace `netns` (a node's, whose ingress then answers
    /// HTTP-01 on its 127.0.0.1), or on the host.
    pub async fn start_in(netns: Option<&str>, http_port: u16) -> Pebble {
        for (cmd, pkg) in [("pebble", "pebble"), ("pebble-challtestsrv", "pebble")] {
            crate::netns::require_command(cmd, pkg);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("pebble test ca");
        let leaf = ca.leaf("pebble", &["localhost", "127.0.0.1"]);
        let cert = write_file(dir.path(), "pebble.crt", &leaf.cert_pem);
        let key = write_file(dir.path(), "pebble.key", &leaf.key_pem);
        let (acme, management, dns, dns_mgmt, tls_port) =
            (free_port(), free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = write_file(dir.path(), "pebble.json", &config.to_string());
        let log = |name: &str| {
            std::fs::File::create(dir.path().join(name)).unwrap_or_else(|e| panic!("log file {name}: {e}"))
        };
        let dns_srv = in_netns(netns, "pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting pebble-challtestsrv");
        let dns_srv = KillOnDrop(dns_srv);
        let pebble = in_netns(netns, "pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random sleep before validation, no rejected nonces, and no reuse
            // of earlier authorizations: every order is validated afresh.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(dir.path())
            .stdout(log("pebble.log"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting pebble");
        let pebble = KillOnDrop(pebble);
        let p = Pebble {
            directory_url: format!("https://127.0.0.1:{acme}/dir"),
            tls_ca_pem: ca.pem.clone(),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            _procs: vec![dns_srv, pebble],
            dir,
            netns: netns.map(str::to_string),
        };
        let ca_file = p.ca_file();
        let url = p.directory_url.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = tokio::process::Command::from(in_netns(p.netns.as_deref(), "curl"))
                .args(["-sf", "--noproxy", "*", "--max-time", "2", "--cacert"])
                .arg(&ca_file)
                .arg(&url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not serve its directory at {url} within 20s; see {}",
                p.dir.path().join("pebble.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    pub fn ca_file(&self) -> PathBuf {
        let p = self.dir.path().join("pebble-tls-ca.pem");
        if !p.exists() {
            let mut f = std::fs::File::create(&p).expect("writing the pebble TLS CA");
            f.write_all(self.tls_ca_pem.as_bytes())
                .expect("writing the pebble TLS CA");
        }
        p
    }

    /// The root that signs the certificates Pebble issues (random per start).
    pub async fn issuing_root_pem(&self) -> String {
        let out = tokio::process::Command::from(in_netns(self.netns.as_deref(), "curl"))
            .args(["-sSf", "--noproxy", "*", "--max-time", "5", "--cacert"])
            .arg(self.ca_file())
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .await
            .expect("running curl");
        assert!(
            out.status.success(),
            "fetching pebble's root failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("PEM is text")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
