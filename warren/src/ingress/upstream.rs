//! Connections from the ingress to backend tasks: HTTP/1.1 connections pooled per
//! task address (a connection goes back to its pool when its response body has
//! been read to the end), and one multiplexed HTTP/2 (h2c) connection per task
//! for gRPC. The pool is keyed by the task's address, so a task that leaves the
//! route table gets no new requests while its open ones finish; [`Upstreams::retain`]
//! closes idle connections to tasks that are gone. A request is given back
//! untouched when no connection could be made ([`SendError::Connect`]), so that the
//! proxy can try another task without losing a streamed body.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
    Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// How the ingress speaks to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2 with prior knowledge, for gRPC.
    H2c,
}

pub enum SendError {
    /// No connection to the task could be made; the request was not sent.
    Connect {
        req: Box<Request<Incoming>>,
        error: io::Error,
    },
    /// The request was sent (or partly) and then failed.
    Failed(hyper::Error),
}

struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

pub struct Upstreams {
    inner: Arc<Inner>,
}

struct Inner {
    h1: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Incoming>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Inner {
    fn give_back(&self, addr: SocketAddr, sender: http1::SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut pools = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(addr).or_default();
        if pool.len() < self.max_idle {
            pool.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr} timed out")))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn handshake_error(e: hyper::Error) -> io::Error {
    io::Error::other(e)
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Upstreams {
        Upstreams {
            inner: Arc::new(Inner {
                h1: Mutex::new(HashMap::new()),
                h2: Mutex::new(HashMap::new()),
                connect_timeout,
                idle_timeout,
                max_idle,
            }),
        }
    }

    /// Sends `req` (origin-form URI for HTTP/1.1, absolute for h2c) to the task at `addr`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        proto: Proto,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match proto {
            Proto::Http1 => self.send_h1(addr, req).await,
            Proto::H2c => self.send_h2(addr, req).await,
        }
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<Idle> {
        let mut pools = self.inner.h1.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.get_mut(&addr)?;
        while let Some(idle) = pool.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < self.inner.idle_timeout {
                return Some(idle);
            }
        }
        None
    }

    async fn send_h1(&self, addr: SocketAddr, mut req: Request<Incoming>) -> Result<Response<UpstreamBody>, SendError> {
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        while let Some(mut idle) = self.take_idle(addr) {
            if idle.sender.ready().await.is_err() {
                continue;
            }
            match idle.sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap_h1(addr, resp, idle.sender, upgrade)),
                Err(mut e) => match e.take_message() {
                    // The connection closed before the request went out: next one.
                    Some(r) => req = r,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let stream = match connect(addr, self.inner.connect_timeout).await {
            Ok(s) => s,
            Err(error) => {
                return Err(SendError::Connect {
                    req: Box::new(req),
                    error,
                })
            }
        };
        let (mut sender, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => {
                return Err(SendError::Connect {
                    req: Box::new(req),
                    error: handshake_error(e),
                })
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "upstream connection ended");
            }
        });
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(self.wrap_h1(addr, resp, sender, upgrade)),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::Connect {
                    req: Box::new(req),
                    error: handshake_error(e.into_error()),
                }),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }

    fn wrap_h1(
        &self,
        addr: SocketAddr,
        resp: Response<Incoming>,
        sender: http1::SendRequest<Incoming>,
        upgrade: bool,
    ) -> Response<UpstreamBody> {
        // A connection that switched protocols belongs to the tunnel now.
        let reusable = !upgrade && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let (parts, body) = resp.into_parts();
        let mut b = UpstreamBody {
            inner: body,
            give_back: reusable.then(|| (self.inner.clone(), addr, sender)),
        };
        if b.inner.is_end_stream() {
            b.release();
        }
        Response::from_parts(parts, b)
    }

    async fn h2_sender(&self, addr: SocketAddr, fresh: bool) -> io::Result<http2::SendRequest<Incoming>> {
        if !fresh {
            let map = self.inner.h2.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = map.get(&addr).filter(|s| !s.is_closed()) {
                return Ok(s.clone());
            }
        }
        let stream = connect(addr, self.inner.connect_timeout).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(handshake_error)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, error = %e, "upstream h2 connection ended");
            }
        });
        self.inner
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, sender.clone());
        Ok(sender)
    }

    async fn send_h2(&self, addr: SocketAddr, mut req: Request<Incoming>) -> Result<Response<UpstreamBody>, SendError> {
        for fresh in [false, true] {
            let mut sender = match self.h2_sender(addr, fresh).await {
                Ok(s) => s,
                Err(error) => {
                    return Err(SendError::Connect {
                        req: Box::new(req),
                        error,
                    })
                }
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    return Ok(Response::from_parts(
                        parts,
                        UpstreamBody {
                            inner: body,
                            give_back: None,
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        Err(SendError::Connect {
            req: Box::new(req),
            error: io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("h2 connection to {addr} keeps closing"),
            ),
        })
    }

    /// Closes idle connections to tasks not in `live`, and those idle too long.
    pub fn retain(&self, live: &BTreeSet<SocketAddr>) {
        let timeout = self.inner.idle_timeout;
        let mut h1 = self.inner.h1.lock().unwrap_or_else(|p| p.into_inner());
        h1.retain(|addr, pool| {
            pool.retain(|i| !i.sender.is_closed() && i.since.elapsed() < timeout);
            live.contains(addr) && !pool.is_empty()
        });
        drop(h1);
        // Dropping the handle lets the h2 connection end once its streams finish.
        self.inner
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|addr, s| live.contains(addr) && !s.is_closed());
    }
}

/// A backend's response body; an HTTP/1.1 connection goes back to its pool when
/// the body has been read to the end (a body dropped early closes it).
pub struct UpstreamBody {
    inner: Incoming,
    give_back: Option<(Arc<Inner>, SocketAddr, http1::SendRequest<Incoming>)>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some((inner, addr, sender)) = self.give_back.take() {
            inner.give_back(addr, sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.give_back = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
