//! Feeds the node's data plane from the cluster's endpoints: every service with a
//! VIP or published ports becomes a `ServiceEntry` whose backends are its ready
//! tasks (canary tasks in their own group), marked local when they run here and
//! draining when they are to stop. How
//! connections are balanced is `crate::dataplane`; this only translates and syncs.

use crate::dataplane::{Backend, BackendGroup, Dataplane, Protocol, RateLimit, ServiceEntry, ServicePort};
use crate::model::{self, EndpointMode, PublishMode, ServiceEndpoints};
use std::sync::{Arc, Mutex};

pub struct NodeDataplane {
    dp: Arc<dyn Dataplane>,
    node_id: String,
    last: Mutex<Option<Vec<ServiceEntry>>>,
    /// The task behind each endpoint address, from the last endpoints set (the
    /// data plane counts outcomes by backend address).
    tasks: Mutex<std::collections::HashMap<std::net::Ipv4Addr, String>>,
}

/// The data plane's view of the services.
pub fn entries(node_id: &str, services: &[ServiceEndpoints]) -> Vec<ServiceEntry> {
    let mut out = Vec::with_capacity(services.len());
    for s in services {
        let vip = match s.endpoint_mode {
            EndpointMode::Vip if !s.removed => s.vip,
            _ => None,
        };
        // A removed service keeps its backends only, for their established flows.
        let ports: Vec<ServicePort> = s
            .ports
            .iter()
            .filter(|_| !s.removed)
            .map(|p| ServicePort {
                protocol: match p.protocol {
                    model::Protocol::Tcp => Protocol::Tcp,
                    model::Protocol::Udp => Protocol::Udp,
                },
                target: p.target,
                published: Some(p.published),
                host_mode: p.mode == PublishMode::Host,
            })
            .collect();
        if vip.is_none() && ports.is_empty() && !s.removed {
            continue;
        }
        out.push(ServiceEntry {
            id: s.dp_id,
            name: s.name.clone(),
            vip,
            ports,
            backends: s
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| Backend {
                    addr: e.addr,
                    group: if e.canary {
                        BackendGroup::Canary
                    } else {
                        BackendGroup::Stable
                    },
                    local: e.node_id == node_id,
                    draining: e.draining,
                })
                .collect(),
            canary_weight: s.canary_weight,
            rate_limit: s.rate_limit.map(|r| RateLimit {
                per_sec: r.per_sec,
                burst: r.burst,
            }),
            prefer_local: s.endpoint_locality == model::EndpointLocality::PreferLocal,
        });
    }
    out
}

impl NodeDataplane {
    pub fn new(dp: Arc<dyn Dataplane>, node_id: String) -> NodeDataplane {
        NodeDataplane {
            dp,
            node_id,
            last: Mutex::new(None),
            tasks: Mutex::default(),
        }
    }
}

impl super::EndpointsListener for NodeDataplane {
    fn configure(&self, _network: &super::executor::NodeNetwork) {}

    fn outcomes(&self) -> Vec<(String, model::Outcomes)> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out: std::collections::BTreeMap<String, model::Outcomes> = Default::default();
        // A backend of several services (ports) is one address, counted once.
        for b in self.dp.status().backends {
            if let Some(task) = tasks.get(&b.addr) {
                let o = &b.outcomes;
                out.insert(
                    task.clone(),
                    model::Outcomes {
                        established: o.established,
                        reset: o.reset,
                        refused: o.refused,
                        timed_out: o.timed_out,
                    },
                );
            }
        }
        out.into_iter().collect()
    }

    fn endpoints(&self, services: &[ServiceEndpoints]) {
        *self.tasks.lock().unwrap_or_else(|e| e.into_inner()) = services
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| (e.addr, e.task_id.clone())))
            .collect();
        let wanted = entries(&self.node_id, services);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() == Some(&wanted) {
            return;
        }
        match self.dp.sync(&wanted) {
            Ok(report) => {
                // The data plane logs each newly skipped service; what the API
                // would show in `service inspect` is in DataplaneStatus::skipped.
                if !report.skipped.is_empty() {
                    tracing::debug!(
                        skipped = report.skipped.len(),
                        "the data plane synced all but the invalid services"
                    );
                }
                *last = Some(wanted)
            }
            Err(e) => tracing::error!(error = %e, "the data plane could not be synced; retrying at the next change"),
        }
    }
}
