//! Service endpoints on the wire: what the dispatcher sends every node for its
//! data plane and DNS.

use super::service::{locality_from_pb, locality_to_pb, port_from_pb, port_to_pb};
use crate::model::{self, EndpointMode, RateLimit, ValidationError};
use warren_proto::v1 as pb;

pub fn endpoints_to_pb(s: &model::ServiceEndpoints) -> pb::ServiceEndpoints {
    pb::ServiceEndpoints {
        id: s.id.clone(),
        name: s.name.clone(),
        dp_id: s.dp_id,
        vip: s.vip.map(|v| v.to_string()).unwrap_or_default(),
        endpoint_mode: match s.endpoint_mode {
            EndpointMode::Vip => pb::EndpointMode::Vip,
            EndpointMode::Dnsrr => pb::EndpointMode::Dnsrr,
        } as i32,
        ports: s.ports.iter().map(port_to_pb).collect(),
        canary_weight: u32::from(s.canary_weight),
        rate_limit: s.rate_limit.map(|r| pb::RateLimit {
            per_sec: r.per_sec,
            burst: r.burst,
        }),
        endpoint_locality: locality_to_pb(s.endpoint_locality),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| pb::Endpoint {
                task_id: e.task_id.clone(),
                slot: e.slot,
                addr: e.addr.to_string(),
                node_id: e.node_id.clone(),
                canary: e.canary,
                ready: e.ready,
                draining: e.draining,
            })
            .collect(),
        stack: s.stack.clone(),
        removed: s.removed,
    }
}

/// Agent side; endpoints with an unreadable address are dropped.
pub fn endpoints_from_pb(s: pb::ServiceEndpoints) -> Result<model::ServiceEndpoints, ValidationError> {
    Ok(model::ServiceEndpoints {
        id: s.id,
        name: s.name,
        dp_id: s.dp_id,
        vip: s.vip.parse().ok(),
        endpoint_mode: match pb::EndpointMode::try_from(s.endpoint_mode) {
            Ok(pb::EndpointMode::Dnsrr) => EndpointMode::Dnsrr,
            _ => EndpointMode::Vip,
        },
        ports: s.ports.into_iter().map(port_from_pb).collect::<Result<_, _>>()?,
        canary_weight: s.canary_weight.min(100) as u8,
        rate_limit: s.rate_limit.map(|r| RateLimit {
            per_sec: r.per_sec,
            burst: r.burst,
        }),
        // A newer manager's value this agent does not know: balance over every task.
        endpoint_locality: locality_from_pb(s.endpoint_locality).unwrap_or_default(),
        endpoints: s
            .endpoints
            .into_iter()
            .filter_map(|e| {
                Some(model::Endpoint {
                    addr: e.addr.parse().ok()?,
                    task_id: e.task_id,
                    slot: e.slot,
                    node_id: e.node_id,
                    canary: e.canary,
                    ready: e.ready,
                    draining: e.draining,
                })
            })
            .collect(),
        stack: s.stack,
        removed: s.removed,
    })
}
