//! The API's config and declarative calls: create, list and remove config objects,
//! and `ApplyManifest` (`warren apply -f`, `warren stack deploy`, `stack rm`): the
//! manifest's diff against the state (`manager::plan`), committed as one
//! `Command::Apply` unless it is a dry run. Secrets are sealed here, as
//! `CreateSecret` seals them, and never returned.

use super::common::{read, write};
use crate::manager::plan::{plan, Minter};
use crate::manager::ManagerCtx;
use crate::model::{self, digest_of, new_id, now_ms, validate_name};
use crate::store::{Command, Rules};
use crate::wire::convert;
use crate::wire::status::{apply_status, invalid};
use tonic::Status;
use warren_proto::v1 as pb;

/// Largest config accepted, as in Swarm.
const MAX_CONFIG_BYTES: usize = 500 * 1024;

pub(super) async fn create_config(ctx: &ManagerCtx, req: pb::CreateConfigRequest) -> Result<pb::ConfigObject, Status> {
    validate_name("name", &req.name).map_err(invalid)?;
    if req.data.is_empty() {
        return Err(Status::invalid_argument("data: a config cannot be empty"));
    }
    if req.data.len() > MAX_CONFIG_BYTES {
        return Err(Status::invalid_argument(format!(
            "data: {} bytes is more than the limit of {MAX_CONFIG_BYTES}",
            req.data.len()
        )));
    }
    let config = model::ConfigObject {
        id: new_id(),
        name: req.name,
        labels: req.labels.into_iter().collect(),
        digest: digest_of(&req.data),
        data: req.data,
        created_ms: now_ms(),
    };
    let id = config.id.clone();
    write(ctx, Command::CreateConfig { config }).await?;
    read(ctx, |s| Ok(convert::config_to_pb(s.config(&id)?)))
}

pub(super) fn list_configs(ctx: &ManagerCtx) -> pb::ListConfigsResponse {
    let mut configs: Vec<pb::ConfigObject> = ctx
        .store
        .read(|s| s.configs.values().map(convert::config_to_pb).collect());
    configs.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListConfigsResponse { configs }
}

pub(super) async fn remove_config(ctx: &ManagerCtx, req: pb::RemoveConfigRequest) -> Result<pb::Empty, Status> {
    let key = req.config;
    let id = read(ctx, |s| Ok(s.config(&key)?.id.clone()))?;
    write(
        ctx,
        Command::RemoveConfig {
            id,
            rules: Rules::CURRENT,
        },
    )
    .await?;
    Ok(pb::Empty {})
}

struct Live<'a> {
    ctx: &'a ManagerCtx,
    now: i64,
}

impl Minter for Live<'_> {
    fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        self.ctx.secrets_key.seal(plaintext)
    }

    fn new_id(&mut self) -> String {
        new_id()
    }

    fn now_ms(&self) -> i64 {
        self.now
    }
}

pub(super) async fn apply_manifest(
    ctx: &ManagerCtx,
    req: pb::ApplyManifestRequest,
) -> Result<pb::ApplyManifestReply, Status> {
    let (dry_run, prune) = (req.dry_run, req.prune);
    let manifest = convert::manifest_from_pb(req).map_err(invalid)?;
    let mut minter = Live { ctx, now: now_ms() };
    let planned = ctx
        .store
        .read(|s| plan(s, &manifest, prune, &mut minter))
        .map_err(apply_status)?;
    let changes = planned
        .diff
        .iter()
        .map(|d| pb::ApplyChange {
            kind: d.kind.as_str().to_string(),
            name: d.name.clone(),
            action: d.action.as_str().to_string(),
            field: d.field.clone(),
            changed: d.changed.clone(),
        })
        .collect();
    let apply = !dry_run && !planned.is_noop();
    if apply {
        tracing::info!(
            stack = manifest.stack.as_deref().unwrap_or(""),
            steps = planned.steps.len(),
            "applying a manifest"
        );
        write(ctx, Command::Apply { steps: planned.steps }).await?;
    }
    Ok(pb::ApplyManifestReply {
        changes,
        applied: apply,
    })
}
