//! What every node needs to know about every service to resolve and balance it:
//! its VIP, ports, canary weight, rate limit and reachable tasks. Derived from the
//! state by the managers (`store::State::service_endpoints`), sent to each node,
//! consumed by its DNS and data plane.

use super::{EndpointLocality, EndpointMode, PortConfig, RateLimit};
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
    /// The task is to stop and drains: weight 0, no new connections (unless no
    /// task of its service is left to take them), established ones continue.
    #[serde(default)]
    pub draining: bool,
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
    /// `prefer-local`: each node's data plane sends new connections to its own
    /// ready tasks while it has any.
    #[serde(default)]
    pub endpoint_locality: EndpointLocality,
    pub endpoints: Vec<Endpoint>,
    /// The stack the service belongs to (`stack deploy`); empty: none.
    #[serde(default)]
    pub stack: String,
    /// Removed (`service rm`) while its tasks drain: no address, port, name or
    /// route reaches it any more; only its tasks' established flows live on.
    #[serde(default)]
    pub removed: bool,
}
