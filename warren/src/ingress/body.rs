//! The body of every response the ingress sends: a backend's, streamed through
//! as it arrives, or one the ingress writes itself (redirects, 403, 429, 503,
//! challenge answers). It carries the connection's in-flight guard, so that a
//! connection counts as busy until the last byte of its last response is out.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::{server::InflightGuard, upstream::UpstreamBody};

enum Kind {
    Local(Option<Bytes>),
    Upstream(UpstreamBody),
}

pub struct ResponseBody {
    kind: Kind,
    _inflight: InflightGuard,
}

impl ResponseBody {
    pub fn local(bytes: impl Into<Bytes>, inflight: InflightGuard) -> ResponseBody {
        let b: Bytes = bytes.into();
        ResponseBody {
            kind: Kind::Local((!b.is_empty()).then_some(b)),
            _inflight: inflight,
        }
    }

    pub fn upstream(body: UpstreamBody, inflight: InflightGuard) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream(body),
            _inflight: inflight,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.kind {
            Kind::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(u) => Pin::new(u).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(b) => b.is_none(),
            Kind::Upstream(u) => u.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(u) => u.size_hint(),
        }
    }
}
