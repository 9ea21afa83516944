//! What every node needs of every service, derived from the replicated state: VIP,
//! ports, canary weight, rate limit and the tasks that may take connections. The
//! types are the model's (`model::ServiceEndpoints`); deriving them reads the state,
//! so it lives on the store side of the boundary.

use super::State;
use crate::model::{Endpoint, ServiceEndpoints, TaskState};
use std::net::Ipv4Addr;

impl State {
    /// Every service with its running tasks, sorted by name. A task that is stopping
    /// (desired state past running) is left out at once, before its container stops.
    pub fn service_endpoints(&self) -> Vec<ServiceEndpoints> {
        let state = self;
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
                    stack: s
                        .spec
                        .labels
                        .get(crate::model::STACK_LABEL)
                        .cloned()
                        .unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
