//! What `node ls|inspect` show: the node view and the node's own account of its data
//! plane, as JSON and as text.

use super::{capitalize, short_id, table, Text};
use crate::model::{self, format_cpus, format_size, NodeRole, Resources};
use crate::wire::convert;
use serde::Serialize;
use warren_proto::v1 as pb;

#[derive(Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: model::Node,
    pub reserved: Resources,
    pub leader: bool,
    pub manager_reachability: Option<String>,
    /// The node answering this request.
    #[serde(rename = "self")]
    pub is_self: bool,
}

impl NodeView {
    pub fn from_pb(n: pb::Node, self_id: &str) -> NodeView {
        let (node, reserved, manager) = convert::node_from_pb(n);
        NodeView {
            is_self: node.id == self_id,
            leader: manager.as_ref().is_some_and(|m| m.leader),
            manager_reachability: manager.map(|m| m.reachability),
            node,
            reserved,
        }
    }
}

/// `node ls`.
pub fn nodes_table(views: &[NodeView]) -> String {
    table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ADDRESS",
            "VERSION",
        ],
        views
            .iter()
            .map(|n| {
                let mut id = short_id(&n.node.id);
                if n.is_self {
                    id.push_str(" *");
                }
                let mgr = match (n.node.role, n.leader, &n.manager_reachability) {
                    (NodeRole::Worker, _, _) => String::new(),
                    (_, true, _) => "Leader".into(),
                    (_, false, Some(r)) => capitalize(r),
                    _ => String::new(),
                };
                vec![
                    id,
                    n.node.name.clone(),
                    capitalize(n.node.state.as_str()),
                    capitalize(n.node.availability.as_str()),
                    mgr,
                    n.node.addr.clone(),
                    n.node.warren_version.clone(),
                ]
            })
            .collect(),
    )
}

/// What the node itself said about its data plane, or why it could not.
pub type Dataplane = Result<pb::NodeDataplane, String>;

/// `node inspect --format json`: the node and its data plane.
pub fn node_json(n: &NodeView, dp: &Dataplane) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(n)?;
    v["dataplane"] = dataplane_json(dp);
    super::json(&v)
}

fn dataplane_json(dp: &Dataplane) -> serde_json::Value {
    match dp {
        Err(e) => serde_json::json!({ "error": e }),
        Ok(d) => serde_json::json!({
            "enabled": d.enabled,
            "programs": d.programs.iter().map(|p| serde_json::json!({
                "program": p.program, "target": p.target, "adopted": p.adopted,
            })).collect::<Vec<_>>(),
            "maps": d.maps.iter().map(|m| serde_json::json!({
                "name": m.name, "entries": m.entries, "capacity": m.capacity,
            })).collect::<Vec<_>>(),
            "sock_destroy": d.sock_destroy,
            "services": d.services,
            "backends": d.backends,
            "connections": d.connections,
            "drops": d.drops,
            "errors": d.errors,
            "mesh": d.mesh.as_ref().map(|m| serde_json::json!({
                "interface": m.interface, "backend": m.backend, "public_key": m.public_key,
                "next_public_key": m.next_public_key, "listen_port": m.listen_port, "mtu": m.mtu,
                "up": m.up,
                "peers": m.peers.iter().map(|p| serde_json::json!({
                    "node_id": p.node_id, "public_key": p.public_key, "endpoint": p.endpoint,
                    "allowed_ips": p.allowed_ips, "last_handshake_ms": p.last_handshake_ms,
                    "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes,
                })).collect::<Vec<_>>(),
            })),
        }),
    }
}

/// When a manager last heard from the node: now while its session is up.
fn last_contact(n: &crate::model::Node, now_ms: i64) -> String {
    if n.last_contact_ms == 0 {
        return "never".into();
    }
    if n.state == crate::model::NodeState::Ready {
        return "now (session up)".into();
    }
    let ago = u64::try_from((now_ms - n.last_contact_ms).max(0) / 1000 * 1000).unwrap_or(0);
    format!("{} ago", crate::model::human_duration(ago))
}

