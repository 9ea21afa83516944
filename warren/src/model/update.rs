//! Rolling updates: how a service's tasks are replaced when its spec changes
//! (`UpdateConfig`, Swarm's `--update-*` and `--rollback-*` flags) and where an
//! update stands (`UpdateStatus`, kept in the replicated state so that a new leader
//! resumes it). Deciding the next step is the manager's updater; the transitions
//! are applied by the state machine.

use super::ValidationError;
use serde::{Deserialize, Serialize};

/// What an update does when too many of its new tasks fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

impl FailureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        match s {
            "pause" => Ok(FailureAction::Pause),
            "continue" => Ok(FailureAction::Continue),
            "rollback" => Ok(FailureAction::Rollback),
            _ => Err(ValidationError::new(
                field,
                format!("invalid failure action {s:?}: expected pause, continue or rollback"),
            )),
        }
    }
}

/// Whether a slot's new task starts before its old one is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOrder {
    StartFirst,
    StopFirst,
}

impl UpdateOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOrder::StartFirst => "start-first",
            UpdateOrder::StopFirst => "stop-first",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        match s {
            "start-first" => Ok(UpdateOrder::StartFirst),
            "stop-first" => Ok(UpdateOrder::StopFirst),
            _ => Err(ValidationError::new(
                field,
                format!("invalid update order {s:?}: expected start-first or stop-first"),
            )),
        }
    }
}

/// How an update (or a rollback) replaces tasks. The defaults are Swarm's, except
/// the order (start-first, so that a slot never goes without a task).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfig {
    /// Slots replaced at once; 0 replaces all of them at once.
    pub parallelism: u64,
    /// Wait between one batch being up and the next starting.
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    /// How long after it starts a new task's failure still counts against the update.
    pub monitor_ms: u64,
    /// Failed new tasks tolerated, as a share of the service's tasks (0 to 1).
    pub max_failure_ratio: f64,
    /// None: start-first, or stop-first for a service that mounts a local volume.
    pub order: Option<UpdateOrder>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio: 0.0,
            order: None,
        }
    }
}

impl UpdateConfig {
    /// `field` is the flag prefix: `update` or `rollback`.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if !(0.0..=1.0).contains(&self.max_failure_ratio) {
            return Err(ValidationError::new(
                format!("{field}-max-failure-ratio"),
                format!("{} is not between 0 and 1", self.max_failure_ratio),
            ));
        }
        if field == "rollback" && self.failure_action == FailureAction::Rollback {
            return Err(ValidationError::new(
                "rollback-failure-action",
                "a rollback cannot roll back: expected pause or continue",
            ));
        }
        Ok(())
    }

    /// The order in effect for a service: two tasks of one slot must not share a
    /// local volume, so those services stop first unless told otherwise.
    pub fn order_for(&self, spec: &super::ServiceSpec) -> UpdateOrder {
        self.order.unwrap_or(if spec.volume_names().next().is_some() {
            UpdateOrder::StopFirst
        } else {
            UpdateOrder::StartFirst
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollingBack,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollingBack => "rolling back",
            UpdateState::RollbackPaused => "rollback paused",
            UpdateState::RollbackCompleted => "rollback completed",
        }
    }

    /// The updater is replacing tasks (not paused, not done).
    pub fn is_active(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollingBack)
    }

    /// Outdated tasks are replaced only as the updater admits their slots.
    pub fn governs(self) -> bool {
        matches!(
            self,
            UpdateState::Updating | UpdateState::RollingBack | UpdateState::Paused | UpdateState::RollbackPaused
        )
    }
}

/// Where the update to the service's current spec stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    /// The spec version being rolled out; a newer spec starts a new update.
    pub spec_version: u64,
    /// The config this update runs with (the update or the rollback config).
    pub config: UpdateConfig,
    /// Slots (replica numbers, or node IDs of a global service) allowed to be replaced.
    #[serde(default)]
    pub admitted: Vec<String>,
    /// Slots running the new version, of `total`.
    #[serde(default)]
    pub updated: u64,
    #[serde(default)]
    pub total: u64,
    /// New tasks that failed during this update.
    #[serde(default)]
    pub failures: u64,
    /// When the last admitted batch was all up (the delay counts from there); 0
    /// while a batch is being replaced.
    #[serde(default)]
    pub batch_done_ms: i64,
    pub started_ms: i64,
    #[serde(default)]
    pub completed_ms: i64,
    /// Why it paused or rolled back, or what it last did.
    #[serde(default)]
    pub message: String,
}

impl UpdateStatus {
    pub fn new(state: UpdateState, spec_version: u64, config: UpdateConfig, at_ms: i64, message: String) -> Self {
        UpdateStatus {
            state,
            spec_version,
            config,
            admitted: vec![],
            updated: 0,
            total: 0,
            failures: 0,
            batch_done_ms: at_ms,
            started_ms: at_ms,
            completed_ms: 0,
            message,
        }
    }

    pub fn progress(&self) -> String {
        format!("{}/{} updated", self.updated, self.total)
    }
}

/// One step of an update, as the updater proposes it and the state machine checks it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UpdateStep {
    /// Let these slots be replaced (the next batch).
    Admit { slots: Vec<String> },
    /// New counts of updated slots and failures; `batch_done` when every admitted
    /// slot is up.
    Progress {
        updated: u64,
        total: u64,
        failures: u64,
        batch_done: bool,
        /// What the most recent failure was, for the pause or rollback reason.
        last_failure: String,
    },
    /// Every slot runs the new version and the monitor period has passed.
    Complete,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_specs_load_with_the_defaults() {
        let c: UpdateConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, UpdateConfig::default());
        let c: UpdateConfig = serde_json::from_str(r#"{"parallelism":2}"#).unwrap();
        assert_eq!((c.parallelism, c.monitor_ms), (2, 5_000));
    }

    #[test]
    fn local_volumes_stop_first() {
        let mut spec = super::super::ServiceSpec::default();
        assert_eq!(UpdateConfig::default().order_for(&spec), UpdateOrder::StartFirst);
        spec.mounts.push(super::super::Mount {
            kind: super::super::MountKind::Volume,
            source: "data".into(),
            target: "/data".into(),
            ..Default::default()
        });
        assert_eq!(UpdateConfig::default().order_for(&spec), UpdateOrder::StopFirst);
        let c = UpdateConfig {
            order: Some(UpdateOrder::StartFirst),
            ..Default::default()
        };
        assert_eq!(c.order_for(&spec), UpdateOrder::StartFirst);
    }

    #[test]
    fn bad_configs_name_their_flag() {
        let c = UpdateConfig {
            max_failure_ratio: 1.5,
            ..Default::default()
        };
        assert_eq!(c.validate("rollback").unwrap_err().field, "rollback-max-failure-ratio");
        let c = UpdateConfig {
            failure_action: FailureAction::Rollback,
            ..Default::default()
        };
        c.validate("update").unwrap();
        assert_eq!(c.validate("rollback").unwrap_err().field, "rollback-failure-action");
    }
}
