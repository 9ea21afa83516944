//! What every node needs to know about every service to resolve and balance it:
//! its VIP, ports, canary weight, rate limit and reachable tasks. Derived from the
//! state by the managers, sent to each node, consumed by its DNS and data plane.

use super::{EndpointMode, PortConfig, RateLimit, TaskState};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub task_id: String,
    pub slot: u64,
    pub addr: Ipv4Addr,
    pub node_id: String,
    pub canary: bool,
    /// Running and healthy (or without a health check): it may take connections.
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    pub id: String,
    pub name: String,
    pub dp_id: u32,
    pub vip: Option<Ipv4Addr>,
    pub endpoint_mode: EndpointMode,
    pub ports: Vec<PortConfig>,
    /// Percent of new connections for the canary tasks; 0 without a canary.
    pub canary_weight: u8,
    pub rate_limit: Option<RateLimit>,
    pub endpoints: Vec<Endpoint>,
}

/// Every service with its running tasks, sorted by name. A task that is stopping
/// (desired state past running) is left out at once, before its container stops.
pub fn service_endpoints(state: &crate::store::State) -> Vec<ServiceEndpoints> {
    let mut by_service: std::collections::HashMap<&str, Vec<Endpoint>> = std::collections::HashMap::new();
    for t in state.tasks.values() {
        if t.desired_state != TaskState::Running || t.status.state != TaskState::Running {
            continue;
        }
        let (Ok(addr), Some(node)) = (t.status.addr.parse::<Ipv4Addr>(), &t.node_id) else {
            continue;
        };
        by_service.entry(t.service_id.as_str()).or_default().push(Endpoint {
            task_id: t.id.clone(),
            slot: t.slot,
            addr,
            node_id: node.clone(),
            canary: t.canary,
            ready: t.status.health.is_empty() || t.status.health == "healthy",
        });
    }
    let mut out: Vec<ServiceEndpoints> = state
        .services
        .values()
        .map(|s| {
            let mut endpoints = by_service.remove(s.id.as_str()).unwrap_or_default();
            endpoints.sort_by(|a, b| (a.canary, a.slot, &a.task_id).cmp(&(b.canary, b.slot, &b.task_id)));
            ServiceEndpoints {
                id: s.id.clone(),
                name: s.name.clone(),
                dp_id: s.dp_id,
                vip: s.vip,
                endpoint_mode: s.spec.endpoint_mode,
                ports: s.spec.ports.clone(),
                canary_weight: s.canary.as_ref().map_or(0, |c| c.weight),
                rate_limit: s.spec.rate_limit,
                endpoints,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
