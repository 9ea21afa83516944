//! The ingress's Prometheus metrics, registered on the registry the caller passes
//! (the node's, whose `warren` prefix makes them `warren_ingress_*`): requests by
//! route and status, request latency by route, upstream errors by route and kind,
//! TLS handshakes by result, open connections by listener and the expiry of each
//! certificate served. Per-route handles are resolved once per route table, not
//! per request.

use std::sync::RwLock;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The route label of requests that matched no route, and of ACME challenges.
pub const NO_ROUTE: &str = "_none";
pub const ACME_ROUTE: &str = "_acme";

/// Why an upstream request failed, as the `kind` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be made (refused, unreachable, timed out).
    Connect,
    /// The connection broke or the backend answered with something that is not HTTP.
    Protocol,
    /// The backend sent no response headers in time.
    Timeout,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Timeout => "timeout",
        }
    }
}

#[derive(Clone)]
pub struct IngressMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    tls_handshakes: IntCounterVec,
    connections: IntGaugeVec,
    certificate_expiry: GaugeVec,
}

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    r.expect("static metric definitions are valid")
}

impl IngressMetrics {
    /// Creates the metrics and registers them on `registry`; fails if they are
    /// registered there already.
    pub fn register(registry: &Registry) -> Result<IngressMetrics, prometheus::Error> {
        let m = IngressMetrics {
            requests: must(IntCounterVec::new(
                Opts::new(
                    "ingress_requests_total",
                    "HTTP requests answered by the ingress, by route and status.",
                ),
                &["route", "status"],
            )),
            duration: must(HistogramVec::new(
                HistogramOpts::new(
                    "ingress_request_duration_seconds",
                    "Time from a request's arrival to its response headers, by route.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["route"],
            )),
            upstream_errors: must(IntCounterVec::new(
                Opts::new(
                    "ingress_upstream_errors_total",
                    "Failed attempts to reach a route's backends, by route and kind (connect, protocol, timeout).",
                ),
                &["route", "kind"],
            )),
            tls_handshakes: must(IntCounterVec::new(
                Opts::new(
                    "ingress_tls_handshakes_total",
                    "TLS handshakes on the HTTPS listener, by result.",
                ),
                &["result"],
            )),
            connections: must(IntGaugeVec::new(
                Opts::new(
                    "ingress_open_connections",
                    "Client connections open, by listener (http, https).",
                ),
                &["listener"],
            )),
            certificate_expiry: must(GaugeVec::new(
                Opts::new(
                    "ingress_certificate_expiry_timestamp_seconds",
                    "When each certificate the ingress serves expires (Unix time).",
                ),
                &["certificate"],
            )),
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.tls_handshakes.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.certificate_expiry.clone()))?;
        Ok(m)
    }

    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            duration: self.duration.with_label_values(&[route]),
            requests: self.requests.clone(),
            statuses: RwLock::new(Vec::new()),
            upstream_errors: self.upstream_errors.clone(),
        }
    }

    /// Drops the series of a route that no longer exists.
    pub fn forget_route(&self, route: &str) {
        let _ = self.duration.remove_label_values(&[route]);
        for kind in [
            UpstreamErrorKind::Connect,
            UpstreamErrorKind::Protocol,
            UpstreamErrorKind::Timeout,
        ] {
            let _ = self.upstream_errors.remove_label_values(&[route, kind.as_str()]);
        }
        // Status series are created on first use; remove those that exist.
        use prometheus::core::Collector;
        let statuses: Vec<String> = self
            .requests
            .collect()
            .iter()
            .flat_map(|mf| mf.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.name() == "route" && l.value() == route))
            .filter_map(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == "status")
                    .map(|l| l.value().to_string())
            })
            .collect();
        for s in statuses {
            let _ = self.requests.remove_label_values(&[route, &s]);
        }
    }

    pub fn handshake(&self, ok: bool) {
        self.tls_handshakes
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn connections(&self, listener: &str) -> IntGauge {
        self.connections.with_label_values(&[listener])
    }

    pub fn set_certificate_expiry(&self, certificate: &str, not_after_ms: i64) {
        self.certificate_expiry
            .with_label_values(&[certificate])
            .set(not_after_ms as f64 / 1000.0);
    }

    pub fn forget_certificate(&self, certificate: &str) {
        let _ = self.certificate_expiry.remove_label_values(&[certificate]);
    }
}

/// The handles of one route.
pub struct RouteMetrics {
    route: String,
    pub duration: Histogram,
    requests: IntCounterVec,
    /// Counters by status, filled on first use (a route sees few distinct codes).
    statuses: RwLock<Vec<(u16, IntCounter)>>,
    upstream_errors: IntCounterVec,
}

impl RouteMetrics {
    pub fn count(&self, status: u16) {
        if let Some((_, c)) = self
            .statuses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(s, _)| *s == status)
        {
            c.inc();
            return;
        }
        let c = self.requests.with_label_values(&[&self.route, &status.to_string()]);
        c.inc();
        let mut w = self.statuses.write().unwrap_or_else(|p| p.into_inner());
        if !w.iter().any(|(s, _)| *s == status) {
            w.push((status, c));
        }
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors
            .with_label_values(&[&self.route, kind.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    fn text(r: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&r.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn names_carry_the_registry_prefix_and_routes_count_by_status() {
        let r = Registry::new_custom(Some("warren".into()), None).unwrap();
        let m = IngressMetrics::register(&r).unwrap();
        let web = m.route("web");
        web.count(200);
        web.count(200);
        web.count(503);
        web.upstream_error(UpstreamErrorKind::Connect);
        m.handshake(true);
        m.set_certificate_expiry("shop", 1_700_000_000_000);
        let t = text(&r);
        assert!(
            t.contains(r#"warren_ingress_requests_total{route="web",status="200"} 2"#),
            "{t}"
        );
        assert!(
            t.contains(r#"warren_ingress_requests_total{route="web",status="503"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"warren_ingress_upstream_errors_total{kind="connect",route="web"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"warren_ingress_tls_handshakes_total{result="ok"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"warren_ingress_certificate_expiry_timestamp_seconds{certificate="shop"} 1700000000"#));
        m.forget_route("web");
        m.forget_certificate("shop");
        let t = text(&r);
        assert!(!t.contains(r#"route="web""#), "{t}");
        assert!(!t.contains(r#"certificate="shop""#), "{t}");
        // A second registration on the same registry is refused.
        assert!(IngressMetrics::register(&r).is_err());
    }
}
