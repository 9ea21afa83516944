//! End-to-end tests of `warren::ingress` with real sockets: the ingress runs as a
//! library in the test process on loopback ports, in front of real backend
//! servers on 127.0.0.x addresses; curl and in-process HTTP/1.1, HTTP/2 and
//! WebSocket clients talk to it; Debian's Pebble is the ACME CA. Needs curl,
//! pebble and promtool (Debian packages curl, pebble, prometheus).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::BodyExt;
use warren::{
    ingress::{
        acme::{self, AcmeManager, InstantAcme, ManagerConfig, MemoryAcmeStore},
        CertificatePem,
    },
    model::{
        ingress::{AcmeSettings, HeaderAdd, Rewrite, RouteTls},
        RateLimit,
    },
};
use warren_tests::ingress::{
    client_config, curl, free_port, h2_client_config, resolve, route, service, wait_for, write_file, Backend,
    GrpcBackend, LoopKind, RequestLoop, TestCa, TestIngress, WsBackend,
};

fn lo(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn url(scheme: &str, host: &str, addr: SocketAddr, path: &str) -> String {
    format!("{scheme}://{host}:{}{path}", addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_path_routing_rewrites_and_header_rules() {
    // 1. Two services: web on two tasks, api on one, all on the same port.
    let port = free_port();
    let web1 = Backend::start("web-1", at(lo(11), port)).await;
    let web2 = Backend::start("web-2", at(lo(12), port)).await;
    let api = Backend::start("api-1", at(lo(13), port)).await;
    let ing = TestIngress::start();
    let services = [service("web", port, &[lo(11), lo(12)]), service("api", port, &[lo(13)])];
    let routes = [
        route("shop", "shop.test", "/", "web", |_| {}),
        route("shop-api", "shop.test", "/api", "api", |s| {
            s.strip_prefix = true;
            s.header_add = vec![HeaderAdd {
                name: "x-env".into(),
                value: "prod".into(),
            }];
            s.header_rm = vec!["x-debug".into()];
        }),
        route("old", "old.shop.test", "/v1", "api", |s| {
            s.rewrite = Some(Rewrite {
                from: "/v1".into(),
                to: "/v2".into(),
            })
        }),
        route("any", "*.shop.test", "/", "web", |_| {}),
    ];
    ing.update(&routes, &services, &[]);
    let get = |host: &str, path: &str| url("http", host, ing.http, path);

    // 2. The host and the longest path prefix pick the service; web is balanced.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let r = curl(&["--resolve", &resolve("shop.test", ing.http), &get("shop.test", "/cart")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["uri"], "/cart");
        seen.insert(r.backend());
    }
    assert_eq!(seen, BTreeSet::from(["web-1".to_string(), "web-2".to_string()]));
    let r = curl(&[
        "--resolve",
        &resolve("blog.shop.test", ing.http),
        &get("blog.shop.test", "/x"),
    ])
    .await;
    assert!(r.backend().starts_with("web-"), "the wildcard route: {r:?}");
    let r = curl(&["--resolve", &resolve("other.test", ing.http), &get("other.test", "/")]).await;
    assert_eq!(r.status, 404, "no route for other.test: {r:?}");

    // 3. /api strips its prefix and applies its header rules.
    let r = curl(&[
        "-H",
        "X-Debug: 1",
        "-H",
        "X-Keep: 1",
        "--resolve",
        &resolve("shop.test", ing.http),
        &get("shop.test", "/api/users?id=7"),
    ])
    .await;
    assert_eq!(r.backend(), "api-1", "{r:?}");
    let j = r.json();
    assert_eq!(j["uri"], "/users?id=7");
    assert_eq!(j["headers"]["x-env"], "prod");
    assert_eq!(j["headers"]["x-keep"], "1");
    assert!(j["headers"].get("x-debug").is_none(), "x-debug was removed: {j}");
    assert_eq!(j["headers"]["host"], format!("shop.test:{}", ing.http.port()));
    let r = curl(&["--resolve", &resolve("shop.test", ing.http), &get("shop.test", "/apis")]).await;
    assert!(r.backend().starts_with("web-"), "/apis is not under /api: {r:?}");

    // 4. The rewrite replaces the prefix.
    let r = curl(&[
        "--resolve",
        &resolve("old.shop.test", ing.http),
        &get("old.shop.test", "/v1/items"),
    ])
    .await;
    assert_eq!(r.json()["uri"], "/v2/items", "{r:?}");
    assert_eq!(r.backend(), "api-1");

    // 5. The backend's own response headers come back; api saw exactly its two requests.
    assert_eq!(r.headers.get("x-backend-secret").map(String::as_str), Some("internal"));
    assert!(web1.hits() > 0 && web2.hits() > 0);
    assert_eq!(api.hits(), 2);
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_carry_the_client_address() {
    let port = free_port();
    let _web = Backend::start("web-1", at(lo(21), port)).await;
    let ca = TestCa::new("forwarding ca");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem);
    let ing = TestIngress::start();
    ing.update(
        &[route("web", "fwd.test", "/", "web", |s| {
            s.tls = RouteTls::Certificate("fwd".into())
        })],
        &[service("web", port, &[lo(21)])],
        &[ca.leaf("fwd", &["fwd.test"])],
    );
    // 1. Over HTTPS from 127.0.0.22, with an X-Forwarded-For from an earlier proxy.
    let r = curl(&[
        "--interface",
        "127.0.0.22",
        "--cacert",
        ca_file.to_str().unwrap(),
        "-H",
        "X-Forwarded-For: 198.51.100.9",
        "--resolve",
        &resolve("fwd.test", ing.https),
        &url("https", "fwd.test", ing.https, "/"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "198.51.100.9, 127.0.0.22");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], format!("fwd.test:{}", ing.https.port()));
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.22;host=\"fwd.test:{}\";proto=https", ing.https.port())
    );
    // 2. Over plain HTTP from 127.0.0.23.
    let r = curl(&[
        "--interface",
        "127.0.0.23",
        "--resolve",
        &resolve("fwd.test", ing.http),
        &url("http", "fwd.test", ing.http, "/"),
    ])
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.23");
    assert_eq!(h["x-forwarded-proto"], "http");
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_lists_and_per_client_rate_limits() {
    let port = free_port();
    let _web = Backend::start("web-1", at(lo(31), port)).await;
    let ing = TestIngress::start();
    ing.update(
        &[
            route("internal", "internal.test", "/", "web", |s| {
                s.allow = vec!["127.0.0.32/31".parse().unwrap()];
                s.deny = vec!["127.0.0.33/32".parse().unwrap()];
            }),
            route("limited", "limited.test", "/", "web", |s| {
                s.rate_limit = Some(RateLimit { per_sec: 2, burst: 5 })
            }),
        ],
        &[service("web", port, &[lo(31)])],
        &[],
    );
    let from = |ip: &'static str, host: &'static str| {
        let target = url("http", host, ing.http, "/");
        let res = resolve(host, ing.http);
        async move { curl(&["--interface", ip, "--resolve", &res, &target]).await }
    };
    // 1. Allowed, denied inside the allowed range, and outside it.
    assert_eq!(from("127.0.0.32", "internal.test").await.status, 200);
    assert_eq!(from("127.0.0.33", "internal.test").await.status, 403, "deny wins");
    assert_eq!(
        from("127.0.0.34", "internal.test").await.status,
        403,
        "not in the allow list"
    );

    // 2. Past the burst a client gets 429 with Retry-After; another client does not.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(from("127.0.0.35", "limited.test").await);
    }
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = statuses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + limited.len(), 12, "{statuses:?}");
    assert!(
        (5..=8).contains(&ok),
        "the burst of 5 (and a few refilled tokens) passed: {ok}"
    );
    assert!(!limited.is_empty(), "requests beyond the burst are refused");
    assert!(limited[0].headers.contains_key("retry-after"), "{:?}", limited[0]);
    assert_eq!(from("127.0.0.36", "limited.test").await.status, 200);
    let m = ing.metrics();
    assert!(
        m.contains(r#"warren_ingress_requests_total{route="limited",status="429"}"#),
        "429s are counted: {m}"
    );
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate_and_http_redirects_to_https() {
    let port = free_port();
    let _web = Backend::start("web-1", at(lo(41), port)).await;
    let ca = TestCa::new("sni ca");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem);
    let rsa_ca = write_file(
        dir.path(),
        "rsa.pem",
        include_str!("../../warren/src/ingress/testdata/rsa.crt"),
    );
    let rsa = CertificatePem {
        name: "rsa".into(),
        cert_pem: include_str!("../../warren/src/ingress/testdata/rsa.crt").into(),
        key_pem: include_str!("../../warren/src/ingress/testdata/rsa.key").into(),
    };
    let ing = TestIngress::start();
    ing.update(
        &[
            route("a", "a.test", "/", "web", |s| {
                s.tls = RouteTls::Certificate("a".into());
                s.redirect_https = true;
            }),
            route("b", "b.test", "/", "web", |s| s.tls = RouteTls::Certificate("b".into())),
            route("rsa", "rsa.example.com", "/", "web", |s| {
                s.tls = RouteTls::Certificate("rsa".into())
            }),
        ],
        &[service("web", port, &[lo(41)])],
        &[ca.leaf("a", &["a.test"]), ca.leaf("b", &["b.test"]), rsa],
    );
    let https = |host: &str, ca: &std::path::Path| {
        let (res, u, ca) = (
            resolve(host, ing.https),
            url("https", host, ing.https, "/"),
            ca.to_str().unwrap().to_string(),
        );
        async move { curl(&["--cacert", &ca, "--resolve", &res, &u]).await }
    };
    // 1. curl verifies each name against the certificate it is shown: each SNI
    //    gets its own (ECDSA P-256 for a and b, RSA for the third).
    for host in ["a.test", "b.test"] {
        let r = https(host, &ca_file).await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
    }
    assert_eq!(https("rsa.example.com", &rsa_ca).await.status, 200);
    // A name without a certificate fails the handshake.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", ca_file.to_str().unwrap()])
        .args([
            "--resolve",
            &resolve("c.test", ing.https),
            &url("https", "c.test", ing.https, "/"),
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "no certificate for c.test");

    // 2. Plain HTTP on a route with redirect-https: 308 to the HTTPS port.
    let r = curl(&[
        "--resolve",
        &resolve("a.test", ing.http),
        &url("http", "a.test", ing.http, "/p?q=1"),
    ])
    .await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some(format!("https://a.test:{}/p?q=1", ing.https.port()).as_str())
    );
    // Following it lands on the backend over HTTPS.
    let r = curl(&[
        "-L",
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &resolve("a.test", ing.http),
        "--resolve",
        &resolve("a.test", ing.https),
        &url("http", "a.test", ing.http, "/p"),
    ])
    .await;
    assert_eq!(
        (r.status, r.json()["headers"]["x-forwarded-proto"].clone()),
        (200, "https".into())
    );
    let m = ing.metrics();
    assert!(m.contains(r#"warren_ingress_tls_handshakes_total{result="ok"}"#), "{m}");
    assert!(
        m.contains(r#"warren_ingress_tls_handshakes_total{result="failed"}"#),
        "{m}"
    );
    ing.shutdown().await;
}

async fn next_frame(b: &mut hyper::body::Incoming) -> hyper::body::Frame<Bytes> {
    tokio::time::timeout(Duration::from_secs(10), b.frame())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("a good frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_and_a_grpc_style_stream() {
    let port = free_port();
    let _web = Backend::start("web-1", at(lo(51), port)).await;
    let grpc_port = free_port();
    let _grpc = GrpcBackend::start(at(lo(52), grpc_port)).await;
    let ca = TestCa::new("h2 ca");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem);
    let ing = TestIngress::start();
    ing.update(
        &[
            route("web", "h2.test", "/", "web", |s| {
                s.tls = RouteTls::Certificate("h2".into())
            }),
            route("grpc", "h2.test", "/echo.Echo", "grpc", |s| {
                s.tls = RouteTls::Certificate("h2".into())
            }),
        ],
        &[service("web", port, &[lo(51)]), service("grpc", grpc_port, &[lo(52)])],
        &[ca.leaf("h2", &["h2.test"])],
    );
    // 1. HTTP/2 over TLS (ALPN), and h2c with prior knowledge on the plain port;
    //    the HTTP/1.1 backend answers both.
    let r = curl(&[
        "--http2",
        "--cacert",
        ca_file.to_str().unwrap(),
        "--resolve",
        &resolve("h2.test", ing.https),
        &url("https", "h2.test", ing.https, "/page"),
    ])
    .await;
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.json()["headers"]["host"], format!("h2.test:{}", ing.https.port()));
    let r = curl(&[
        "--http2-prior-knowledge",
        "--resolve",
        &resolve("h2.test", ing.http),
        &url("http", "h2.test", ing.http, "/page"),
    ])
    .await;
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{r:?}");

    // 2. A gRPC-style bidirectional stream over h2: each message comes back before
    //    the next is sent, then the backend's trailers arrive.
    let tcp = tokio::net::TcpStream::connect(ing.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(h2_client_config(&ca.pem))
        .connect("h2.test".try_into().unwrap(), tcp)
        .await
        .expect("TLS to the ingress");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = hyper::Request::post(format!("https://h2.test:{}/echo.Echo/Chat", ing.https.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        sender.send_request(req).await
    })
    .await
    .expect("response headers in time")
    .expect("the stream is answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(
        resp.headers()["x-seen-te"],
        "trailers",
        "TE: trailers reached the backend"
    );
    let mut body = resp.into_body();
    assert_eq!(next_frame(&mut body).await.into_data().unwrap(), "one");
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"two"))))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut body).await.into_data().unwrap(), "two");
    drop(tx);
    let trailers = next_frame(&mut body)
        .await
        .into_trailers()
        .expect("trailers after the data");
    assert_eq!(trailers["grpc-status"], "0");
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_tunnelled() {
    use futures::{SinkExt, StreamExt};
    let port = free_port();
    let _ws = WsBackend::start(at(lo(61), port)).await;
    let ing = TestIngress::start();
    ing.update(
        &[route("ws", "ws.test", "/", "ws", |_| {})],
        &[service("ws", port, &[lo(61)])],
        &[],
    );
    let tcp = tokio::net::TcpStream::connect(ing.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://ws.test:{}/chat", ing.http.port()), tcp)
        .await
        .expect("the WebSocket handshake through the ingress");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "again"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an echo in time")
            .expect("an echo")
            .expect("a good frame");
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {msg}"));
    }
    ws.close(None).await.unwrap();
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_certificate_changes_lose_no_request() {
    let port = free_port();
    let _blue = Backend::start("blue", at(lo(71), port)).await;
    let _green = Backend::start("green", at(lo(72), port)).await;
    let ca = TestCa::new("reload ca");
    let certs = [ca.leaf("live", &["live.test"]), ca.leaf("live", &["live.test"])];
    let services = [service("blue", port, &[lo(71)]), service("green", port, &[lo(72)])];
    let live = |svc: &str, extra: bool| {
        let mut r = vec![route("live", "live.test", "/", svc, |s| {
            s.tls = RouteTls::Certificate("live".into())
        })];
        if extra {
            r.push(route("extra", "extra.test", "/", "blue", |_| {}));
        }
        r
    };
    let ing = TestIngress::start();
    ing.update(&live("blue", false), &services, &certs[..1]);
    let tls = || Some(("live.test".to_string(), client_config(&ca.pem)));
    // 1. Keep-alive and new-connection clients, over HTTPS and plain HTTP.
    let lp = RequestLoop::start(
        ing.http,
        ing.https,
        "live.test",
        "/",
        vec![
            (LoopKind::KeepAlive, tls()),
            (LoopKind::NewConnection, tls()),
            (LoopKind::KeepAlive, None),
            (LoopKind::NewConnection, None),
        ],
    );
    lp.wait_answers(50).await;
    // 2. Forty changes: the route flips between services, another route comes and
    //    goes, and the certificate is replaced by a new one for the same name.
    for i in 0..40 {
        let svc = if i % 2 == 0 { "green" } else { "blue" };
        ing.update(&live(svc, i % 3 == 0), &services, &certs[(i % 2)..(i % 2) + 1]);
        lp.wait_answers(10).await;
    }
    let report = lp.stop().await;
    assert_eq!(report.failed, 0, "failed requests during reloads: {:?}", report.errors);
    assert!(report.ok > 400, "{report:?}");
    assert_eq!(
        report.backends.len(),
        2,
        "both services answered: {:?}",
        report.backends
    );
    // New handshakes saw both certificates.
    assert_eq!(report.leaves.len(), 2, "both certificates were served");
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_leaving_the_endpoints_under_load_loses_no_request() {
    let port = free_port();
    let a = Backend::start("a", at(lo(81), port)).await;
    let b = Backend::start("b", at(lo(82), port)).await;
    let ing = TestIngress::start();
    let routes = [route("web", "drain.test", "/", "web", |_| {})];
    ing.update(&routes, &[service("web", port, &[lo(81), lo(82)])], &[]);
    // 1. Slow requests (20 ms each) keep some in flight on both tasks at any time.
    let clients = (0..4).map(|i| {
        let kind = if i % 2 == 0 {
            LoopKind::KeepAlive
        } else {
            LoopKind::NewConnection
        };
        (kind, None)
    });
    let lp = RequestLoop::start(ing.http, ing.https, "drain.test", "/?delay_ms=20", clients.collect());
    lp.wait_answers(40).await;
    assert!(b.hits() > 0, "b took requests");
    // 2. b leaves the endpoint set: it gets no new requests and finishes those in flight.
    ing.update(&routes, &[service("web", port, &[lo(81)])], &[]);
    wait_for("b's requests in flight to finish", Duration::from_secs(10), || {
        b.active() == 0
    })
    .await;
    let hits = b.hits();
    lp.wait_answers(40).await;
    assert_eq!(b.hits(), hits, "b got new requests after leaving the endpoints");
    // 3. Then b stops; a task that is listed but down costs a retry, not a failure.
    b.stop();
    ing.update(&routes, &[service("web", port, &[lo(81), lo(83)])], &[]);
    lp.wait_answers(40).await;
    let report = lp.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert!(a.hits() > 0);
    let m = ing.metrics();
    assert!(
        m.contains(r#"warren_ingress_upstream_errors_total{kind="connect",route="web"}"#),
        "the refused connections to 127.0.0.83 are counted: {m}"
    );
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    warren_tests::netns::require_command("promtool", "prometheus");
    let port = free_port();
    let _web = Backend::start("web-1", at(lo(91), port)).await;
    let ca = TestCa::new("metrics ca");
    let ing = TestIngress::start();
    ing.update(
        &[route("web", "m.test", "/", "web", |s| {
            s.tls = RouteTls::Certificate("m".into())
        })],
        &[service("web", port, &[lo(91)])],
        &[ca.leaf("m", &["m.test"])],
    );
    for path in ["/", "/x"] {
        assert_eq!(
            curl(&[
                "--resolve",
                &resolve("m.test", ing.http),
                &url("http", "m.test", ing.http, path)
            ])
            .await
            .status,
            200
        );
    }
    assert_eq!(
        curl(&[
            "--resolve",
            &resolve("n.test", ing.http),
            &url("http", "n.test", ing.http, "/")
        ])
        .await
        .status,
        404
    );
    let text = ing.metrics();
    for name in [
        "warren_ingress_requests_total",
        "warren_ingress_request_duration_seconds_bucket",
        "warren_ingress_open_connections",
        "warren_ingress_certificate_expiry_timestamp_seconds",
    ] {
        assert!(text.contains(name), "{name} missing: {text}");
    }
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_a_certificate_and_renewal_loses_no_request() {
    const HOST: &str = "shop.acme.test";
    let port = free_port();
    let _web = Backend::start("web-1", at(lo(101), port)).await;
    // 1. The ingress, and Pebble validating HTTP-01 against its HTTP listener.
    let ing = TestIngress::start();
    let pebble = warren_tests::ingress::Pebble::start(ing.http.port()).await;
    let routes = [route("shop", HOST, "/", "web", |s| s.tls = RouteTls::Acme)];
    let services = [service("web", port, &[lo(101)])];
    let store = MemoryAcmeStore::new(ing.challenges.clone());
    let mut settings = AcmeSettings::new("ops@shop.acme.test");
    settings.directory_url = pebble.directory_url.clone();
    settings.ca_pem = Some(pebble.tls_ca_pem.clone());
    store.set_settings(Some(settings.clone()));
    store.set_wanted(acme::wanted_from_routes(&routes));
    let manager = AcmeManager::new(
        store.clone(),
        Arc::new(InstantAcme::default()),
        store.inputs(),
        ManagerConfig {
            // Renewals may follow each other two seconds apart once forced (step 4).
            min_age: Some(Duration::from_secs(2)),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(5),
        },
        &ing.registry,
    )
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let manager = tokio::spawn(manager.run(stop_rx));

    // The route serves at once; its certificate follows as the store changes.
    let push = {
        let store = store.clone();
        let handle = ing.handle.clone();
        let (routes, services) = (routes.clone(), services.clone());
        let mut changes = store.watch_certificates();
        tokio::spawn(async move {
            loop {
                let certs: Vec<CertificatePem> = store.certificates().iter().map(|c| c.pem()).collect();
                handle.update(&routes, &services, &certs);
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    // 2. A certificate issued by Pebble's CA arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.certificates().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate from pebble within 60s; see {}",
            pebble.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = store.certificates()[0].clone();
    assert_eq!(first.hosts, [HOST]);
    assert!(ing.challenges.is_empty(), "the challenge answers are withdrawn");

    // 3. curl, trusting only Pebble's root, gets the backend over HTTPS with the right SNI.
    let root = pebble.issuing_root_pem().await;
    let root_file = write_file(pebble.dir(), "issuing-root.pem", &root);
    let https = url("https", HOST, ing.https, "/");
    let resolved = resolve(HOST, ing.https);
    let mut r = curl(&["--cacert", root_file.to_str().unwrap(), "--resolve", &resolved, &https]).await;
    for _ in 0..50 {
        if r.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        r = curl(&["--cacert", root_file.to_str().unwrap(), "--resolve", &resolved, &https]).await;
    }
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), "web-1");

    // 4. Under a request loop, a renewal window longer than the certificate's
    //    life forces renewals; every request is answered throughout.
    let tls = || Some((HOST.to_string(), client_config(&root)));
    let lp = RequestLoop::start(
        ing.http,
        ing.https,
        HOST,
        "/",
        vec![
            (LoopKind::KeepAlive, tls()),
            (LoopKind::NewConnection, tls()),
            (LoopKind::NewConnection, tls()),
        ],
    );
    lp.wait_answers(20).await;
    settings.renew_before_ms = 100 * 365 * 86_400_000;
    store.set_settings(Some(settings.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.certificates()[0].cert_pem == first.cert_pem || lp.answers() < 200 {
        assert!(std::time::Instant::now() < deadline, "no renewal within 60s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = store.certificates()[0].clone();
    // Let the loop's new connections see the renewed certificate.
    lp.wait_answers(50).await;
    settings.renew_before_ms = warren::model::ingress::DEFAULT_RENEW_BEFORE_MS;
    store.set_settings(Some(settings));
    let report = lp.stop().await;
    eprintln!(
        "renewal loop: {} answers, {} certificates seen, {} orders issued",
        report.ok,
        report.leaves.len(),
        ing.metrics()
            .lines()
            .find(|l| l.starts_with("warren_ingress_acme_orders_total{result=\"issued\"}"))
            .unwrap_or("none")
    );
    assert_eq!(report.failed, 0, "failed requests during renewal: {:?}", report.errors);
    assert!(
        report.leaves.len() >= 2,
        "the loop saw the first and a renewed certificate"
    );
    let serial = |pem: &str| warren::ingress::tls::inspect_chain(pem).unwrap().serial;
    assert_ne!(serial(&first.cert_pem), serial(&renewed.cert_pem));
    let m = ing.metrics();
    assert!(
        m.contains(r#"warren_ingress_acme_orders_total{result="issued"}"#),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "warren_ingress_certificate_expiry_timestamp_seconds{{certificate=\"acme-{HOST}\"}}"
        )),
        "{m}"
    );
    stop_tx.send_replace(true);
    manager.await.unwrap();
    push.abort();
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let port = free_port();
    let web = Backend::start("web-1", at(lo(111), port)).await;
    let ing = TestIngress::start();
    ing.update(
        &[route("web", "stop.test", "/", "web", |_| {})],
        &[service("web", port, &[lo(111)])],
        &[],
    );
    let target = url("http", "stop.test", ing.http, "/?delay_ms=500");
    let res = resolve("stop.test", ing.http);
    let slow = tokio::spawn(async move { curl(&["--resolve", &res, &target]).await });
    wait_for("the slow request to reach the backend", Duration::from_secs(5), || {
        web.active() > 0
    })
    .await;
    let http = ing.http;
    ing.shutdown().await;
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the request in flight was answered: {r:?}");
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_and_the_default_route() {
    let port = free_port();
    let _a = Backend::start("a", at(lo(121), port)).await;
    let _b = Backend::start("b", at(lo(122), port)).await;
    let _fallback = Backend::start("fallback", at(lo(123), port)).await;
    let ing = TestIngress::start();
    ing.update(
        &[
            route("app", "sticky.test", "/", "app", |s| s.sticky = true),
            route("fallback", "", "/", "fallback", |s| s.default_backend = true),
        ],
        &[
            service("app", port, &[lo(121), lo(122)]),
            service("fallback", port, &[lo(123)]),
        ],
        &[],
    );
    let get = |cookie: Option<String>| {
        let (res, u) = (
            resolve("sticky.test", ing.http),
            url("http", "sticky.test", ing.http, "/"),
        );
        async move {
            match cookie {
                Some(c) => curl(&["-H", &format!("Cookie: {c}"), "--resolve", &res, &u]).await,
                None => curl(&["--resolve", &res, &u]).await,
            }
        }
    };
    // 1. A first request gets a cookie naming its task; with it, every request
    //    lands there again.
    let first = get(None).await;
    let set = first.headers.get("set-cookie").expect("a sticky cookie").clone();
    assert!(set.starts_with("warren_sticky_app="), "{set}");
    assert!(set.contains("HttpOnly") && set.contains("Path=/"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    for _ in 0..6 {
        let r = get(Some(cookie.clone())).await;
        assert_eq!(r.backend(), first.backend(), "the cookie keeps the client on its task");
        assert!(
            !r.headers.contains_key("set-cookie"),
            "no new cookie while the task is there"
        );
    }
    // 2. Without the cookie, requests are balanced over both tasks.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.insert(get(None).await.backend());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // 3. A host no route names goes to the default route.
    let r = curl(&[
        "--resolve",
        &resolve("elsewhere.test", ing.http),
        &url("http", "elsewhere.test", ing.http, "/"),
    ])
    .await;
    assert_eq!(r.backend(), "fallback", "{r:?}");
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let _web = Backend::start("web-1", at(lo(131), port)).await;
    let ing = TestIngress::start_with(|c| {
        c.timeouts.header_read = Duration::from_millis(500);
        c.timeouts.idle = Duration::from_millis(300);
    });
    ing.update(
        &[route("web", "t.test", "/", "web", |_| {})],
        &[service("web", port, &[lo(131)])],
        &[],
    );
    // Reads until the ingress closes the connection; fails if it is still open after `limit`.
    async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(limit, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return got,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("the connection was still open after {limit:?}"),
            }
        }
    }
    // 1. Headers that never finish: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(ing.http).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n").await.unwrap();
    let got = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(!got.starts_with(b"HTTP/1.1 200"), "no answer to unfinished headers");
    // 2. A request answered, then nothing: closed after the idle time.
    let mut idle = tokio::net::TcpStream::connect(ing.http).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n").await.unwrap();
    let got = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    // 3. A slow request in flight is not idle: it is answered after the idle time.
    let mut busy = tokio::net::TcpStream::connect(ing.http).await.unwrap();
    busy.write_all(b"GET /?delay_ms=800 HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut busy, Duration::from_secs(5)).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    ing.shutdown().await;
}
