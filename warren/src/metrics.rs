//! Prometheus metrics of a node and the HTTP endpoint that serves them (`/metrics`)
//! with `/healthz`. Gauges that mirror the replicated state or Raft are refreshed at
//! scrape time from their sources, so they can never drift; counters and histograms
//! are updated where the events happen.

use crate::model::{NodeState, TaskState};
use crate::store::{Proposer, Store};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// Where the state gauges read from: the store, and on managers the Raft member.
type Sources = (Arc<Store>, Option<Arc<dyn Proposer>>);

pub struct Metrics {
    pub registry: Registry,
    /// `[method, code]` of every gRPC call, recorded by the call layer (`wire::calls`).
    pub api_duration: HistogramVec,
    raft_is_leader: IntGauge,
    raft_term: IntGauge,
    raft_last_log_index: IntGauge,
    raft_applied_index: IntGauge,
    raft_members: IntGauge,
    nodes: IntGaugeVec,
    services: IntGauge,
    tasks: IntGaugeVec,
    node_reserved: GaugeVec,
    sources: OnceLock<Sources>,
}

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    r.expect("static metric definitions are valid")
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new_custom(Some("warren".into()), None).expect("valid prefix");
        let api_duration = must(HistogramVec::new(
            HistogramOpts::new("api_request_duration_seconds", "Duration of gRPC API calls by method.").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "code"],
        ));
        let g = |name: &str, help: &str| must(IntGauge::new(name, help));
        let m = Metrics {
            raft_is_leader: g("raft_is_leader", "1 if this manager is the Raft leader."),
            raft_term: g("raft_term", "Current Raft term."),
            raft_last_log_index: g(
                "raft_last_log_index",
                "Index of the last entry in this manager's Raft log.",
            ),
            raft_applied_index: g(
                "raft_applied_index",
                "Index of the last entry applied to the state machine.",
            ),
            raft_members: g("raft_members", "Number of managers in the Raft membership."),
            nodes: must(IntGaugeVec::new(Opts::new("nodes", "Nodes by state."), &["state"])),
            services: g("services", "Number of services."),
            tasks: must(IntGaugeVec::new(Opts::new("tasks", "Tasks by state."), &["state"])),
            node_reserved: must(GaugeVec::new(
                Opts::new(
                    "node_reserved_ratio",
                    "Reserved fraction of each node's capacity, by resource.",
                ),
                &["node", "resource"],
            )),
            api_duration,
            registry,
            sources: OnceLock::new(),
        };
        for c in [
            Box::new(m.api_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.raft_is_leader.clone()),
            Box::new(m.raft_term.clone()),
            Box::new(m.raft_last_log_index.clone()),
            Box::new(m.raft_applied_index.clone()),
            Box::new(m.raft_members.clone()),
            Box::new(m.nodes.clone()),
            Box::new(m.services.clone()),
            Box::new(m.tasks.clone()),
            Box::new(m.node_reserved.clone()),
        ] {
            must(m.registry.register(c));
        }
        let process = prometheus::process_collector::ProcessCollector::for_self();
        // Not fatal: some platforms have no /proc.
        let _ = m.registry.register(Box::new(process));
        Arc::new(m)
    }

    /// Where the state gauges read from; set once the store (and Raft, on managers) exist.
    pub fn set_sources(&self, store: Arc<Store>, raft: Option<Arc<dyn Proposer>>) {
        let _ = self.sources.set((store, raft));
    }

    fn refresh(&self) {
        let Some((store, raft)) = self.sources.get() else {
            return;
        };
        if let Some(raft) = raft {
            let m = raft.status();
            self.raft_is_leader.set(i64::from(m.leader == Some(m.id)));
            self.raft_term.set(m.term as i64);
            self.raft_last_log_index.set(m.last_log_index as i64);
            self.raft_applied_index.set(m.applied_index as i64);
            self.raft_members.set(m.members.len() as i64);
        }
        store.read(|s| {
            for st in [
                NodeState::Ready,
                NodeState::Down,
                NodeState::Unknown,
                NodeState::Unreachable,
            ] {
                let n = s.nodes.values().filter(|n| n.state == st).count();
                self.nodes.with_label_values(&[st.as_str()]).set(n as i64);
            }
            self.services.set(s.services.len() as i64);
            for st in [
                TaskState::New,
                TaskState::Pending,
                TaskState::Assigned,
                TaskState::Accepted,
                TaskState::Preparing,
                TaskState::Starting,
                TaskState::Running,
                TaskState::Complete,
                TaskState::Shutdown,
                TaskState::Failed,
                TaskState::Rejected,
                TaskState::Orphaned,
            ] {
                let n = s.tasks.values().filter(|t| t.status.state == st).count();
                self.tasks.with_label_values(&[st.as_str()]).set(n as i64);
            }
            self.node_reserved.reset();
            let reserved = s.reserved_by_node();
            for n in s.nodes.values() {
                let r = reserved.get(&n.id).copied().unwrap_or_default();
                let ratio = |used: i64, cap: i64| {
                    if cap > 0 {
                        used as f64 / cap as f64
                    } else {
                        0.0
                    }
                };
                self.node_reserved
                    .with_label_values(&[&n.name, "cpu"])
                    .set(ratio(r.nano_cpus, n.resources.nano_cpus));
                self.node_reserved
                    .with_label_values(&[&n.name, "memory"])
                    .set(ratio(r.memory_bytes, n.resources.memory_bytes));
            }
        });
    }

    pub fn render(&self) -> String {
        self.refresh();
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct MetricsListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// The metrics port, bound (serve it with `serve`).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsListenError { addr, source })
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is aborted.
pub fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => (200, metrics.render()),
                            "/healthz" => (200, "ok\n".to_string()),
                            _ => (404, "not found\n".to_string()),
                        };
                        let ctype = if status == 200 && req.uri().path() == "/metrics" {
                            "text/plain; version=0.0.4"
                        } else {
                            "text/plain"
                        };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", ctype)
                                .body(Full::new(Bytes::from(body)))
                                .expect("static response parts"),
                        )
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    })
}
