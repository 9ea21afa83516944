//! One request through the ingress: ACME HTTP-01 answers, route lookup by host and
//! path, the route's rules in order (allow/deny → 403, redirect to HTTPS → 308,
//! rate limit → 429, no ready task → 503), the request as the backend gets it
//! (path rewrite, header rules, hop-by-hop headers removed, `X-Forwarded-*` and
//! `Forwarded` set with the client's address), the backend chosen (sticky cookie,
//! else round robin) with the next one tried when a connection cannot be made,
//! WebSocket and other upgrades tunnelled, and the access log and metrics.

use std::{borrow::Cow, convert::Infallible, net::IpAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    uri::PathAndQuery,
    Method, Request, Response, StatusCode, Uri, Version,
};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{
    body::ResponseBody,
    metrics::{UpstreamErrorKind, ACME_ROUTE, NO_ROUTE},
    server::{ConnInfo, InflightGuard, Listener},
    table::{canonical_ip, path_has_prefix, PlannedRoute},
    upstream::{Proto, SendError},
    Worker,
};

pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The host a request is for: the URI's authority (HTTP/2, absolute-form) or the
/// Host header, without port, lowercase, without a trailing dot.
pub fn request_host<B>(req: &Request<B>) -> Cow<'_, str> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let no_port = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let h = no_port.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

/// The path the backend gets: the matched prefix stripped, then the rewrite.
pub fn upstream_path<'a>(path: &'a str, route: &PlannedRoute) -> Cow<'a, str> {
    let mut p = Cow::Borrowed(path);
    if route.rules.strip_prefix && path_has_prefix(path, &route.path) {
        let rest = &path[route.path.len()..];
        p = if rest.is_empty() {
            Cow::Borrowed("/")
        } else {
            Cow::Borrowed(rest)
        };
    }
    if let Some((from, to)) = &route.rules.rewrite {
        if path_has_prefix(&p, from) {
            let rest = if from == "/" { &p[..] } else { &p[from.len()..] };
            let joined = if rest.is_empty() {
                to.clone()
            } else {
                format!("{}{rest}", to.trim_end_matches('/'))
            };
            p = Cow::Owned(if joined.is_empty() { "/".to_string() } else { joined });
        }
    }
    p
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Removes hop-by-hop headers (and those the Connection header names); an
/// upgrade keeps `Connection: upgrade` and `Upgrade`, gRPC keeps `TE: trailers`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, keep_te_trailers: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    let te_trailers = keep_te_trailers
        && headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for n in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        headers.remove(n);
    }
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// `X-Forwarded-For` (appended), `-Proto`, `-Host`, and `Forwarded` (appended),
/// each built in one buffer.
fn set_forwarding(headers: &mut HeaderMap, client: IpAddr, https: bool, host: &HeaderValue) {
    use std::fmt::Write as _;
    let earlier = |headers: &HeaderMap, name: &HeaderName| -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
            .map(|v| format!("{v}, "))
    };
    let mut xff = earlier(headers, &X_FORWARDED_FOR).unwrap_or_else(|| String::with_capacity(16));
    let _ = write!(xff, "{client}");
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    let mut fwd = earlier(headers, &FORWARDED).unwrap_or_else(|| String::with_capacity(64));
    let _ = match client {
        IpAddr::V4(v4) => write!(fwd, "for={v4};host=\""),
        IpAddr::V6(v6) => write!(fwd, "for=\"[{v6}]\";host=\""),
    };
    fwd.extend(host.to_str().unwrap_or("").chars().filter(|c| *c != '"' && *c != '\\'));
    let _ = write!(fwd, "\";proto={proto}");
    if let Ok(v) = HeaderValue::try_from(fwd) {
        headers.insert(FORWARDED.clone(), v);
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn local(status: StatusCode, body: impl Into<Bytes>, inflight: InflightGuard) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::local(body, inflight));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What the access log and the metrics say about one request.
struct Outcome<'a> {
    route: &'a str,
    status: StatusCode,
    backend: Option<std::net::SocketAddr>,
}

const ACCESS_LOG: &str = "warren::ingress::access";

