//! The node's ingress, fed from the replicated state: whether it runs and on which
//! ports is the node's record (the assignment says; `--ingress` only seeds it), its
//! routes, certificates and ACME answers come with the assignment, and its
//! backends are the same endpoints the data plane gets (only ready tasks; a
//! stopping task leaves them before its container stops). A change of routes,
//! endpoints or certificates applies to new requests while open connections carry
//! on; a change of ports rebuilds the listeners. The proxy itself is
//! `crate::ingress`.

use crate::ingress::{IngressConfig, IngressMetrics, MemoryChallenges, RunningIngress};
use crate::model::ingress::NodeIngress as Ports;
use crate::model::ServiceEndpoints;
use crate::wire::convert::IngressView;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

pub struct NodeIngress {
    me: std::sync::Weak<NodeIngress>,
    /// The address the listeners bind (0.0.0.0 unless configured).
    bind_ip: IpAddr,
    metrics: IngressMetrics,
    challenges: Arc<MemoryChallenges>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    running: Option<(Ports, RunningIngress)>,
    view: Option<IngressView>,
    services: Vec<ServiceEndpoints>,
    /// What was last handed to the ingress, to skip updates that change nothing.
    last: Option<(IngressView, Vec<ServiceEndpoints>)>,
    /// Ports that could not be bound, so that the error is logged once per change.
    failed: Option<Ports>,
    /// The previous ingress is draining before the new one binds (the ports
    /// that did not change are still its).
    rebuilding: bool,
}

impl NodeIngress {
    /// Registers the `warren_ingress_*` metrics once, for every ingress this
    /// node will run.
    pub fn new(
        registry: &prometheus::Registry,
        bind_ip: Option<IpAddr>,
    ) -> Result<Arc<NodeIngress>, prometheus::Error> {
        let metrics = IngressMetrics::register(registry)?;
        Ok(Arc::new_cyclic(|me| NodeIngress {
            me: me.clone(),
            bind_ip: bind_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            metrics,
            challenges: Arc::new(MemoryChallenges::default()),
            inner: Mutex::new(Inner::default()),
        }))
    }

    fn sync(&self, inner: &mut Inner) {
        if inner.rebuilding {
            // The rebuild syncs once the old listeners are gone.
            return;
        }
        let Some(view) = inner.view.clone() else {
            if let Some((ports, running)) = inner.running.take() {
                tracing::info!(
                    http = ports.http_port,
                    https = ports.https_port,
                    "ingress turned off on this node"
                );
                spawn_shutdown(running);
            }
            inner.last = None;
            inner.failed = None;
            return;
        };
        if inner.running.as_ref().is_some_and(|(p, _)| *p != view.ports) {
            if let (Some((_, running)), Some(me), Ok(rt)) = (
                inner.running.take(),
                self.me.upgrade(),
                tokio::runtime::Handle::try_current(),
            ) {
                tracing::info!(
                    http = view.ports.http_port,
                    https = view.ports.https_port,
                    "ingress ports changed: draining the old listeners, then binding the new ones"
                );
                inner.rebuilding = true;
                inner.last = None;
                rt.spawn(async move {
                    running.shutdown().await;
                    let mut inner = me.inner.lock().unwrap_or_else(|e| e.into_inner());
                    inner.rebuilding = false;
                    me.sync(&mut inner);
                });
                return;
            }
            inner.last = None;
        }
        if inner.running.is_none() {
            if inner.failed == Some(view.ports) {
                return;
            }
            match self.start(view.ports) {
                Ok(r) => {
                    inner.running = Some((view.ports, r));
                    inner.failed = None;
                }
                Err(e) => {
                    tracing::error!(
                        http = view.ports.http_port,
                        https = view.ports.https_port,
                        error = %e,
                        "the ingress cannot start on this node"
                    );
                    inner.failed = Some(view.ports);
                    return;
                }
            }
        }
        let current = (view, inner.services.clone());
        if inner.last.as_ref() == Some(&current) {
            return;
        }
        let (view, services) = &current;
        self.challenges.replace(&view.challenges);
        let Some((_, running)) = &inner.running else { return };
        let report = running.handle().update(&view.routes, services, &view.certificates);
        tracing::debug!(
            routes = view.routes.len(),
            certificates = view.certificates.len(),
            changes = report.changes.len(),
            issues = report.issues.len(),
            "ingress updated"
        );
        inner.last = Some(current);
    }

    fn start(&self, ports: Ports) -> Result<RunningIngress, crate::ingress::IngressError> {
        let cfg = IngressConfig {
            http_addr: Some(SocketAddr::new(self.bind_ip, ports.http_port)),
            https_addr: Some(SocketAddr::new(self.bind_ip, ports.https_port)),
            ..Default::default()
        };
        let challenges: Arc<dyn crate::ingress::ChallengeTokens> = self.challenges.clone();
        let ingress = cfg.build_with(self.metrics.clone(), challenges)?;
        ingress.spawn()
    }

    /// Stops the ingress, letting requests in flight finish.
    pub async fn shutdown(&self) {
        let running = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.view = None;
            inner.running.take()
        };
        if let Some((_, r)) = running {
            r.shutdown().await;
        }
    }
}

/// Drains an ingress that is being replaced without holding up the caller.
fn spawn_shutdown(running: RunningIngress) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(running.shutdown());
        }
        Err(_) => drop(running),
    }
}

impl super::EndpointsListener for NodeIngress {
    fn configure(&self, _network: &super::executor::NodeNetwork) {}

    fn ingress(&self, view: Option<&IngressView>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.view = view.cloned();
    }

    fn endpoints(&self, services: &[ServiceEndpoints]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.services = services.to_vec();
        self.sync(&mut inner);
    }
}
