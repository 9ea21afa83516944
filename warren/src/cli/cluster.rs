//! `warren cluster join-token`, `warren cluster info` and `warren cluster backup`:
//! the client side of the cluster noun (init, restore, join and leave run the
//! daemon, see `cli::run`), and the backup passphrase both backup and restore read.

use super::args::{Format, PassphraseArgs, RoleArg};
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

/// The environment variable a backup passphrase comes from without --passphrase-file.
pub const PASSPHRASE_ENV: &str = "WARREN_BACKUP_PASSPHRASE";

/// The passphrase of `cluster backup` and `cluster restore`: the file's content
/// (less one trailing newline), or else the environment's; never empty.
pub fn passphrase(a: &PassphraseArgs) -> Result<Vec<u8>> {
    let p = match &a.passphrase_file {
        Some(path) => {
            let mut b =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("--passphrase-file {}: {e}", path.display()))?;
            if b.ends_with(b"\n") {
                b.pop();
                if b.ends_with(b"\r") {
                    b.pop();
                }
            }
            if b.is_empty() {
                anyhow::bail!("--passphrase-file {}: the passphrase is empty", path.display());
            }
            b
        }
        None => match std::env::var_os(PASSPHRASE_ENV) {
            Some(v) if !v.is_empty() => std::os::unix::ffi::OsStringExt::into_vec(v),
            Some(_) => anyhow::bail!("{PASSPHRASE_ENV}: the passphrase is empty"),
            None => anyhow::bail!("a backup passphrase is required: --passphrase-file PATH or {PASSPHRASE_ENV}"),
        },
    };
    Ok(p)
}

pub async fn backup(c: &mut Client, file: &std::path::Path, pass: &PassphraseArgs) -> Result<()> {
    let passphrase = passphrase(pass)?;
    let r = call(c.backup_cluster(pb::BackupClusterRequest { passphrase })).await?;
    write_private(file, &r.file).map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
    emit(&format!(
        "Backed up cluster {} at index {} ({} services, {} secrets, {} configs, {} volumes, {} nodes) to {} ({} bytes).\n",
        r.cluster_id,
        r.applied_index,
        r.services,
        r.secrets,
        r.configs,
        r.volumes,
        r.nodes,
        file.display(),
        r.file.len()
    ))
}

/// Writes `bytes` to `path` whole or not at all: a temporary file beside it, mode
/// 0600, synced, then renamed over it.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
