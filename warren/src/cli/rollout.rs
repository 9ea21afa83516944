//! Rolling updates from the CLI: the `--update-*` and `--rollback-*` flags onto a
//! spec, and following an update until it completes, pauses or rolls back (what
//! `service update` and `service rollback` do without `--detach`).

use super::args::RolloutArgs;
use super::client::{call, Client};
use super::render::line;
use crate::model::{self, FailureAction, UpdateConfig, UpdateOrder, UpdateState};
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

/// Applies the flags that were given; the spec's `validate` checks the result.
pub fn apply(spec: &mut model::ServiceSpec, a: &RolloutArgs) -> Result<()> {
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
    let Some(first) = svc.update_status.filter(|u| u.spec_version == svc.spec_version) else {
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
        if u.spec_version > target
            && !matches!(
                state,
                UpdateState::RollingBack | UpdateState::RollbackPaused | UpdateState::RollbackCompleted
            )
        {
            bail!("{name}: a newer update replaced this one");
        }
        let now = format!("{name}: {}: {}/{} updated", u.state, u.updated, u.total);
        if now != last {
            printed = printed.and(line(&now));
            last = now;
        }
        match state {
            UpdateState::Completed => return printed,
            UpdateState::RollbackCompleted if rollback => return printed,
            UpdateState::RollbackCompleted | UpdateState::Paused | UpdateState::RollbackPaused => {
                bail!("{name}: {}", u.message)
            }
            UpdateState::Updating | UpdateState::RollingBack => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
