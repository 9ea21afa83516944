//! From the routes, the services' endpoints and the certificates on hand to the
//! route table the proxy reads on every request: pure planning ([`plan`]), the
//! difference between two plans for the log ([`diff`]), and lookup by host and
//! longest path prefix ([`Plan::lookup`]). A plan never fails as a whole: a route
//! that cannot be served as written is reported as an [`Issue`] naming the route,
//! and the rest still apply. Runtime state (counters, rate-limit buckets,
//! metrics) is attached by `super::state`, not here.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::model::{
    ingress::{Ingress, RouteTls},
    Protocol, RateLimit, ServiceEndpoints,
};

/// The port tasks are reached on when a route names none and the service
/// publishes none.
pub const DEFAULT_BACKEND_PORT: u16 = 80;

/// Something the plan could not do as the routes ask; the route still applies
/// unless `dropped`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub route: String,
    pub message: String,
    /// The route is not served at all (it conflicts with another).
    pub dropped: bool,
}

/// One task address of a route's service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedBackend {
    pub addr: SocketAddr,
    pub task_id: String,
    pub canary: bool,
}

/// The per-route rules, in the form the proxy applies them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub strip_prefix: bool,
    pub rewrite: Option<(String, String)>,
    pub header_add: Vec<(HeaderName, HeaderValue)>,
    pub header_rm: Vec<HeaderName>,
    pub redirect_https: bool,
    pub rate_limit: Option<RateLimit>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    /// The cookie that keeps a client on one task.
    pub sticky_cookie: Option<String>,
}

impl Rules {
    /// Whether `ip` may use the route: deny wins; a non-empty allow list must match.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 clients (from a dual-stack listener) count as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A route as planned: where it matches, where it sends, what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRoute {
    pub id: String,
    pub name: String,
    /// Exact, `*.parent`, or empty for the default route only.
    pub host: String,
    pub path: String,
    pub service: String,
    pub port: u16,
    /// Ready tasks, sorted; a route without any answers 503.
    pub backends: Vec<PlannedBackend>,
    /// Percent of requests for the canary tasks, when the service has both kinds.
    pub canary_weight: u8,
    pub tls: RouteTls,
    pub rules: Rules,
    pub default_backend: bool,
}

impl PlannedRoute {
    /// Segment-wise prefix match: `/api` matches `/api`, `/api/` and `/api/x`.
    pub fn matches_path(&self, path: &str) -> bool {
        path_has_prefix(path, &self.path)
    }
}

pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

/// Routes of one host, longest path first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct HostRoutes(Vec<usize>);

/// The whole desired table: routes by index plus the host indexes into them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: Vec<PlannedRoute>,
    exact: HashMap<String, HostRoutes>,
    /// `*.example.com` is indexed under `example.com`.
    wildcard: HashMap<String, HostRoutes>,
    default: Option<usize>,
}

impl Plan {
    /// The route for a request: exact host, then a wildcard of the host's parent,
    /// each by longest path prefix; then the default route. `host` must be
    /// lowercase without a port.
    pub fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        let pick = |hr: &HostRoutes| hr.0.iter().copied().find(|&i| self.routes[i].matches_path(path));
        if let Some(i) = self.exact.get(host).and_then(pick) {
            return Some(i);
        }
        if let Some(i) = host
            .split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .and_then(pick)
        {
            return Some(i);
        }
        self.default
    }

    /// Every backend address in the table (the upstream pools keep no others).
    pub fn backend_addrs(&self) -> BTreeSet<SocketAddr> {
        self.routes
            .iter()
            .flat_map(|r| r.backends.iter().map(|b| b.addr))
            .collect()
    }

    /// Certificate names the routes ask for, by the host they serve.
    pub fn certificates_by_host(&self) -> Vec<(&str, String)> {
        self.routes
            .iter()
            .filter(|r| !r.host.is_empty())
            .filter_map(|r| match &r.tls {
                RouteTls::None => None,
                RouteTls::Acme => Some((r.host.as_str(), crate::model::ingress::acme_certificate_name(&r.host))),
                RouteTls::Certificate(n) => Some((r.host.as_str(), n.clone())),
            })
            .collect()
    }

    /// The default route's certificate, which answers handshakes without a known name.
    pub fn default_certificate(&self) -> Option<String> {
        let r = &self.routes[self.default?];
        match &r.tls {
            RouteTls::Certificate(n) => Some(n.clone()),
            RouteTls::Acme => Some(crate::model::ingress::acme_certificate_name(&r.host)),
            RouteTls::None => None,
        }
    }
}

