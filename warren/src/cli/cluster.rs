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

pub async fn join_token(
    c: &mut Client,
    role: RoleArg,
    rotate: bool,
    expire: Option<std::time::Duration>,
    quiet: bool,
) -> Result<()> {
    if expire.is_some_and(|d| d.is_zero()) {
        anyhow::bail!("--expire: must be longer than 0s");
    }
    let rotate = rotate || expire.is_some();
    let role = match role {
        RoleArg::Worker => NodeRole::Worker,
        RoleArg::Manager => NodeRole::Manager,
    };
    let t = call(c.get_join_token(pb::GetJoinTokenRequest {
        role: convert::role_to_pb(role) as i32,
        rotate,
        expire_ms: expire.map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64),
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
    if t.expires_ms > 0 {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.expires_ms as u64);
        text.push_str(&format!(
            "The token expires at {} UTC.\n\n",
            humantime::format_rfc3339_seconds(at)
        ));
    }
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
