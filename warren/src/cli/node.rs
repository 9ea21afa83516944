//! `warren node ...`: list, inspect (with the node's own view of its data plane),
//! update availability and labels, remove.

use super::args::{Format, NodeCmd};
use super::client::{call, Client};
use super::render::nodes::NodeView;
use super::render::{self, emit, json, line};
use crate::model::{self, parse_key_value};
use crate::wire::convert;
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use warren_proto::v1 as pb;

pub async fn run(c: &mut Client, cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Ls { format, quiet } => {
            let self_id = call(c.get_cluster_info(pb::ClusterInfoRequest {})).await?.node_id;
            let nodes = call(c.list_nodes(pb::ListNodesRequest {})).await?;
            let views: Vec<NodeView> = nodes
                .nodes
                .into_iter()
                .map(|n| NodeView::from_pb(n, &self_id))
                .collect();
            if quiet {
                for n in views {
                    line(&n.node.id)?;
                }
            } else if format == Format::Json {
                emit(&json(&views)?)?;
            } else {
                emit(&render::nodes::nodes_table(&views))?;
            }
        }
        NodeCmd::Inspect { node, format } => {
            let self_id = call(c.get_cluster_info(pb::ClusterInfoRequest {})).await?.node_id;
            // `self`, as in Swarm: the node this CLI talks to.
            let node = if node == "self" { self_id.clone() } else { node };
            let n = NodeView::from_pb(
                call(c.get_node(pb::GetNodeRequest { node: node.clone() })).await?,
                &self_id,
            );
            // The data plane is asked of the node itself; a node that cannot answer
            // (down, unreachable) still gets the rest of its inspect.
            let dp = c
                .get_node_dataplane(pb::GetNodeRequest { node })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string());
            if format == Format::Json {
                emit(&render::nodes::node_json(&n, &dp)?)?;
            } else {
                emit(&render::nodes::node_text(&n, &dp))?;
            }
        }
        NodeCmd::Update {
            node,
            availability,
            label_add,
            label_rm,
            rotate_key,
            ingress,
        } => {
            let availability = availability
                .map(|a| model::Availability::parse("--availability", &a).map_err(|e| anyhow!("{e}")))
                .transpose()?
                .map(|a| convert::availability_to_pb(a) as i32);
            let mut add = HashMap::new();
            for l in &label_add {
                let (k, val) = parse_key_value("--label-add", l).map_err(|e| anyhow!("{e}"))?;
                add.insert(k, val);
            }
            if availability.is_none()
                && add.is_empty()
                && label_rm.is_empty()
                && !rotate_key
                && ingress.ingress.is_none()
            {
                bail!("nothing to update: pass --availability, --label-add, --label-rm, --rotate-key or --ingress");
            }
            let ingress_ports = match (ingress.ingress_http_port, ingress.ingress_https_port) {
                (None, None) => None,
                (h, s) => Some(pb::IngressPorts {
                    // 0: as before (or the default).
                    http_port: h.unwrap_or(0).into(),
                    https_port: s.unwrap_or(0).into(),
                }),
            };
            call(c.update_node(pb::UpdateNodeRequest {
                node: node.clone(),
                availability,
                label_add: add,
                label_rm,
                rotate_key,
                ingress: ingress.ingress,
                ingress_ports,
            }))
            .await?;
            line(&node)?;
        }
        NodeCmd::Rm { nodes, force } => {
            let mut printed = Ok(());
            for n in nodes {
                call(c.remove_node(pb::RemoveNodeRequest { node: n.clone(), force })).await?;
                printed = printed.and(line(&n));
            }
            printed?;
        }
    }
    Ok(())
}

/// Node names by ID, for the NODE column of task lists.
pub async fn names(c: &mut Client) -> Result<HashMap<String, String>> {
    let nodes = call(c.list_nodes(pb::ListNodesRequest {})).await?;
    Ok(nodes.nodes.into_iter().map(|n| (n.id, n.name)).collect())
}