/// The port a route reaches its service's tasks on: the route's own, else the
/// service's only target port, else 80.
fn backend_port(route: &Ingress, svc: Option<&ServiceEndpoints>) -> Result<u16, String> {
    if let Some(p) = route.spec.port {
        return Ok(p);
    }
    let Some(svc) = svc else {
        return Ok(DEFAULT_BACKEND_PORT);
    };
    let targets: BTreeSet<u16> = svc
        .ports
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.target)
        .collect();
    match targets.len() {
        0 => Ok(DEFAULT_BACKEND_PORT),
        1 => Ok(*targets.iter().next().expect("one element")),
        _ => Err(format!(
            "service {} listens on several ports ({}): name one with --service {}:PORT",
            svc.name,
            targets.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
            svc.name
        )),
    }
}

fn compile_rules(route: &Ingress) -> Result<Rules, String> {
    let s = &route.spec;
    let mut rules = Rules {
        strip_prefix: s.strip_prefix && s.path != "/",
        rewrite: s.rewrite.as_ref().map(|r| (r.from.clone(), r.to.clone())),
        redirect_https: s.redirect_https,
        rate_limit: s.rate_limit,
        allow: s.allow.clone(),
        deny: s.deny.clone(),
        sticky_cookie: s
            .sticky
            .then(|| format!("warren_sticky_{}", route.name.replace('.', "_"))),
        ..Default::default()
    };
    for h in &s.header_add {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("bad header name {}", h.name))?;
        let value = HeaderValue::from_str(&h.value).map_err(|_| format!("bad value for header {}", h.name))?;
        rules.header_add.push((name, value));
    }
    for h in &s.header_rm {
        rules
            .header_rm
            .push(HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("bad header name {h}"))?);
    }
    Ok(rules)
}

/// Plans the table. `certificates` are the names of the certificates on hand: a
/// route naming another still routes, with an issue (HTTPS for its host then
/// depends on a certificate that covers it anyway). Two routes on the same host
/// and path, or two default routes: the older (then the smaller name) wins and the
/// other is dropped with an issue; the state machine refuses such pairs, so this
/// only covers a state written by another version.
pub fn plan(routes: &[Ingress], endpoints: &[ServiceEndpoints], certificates: &BTreeSet<String>) -> (Plan, Vec<Issue>) {
    let by_name: HashMap<&str, &ServiceEndpoints> = endpoints
        .iter()
        .filter(|e| !e.removed)
        .map(|e| (e.name.as_str(), e))
        .collect();
    let mut ordered: Vec<&Ingress> = routes.iter().collect();
    ordered.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));

    let mut plan = Plan::default();
    let mut issues = Vec::new();
    let mut taken: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut default_owner: Option<&str> = None;
    let issue = |issues: &mut Vec<Issue>, r: &Ingress, message: String, dropped: bool| {
        issues.push(Issue {
            route: r.name.clone(),
            message,
            dropped,
        })
    };

    for r in ordered {
        let s = &r.spec;
        if let Err(e) = s.validate() {
            issue(&mut issues, r, format!("invalid route: {e}"), true);
            continue;
        }
        if !s.host.is_empty() {
            if let Some(owner) = taken.get(&(s.host.as_str(), s.path.as_str())) {
                issue(
                    &mut issues,
                    r,
                    format!("{}{} is already routed by {owner}", s.host, s.path),
                    true,
                );
                continue;
            }
        }
        let mut default_backend = s.default_backend;
        if default_backend {
            if let Some(owner) = default_owner {
                if s.host.is_empty() {
                    issue(&mut issues, r, format!("{owner} is already the default route"), true);
                    continue;
                }
                issue(
                    &mut issues,
                    r,
                    format!("{owner} is already the default route; this one serves only its host"),
                    false,
                );
                default_backend = false;
            }
        }
        let rules = match compile_rules(r) {
            Ok(rules) => rules,
            Err(e) => {
                issue(&mut issues, r, e, true);
                continue;
            }
        };
        let svc = by_name.get(s.service.as_str()).copied();
        let mut backends = Vec::new();
        let mut port = s.port.unwrap_or(DEFAULT_BACKEND_PORT);
        match svc {
            None => issue(
                &mut issues,
                r,
                format!("service {} does not exist: requests get 503", s.service),
                false,
            ),
            Some(svc) => match backend_port(r, Some(svc)) {
                Err(e) => issue(&mut issues, r, format!("{e}; requests get 503"), false),
                Ok(p) => {
                    port = p;
                    // Draining tasks get no new requests while another task can
                    // take them (connection-aware drain, docs/worker.md).
                    let any_live = svc.endpoints.iter().any(|e| e.ready && !e.draining);
                    backends = svc
                        .endpoints
                        .iter()
                        .filter(|e| e.ready && (!e.draining || !any_live))
                        .map(|e| PlannedBackend {
                            addr: SocketAddr::new(IpAddr::V4(e.addr), p),
                            task_id: e.task_id.clone(),
                            canary: e.canary,
                        })
                        .collect();
                    backends.sort();
                    backends.dedup_by(|a, b| a.addr == b.addr);
                }
            },
        }
        if let Some(cert) = s.certificate_name() {
            if !certificates.contains(&cert) {
                let why = if s.tls == RouteTls::Acme {
                    format!("the ACME certificate {cert} is not issued yet")
                } else {
                    format!("certificate {cert} does not exist")
                };
                issue(&mut issues, r, why, false);
            }
        }
        let index = plan.routes.len();
        if !s.host.is_empty() {
            taken.insert((s.host.as_str(), s.path.as_str()), r.name.as_str());
            let hr = match s.host.strip_prefix("*.") {
                Some(parent) => plan.wildcard.entry(parent.to_string()).or_default(),
                None => plan.exact.entry(s.host.clone()).or_default(),
            };
            hr.0.push(index);
        }
        if default_backend {
            default_owner = Some(r.name.as_str());
            plan.default = Some(index);
        }
        plan.routes.push(PlannedRoute {
            id: r.id.clone(),
            name: r.name.clone(),
            host: s.host.clone(),
            path: s.path.clone(),
            service: s.service.clone(),
            port,
            canary_weight: svc.map_or(0, |e| e.canary_weight),
            backends,
            tls: s.tls.clone(),
            rules,
            default_backend,
        });
    }
    let lengths: Vec<usize> = plan.routes.iter().map(|r| r.path.len()).collect();
    for hr in plan.exact.values_mut().chain(plan.wildcard.values_mut()) {
        hr.0.sort_by(|a, b| lengths[*b].cmp(&lengths[*a]));
    }
    (plan, issues)
}

