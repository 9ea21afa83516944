//! Linearizable reads of the client API: every `Get*`/`List*` call of
//! `warren.v1.WarrenApi` first waits for a read point confirmed by a majority of
//! managers (`Proposer::linearize`), so that it sees every write acknowledged before
//! it, through any manager. When no majority answers, the call is still served from
//! this manager's state and its response carries `warren-stale: true`, which the CLI
//! shows (a note, and `"stale": true` in JSON): during a partition an operator can
//! still look, while writes fail at once naming the missing quorum. Not what the
//! handlers read (`api::server`).

use crate::store::Proposer;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::server::NamedService;
use tower::Service;

/// The response header that marks an answer served without a confirmed read point.
pub const STALE_HEADER: &str = "warren-stale";

/// Whether `path` is a read of the client API that must be linearized. Node-proxied
/// reads (a node's data plane) and streams (events, logs) are not state reads.
pub fn is_state_read(path: &str) -> bool {
    let Some(method) = path.strip_prefix("/warren.v1.WarrenApi/") else {
        return false;
    };
    (method.starts_with("Get") || method.starts_with("List")) && method != "GetNodeDataplane"
}

/// `WarrenApiServer` behind the read barrier.
#[derive(Clone)]
pub struct Linearized<S> {
    inner: S,
    raft: Arc<dyn Proposer>,
}

impl<S> Linearized<S> {
    pub fn new(inner: S, raft: Arc<dyn Proposer>) -> Linearized<S> {
        Linearized { inner, raft }
    }
}

impl<S: NamedService> NamedService for Linearized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Linearized<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let read = is_state_read(req.uri().path());
        let raft = self.raft.clone();
        // The service that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let stale = if read {
                match raft.linearize().await {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::debug!(path = %req.uri().path(), reason = %e, "read served from local state, marked stale");
                        true
                    }
                }
            } else {
                false
            };
            let mut resp = inner.call(req).await?;
            if stale {
                resp.headers_mut()
                    .insert(STALE_HEADER, http::HeaderValue::from_static("true"));
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_state_reads_of_the_client_api_wait_for_a_read_point() {
        assert!(is_state_read("/warren.v1.WarrenApi/ListServices"));
        assert!(is_state_read("/warren.v1.WarrenApi/GetService"));
        assert!(!is_state_read("/warren.v1.WarrenApi/GetNodeDataplane"));
        assert!(!is_state_read("/warren.v1.WarrenApi/CreateService"));
        assert!(!is_state_read("/warren.v1.WarrenApi/WatchEvents"));
        assert!(!is_state_read("/warren.v1.Raft/AppendEntries"));
    }
}
