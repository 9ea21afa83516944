//! The route table the proxy reads: a [`Plan`] plus, per route, the state that
//! lives across requests (the round-robin position, rate-limit buckets, sticky
//! tokens, metric handles). A new table carries over what belongs to routes that
//! are still there (buckets only while the limit is unchanged), so a reload
//! neither resets limits nor loses counters.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use sha2::{Digest, Sha256};

use super::{
    metrics::{IngressMetrics, RouteMetrics},
    ratelimit::Limiter,
    table::{Plan, PlannedBackend, PlannedRoute},
};

pub struct LiveRoute {
    rr: AtomicUsize,
    pub limiter: Option<Arc<Limiter>>,
    pub metrics: Arc<RouteMetrics>,
    /// Per backend (same order as the plan's), the value of the sticky cookie.
    pub sticky_tokens: Vec<String>,
    stable: Vec<usize>,
    canary: Vec<usize>,
}

/// Requests out of 100 that go to the canary: spread by a stride coprime to 100
/// rather than in a block.
fn is_canary_turn(n: usize, weight: u8) -> bool {
    (n.wrapping_mul(61) % 100) < usize::from(weight)
}

impl LiveRoute {
    /// The backend for the next request, by index into the route's backends:
    /// round robin, with the canary taking its weight in percent when the
    /// service has both kinds of task.
    pub fn pick(&self, route: &PlannedRoute) -> usize {
        let n = self.rr.fetch_add(1, Ordering::Relaxed);
        let group = if !self.canary.is_empty() && !self.stable.is_empty() {
            if is_canary_turn(n, route.canary_weight) {
                &self.canary
            } else {
                &self.stable
            }
        } else if self.stable.is_empty() {
            &self.canary
        } else {
            &self.stable
        };
        group[n % group.len()]
    }

    /// The backend a sticky cookie names, if it is still one of the route's.
    pub fn sticky(&self, token: &str) -> Option<usize> {
        self.sticky_tokens.iter().position(|t| t == token)
    }
}

/// The cookie value that names a backend: stable for the same task address.
fn sticky_token(route: &str, addr: SocketAddr) -> String {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(addr.to_string().as_bytes());
    hex::encode(&h.finalize()[..8])
}

pub struct RouteTable {
    pub plan: Plan,
    pub live: Vec<LiveRoute>,
}

impl RouteTable {
    pub fn empty() -> RouteTable {
        RouteTable {
            plan: Plan::default(),
            live: Vec::new(),
        }
    }

    pub fn build(plan: Plan, previous: &RouteTable, metrics: &IngressMetrics) -> RouteTable {
        let old: HashMap<&str, (&PlannedRoute, &LiveRoute)> = previous
            .plan
            .routes
            .iter()
            .zip(&previous.live)
            .map(|(r, l)| (r.name.as_str(), (r, l)))
            .collect();
        let live = plan
            .routes
            .iter()
            .map(|r| {
                let before = old.get(r.name.as_str());
                let limiter = r.rules.rate_limit.map(|limit| {
                    before
                        .and_then(|(_, l)| l.limiter.as_ref())
                        .filter(|l| l.limit == limit)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Limiter::new(limit)))
                });
                let route_metrics = before
                    .map(|(_, l)| l.metrics.clone())
                    .unwrap_or_else(|| Arc::new(metrics.route(&r.name)));
                let (canary, stable): (Vec<usize>, Vec<usize>) =
                    (0..r.backends.len()).partition(|&i| r.backends[i].canary);
                LiveRoute {
                    rr: AtomicUsize::new(before.map_or(0, |(_, l)| l.rr.load(Ordering::Relaxed))),
                    limiter,
                    metrics: route_metrics,
                    sticky_tokens: r
                        .backends
                        .iter()
                        .map(|b: &PlannedBackend| sticky_token(&r.name, b.addr))
                        .collect(),
                    stable,
                    canary,
                }
            })
            .collect();
        RouteTable { plan, live }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{endpoints, route, route_with};
    use super::super::table::plan;
    use super::*;
    use crate::model::RateLimit;
    use std::collections::BTreeSet;

    fn metrics() -> IngressMetrics {
        IngressMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    #[test]
    fn round_robin_visits_every_ready_backend() {
        let eps = vec![endpoints(
            "web",
            &[80],
            &[("10.0.0.2", true), ("10.0.0.3", true), ("10.0.0.4", true)],
        )];
        let (p, _) = plan(&[route("web", "a.com", "/", "web")], &eps, &BTreeSet::new());
        let t = RouteTable::build(p, &RouteTable::empty(), &metrics());
        let picks: Vec<usize> = (0..6).map(|_| t.live[0].pick(&t.plan.routes[0])).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_canary_gets_its_weight() {
        let mut eps = endpoints(
            "web",
            &[80],
            &[("10.0.0.2", true), ("10.0.0.3", true), ("10.0.0.4", true)],
        );
        eps.endpoints[2].canary = true;
        eps.canary_weight = 10;
        let (p, _) = plan(&[route("web", "a.com", "/", "web")], &[eps], &BTreeSet::new());
        let t = RouteTable::build(p, &RouteTable::empty(), &metrics());
        let canary = t.plan.routes[0].backends.iter().position(|b| b.canary).unwrap();
        let hits = (0..1000)
            .filter(|_| t.live[0].pick(&t.plan.routes[0]) == canary)
            .count();
        assert_eq!(hits, 100);
    }

    #[test]
    fn reloads_keep_limits_counters_and_sticky_tokens() {
        let limited = |per_sec| {
            route_with("api", "a.com", "/", "web", move |s| {
                s.rate_limit = Some(RateLimit { per_sec, burst: 1 })
            })
        };
        let eps = vec![endpoints("web", &[80], &[("10.0.0.2", true), ("10.0.0.3", true)])];
        let m = metrics();
        let (p1, _) = plan(&[limited(5)], &eps, &BTreeSet::new());
        let t1 = RouteTable::build(p1, &RouteTable::empty(), &m);
        let (p2, _) = plan(&[limited(5)], &eps[..], &BTreeSet::new());
        let t2 = RouteTable::build(p2, &t1, &m);
        assert!(Arc::ptr_eq(
            t1.live[0].limiter.as_ref().unwrap(),
            t2.live[0].limiter.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&t1.live[0].metrics, &t2.live[0].metrics));
        assert_eq!(t1.live[0].sticky_tokens, t2.live[0].sticky_tokens);
        // A changed limit starts with fresh buckets.
        let (p3, _) = plan(&[limited(50)], &eps, &BTreeSet::new());
        let t3 = RouteTable::build(p3, &t2, &m);
        assert!(!Arc::ptr_eq(
            t2.live[0].limiter.as_ref().unwrap(),
            t3.live[0].limiter.as_ref().unwrap()
        ));
        // Sticky tokens name backends, and a token of a task that left names none.
        let token = t3.live[0].sticky_tokens[1].clone();
        assert_eq!(t3.live[0].sticky(&token), Some(1));
        let one = vec![endpoints("web", &[80], &[("10.0.0.2", true)])];
        let (p4, _) = plan(&[limited(50)], &one, &BTreeSet::new());
        let t4 = RouteTable::build(p4, &t3, &m);
        assert_eq!(t4.live[0].sticky(&token), None);
        assert_ne!(t3.live[0].sticky_tokens[0], t3.live[0].sticky_tokens[1]);
    }
}