/// What changed between two plans, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added(String),
    Removed(String),
    /// Host, path, rules or TLS changed.
    Changed(String),
    /// Only the set of ready tasks changed.
    Backends {
        route: String,
        added: usize,
        removed: usize,
    },
}

pub fn diff(old: &Plan, new: &Plan) -> Vec<Change> {
    let old_by: BTreeMap<&str, &PlannedRoute> = old.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let new_by: BTreeMap<&str, &PlannedRoute> = new.routes.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut out = Vec::new();
    for (name, n) in &new_by {
        match old_by.get(name) {
            None => out.push(Change::Added(name.to_string())),
            Some(o) => {
                let same_but_backends = PlannedRoute {
                    backends: n.backends.clone(),
                    ..(*o).clone()
                } == **n;
                if !same_but_backends {
                    out.push(Change::Changed(name.to_string()));
                } else if o.backends != n.backends {
                    let before: BTreeSet<SocketAddr> = o.backends.iter().map(|b| b.addr).collect();
                    let after: BTreeSet<SocketAddr> = n.backends.iter().map(|b| b.addr).collect();
                    out.push(Change::Backends {
                        route: name.to_string(),
                        added: after.difference(&before).count(),
                        removed: before.difference(&after).count(),
                    });
                }
            }
        }
    }
    for name in old_by.keys() {
        if !new_by.contains_key(name) {
            out.push(Change::Removed(name.to_string()));
        }
    }
    out
}

/// The plan shared by the proxy; cheap to clone.
pub type SharedPlan = Arc<Plan>;

#[cfg(test)]
mod tests {
    use super::super::fixtures::{endpoints, route, route_with};
    use super::*;
    use crate::model::ingress::RouteTls;

