//! Rolling updates: the steps the updater proposes (admit the next batch, report
//! progress, complete) and what they imply, decided here so that every manager
//! agrees: a progress report with more failures than the update tolerates pauses
//! it or rolls it back, per its failure action. Starting an update is
//! `update_service`'s, returning to the previous spec `restore_previous`'s.

use super::change;
use crate::model::{FailureAction, UpdateState, UpdateStep};
use crate::store::state::{Action, Change, ObjectKind, State};
use crate::store::ApplyError;

impl State {
    pub(super) fn update_step(
        &mut self,
        id: &str,
        spec_version: u64,
        step: &UpdateStep,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_mut(id)?;
        let name = svc.name.clone();
        let has_previous = svc.previous_spec.is_some();
        let status = svc
            .update_status
            .as_mut()
            .filter(|u| u.spec_version == spec_version)
            .ok_or_else(|| {
                ApplyError::Invalid(format!(
                    "service {name:?} is not updating to spec version {spec_version}"
                ))
            })?;
        let stepping = |what: &str, state: UpdateState| {
            ApplyError::Invalid(format!(
                "service {name:?}: cannot {what}: the update is {}",
                state.as_str()
            ))
        };
        let mut roll_back = None;
        match step {
            UpdateStep::Admit { slots } => {
                if !status.state.is_active() {
                    return Err(stepping("admit a batch", status.state));
                }
                let new: Vec<&String> = slots.iter().filter(|s| !status.admitted.contains(s)).collect();
                if new.is_empty() {
                    return Err(ApplyError::Invalid(format!(
                        "service {name:?}: every slot of the batch is already admitted"
                    )));
                }
                status.admitted.extend(new.into_iter().cloned());
                status.batch_done_ms = 0;
            }
            UpdateStep::Progress {
                updated,
                total,
                failures,
                batch_done,
                last_failure,
            } => {
                status.updated = *updated;
                status.total = *total;
                status.failures = *failures;
                if *batch_done && status.batch_done_ms == 0 {
                    status.batch_done_ms = at_ms;
                }
                let tolerated = (status.config.max_failure_ratio * *total as f64).floor() as u64;
                if status.state.is_active() && *failures > tolerated {
                    let reason = format!(
                        "{failures} of {total} new tasks failed (at most {tolerated} tolerated): {last_failure}"
                    );
                    match (status.config.failure_action, status.state) {
                        (FailureAction::Continue, _) => {}
                        (FailureAction::Rollback, UpdateState::Updating) if has_previous => roll_back = Some(reason),
                        (_, UpdateState::RollingBack) => {
                            status.state = UpdateState::RollbackPaused;
                            status.message = format!("rollback paused: {reason}");
                        }
                        _ => {
                            status.state = UpdateState::Paused;
                            status.message = format!("update paused: {reason}");
                        }
                    }
                }
            }
            UpdateStep::Complete => {
                if !status.state.is_active() || status.updated < status.total {
                    return Err(stepping("complete", status.state));
                }
                let (state, message) = match status.state {
                    // Keep saying why it rolled back.
                    UpdateState::RollingBack => (
                        UpdateState::RollbackCompleted,
                        status.message.replacen("rolling back: ", "rolled back: ", 1),
                    ),
                    _ => (UpdateState::Completed, "update completed".to_string()),
                };
                status.state = state;
                status.message = message;
                status.completed_ms = at_ms;
                status.admitted.clear();
            }
        }
        // Not a change of what the user wrote: the version that guards their
        // writes stays, so that an update in progress does not make them conflict.
        changes.push(change(ObjectKind::Service, Action::Updated, id, &name));
        if let (Some(reason), Some(previous)) = (roll_back, svc.previous_spec.clone()) {
            self.restore_previous(id, previous, format!("rolling back: {reason}"), at_ms, changes)?;
        }
        Ok(())
    }
}
