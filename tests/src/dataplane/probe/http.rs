//! The HTTP modes of `warren-dp-probe`, used by the data-plane benchmarks: a
//! small hyper server (`http`), a closed- or open-loop client that opens one
//! connection per request and times it (`crr`), and a poller that reports the
//! moment a new service address first answers (`await`). `crr --tls` makes every
//! connection a full TLS handshake (no resumption, the server's certificate not
//! verified: the client measures the server, not itself). Output is `key value`
//! lines like the other modes; the benchmark parses them.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::{self, Read, Write},
    mem,
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{service::service_fn, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{errno_name, sockaddr, Args};

/// The request of `crr` and `await`: one per connection, closed by the server.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().expect("tokio runtime")
}

/// `http --listen A:P [--threads N]`: HTTP/1.1 with keep-alive; the body is the
/// local address the connection arrived on, so a client can tell backends apart
/// when one server holds several addresses.
pub fn serve(args: &Args) {
    let listen: SocketAddr = args
        .req("--listen")
        .parse()
        .unwrap_or_else(|_| panic!("warren-dp-probe: bad --listen"));
    let rt = runtime(args.num("--threads", 1) as usize);
    rt.block_on(async move {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_reuseaddr(true).expect("SO_REUSEADDR");
        sock.bind(listen).expect("bind");
        // Connection-per-request load bursts SYNs; a short queue would add 1 s
        // SYN retransmits that measure the backlog instead of the path.
        let listener = sock.listen(4096).expect("listen");
        println!("listening");
        io::stdout().flush().ok();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = Bytes::from(match stream.local_addr() {
                Ok(a) => format!("{}\n", a.ip()),
                Err(_) => "unknown\n".to_string(),
            });
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// Accepts any certificate: the load generator measures the server's handshake.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS for `crr --tls`: HTTP/1.1 by ALPN, no session resumption.
fn tls_client() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    sni: rustls_pki_types::ServerName<'static>,
}

/// One connection, one request: the body's first line, or the error's name.
async fn one_request(to: SocketAddrV4, tls: Option<&Tls>) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(to).await.map_err(|e| errno_name(&e))?;
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(256);
    match tls {
        None => {
            s.write_all(REQUEST).await.map_err(|e| errno_name(&e))?;
            s.read_to_end(&mut buf).await.map_err(|e| errno_name(&e))?;
        }
        Some(tls) => {
            let mut t = tls
                .connector
                .connect(tls.sni.clone(), s)
                .await
                .map_err(|e| format!("tls-{}", errno_name(&e)))?;
            t.write_all(REQUEST).await.map_err(|e| errno_name(&e))?;
            // A server that closes without close_notify has still answered.
            if let Err(e) = t.read_to_end(&mut buf).await {
                if e.kind() != io::ErrorKind::UnexpectedEof || buf.is_empty() {
                    return Err(errno_name(&e));
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    if !text.starts_with("HTTP/1.1 200") {
        return Err(if text.is_empty() { "EOF".into() } else { "status".into() });
    }
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(body.lines().next().unwrap_or("").trim().to_string())
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    names: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    attempts: u64,
    last_done: Option<Instant>,
}

/// `crr --to A:P --ms MS [--warmup-ms MS] [--conns C] [--rate R] [--threads N] [--tls --sni NAME]`:
/// C loops of connect, request, response, close. Without `--rate` each loop starts
/// its next connection when the last one finishes (closed loop); with it the
/// attempts are paced at R per second in total (open loop, a flood). Only
/// attempts started after the warm-up and before its end are counted.
pub fn crr(args: &Args) {
    let to = args.addr("--to");
    let conns = args.num("--conns", 16).max(1);
    let window = Duration::from_millis(args.num("--ms", 1000));
    let warmup = Duration::from_millis(args.num("--warmup-ms", 0));
    let rate: Option<f64> = args
        .get("--rate")
        .map(|r| r.parse().unwrap_or_else(|_| panic!("warren-dp-probe: bad --rate {r}")));
    let tls = args.has("--tls").then(|| Tls {
        connector: tls_client(),
        sni: rustls_pki_types::ServerName::try_from(args.get("--sni").unwrap_or("bench").to_string())
            .unwrap_or_else(|_| panic!("warren-dp-probe: bad --sni")),
    });
    let rt = runtime(args.num("--threads", 1) as usize);
    let (tallies, from) = rt.block_on(async move {
        let start = Instant::now();
        let from = start + warmup;
        let until = from + window;
        let mut tasks = Vec::new();
        for i in 0..conns {
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                for k in 0u64.. {
                    if let Some(rate) = rate {
                        let due = start + Duration::from_secs_f64((k * conns + i) as f64 / rate);
                        if due >= until {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let began = Instant::now();
                    if began >= until {
                        break;
                    }
                    let r = match tokio::time::timeout(Duration::from_secs(5), one_request(to, tls.as_ref())).await {
                        Ok(r) => r,
                        Err(_) => Err("timeout".to_string()),
                    };
                    if began < from {
                        continue;
                    }
                    t.attempts += 1;
                    match r {
                        Ok(name) => {
                            let done = Instant::now();
                            t.latencies_us
                                .push((done - began).as_micros().min(u128::from(u32::MAX)) as u32);
                            *t.names.entry(name).or_default() += 1;
                            t.last_done = Some(done);
                        }
                        Err(e) => *t.errors.entry(e).or_default() += 1,
                    }
                }
                t
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("crr task"));
        }
        (all, from)
    });
    let mut total = Tally::default();
    for t in tallies {
        total.latencies_us.extend(t.latencies_us);
        for (k, v) in t.names {
            *total.names.entry(k).or_default() += v;
        }
        for (k, v) in t.errors {
            *total.errors.entry(k).or_default() += v;
        }
        total.attempts += t.attempts;
        total.last_done = total.last_done.max(t.last_done);
    }
    // Connections still running when the window closed finish after it; the
    // rate divides by the time until the last of them.
    let elapsed = total.last_done.map_or(window, |d| (d - from).max(window)).as_secs_f64();
    total.latencies_us.sort_unstable();
    let pct = |q: f64| -> u32 {
        let v = &total.latencies_us;
        if v.is_empty() {
            return 0;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    let ok = total.latencies_us.len();
    for (k, v) in &total.names {
        println!("name {k} {v}");
    }
    for (k, v) in &total.errors {
        println!("error {k} {v}");
    }
    println!("attempts {}", total.attempts);
    println!("ok {ok}");
    println!("elapsed_us {}", (elapsed * 1e6) as u64);
    println!("rate {:.1}", ok as f64 / elapsed);
    println!("p50_us {}", pct(0.50));
    println!("p99_us {}", pct(0.99));
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process, so the
/// benchmark can subtract its own reading from this one.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into the timespec it is given.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One non-blocking connection attempt that gives up after `wait`; then one
/// request with a 1 s limit.
fn try_answer(to: SocketAddrV4, wait: Duration) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a descriptor owned by `fd`.
    let fd = unsafe {
        let raw = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(raw)
    };
    let sa = sockaddr(to);
    let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sa is a valid sockaddr_in of length len.
    if unsafe { libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), len) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd; no signal mask.
        let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if n <= 0 {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        let mut err: libc::c_int = 0;
        let mut elen = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR writes one c_int.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut elen,
            )
        };
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let mut s = TcpStream::from(fd);
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(REQUEST)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    if buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(io::Error::other("no HTTP 200"))
    }
}

/// `await --to A:P [--timeout-ms MS] [--poll-us US]`: prints `ready`, then tries a
/// connection every `--poll-us` (each attempt gives up after that long) until one
/// gets an HTTP answer, and prints `answered_ns` (CLOCK_MONOTONIC) and `attempts`.
/// Prints `timeout 1` instead when nothing answered in time.
pub fn await_answer(args: &Args) {
    let to = args.addr("--to");
    let limit = Duration::from_millis(args.num("--timeout-ms", 30_000));
    let wait = Duration::from_micros(args.num("--poll-us", 200));
    println!("ready");
    io::stdout().flush().ok();
    let start = Instant::now();
    let mut attempts = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        attempts += 1;
        match try_answer(to, wait) {
            Ok(()) => {
                println!("answered_ns {}", monotonic_ns());
                break;
            }
            Err(e) => {
                *errors.entry(errno_name(&e)).or_default() += 1;
                // An immediate refusal would otherwise spin and steal the CPU
                // from whatever is installing the service.
                if e.kind() != io::ErrorKind::TimedOut {
                    std::thread::sleep(wait);
                }
            }
        }
        if start.elapsed() > limit {
            println!("timeout 1");
            break;
        }
    }
    for (k, v) in errors {
        println!("error {k} {v}");
    }
    println!("attempts {attempts}");
}