    fn certs(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn name_of(p: &Plan, host: &str, path: &str) -> Option<String> {
        p.lookup(host, path).map(|i| p.routes[i].name.clone())
    }

    #[test]
    fn hosts_and_longest_path_prefixes_pick_the_route() {
        let routes = vec![
            route("shop", "shop.example.com", "/", "web"),
            route("shop-api", "shop.example.com", "/api", "api"),
            route("shop-api-v2", "shop.example.com", "/api/v2", "api2"),
            route("any", "*.example.com", "/", "web"),
            route("any-static", "*.example.com", "/static", "files"),
        ];
        let (p, issues) = plan(&routes, &[], &certs(&[]));
        // Missing services are issues, not failures.
        assert!(issues.iter().all(|i| !i.dropped), "{issues:?}");
        assert_eq!(name_of(&p, "shop.example.com", "/").as_deref(), Some("shop"));
        assert_eq!(name_of(&p, "shop.example.com", "/cart").as_deref(), Some("shop"));
        assert_eq!(name_of(&p, "shop.example.com", "/api").as_deref(), Some("shop-api"));
        assert_eq!(name_of(&p, "shop.example.com", "/api/x").as_deref(), Some("shop-api"));
        assert_eq!(name_of(&p, "shop.example.com", "/apis").as_deref(), Some("shop"));
        assert_eq!(
            name_of(&p, "shop.example.com", "/api/v2/y").as_deref(),
            Some("shop-api-v2")
        );
        // One label under the wildcard, not two; the exact host wins over it.
        assert_eq!(name_of(&p, "blog.example.com", "/").as_deref(), Some("any"));
        assert_eq!(
            name_of(&p, "blog.example.com", "/static/a.css").as_deref(),
            Some("any-static")
        );
        assert_eq!(name_of(&p, "a.blog.example.com", "/"), None);
        assert_eq!(name_of(&p, "example.com", "/"), None);
        assert_eq!(name_of(&p, "other.org", "/"), None);
    }

    #[test]
    fn an_exact_host_without_a_matching_path_falls_back_to_wildcard_then_default() {
        let routes = vec![
            route("api", "shop.example.com", "/api", "api"),
            route("any", "*.example.com", "/", "web"),
            route_with("fallback", "", "/", "web", |s| s.default_backend = true),
        ];
        let (p, _) = plan(&routes, &[], &certs(&[]));
        assert_eq!(name_of(&p, "shop.example.com", "/").as_deref(), Some("any"));
        assert_eq!(name_of(&p, "other.org", "/x").as_deref(), Some("fallback"));
    }

    #[test]
    fn backends_are_the_ready_tasks_on_the_route_or_service_port() {
        let routes = vec![
            route("web", "a.com", "/", "web"),
            route_with("web-admin", "a.com", "/admin", "web", |s| s.port = Some(9000)),
        ];
        let eps = vec![endpoints(
            "web",
            &[8080],
            &[("10.0.0.2", true), ("10.0.0.3", false), ("10.0.0.4", true)],
        )];
        let (p, issues) = plan(&routes, &eps, &certs(&[]));
        assert!(issues.is_empty(), "{issues:?}");
        let addrs = |i: usize| {
            p.routes[i]
                .backends
                .iter()
                .map(|b| b.addr.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs(0), ["10.0.0.2:8080", "10.0.0.4:8080"]);
        assert_eq!(addrs(1), ["10.0.0.2:9000", "10.0.0.4:9000"]);
        assert_eq!(
            p.backend_addrs().into_iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["10.0.0.2:8080", "10.0.0.2:9000", "10.0.0.4:8080", "10.0.0.4:9000"]
        );
    }

    #[test]
    fn a_service_with_several_ports_needs_one_named() {
        let routes = vec![route("web", "a.com", "/", "web")];
        let eps = vec![endpoints("web", &[80, 443], &[("10.0.0.2", true)])];
        let (p, issues) = plan(&routes, &eps, &certs(&[]));
        assert!(p.routes[0].backends.is_empty());
        assert_eq!(issues.len(), 1);
        assert!(issues[0].message.contains("--service web:PORT"), "{issues:?}");
        // No published port: 80.
        let eps = vec![endpoints("web", &[], &[("10.0.0.2", true)])];
        let (p, _) = plan(&routes, &eps, &certs(&[]));
        assert_eq!(p.routes[0].backends[0].addr.to_string(), "10.0.0.2:80");
    }

    #[test]
    fn conflicts_keep_the_older_route_and_report_the_other() {
        let mut a = route("a", "x.com", "/", "web");
        let mut b = route("b", "x.com", "/", "web");
        a.created_ms = 2;
        b.created_ms = 1;
        let (p, issues) = plan(&[a, b], &[], &certs(&[]));
        assert_eq!(name_of(&p, "x.com", "/").as_deref(), Some("b"));
        let dropped: Vec<&Issue> = issues.iter().filter(|i| i.dropped).collect();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].route, "a");
        assert!(dropped[0].message.contains("already routed by b"), "{dropped:?}");

        let d1 = route_with("d1", "", "/", "web", |s| s.default_backend = true);
        let d2 = route_with("d2", "", "/", "web", |s| s.default_backend = true);
        let d3 = route_with("d3", "y.com", "/", "web", |s| s.default_backend = true);
        let (p, issues) = plan(&[d1, d2, d3], &[], &certs(&[]));
        assert_eq!(name_of(&p, "nowhere", "/").as_deref(), Some("d1"));
        assert_eq!(name_of(&p, "y.com", "/").as_deref(), Some("d3"));
        assert!(issues.iter().any(|i| i.route == "d2" && i.dropped));
        assert!(issues.iter().any(|i| i.route == "d3" && !i.dropped));
    }

