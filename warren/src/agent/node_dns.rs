//! The node's service DNS for its tasks: started on the bridge (gateway) address,
//! port 53, once the node has a task network, with its table rebuilt from every
//! endpoints update (names to VIPs, `tasks.NAME`, `NAME.SLOT`). What the names
//! mean and how lookups are answered is `crate::dns`; this only feeds it.

use crate::agent::executor::NodeNetwork;
use crate::dns::{DnsConfig, DnsMetrics, DnsServer, DnsTable};
use crate::model::{EndpointMode, ServiceEndpoints};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct NodeDns {
    network: watch::Sender<Option<NodeNetwork>>,
    table: watch::Sender<DnsTable>,
}

/// The table for a set of services: VIP services answer their VIP, dnsrr ones
/// their ready tasks; `tasks.NAME` and `NAME.SLOT` always list ready tasks.
pub fn table(services: &[ServiceEndpoints]) -> DnsTable {
    let mut b = DnsTable::builder();
    for s in services.iter().filter(|s| !s.removed) {
        let vip = match s.endpoint_mode {
            EndpointMode::Vip => s.vip,
            EndpointMode::Dnsrr => None,
        };
        // Draining tasks are not handed out while another task can take clients.
        let any_live = s.endpoints.iter().any(|e| e.ready && !e.draining);
        let tasks: Vec<(u64, Ipv4Addr)> = s
            .endpoints
            .iter()
            .filter(|e| e.ready && (!e.draining || !any_live))
            .map(|e| (e.slot, e.addr))
            .collect();
        // A stack's service `S_db` also answers `db.S`: its stack's tasks search
        // `S.<domain>` first, so that `db` works inside the stack as in compose.
        let alias = s
            .name
            .strip_prefix(&format!("{}_", s.stack))
            .filter(|short| !s.stack.is_empty() && !short.is_empty())
            .map(|short| format!("{short}.{}", s.stack));
        if let Some(alias) = alias {
            if let Err(e) = b.service(&alias, vip, tasks.clone()) {
                tracing::warn!(service = %s.name, alias = %alias, error = %e, "dns: leaving a stack alias out");
            }
        }
        if let Err(e) = b.service(&s.name, vip, tasks) {
            tracing::warn!(service = %s.name, error = %e, "dns: leaving a service out");
        }
    }
    b.build()
}

impl NodeDns {
    pub fn start(metrics: Option<DnsMetrics>, upstreams: Vec<SocketAddr>) -> Arc<NodeDns> {
        let (network, mut net_rx) = watch::channel(None::<NodeNetwork>);
        let (table, mut table_rx) = watch::channel(DnsTable::default());
        tokio::spawn(async move {
            // Wait for the node's subnet, then for its bridge address to exist.
            let gateway = loop {
                if let Some(n) = net_rx.borrow_and_update().clone() {
                    match n.subnet.parse::<ipnet::Ipv4Net>() {
                        Ok(net) => break Ipv4Addr::from(u32::from(net.network()) + 1),
                        Err(e) => tracing::error!(subnet = %n.subnet, error = %e, "dns: unusable subnet"),
                    }
                }
                if net_rx.changed().await.is_err() {
                    return;
                }
            };
            let mut cfg = DnsConfig::new(SocketAddr::new(gateway.into(), 53));
            if !upstreams.is_empty() {
                cfg.upstreams = upstreams;
            }
            let server = loop {
                let current = table_rx.borrow_and_update().clone();
                let started = match &metrics {
                    Some(m) => DnsServer::start_with_metrics(cfg.clone(), current, m.clone()).await,
                    None => DnsServer::start(cfg.clone(), current).await,
                };
                match started {
                    Ok(s) => break s,
                    // The worker creates the bridge; until then the address is missing.
                    Err(e) => tracing::debug!(error = %e, "dns: not listening yet; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            tracing::info!(addr = %server.local_addr(), "service DNS is listening");
            let updater = server.updater();
            while table_rx.changed().await.is_ok() {
                updater.update(table_rx.borrow_and_update().clone());
            }
            let _ = server.shutdown().await;
        });
        Arc::new(NodeDns { network, table })
    }

    pub fn configure(&self, network: &NodeNetwork) {
        self.network.send_if_modified(|cur| {
            if cur.as_ref() == Some(network) {
                false
            } else {
                *cur = Some(network.clone());
                true
            }
        });
    }

    pub fn update(&self, services: &[ServiceEndpoints]) {
        let new = table(services);
        self.table.send_if_modified(|cur| {
            if *cur == new {
                false
            } else {
                *cur = new;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;

    fn svc(name: &str, mode: EndpointMode, vip: Option<Ipv4Addr>, ready: &[(u64, &str, bool)]) -> ServiceEndpoints {
        ServiceEndpoints {
            id: name.into(),
            name: name.into(),
            dp_id: 1,
            vip,
            endpoint_mode: mode,
            ports: vec![],
            canary_weight: 0,
            rate_limit: None,
            endpoint_locality: Default::default(),
            stack: String::new(),
            endpoints: ready
                .iter()
                .map(|(slot, addr, ready)| Endpoint {
                    task_id: format!("t{slot}"),
                    slot: *slot,
                    addr: addr.parse().unwrap(),
                    node_id: "n".into(),
                    canary: false,
                    ready: *ready,
                    draining: false,
                })
                .collect(),
            removed: false,
        }
    }

    #[test]
    fn a_stack_service_also_answers_its_short_name_under_the_stack() {
        use crate::dns::Resolution;
        let mut db = svc("shop_db", EndpointMode::Vip, Some("10.96.0.7".parse().unwrap()), &[]);
        db.stack = "shop".into();
        let t = table(&[db]);
        let vip = vec!["10.96.0.7".parse::<Ipv4Addr>().unwrap()];
        let search = ["warren".to_string()];
        for name in ["shop_db", "db.shop", "db.shop.warren"] {
            match t.resolve(name, &search, 0) {
                Resolution::Local { addrs, .. } => assert_eq!(addrs, vip, "{name}"),
                Resolution::Forward => panic!("{name} forwarded"),
            }
        }
        assert_eq!(t.resolve("db", &search, 0), Resolution::Forward);
    }

    #[test]
    fn vip_and_dnsrr_services_and_unready_tasks() {
        use crate::dns::Resolution;
        let t = table(&[
            svc(
                "web",
                EndpointMode::Vip,
                Some("10.96.0.1".parse().unwrap()),
                &[(1, "10.88.0.2", true), (2, "10.88.0.3", false)],
            ),
            svc(
                "db",
                EndpointMode::Dnsrr,
                Some("10.96.0.9".parse().unwrap()),
                &[(1, "10.88.0.4", true)],
            ),
        ]);
        let addrs = |name: &str| match t.resolve(name, &[], 0) {
            Resolution::Local { addrs, .. } => addrs,
            Resolution::Forward => panic!("{name} forwarded"),
        };
        assert_eq!(addrs("web"), vec!["10.96.0.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(
            addrs("tasks.web"),
            vec!["10.88.0.2".parse::<Ipv4Addr>().unwrap()],
            "an unhealthy task is not listed"
        );
        assert_eq!(
            addrs("db"),
            vec!["10.88.0.4".parse::<Ipv4Addr>().unwrap()],
            "dnsrr answers task addresses"
        );
        assert!(addrs("web.2").is_empty());
    }
}
