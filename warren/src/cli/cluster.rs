//! `warren cluster join-token` and `warren cluster info`: the client side of the
//! cluster noun (init, join and leave run the daemon, see `cli::run`).

use super::args::{Format, RoleArg};
use super::client::{call, Client};
use super::render::cluster::ClusterView;
use super::render::{emit, json, line};
use crate::model::NodeRole;
use crate::wire::convert;
use anyhow::Result;
use warren_proto::v1 as pb;

pub async fn join_token(c: &mut Client, role: RoleArg, rotate: bool, quiet: bool) -> Result<()> {
    let role = match role {
        RoleArg::Worker => NodeRole::Worker,
        RoleArg::Manager => NodeRole::Manager,
    };
    let t = call(c.get_join_token(pb::GetJoinTokenRequest {
        role: convert::role_to_pb(role) as i32,
        rotate,
    }))
    .await?;
    if quiet {
        return line(&t.token);
    }
    let mut text = String::new();
    if rotate {
        text.push_str(&format!("Successfully rotated the {} join token.\n\n", role.as_str()));
    }
    text.push_str(&format!(
        "To add a {} to this cluster, run the following command:\n\n",
        role.as_str()
    ));
    let manager = t.managers.first().cloned().unwrap_or_else(|| "MANAGER_IP:2377".into());
    text.push_str(&format!("    warren cluster join --token {} {manager}\n\n", t.token));
    emit(&text)
}

pub async fn info(c: &mut Client, format: Format) -> Result<()> {
    let view = ClusterView::from_pb(call(c.get_cluster_info(pb::ClusterInfoRequest {})).await?);
    if format == Format::Json {
        emit(&json(&view)?)
    } else {
        emit(&view.text())
    }
}