/// When the node's certificate expires, as the manager that issued it recorded.
fn cert_expiry(n: &crate::model::Node, now_ms: i64) -> String {
    if n.cert_expires_ms == 0 {
        return "expiry not recorded (issued before renewal existed)".into();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(n.cert_expires_ms as u64);
    let left = u64::try_from((n.cert_expires_ms - now_ms) / 1000 * 1000).unwrap_or(0);
    match left {
        0 => format!("expired at {} UTC", humantime::format_rfc3339_seconds(at)),
        _ => format!(
            "expires {} UTC (in {}; renewed at two thirds of its life)",
            humantime::format_rfc3339_seconds(at),
            crate::model::human_duration(left)
        ),
    }
}

/// Whether the node runs on its own now, else what it last did while cut off.
fn autonomy(n: &crate::model::Node) -> String {
    match (n.state, n.autonomy.is_empty()) {
        (crate::model::NodeState::Unreachable, _) => "running on its own (no manager reaches it)".into(),
        (_, true) => "never cut off".into(),
        (_, false) => format!("last cut off: {}", n.autonomy),
    }
}

/// `node inspect`.
pub fn node_text(n: &NodeView, dp: &Dataplane) -> String {
    let mut t = Text::default();
    t.line(format_args!("ID:           {}", n.node.id));
    t.line(format_args!("Hostname:     {}", n.node.name));
    t.line(format_args!("Role:         {}", n.node.role.as_str()));
    t.line(format_args!(
        "Status:       {}{}",
        n.node.state.as_str(),
        if n.node.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", n.node.message)
        }
    ));
    t.line(format_args!("Availability: {}", n.node.availability.as_str()));
    t.line(format_args!("Address:      {}", n.node.addr));
    t.line(format_args!(
        "Last contact: {}",
        last_contact(&n.node, crate::model::now_ms())
    ));
    t.line(format_args!("Autonomy:     {}", autonomy(&n.node)));
    t.line(format_args!(
        "Certificate:  {}",
        cert_expiry(&n.node, crate::model::now_ms())
    ));
    if let Some(m) = &n.node.mesh {
        t.line(format_args!("Mesh key:     {}", m.public_key));
        if let Some(k) = &m.next_public_key {
            t.line(format_args!("Mesh next:    {k} (rotating)"));
        }
        t.line(format_args!("Mesh end:     {}", m.endpoint));
    }
    match n.node.ingress {
        Some(i) => t.line(format_args!(
            "Ingress:      http :{}, https :{}",
            i.http_port, i.https_port
        )),
        None => t.line("Ingress:      off"),
    }
    t.line(format_args!(
        "Platform:     {}/{}",
        n.node.platform.os, n.node.platform.arch
    ));
    t.line(format_args!(
        "Resources:    cpu {} (reserved {}), memory {} (reserved {})",
        format_cpus(n.node.resources.nano_cpus),
        format_cpus(n.reserved.nano_cpus),
        format_size(n.node.resources.memory_bytes),
        format_size(n.reserved.memory_bytes)
    ));
    if n.node.role == NodeRole::Manager {
        t.line(format_args!(
            "Manager:      {}{}",
            n.manager_reachability.clone().unwrap_or_default(),
            if n.leader { ", leader" } else { "" }
        ));
    }
    t.line(format_args!("Version:      {}", n.node.warren_version));
    if !n.node.labels.is_empty() {
        t.line("Labels:");
        for (k, val) in &n.node.labels {
            t.line(format_args!("  {k}={val}"));
        }
    }
    dataplane_text(&mut t, dp);
    if let Ok(pb::NodeDataplane { mesh: Some(m), .. }) = dp {
        mesh_text(&mut t, m);
    }
    t.0
}

/// The node's mesh as the node sees it: the device, and per peer its handshake age
/// and bytes.
fn mesh_text(t: &mut Text, m: &pb::NodeMeshStatus) {
    t.line(format_args!(
        "Mesh:         {} ({}, port {}, MTU {}{})",
        m.interface,
        m.backend,
        m.listen_port,
        m.mtu,
        if m.up { "" } else { ", down" }
    ));
    let now = model::now_ms();
    for p in &m.peers {
        let hs = match p.last_handshake_ms {
            0 => "never".to_string(),
            at => format!("{}s ago", (now - at).max(0) / 1000),
        };
        t.line(format_args!(
            "  peer {} {} handshake {hs}, rx {} tx {} ({})",
            short_id(&p.node_id),
            if p.endpoint.is_empty() { "-" } else { &p.endpoint },
            format_size(p.rx_bytes as i64),
            format_size(p.tx_bytes as i64),
            p.allowed_ips.join(",")
        ));
    }
}

fn dataplane_text(t: &mut Text, dp: &Dataplane) {
    let d = match dp {
        Err(e) => {
            t.line(format_args!("Data plane:   unknown ({e})"));
            return;
        }
        Ok(d) if !d.enabled => {
            t.line("Data plane:   none (--dataplane none: no service load balancing)");
            return;
        }
        Ok(d) => d,
    };
    t.line(format_args!(
        "Data plane:   eBPF, {} services, {} backends, {} connections, {} drops, socket destroy {}",
        d.services,
        d.backends,
        d.connections,
        d.drops,
        if d.sock_destroy { "on" } else { "unsupported" }
    ));
    t.line("  Programs:");
    for p in &d.programs {
        t.line(format_args!(
            "    {:<16} {}{}",
            p.program,
            p.target,
            if p.adopted { " (adopted)" } else { "" }
        ));
    }
    t.line("  Maps:");
    for m in &d.maps {
        let pct = if m.capacity > 0 {
            m.entries as f64 * 100.0 / m.capacity as f64
        } else {
            0.0
        };
        t.line(format_args!(
            "    {:<16} {:>8} / {:<8} {pct:5.1}%",
            m.name, m.entries, m.capacity
        ));
    }
    for e in &d.errors {
        t.line(format_args!("  Error: {e}"));
    }
}
