//! The API's secret and volume calls: create (secrets sealed with the cluster's
//! key before they enter the log), list and remove — refused while a service or a
//! stopping task still uses the object.

use super::common::{read, write};
use crate::manager::ManagerCtx;
use crate::model::{self, new_id, now_ms, validate_name};
use crate::store::{Command, Rules};
use crate::wire::convert;
use crate::wire::status::invalid;
use sha2::Digest;
use tonic::Status;
use warren_proto::v1 as pb;

/// Largest secret accepted, as in Swarm.
const MAX_SECRET_BYTES: usize = 500 * 1024;

pub(super) async fn create_secret(ctx: &ManagerCtx, req: pb::CreateSecretRequest) -> Result<pb::Secret, Status> {
    validate_name("name", &req.name).map_err(invalid)?;
    if req.data.is_empty() {
        return Err(Status::invalid_argument("data: a secret cannot be empty"));
    }
    if req.data.len() > MAX_SECRET_BYTES {
        return Err(Status::invalid_argument(format!(
            "data: {} bytes is more than the limit of {MAX_SECRET_BYTES}",
            req.data.len()
        )));
    }
    let secret = model::Secret {
        id: new_id(),
        name: req.name,
        labels: req.labels.into_iter().collect(),
        sealed: ctx.secrets_key.seal(&req.data),
        digest: hex::encode(sha2::Sha256::digest(&req.data)),
        created_ms: now_ms(),
    };
    let id = secret.id.clone();
    write(ctx, Command::CreateSecret { secret }).await?;
    read(ctx, |s| Ok(convert::secret_to_pb(s.secret(&id)?)))
}

pub(super) fn list_secrets(ctx: &ManagerCtx) -> pb::ListSecretsResponse {
    let mut secrets: Vec<pb::Secret> = ctx
        .store
        .read(|s| s.secrets.values().map(convert::secret_to_pb).collect());
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListSecretsResponse { secrets }
}

pub(super) async fn remove_secret(ctx: &ManagerCtx, req: pb::RemoveSecretRequest) -> Result<pb::Empty, Status> {
    let key = req.secret;
    let id = read(ctx, |s| Ok(s.secret(&key)?.id.clone()))?;
    write(
        ctx,
        Command::RemoveSecret {
            id,
            rules: Rules::CURRENT,
        },
    )
    .await?;
    Ok(pb::Empty {})
}

pub(super) async fn create_volume(ctx: &ManagerCtx, req: pb::CreateVolumeRequest) -> Result<pb::Volume, Status> {
    validate_name("name", &req.name).map_err(invalid)?;
    let driver = if req.driver.is_empty() {
        "local".to_string()
    } else {
        req.driver
    };
    if driver != "local" {
        return Err(Status::invalid_argument(format!(
            "driver: unknown volume driver {driver:?} (supported: local)"
        )));
    }
    let volume = model::Volume {
        id: new_id(),
        name: req.name,
        driver,
        node_id: None,
        labels: req.labels.into_iter().collect(),
        options: req.options.into_iter().collect(),
        created_ms: now_ms(),
    };
    let id = volume.id.clone();
    write(ctx, Command::CreateVolume { volume }).await?;
    read(ctx, |s| Ok(convert::volume_to_pb(s.volume(&id)?)))
}

pub(super) fn list_volumes(ctx: &ManagerCtx) -> pb::ListVolumesResponse {
    let mut volumes: Vec<pb::Volume> = ctx
        .store
        .read(|s| s.volumes.values().map(convert::volume_to_pb).collect());
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListVolumesResponse { volumes }
}

pub(super) async fn remove_volume(ctx: &ManagerCtx, req: pb::RemoveVolumeRequest) -> Result<pb::Empty, Status> {
    let key = req.volume;
    let id = read(ctx, |s| Ok(s.volume(&key)?.id.clone()))?;
    write(
        ctx,
        Command::RemoveVolume {
            id,
            rules: Rules::CURRENT,
        },
    )
    .await?;
    Ok(pb::Empty {})
}
