//! `warren_dataplane_*` Prometheus metrics: the kernel's per-CPU counters (summed)
//! and map fill, read from [`Dataplane::status`] at every scrape. Registration
//! only; serving `/metrics` belongs to the daemon.

use std::sync::Arc;

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::Dataplane;

struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    counter: bool,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "dataplane_connections_total",
        help: "New connections (and UDP flows) translated, per service.",
        labels: &["service"],
        counter: true,
    },
    Family {
        name: "dataplane_packets_total",
        help: "Packets on the tc path and datagrams through sendmsg, per service.",
        labels: &["service"],
        counter: true,
    },
    Family {
        name: "dataplane_bytes_total",
        help: "Bytes on the tc path, per service.",
        labels: &["service"],
        counter: true,
    },
    Family {
        name: "dataplane_drops_total",
        help: "Refused connections and dropped packets, per service and reason.",
        labels: &["service", "reason"],
        counter: true,
    },
    Family {
        name: "dataplane_backend_connections_total",
        help: "New connections per backend.",
        labels: &["service", "backend"],
        counter: true,
    },
    Family {
        name: "dataplane_backend_packets_total",
        help: "Packets per backend.",
        labels: &["service", "backend"],
        counter: true,
    },
    Family {
        name: "dataplane_backend_bytes_total",
        help: "Bytes per backend.",
        labels: &["service", "backend"],
        counter: true,
    },
    Family {
        name: "dataplane_map_entries",
        help: "Entries in use per eBPF map.",
        labels: &["map"],
        counter: false,
    },
    Family {
        name: "dataplane_map_capacity",
        help: "Capacity per eBPF map.",
        labels: &["map"],
        counter: false,
    },
    Family {
        name: "dataplane_program_attached",
        help: "1 per attached eBPF program and hook.",
        labels: &["program", "target"],
        counter: false,
    },
    Family {
        name: "dataplane_service_skipped",
        help: "1 per service the last sync left out of the maps (invalid or over a limit), with the field at fault.",
        labels: &["service", "field"],
        counter: false,
    },
    Family {
        name: "dataplane_backend_outcomes_total",
        help: "How this node's connections to the backend ended: established, reset, refused, timed_out.",
        labels: &["service", "backend", "outcome"],
        counter: true,
    },
    Family {
        name: "dataplane_sock_destroy_supported",
        help: "1 when sockets to removed backends are destroyed (bpf_sock_destroy).",
        labels: &[],
        counter: false,
    },
];

enum Vec_ {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
}

impl Vec_ {
    fn new(f: &Family) -> Result<Self, prometheus::Error> {
        let opts = Opts::new(f.name, f.help);
        Ok(if f.counter {
            Vec_::Counter(IntCounterVec::new(opts, f.labels)?)
        } else {
            Vec_::Gauge(IntGaugeVec::new(opts, f.labels)?)
        })
    }
    fn set(&self, labels: &[&str], v: u64) {
        match self {
            Vec_::Counter(c) => c.with_label_values(labels).inc_by(v),
            Vec_::Gauge(g) => g.with_label_values(labels).set(v as i64),
        }
    }
    fn collect(&self) -> Vec<MetricFamily> {
        match self {
            Vec_::Counter(c) => c.collect(),
            Vec_::Gauge(g) => g.collect(),
        }
    }
    fn desc(&self) -> Vec<&Desc> {
        match self {
            Vec_::Counter(c) => c.desc(),
            Vec_::Gauge(g) => g.desc(),
        }
    }
}

struct DataplaneCollector {
    dp: Arc<dyn Dataplane>,
    /// Only for `desc()`; every scrape builds fresh vectors from the kernel's
    /// counters (they are absolute values, not increments).
    templates: Vec<Vec_>,
}