/// The request's side of an access-log record, taken only while the log is on.
struct Access {
    method: Method,
    host: String,
    path: String,
    version: Version,
}

fn log(started: Instant, info: &ConnInfo, access: Option<&Access>, o: &Outcome<'_>) {
    let Some(a) = access else { return };
    tracing::info!(
        target: ACCESS_LOG,
        route = o.route,
        client = %info.client.ip(),
        method = %a.method,
        host = %a.host,
        path = %a.path,
        status = o.status.as_u16(),
        backend = o.backend.map(|b| b.to_string()).unwrap_or_default(),
        duration_us = started.elapsed().as_micros() as u64,
        proto = ?a.version,
        tls = info.listener == Listener::Https,
    );
}

pub async fn handle(
    shared: Arc<Worker>,
    info: Arc<ConnInfo>,
    req: Request<Incoming>,
    inflight: InflightGuard,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let https = info.listener == Listener::Https;
    let version = req.version();
    let access = tracing::enabled!(target: ACCESS_LOG, tracing::Level::INFO).then(|| Access {
        method: req.method().clone(),
        host: request_host(&req).into_owned(),
        path: req.uri().path().to_string(),
        version,
    });

    if !https {
        if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX) {
            if let Some(answer) = shared.challenges.key_authorization(token) {
                let o = Outcome {
                    route: ACME_ROUTE,
                    status: StatusCode::OK,
                    backend: None,
                };
                shared.acme_metrics.count(200);
                log(started, &info, access.as_ref(), &o);
                return Ok(local(StatusCode::OK, answer, inflight));
            }
        }
    }

    let table = shared.table.load_full();
    let Some(index) = table.plan.lookup(&request_host(&req), req.uri().path()) else {
        shared.unrouted_metrics.count(404);
        let o = Outcome {
            route: NO_ROUTE,
            status: StatusCode::NOT_FOUND,
            backend: None,
        };
        log(started, &info, access.as_ref(), &o);
        return Ok(local(
            StatusCode::NOT_FOUND,
            "no route for this host and path\n",
            inflight,
        ));
    };
    let route = &table.plan.routes[index];
    let live = &table.live[index];
    let finish = |status: StatusCode, backend| {
        live.metrics.count(status.as_u16());
        live.metrics.duration.observe(started.elapsed().as_secs_f64());
        let o = Outcome {
            route: &route.name,
            status,
            backend,
        };
        log(started, &info, access.as_ref(), &o);
    };
    let client_ip = canonical_ip(info.client.ip());

    if !route.rules.admits(client_ip) {
        finish(StatusCode::FORBIDDEN, None);
        return Ok(local(StatusCode::FORBIDDEN, "forbidden\n", inflight));
    }
    if route.rules.redirect_https && !https {
        let host = request_host(&req);
        let authority = if shared.https_port == 443 {
            host.into_owned()
        } else {
            format!("{host}:{}", shared.https_port)
        };
        let pq = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let mut r = local(StatusCode::PERMANENT_REDIRECT, "", inflight);
        if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{pq}")) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        finish(StatusCode::PERMANENT_REDIRECT, None);
        return Ok(r);
    }
    if let Some(limiter) = &live.limiter {
        if let Err(wait) = limiter.check(client_ip, Instant::now()) {
            let mut r = local(StatusCode::TOO_MANY_REQUESTS, "too many requests\n", inflight);
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            finish(StatusCode::TOO_MANY_REQUESTS, None);
            return Ok(r);
        }
    }
    if route.backends.is_empty() {
        finish(StatusCode::SERVICE_UNAVAILABLE, None);
        return Ok(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no ready task for this route\n",
            inflight,
        ));
    }

    // The request as the backend gets it.
    let (mut parts, body) = req.into_parts();
    let upgrade = version == Version::HTTP_11 && wants_upgrade(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let proto = if version == Version::HTTP_2 && is_grpc(&parts.headers) {
        Proto::H2c
    } else {
        Proto::Http1
    };
    let host_value = match parts.headers.get(header::HOST) {
        Some(h) => h.clone(),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("")),
    };
    let path = parts.uri.path();
    let new_path = upstream_path(path, route);
    // The request target as it came, unless the path changed (no copy then).
    let pq = if new_path == path {
        parts
            .uri
            .path_and_query()
            .cloned()
            .or_else(|| Some(PathAndQuery::from_static("/")))
    } else {
        match parts.uri.query() {
            None => PathAndQuery::try_from(new_path.as_ref()).ok(),
            Some(q) => PathAndQuery::try_from(format!("{new_path}?{q}")).ok(),
        }
    };
    let uri = pq.and_then(|pq| {
        let mut u = http::uri::Parts::default();
        if proto == Proto::H2c {
            u.scheme = Some(http::uri::Scheme::HTTP);
            u.authority = http::uri::Authority::try_from(host_value.as_bytes()).ok();
            u.authority.as_ref()?;
        }
        u.path_and_query = Some(pq);
        Uri::from_parts(u).ok()
    });
    let Some(uri) = uri else {
        finish(StatusCode::BAD_REQUEST, None);
        return Ok(local(StatusCode::BAD_REQUEST, "bad request target\n", inflight));
    };
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers, upgrade, proto == Proto::H2c);
    for n in &route.rules.header_rm {
        parts.headers.remove(n);
    }
    for (n, v) in &route.rules.header_add {
        parts.headers.insert(n.clone(), v.clone());
    }
    set_forwarding(&mut parts.headers, client_ip, https, &host_value);
    match proto {
        Proto::Http1 => {
            parts.version = Version::HTTP_11;
            parts.headers.insert(header::HOST, host_value);
        }
        Proto::H2c => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        }
    }
    let mut req = Request::from_parts(parts, body);

    // The backend: the sticky one if its cookie names a current task, else the
    // next in turn; on a failed connection, the ones after it.
    let sticky = route
        .rules
        .sticky_cookie
        .as_deref()
        .and_then(|name| cookie_value(req.headers(), name))
        .and_then(|token| live.sticky(token));
    let first = sticky.unwrap_or_else(|| live.pick(route));
    let attempts = shared.connect_attempts.min(route.backends.len()).max(1);
    let mut sent = None;
    for k in 0..attempts {
        let i = (first + k) % route.backends.len();
        let addr = route.backends[i].addr;
        let send = shared.upstreams.send(addr, proto, req);
        let result = match shared.timeouts.upstream_response {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) => {
                    live.metrics.upstream_error(UpstreamErrorKind::Timeout);
                    tracing::warn!(route = %route.name, backend = %addr, "the backend sent no response in time");
                    finish(StatusCode::GATEWAY_TIMEOUT, Some(addr));
                    return Ok(local(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the backend did not answer in time\n",
                        inflight,
                    ));
                }
            },
            None => send.await,
        };
        match result {
            Ok(resp) => {
                sent = Some((i, resp));
                break;
            }
            Err(SendError::Connect { req: back, error }) => {
                live.metrics.upstream_error(UpstreamErrorKind::Connect);
                tracing::debug!(route = %route.name, backend = %addr, error = %error, "cannot connect to the backend");
                req = *back;
            }
            Err(SendError::Failed(e)) => {
                live.metrics.upstream_error(UpstreamErrorKind::Protocol);
                tracing::warn!(route = %route.name, backend = %addr, error = %e, "the backend request failed");
                finish(StatusCode::BAD_GATEWAY, Some(addr));
                return Ok(local(StatusCode::BAD_GATEWAY, "the backend request failed\n", inflight));
            }
        }
    }
    let Some((chosen, mut resp)) = sent else {
        finish(StatusCode::BAD_GATEWAY, None);
        return Ok(local(
            StatusCode::BAD_GATEWAY,
            "no backend could be reached\n",
            inflight,
        ));
    };
    let addr = route.backends[chosen].addr;
    let status = resp.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        if let Some(client_upgrade) = client_upgrade {
            let mut hard = shared.shutdown.hard_signal();
            tokio::spawn(async move {
                let (c, u) = tokio::join!(client_upgrade, upstream_upgrade);
                match (c, u) {
                    (Ok(c), Ok(u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
                            _ = hard.wait_for(|v| *v) => {}
                        }
                    }
                    (c, u) => tracing::debug!(
                        backend = %addr,
                        client_ok = c.is_ok(),
                        backend_ok = u.is_ok(),
                        "upgrade did not complete"
                    ),
                }
            });
        }
    }
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, switching, false);
    if let (Some(name), None) = (&route.rules.sticky_cookie, sticky) {
        let secure = if https { "; Secure" } else { "" };
        let cookie = format!(
            "{name}={}; Path=/; HttpOnly; SameSite=Lax{secure}",
            live.sticky_tokens[chosen]
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            rparts.headers.append(header::SET_COOKIE, v);
        }
    }
    finish(status, Some(addr));
    Ok(Response::from_parts(rparts, ResponseBody::upstream(rbody, inflight)))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::route_with;
    use super::super::table::plan;
    use super::*;
    use std::collections::BTreeSet;

    fn planned(f: impl FnOnce(&mut crate::model::ingress::IngressSpec)) -> PlannedRoute {
        let (p, _) = plan(&[route_with("r", "a.com", "/api", "web", f)], &[], &BTreeSet::new());
        p.routes[0].clone()
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        let req = |h: &str| Request::builder().header("host", h).body(()).unwrap();
        assert_eq!(request_host(&req("Shop.Example.com:8443")), "shop.example.com");
        assert_eq!(request_host(&req("shop.example.com.")), "shop.example.com");
        assert_eq!(request_host(&req("[::1]:80")), "::1");
        let h2 = Request::builder().uri("https://a.com:443/x").body(()).unwrap();
        assert_eq!(request_host(&h2), "a.com");
    }

    #[test]
    fn strip_prefix_and_rewrite_make_the_backend_path() {
        let strip = planned(|s| s.strip_prefix = true);
        assert_eq!(upstream_path("/api", &strip), "/");
        assert_eq!(upstream_path("/api/users", &strip), "/users");
        let rewrite = planned(|s| {
            s.rewrite = Some(crate::model::ingress::Rewrite {
                from: "/api/v1".into(),
                to: "/v2".into(),
            })
        });
        assert_eq!(upstream_path("/api/v1/users", &rewrite), "/v2/users");
        assert_eq!(upstream_path("/api/v1", &rewrite), "/v2");
        assert_eq!(upstream_path("/api/v10", &rewrite), "/api/v10");
        let both = planned(|s| {
            s.strip_prefix = true;
            s.rewrite = Some(crate::model::ingress::Rewrite {
                from: "/".into(),
                to: "/internal/".into(),
            })
        });
        assert_eq!(upstream_path("/api/x", &both), "/internal/x");
        assert_eq!(upstream_path("/api", &both), "/internal/");
        let none = planned(|_| {});
        assert_eq!(upstream_path("/api/x", &none), "/api/x");
    }

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_and_trailers_stay() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false, false);
        assert_eq!(plain.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
        let mut grpc = h.clone();
        strip_hop_by_hop(&mut grpc, false, true);
        assert_eq!(grpc.get("te").unwrap(), "trailers");

        let mut ws = HeaderMap::new();
        ws.insert("connection", HeaderValue::from_static("Upgrade"));
        ws.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&ws));
        strip_hop_by_hop(&mut ws, true, false);
        assert_eq!(ws.get("connection").unwrap(), "upgrade");
        assert_eq!(ws.get("upgrade").unwrap(), "websocket");
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        let host = HeaderValue::from_static("shop.example.com:8443");
        set_forwarding(&mut h, "192.0.2.7".parse().unwrap(), true, &host);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "198.51.100.1, 192.0.2.7");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "shop.example.com:8443");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=192.0.2.7;host=\"shop.example.com:8443\";proto=https"
        );
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, "2001:db8::1".parse().unwrap(), false, &host);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "2001:db8::1");
        assert!(h
            .get("forwarded")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("for=\"[2001:db8::1]\";"));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1; warren_sticky_r=abc; b=2"));
        assert_eq!(cookie_value(&h, "warren_sticky_r"), Some("abc"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
