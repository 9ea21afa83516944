//! What every node needs of every service, derived from the replicated state: VIP,
//! ports, canary weight, rate limit and the tasks that may take connections. The
//! types are the model's (`model::ServiceEndpoints`); deriving them reads the state,
//! so it lives on the store side of the boundary.

use super::State;
use crate::model::{Endpoint, ServiceEndpoints, TaskState};
use std::net::Ipv4Addr;

impl State {
    /// Every service with its running tasks, sorted by name. A task is ready once
    /// it runs and, if it has a health check, has passed it (the worker reports
    /// "starting" from its first running report, so it never flaps in and out). A
    /// task that is to stop (desired state past running) while its container still
    /// runs is draining: no new connections, established ones continue, until its
    /// container has exited and it leaves the list.
    pub fn service_endpoints(&self) -> Vec<ServiceEndpoints> {
        let state = self;
        let mut by_service: std::collections::HashMap<&str, Vec<Endpoint>> = std::collections::HashMap::new();
        for t in state.tasks.values() {
            if t.desired_state < TaskState::Running || t.status.state != TaskState::Running {
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
                draining: t.desired_state > TaskState::Running,
            });
        }
        let removed = |s: &crate::model::Service| state.removed_services.contains_key(&s.id);
        let mut out: Vec<ServiceEndpoints> = state
            .services
            .values()
            .chain(state.removed_services.values())
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
                    endpoint_locality: s.spec.endpoint_locality,
                    endpoints,
                    stack: s
                        .spec
                        .labels
                        .get(crate::model::STACK_LABEL)
                        .cloned()
                        .unwrap_or_default(),
                    removed: removed(s),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{service, task};

    fn running(
        id: &str,
        svc: &crate::model::Service,
        addr: &str,
        health: &str,
        desired: TaskState,
    ) -> crate::model::Task {
        let mut t = task(id, svc);
        t.node_id = Some("n1".into());
        t.desired_state = desired;
        t.status.state = TaskState::Running;
        t.status.addr = addr.into();
        t.status.health = health.into();
        t
    }

    #[test]
    fn a_task_is_ready_after_its_check_and_drains_once_it_is_to_stop() {
        let mut st = State::default();
        let svc = service("s1", "web");
        st.services.insert(svc.id.clone(), svc.clone());
        for t in [
            running("a", &svc, "10.0.0.2", "", TaskState::Running),
            running("b", &svc, "10.0.0.3", "starting", TaskState::Running),
            running("c", &svc, "10.0.0.4", "healthy", TaskState::Shutdown),
            running("d", &svc, "10.0.0.5", "healthy", TaskState::Remove),
        ] {
            st.tasks.insert(t.id.clone(), t);
        }
        let mut stopped = running("e", &svc, "10.0.0.6", "", TaskState::Shutdown);
        stopped.status.state = TaskState::Shutdown;
        st.tasks.insert(stopped.id.clone(), stopped);
        let eps = &st.service_endpoints()[0].endpoints;
        let by_id = |id: &str| eps.iter().find(|e| e.task_id == id).map(|e| (e.ready, e.draining));
        assert_eq!(by_id("a"), Some((true, false)));
        assert_eq!(by_id("b"), Some((false, false)), "not before its first passing check");
        assert_eq!(by_id("c"), Some((true, true)));
        assert_eq!(by_id("d"), Some((true, true)), "service rm and scale-down drain too");
        assert_eq!(by_id("e"), None, "its container has exited");
    }
}