impl Collector for DataplaneCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.templates.iter().flat_map(|t| t.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let vecs: Vec<Vec_> = match FAMILIES.iter().map(Vec_::new).collect() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "building data plane metrics failed");
                return Vec::new();
            }
        };
        let st = self.dp.status();
        for e in &st.errors {
            tracing::warn!(node = %st.node_name, error = %e, "reading data plane counters");
        }
        for s in &st.services {
            vecs[0].set(&[&s.name], s.connections);
            vecs[1].set(&[&s.name], s.packets);
            vecs[2].set(&[&s.name], s.bytes);
            for (reason, v) in s.drops.iter() {
                vecs[3].set(&[&s.name, reason], v);
            }
        }
        for b in &st.backends {
            let addr = b.addr.to_string();
            vecs[4].set(&[&b.service, &addr], b.connections);
            vecs[5].set(&[&b.service, &addr], b.packets);
            vecs[6].set(&[&b.service, &addr], b.bytes);
            let o = &b.outcomes;
            for (outcome, v) in [
                ("established", o.established),
                ("reset", o.reset),
                ("refused", o.refused),
                ("timed_out", o.timed_out),
            ] {
                vecs[11].set(&[&b.service, &addr, outcome], v);
            }
        }
        for m in &st.maps {
            vecs[7].set(&[&m.name], m.entries);
            vecs[8].set(&[&m.name], m.capacity);
        }
        for p in &st.programs {
            vecs[9].set(&[&p.program, &p.target], 1);
        }
        for k in &st.skipped {
            vecs[10].set(&[&k.name, &k.field], 1);
        }
        vecs[12].set(&[], u64::from(st.sock_destroy));
        vecs.iter().flat_map(Vec_::collect).collect()
    }
}

/// Registers the `dataplane_*` metrics of `dp` on `registry` (the daemon's registry
/// prefixes every name with `warren_`).
pub fn register_metrics(registry: &Registry, dp: Arc<dyn Dataplane>) -> Result<(), prometheus::Error> {
    let templates = FAMILIES.iter().map(Vec_::new).collect::<Result<_, _>>()?;
    registry.register(Box::new(DataplaneCollector { dp, templates }))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use prometheus::{Encoder, TextEncoder};

    use super::*;
    use crate::dataplane::{
        BackendStats, DataplaneError, DataplaneStatus, DropCounters, MapFill, ServiceEntry, ServiceStats,
        SkippedService, SyncReport,
    };

    struct Canned(DataplaneStatus);

    impl Dataplane for Canned {
        fn sync(&self, _: &[ServiceEntry]) -> Result<SyncReport, DataplaneError> {
            Ok(SyncReport::default())
        }
        fn status(&self) -> DataplaneStatus {
            self.0.clone()
        }
    }

    #[test]
    fn status_becomes_metrics() {
        let status = DataplaneStatus {
            node_name: "n1".into(),
            services: vec![ServiceStats {
                id: 1,
                name: "web".into(),
                connections: 7,
                packets: 3,
                bytes: 300,
                drops: DropCounters {
                    rate_limited: 5,
                    ..Default::default()
                },
            }],
            backends: vec![BackendStats {
                service_id: 1,
                service: "web".into(),
                addr: Ipv4Addr::new(10, 1, 0, 2),
                canary: false,
                local: true,
                connections: 7,
                packets: 3,
                bytes: 300,
                outcomes: warren_common::BackendOutcomes {
                    established: 6,
                    reset: 2,
                    refused: 1,
                    timed_out: 0,
                },
            }],
            maps: vec![MapFill {
                name: "warren_svc_v1".into(),
                entries: 4,
                capacity: 8192,
            }],
            sock_destroy: true,
            skipped: vec![SkippedService {
                id: 2,
                name: "bad".into(),
                field: "vip".into(),
                problem: "10.99.0.1 is also the VIP of service web".into(),
            }],
            ..Default::default()
        };
        let registry = Registry::new_custom(Some("warren".into()), None).unwrap();
        register_metrics(&registry, Arc::new(Canned(status))).unwrap();
        let mut out = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "warren_dataplane_connections_total{service=\"web\"} 7",
            "warren_dataplane_drops_total{reason=\"rate_limited\",service=\"web\"} 5",
            "warren_dataplane_drops_total{reason=\"no_backend\",service=\"web\"} 0",
            "warren_dataplane_backend_connections_total{backend=\"10.1.0.2\",service=\"web\"} 7",
            "warren_dataplane_bytes_total{service=\"web\"} 300",
            "warren_dataplane_map_entries{map=\"warren_svc_v1\"} 4",
            "warren_dataplane_map_capacity{map=\"warren_svc_v1\"} 8192",
            "warren_dataplane_sock_destroy_supported 1",
            "warren_dataplane_backend_outcomes_total{backend=\"10.1.0.2\",outcome=\"reset\",service=\"web\"} 2",
            "warren_dataplane_service_skipped{field=\"vip\",service=\"bad\"} 1",
            "# TYPE warren_dataplane_connections_total counter",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        // A second registration of the same names is refused.
        assert!(register_metrics(&registry, Arc::new(Canned(DataplaneStatus::default()))).is_err());
    }
}
