//! `warren-dp-probe ingress`: Warren's ingress as a library in a process of its
//! own, for the ingress benchmark. One service whose tasks are the `--backend`
//! addresses (one port), one route for `bench.test` that is also the default
//! route (so its certificate answers handshakes without a known name), served on
//! `--http` and `--https`. Prints `listening` and runs until killed. No tracing
//! subscriber is installed: the access log is off, as the other proxies' are.
//!
//! ```text
//! ingress --http A:P --https A:P --cert PEM --key PEM --backend A:P... [--threads N] [--resumption]
//! ```
//!
//! `--threads` is the number of the ingress's worker threads (default 2).

use std::{
    io::{self, Write},
    net::SocketAddrV4,
    sync::Arc,
};

use warren::{
    ingress::{CertificatePem, IngressConfig, MemoryChallenges},
    model::{
        ingress::{Ingress, IngressSpec, RouteTls},
        Endpoint, EndpointMode, PortConfig, Protocol, PublishMode, ServiceEndpoints,
    },
};

use super::Args;

pub fn serve(args: &Args) {
    let threads = args.num("--threads", 2).max(1) as usize;
    let backends: Vec<SocketAddrV4> = args
        .all("--backend")
        .iter()
        .map(|b| {
            b.parse()
                .unwrap_or_else(|_| panic!("warren-dp-probe: bad --backend {b}"))
        })
        .collect();
    assert!(!backends.is_empty(), "warren-dp-probe: ingress needs --backend");
    let port = backends[0].port();
    assert!(
        backends.iter().all(|b| b.port() == port),
        "warren-dp-probe: the backends of one service share a port"
    );
    let read = |flag: &str| {
        let path = args.req(flag);
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("warren-dp-probe: reading {path}: {e}"))
    };
    let cert = CertificatePem {
        name: "bench".into(),
        cert_pem: read("--cert"),
        key_pem: read("--key"),
    };
    let cfg = IngressConfig {
        http_addr: Some(args.addr("--http").into()),
        https_addr: Some(args.addr("--https").into()),
        tls_resumption: args.has("--resumption"),
        workers: threads,
        ..IngressConfig::default()
    };
    {
        let registry = prometheus::Registry::new_custom(Some("warren".into()), None).expect("registry");
        let ingress = cfg
            .build(&registry, Arc::new(MemoryChallenges::default()))
            .unwrap_or_else(|e| panic!("warren-dp-probe: {e}"));
        let route = Ingress {
            id: "bench".into(),
            name: "bench".into(),
            spec: IngressSpec {
                host: "bench.test".into(),
                path: "/".into(),
                service: "bench".into(),
                tls: RouteTls::Certificate("bench".into()),
                default_backend: true,
                ..Default::default()
            },
            version: 1,
            created_ms: 0,
            updated_ms: 0,
        };
        let service = ServiceEndpoints {
            id: "bench".into(),
            name: "bench".into(),
            dp_id: 1,
            vip: None,
            endpoint_mode: EndpointMode::Vip,
            ports: vec![PortConfig {
                published: 0,
                target: port,
                protocol: Protocol::Tcp,
                mode: PublishMode::Host,
            }],
            canary_weight: 0,
            rate_limit: None,
            endpoint_locality: Default::default(),
            stack: String::new(),
            endpoints: backends
                .iter()
                .enumerate()
                .map(|(i, b)| Endpoint {
                    task_id: format!("task-{i}"),
                    slot: i as u64 + 1,
                    addr: *b.ip(),
                    node_id: "bench".into(),
                    canary: false,
                    ready: true,
                    draining: false,
                })
                .collect(),
            removed: false,
        };
        let report = ingress.handle().update(&[route], &[service], &[cert]);
        assert!(
            report.issues.is_empty() && report.certificates.is_empty(),
            "warren-dp-probe: the bench route does not apply: {report:?}"
        );
        let _running = ingress.spawn().unwrap_or_else(|e| panic!("warren-dp-probe: {e}"));
        println!("listening");
        io::stdout().flush().ok();
        loop {
            std::thread::park();
        }
    }
}
