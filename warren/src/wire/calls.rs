//! The one wrapper around every gRPC call a node serves (`WarrenApi`, `Membership`,
//! `Dispatcher`, `NodeAgent`, `Raft`, on the cluster port and the local socket): a
//! tower layer that authorizes the caller by the method's `auth::policy`, hands the
//! `Caller` to the handler, refuses a certificate of a node removed from the
//! cluster (on managers, which hold the replicated revocation list), and records the call's duration and status code in
//! `warren_api_request_duration_seconds{method, code}` — refused calls included.
//! Client API methods keep their bare names as the `method` label (`CreateService`);
//! the other services' are prefixed (`Raft.AppendEntries`), since `LoadImage` is
//! both a client call and a node call. A streaming call is measured until its
//! response opens. Not what a handler does with the call.

use super::auth;
use futures::future::BoxFuture;
use prometheus::HistogramVec;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tower::{Layer, Service};

/// Whether a node ID was removed from the cluster (its certificate revoked).
pub type Revoked = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The layer for `tonic::transport::Server::builder().layer(..)`.
#[derive(Clone)]
pub struct CallLayer {
    durations: HistogramVec,
    revoked: Option<Revoked>,
}

impl CallLayer {
    /// `durations` is labelled `[method, code]`.
    pub fn new(durations: HistogramVec) -> CallLayer {
        CallLayer {
            durations,
            revoked: None,
        }
    }

    /// Refuses callers whose node ID `revoked` names.
    pub fn with_revocations(mut self, revoked: Revoked) -> CallLayer {
        self.revoked = Some(revoked);
        self
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            durations: self.durations.clone(),
            revoked: self.revoked.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    durations: HistogramVec,
    revoked: Option<Revoked>,
}

/// The `method` label of a gRPC path.
pub fn method_label(path: &str) -> String {
    match auth::split_path(path) {
        ("warren.v1.WarrenApi", method) => method.to_string(),
        (service, method) => {
            let short = service.strip_prefix("warren.v1.").unwrap_or(service);
            format!("{short}.{method}")
        }
    }
}

/// A response's gRPC status: in its headers when the call failed before any
/// message (a refusal, or an error from a unary handler); otherwise `Ok`.
fn code_of<B>(resp: &http::Response<B>) -> Code {
    match resp.headers().get("grpc-status") {
        Some(v) => Code::from_bytes(v.as_bytes()),
        None => Code::Ok,
    }
}

impl<S, B> Service<http::Request<B>> for Calls<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = req.uri().path();
        let method = method_label(path);
        let caller = auth::caller_of(req.extensions());
        let durations = self.durations.clone();
        let observe = move |code: Code| {
            durations
                .with_label_values(&[method.as_str(), &format!("{code:?}")])
                .observe(started.elapsed().as_secs_f64());
        };
        let refused = match (&caller, &self.revoked) {
            (auth::Caller::Node(id), Some(revoked)) if revoked(&id.node_id) => Err(tonic::Status::permission_denied(format!(
                "node {} was removed from the cluster (`warren node rm`): its certificate is no longer accepted; join again with a current token",
                id.node_id
            ))),
            _ => auth::authorize(auth::policy(path), &caller),
        };
        if let Err(status) = refused {
            tracing::debug!(path = %path, caller = ?caller, reason = %status.message(), "call refused");
            observe(status.code());
            return Box::pin(async move { Ok(status.into_http()) });
        }
        req.extensions_mut().insert(caller);
        // The service that was made ready is the one to call; the clone waits for
        // the next call's poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let resp = inner.call(req).await?;
            observe(code_of(&resp));
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_calls_keep_their_bare_names() {
        assert_eq!(method_label("/warren.v1.WarrenApi/ListServices"), "ListServices");
        assert_eq!(method_label("/warren.v1.NodeAgent/LoadImage"), "NodeAgent.LoadImage");
        assert_eq!(method_label("/warren.v1.Raft/AppendEntries"), "Raft.AppendEntries");
        assert_eq!(method_label("/other.Svc/Call"), "other.Svc.Call");
    }
}
