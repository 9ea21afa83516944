//! Rolling updates from the CLI: the `--update-*` and `--rollback-*` flags onto a
//! spec, and following an update until it completes, pauses or rolls back (what
//! `service update` and `service rollback` do without `--detach`).

use super::args::RolloutArgs;
use super::client::{call, Client};
use super::render::line;
use crate::model::{self, CanarySteps, FailureAction, UpdateConfig, UpdateOrder, UpdateState, UpdateStrategy};
use anyhow::{anyhow, bail, Result};
use std::time::Duration;
use warren_proto::v1 as pb;

struct Flags<'a> {
    prefix: &'static str,
    parallelism: Option<u64>,
    delay: &'a Option<String>,
    failure_action: &'a Option<String>,
    monitor: &'a Option<String>,
    max_failure_ratio: Option<f64>,
    order: &'a Option<String>,
}

fn apply_one(c: &mut UpdateConfig, f: Flags<'_>) -> Result<()> {
    let field = |name: &str| format!("--{}-{name}", f.prefix);
    let v = |e: model::ValidationError| anyhow!("{e}");
    if let Some(n) = f.parallelism {
        c.parallelism = n;
    }
    if let Some(d) = f.delay {
        c.delay_ms = model::parse_duration(&field("delay"), d).map_err(v)?.as_millis() as u64;
    }
    if let Some(a) = f.failure_action {
        c.failure_action = FailureAction::parse(&field("failure-action"), a).map_err(v)?;
    }
    if let Some(d) = f.monitor {
        c.monitor_ms = model::parse_duration(&field("monitor"), d).map_err(v)?.as_millis() as u64;
    }
    if let Some(r) = f.max_failure_ratio {
        c.max_failure_ratio = r;
    }
    if let Some(o) = f.order {
        c.order = Some(UpdateOrder::parse(&field("order"), o).map_err(v)?);
    }
    Ok(())
}

/// The release flags (blue-green and canary steps) onto the update config.
fn apply_release(c: &mut UpdateConfig, a: &RolloutArgs) -> Result<()> {
    let v = |e: model::ValidationError| anyhow!("{e}");
    let ms =
        |field: &str, d: &str| -> Result<u64> { Ok(model::parse_duration(field, d).map_err(v)?.as_millis() as u64) };
    if a.canary_steps.is_some() && a.update_strategy.as_deref().is_some_and(|s| s != "canary") {
        bail!("--canary-steps: needs --update-strategy canary (or no --update-strategy)");
    }
    if let Some(steps) = &a.canary_steps {
        c.canary_steps = CanarySteps::parse("--canary-steps", steps).map_err(v)?;
        c.strategy = UpdateStrategy::Canary;
    }
    if let Some(s) = &a.update_strategy {
        c.strategy = UpdateStrategy::parse("--update-strategy", s).map_err(v)?;
    }
    if let Some(d) = &a.blue_green_hold {
        c.blue_green_hold_ms = ms("--blue-green-hold", d)?;
    }
    if let Some(d) = &a.canary_interval {
        c.canary_interval_ms = ms("--canary-interval", d)?;
    }
    if let Some(r) = a.canary_max_failure_ratio {
        c.canary_max_failure_ratio = r;
    }
    Ok(())
}

/// Applies the flags that were given; the spec's `validate` checks the result.
pub fn apply(spec: &mut model::ServiceSpec, a: &RolloutArgs) -> Result<()> {
    apply_release(&mut spec.update, a)?;
    apply_one(
        &mut spec.update,
        Flags {
            prefix: "update",
            parallelism: a.update_parallelism,
            delay: &a.update_delay,
            failure_action: &a.update_failure_action,
            monitor: &a.update_monitor,
            max_failure_ratio: a.update_max_failure_ratio,
            order: &a.update_order,
        },
    )?;
    apply_one(
        &mut spec.rollback,
        Flags {
            prefix: "rollback",
            parallelism: a.rollback_parallelism,
            delay: &a.rollback_delay,
            failure_action: &a.rollback_failure_action,
            monitor: &a.rollback_monitor,
            max_failure_ratio: a.rollback_max_failure_ratio,
            order: &a.rollback_order,
        },
    )
}

fn state_of(u: &pb::UpdateStatus) -> Option<UpdateState> {
    [
        UpdateState::Updating,
        UpdateState::Paused,
        UpdateState::Completed,
        UpdateState::RollingBack,
        UpdateState::RollbackPaused,
        UpdateState::RollbackCompleted,
    ]
    .into_iter()
    .find(|s| s.as_str() == u.state)
}

/// Follows the update that `svc` (as the write answered) started, printing its
/// progress, until it completes (Ok), or pauses or is rolled back (an error saying
/// why). `rollback` is true when the operator asked for the rollback.
pub async fn follow(c: &mut Client, svc: pb::Service, rollback: bool) -> Result<()> {
    let name = svc.name.clone();
    // A blue-green or canary release runs as the canary's version until promoted.
    let release_version = svc
        .canary
        .as_ref()
        .filter(|c| !c.release_strategy.is_empty())
        .map(|c| c.spec_version);
    let Some(first) = svc
        .update_status
        .filter(|u| u.spec_version == svc.spec_version || Some(u.spec_version) == release_version)
    else {
        return Ok(());
    };
    let target = first.spec_version;
    let mut last = String::new();
    // Output lost to a closed pipe does not stop the following.
    let mut printed = Ok(());
    loop {
        let svc = call(c.get_service(pb::GetServiceRequest {
            service: svc.id.clone(),
        }))
        .await?;
        // A rollback of this update is a newer spec version; anything else
        // newer is someone else's change.
        let Some(u) = svc.update_status.filter(|u| u.spec_version >= target) else {
            bail!("{name}: the update is no longer recorded");
        };
        let state = state_of(&u).ok_or_else(|| anyhow!("{name}: unknown update state {:?}", u.state))?;
        // Blue-green returns once switched: the hold is the operator's time to
        // promote or roll back.
        let switched = svc
            .canary
            .as_ref()
            .is_some_and(|c| c.release_strategy == "blue-green" && c.weight == 100);
        if u.spec_version > target
            && !matches!(
                state,
                UpdateState::RollingBack | UpdateState::RollbackPaused | UpdateState::RollbackCompleted
            )
        {
            bail!("{name}: a newer update replaced this one");
        }
        let now = if release_version.is_some() {
            format!("{name}: {}: {}", u.state, u.message)
        } else {
            format!("{name}: {}: {}/{} updated", u.state, u.updated, u.total)
        };
        if now != last {
            printed = printed.and(line(&now));
            last = now;
        }
        match state {
            UpdateState::Completed => return printed,
            UpdateState::Updating if switched => return printed,
            UpdateState::RollbackCompleted if rollback => return printed,
            UpdateState::RollbackCompleted | UpdateState::Paused | UpdateState::RollbackPaused => {
                bail!("{name}: {}", u.message)
            }
            UpdateState::Updating | UpdateState::RollingBack => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
