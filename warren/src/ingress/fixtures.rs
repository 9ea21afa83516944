//! Model values for the ingress unit tests, built in one place.

use std::net::Ipv4Addr;

use crate::model::{
    ingress::{Ingress, IngressSpec},
    Endpoint, EndpointMode, PortConfig, Protocol, PublishMode, ServiceEndpoints,
};

pub fn route(name: &str, host: &str, path: &str, service: &str) -> Ingress {
    route_with(name, host, path, service, |_| {})
}

pub fn route_with(name: &str, host: &str, path: &str, service: &str, f: impl FnOnce(&mut IngressSpec)) -> Ingress {
    let mut spec = IngressSpec {
        host: host.into(),
        path: path.into(),
        service: service.into(),
        ..Default::default()
    };
    f(&mut spec);
    Ingress {
        id: format!("id-{name}"),
        name: name.into(),
        spec,
        version: 1,
        created_ms: 0,
        updated_ms: 0,
    }
}

/// A service `name` whose tasks listen on `targets`, with tasks at `(addr, ready)`.
pub fn endpoints(name: &str, targets: &[u16], tasks: &[(&str, bool)]) -> ServiceEndpoints {
    ServiceEndpoints {
        id: format!("svc-{name}"),
        name: name.into(),
        dp_id: 1,
        vip: None,
        endpoint_mode: EndpointMode::Vip,
        ports: targets
            .iter()
            .map(|&t| PortConfig {
                published: 30000 + t,
                target: t,
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress,
            })
            .collect(),
        canary_weight: 0,
        rate_limit: None,
        endpoint_locality: Default::default(),
        stack: String::new(),
        endpoints: tasks
            .iter()
            .enumerate()
            .map(|(i, (addr, ready))| Endpoint {
                task_id: format!("task-{name}-{i}"),
                slot: i as u64 + 1,
                addr: addr.parse::<Ipv4Addr>().expect("fixture address"),
                node_id: "node-1".into(),
                canary: false,
                ready: *ready,
                draining: false,
            })
            .collect(),
        removed: false,
    }
}