    #[test]
    fn missing_certificates_are_issues_and_routes_still_serve() {
        let routes = vec![
            route_with("a", "a.com", "/", "web", |s| {
                s.tls = RouteTls::Certificate("a-cert".into())
            }),
            route_with("b", "b.com", "/", "web", |s| s.tls = RouteTls::Acme),
        ];
        let eps = vec![endpoints("web", &[80], &[("10.0.0.2", true)])];
        let (p, issues) = plan(&routes, &eps, &certs(&[]));
        assert_eq!(p.routes.len(), 2);
        let messages: Vec<&str> = issues.iter().map(|i| i.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "certificate a-cert does not exist",
                "the ACME certificate acme-b.com is not issued yet"
            ]
        );
        let (p, issues) = plan(&routes, &eps, &certs(&["a-cert", "acme-b.com"]));
        assert!(issues.is_empty());
        assert_eq!(
            p.certificates_by_host(),
            [("a.com", "a-cert".to_string()), ("b.com", "acme-b.com".to_string())]
        );
    }

    #[test]
    fn invalid_routes_are_dropped_with_their_error() {
        let bad = route_with("bad", "a.com", "no-slash", "web", |_| {});
        let (p, issues) = plan(&[bad], &[], &certs(&[]));
        assert!(p.routes.is_empty());
        assert!(issues[0].dropped);
        assert!(issues[0].message.starts_with("invalid route: path:"), "{issues:?}");
    }

    #[test]
    fn rules_compile_and_admit_by_address() {
        let r = route_with("r", "a.com", "/api", "web", |s| {
            s.strip_prefix = true;
            s.allow = vec!["10.0.0.0/8".parse().unwrap()];
            s.deny = vec!["10.9.0.0/16".parse().unwrap()];
            s.sticky = true;
        });
        let (p, _) = plan(&[r], &[], &certs(&[]));
        let rules = &p.routes[0].rules;
        assert!(rules.strip_prefix);
        assert_eq!(rules.sticky_cookie.as_deref(), Some("warren_sticky_r"));
        assert!(rules.admits("10.1.2.3".parse().unwrap()));
        assert!(rules.admits("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!rules.admits("10.9.2.3".parse().unwrap()));
        assert!(!rules.admits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn diff_tells_route_changes_from_backend_changes() {
        let routes = vec![route("a", "a.com", "/", "web"), route("b", "b.com", "/", "web")];
        let one = vec![endpoints("web", &[80], &[("10.0.0.2", true)])];
        let two = vec![endpoints("web", &[80], &[("10.0.0.2", true), ("10.0.0.3", true)])];
        let (p1, _) = plan(&routes, &one, &certs(&[]));
        let (p2, _) = plan(&routes, &two, &certs(&[]));
        assert_eq!(
            diff(&p1, &p2),
            [
                Change::Backends {
                    route: "a".into(),
                    added: 1,
                    removed: 0
                },
                Change::Backends {
                    route: "b".into(),
                    added: 1,
                    removed: 0
                }
            ]
        );
        let changed = vec![route("a", "a.com", "/new", "web"), route("c", "c.com", "/", "web")];
        let (p3, _) = plan(&changed, &two, &certs(&[]));
        assert_eq!(
            diff(&p2, &p3),
            [
                Change::Changed("a".into()),
                Change::Added("c".into()),
                Change::Removed("b".into())
            ]
        );
        assert!(diff(&p3, &p3).is_empty());
    }

    #[test]
    fn path_prefixes_match_by_segment() {
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/", "/api"));
        assert!(path_has_prefix("/api/x", "/api"));
        assert!(!path_has_prefix("/apix", "/api"));
        assert!(!path_has_prefix("/ap", "/api"));
        assert!(path_has_prefix("/anything", "/"));
    }
}
