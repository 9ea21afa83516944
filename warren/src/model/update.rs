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

/// How a new spec reaches the tasks: slot by slot (Swarm's rolling update), the
/// whole new version beside the old one and one switch of all new connections
/// (blue-green), or a canary whose share of new connections grows step by step
/// while its data-plane counters are compared with the stable version's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateStrategy {
    #[default]
    Rolling,
    BlueGreen,
    Canary,
}

impl UpdateStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStrategy::Rolling => "rolling",
            UpdateStrategy::BlueGreen => "blue-green",
            UpdateStrategy::Canary => "canary",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        match s {
            "rolling" => Ok(UpdateStrategy::Rolling),
            "blue-green" => Ok(UpdateStrategy::BlueGreen),
            "canary" => Ok(UpdateStrategy::Canary),
            _ => Err(ValidationError::new(
                field,
                format!("invalid update strategy {s:?}: expected rolling, blue-green or canary"),
            )),
        }
    }
}

/// The canary weights (percent of new connections) a canary release steps
/// through, rising, the last one 100. Fixed capacity so that `UpdateConfig` stays
/// a plain copyable value; serialized as a list.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<u8>", try_from = "Vec<u8>")]
pub struct CanarySteps {
    weights: [u8; CanarySteps::MAX],
    len: u8,
}

impl CanarySteps {
    pub const MAX: usize = 10;

    pub fn as_slice(&self) -> &[u8] {
        &self.weights[..self.len as usize]
    }

    /// `10,25,50,100`: each between 1 and 100, rising, ending at 100.
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let weights = s
            .split(',')
            .map(|w| {
                w.trim()
                    .parse::<u8>()
                    .map_err(|_| ValidationError::new(field, format!("{w:?} is not a percentage")))
            })
            .collect::<Result<Vec<u8>, _>>()?;
        Self::from_weights(field, &weights)
    }

    pub fn from_weights(field: &str, weights: &[u8]) -> Result<Self, ValidationError> {
        if weights.is_empty() || weights.len() > Self::MAX {
            return Err(ValidationError::new(
                field,
                format!("expected 1 to {} steps, got {}", Self::MAX, weights.len()),
            ));
        }
        if weights.iter().any(|w| *w == 0 || *w > 100) {
            return Err(ValidationError::new(field, "each step is a percentage from 1 to 100"));
        }
        if weights.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ValidationError::new(field, "steps must rise"));
        }
        if weights.last() != Some(&100) {
            return Err(ValidationError::new(field, "the last step must be 100"));
        }
        let mut out = CanarySteps {
            weights: [0; Self::MAX],
            len: weights.len() as u8,
        };
        out.weights[..weights.len()].copy_from_slice(weights);
        Ok(out)
    }
}

impl Default for CanarySteps {
    fn default() -> Self {
        Self::from_weights("canary-steps", &[10, 25, 50, 100]).expect("valid default steps")
    }
}

impl std::fmt::Debug for CanarySteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl std::fmt::Display for CanarySteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: Vec<String> = self.as_slice().iter().map(|w| w.to_string()).collect();
        f.write_str(&s.join(","))
    }
}

impl From<CanarySteps> for Vec<u8> {
    fn from(s: CanarySteps) -> Vec<u8> {
        s.as_slice().to_vec()
    }
}

impl TryFrom<Vec<u8>> for CanarySteps {
    type Error = ValidationError;
    fn try_from(v: Vec<u8>) -> Result<Self, ValidationError> {
        Self::from_weights("canary-steps", &v)
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
    /// Rolling (the settings above), blue-green or canary steps. A rollback is
    /// always rolling.
    pub strategy: UpdateStrategy,
    /// Blue-green: how long the old version keeps running after the switch.
    pub blue_green_hold_ms: u64,
    /// Canary: the weights it steps through.
    pub canary_steps: CanarySteps,
    /// Canary: how long each step runs before its counters are judged.
    pub canary_interval_ms: u64,
    /// Canary: the share of the canary's connections (and tasks) that may fail in
    /// a step, and by which it may do worse than the stable version (0 to 1).
    pub canary_max_failure_ratio: f64,
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
            strategy: UpdateStrategy::Rolling,
            blue_green_hold_ms: 60_000,
            canary_steps: CanarySteps::default(),
            canary_interval_ms: 60_000,
            canary_max_failure_ratio: 0.05,
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
        if !(0.0..=1.0).contains(&self.canary_max_failure_ratio) {
            return Err(ValidationError::new(
                "canary-max-failure-ratio",
                format!("{} is not between 0 and 1", self.canary_max_failure_ratio),
            ));
        }
        if self.canary_interval_ms == 0 {
            return Err(ValidationError::new("canary-interval", "must be more than 0"));
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

/// Connection outcomes of a set of backends as the nodes' data planes count them
/// (cumulative; a step compares differences).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outcomes {
    /// Connections that completed their handshake.
    pub established: u64,
    /// Established connections that ended with a reset instead of a close.
    pub reset: u64,
    /// Connects answered with a reset (nothing listening).
    pub refused: u64,
    /// Connects that got no answer before the kernel gave up.
    pub timed_out: u64,
}

impl Outcomes {
    pub fn attempts(&self) -> u64 {
        self.established + self.refused + self.timed_out
    }

    pub fn failures(&self) -> u64 {
        self.reset + self.refused + self.timed_out
    }

    pub fn add(&mut self, o: &Outcomes) {
        self.established += o.established;
        self.reset += o.reset;
        self.refused += o.refused;
        self.timed_out += o.timed_out;
    }

    /// What happened since `earlier` (a counter that went backwards, e.g. a node
    /// whose maps were recreated, counts from zero).
    pub fn since(&self, earlier: &Outcomes) -> Outcomes {
        Outcomes {
            established: self.established.saturating_sub(earlier.established),
            reset: self.reset.saturating_sub(earlier.reset),
            refused: self.refused.saturating_sub(earlier.refused),
            timed_out: self.timed_out.saturating_sub(earlier.timed_out),
        }
    }

    /// Failed share of the connections, 0 without any.
    pub fn failure_ratio(&self) -> f64 {
        match self.attempts() {
            0 => 0.0,
            n => self.failures() as f64 / n as f64,
        }
    }

    /// `3 of 40 failed (2 reset, 1 refused, 0 timed out)`.
    pub fn describe(&self) -> String {
        format!(
            "{} of {} failed ({} reset, {} refused, {} timed out)",
            self.failures(),
            self.attempts(),
            self.reset,
            self.refused,
            self.timed_out
        )
    }
}

/// A blue-green or stepped canary release in progress: the new version runs as the
/// service's canary, and this says where the release stands. Replicated with the
/// canary, so that a new leader resumes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub strategy: UpdateStrategy,
    pub config: UpdateConfig,
    /// Canary: the index of the current step in `config.canary_steps`. Blue-green:
    /// 0 before the switch, 1 after it (the hold).
    pub step: u32,
    /// When the current step took effect (its interval, or the hold, counts from
    /// there); 0 while its tasks are starting.
    #[serde(default)]
    pub step_ms: i64,
    /// The canary's and the stable version's counters when the step took effect.
    #[serde(default)]
    pub baseline_canary: Outcomes,
    #[serde(default)]
    pub baseline_stable: Outcomes,
}

impl Release {
    /// Blue-green after the switch: every new connection goes to the new version.
    pub fn switched(&self) -> bool {
        self.strategy == UpdateStrategy::BlueGreen && self.step >= 1
    }

    /// `step 2/4 (25%)`.
    pub fn step_name(&self) -> String {
        let steps = self.config.canary_steps;
        let w = steps.as_slice().get(self.step as usize).copied().unwrap_or(100);
        format!("step {}/{} ({w}%)", self.step + 1, steps.as_slice().len())
    }
}

/// One step of a release, as the updater proposes it and the state machine checks it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReleaseStep {
    /// Blue-green: the whole new version is up; all new connections go to it.
    Switch,
    /// Canary: the step's tasks are up; its interval starts with these counters.
    Begin { canary: Outcomes, stable: Outcomes },
    /// Canary: the step passed; go to the next weight.
    Advance { reason: String },
    /// The new version becomes the stable one.
    Promote { reason: String },
    /// The new version goes; all new connections return to the stable one.
    RollBack { reason: String },
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
    fn canary_steps_parse_and_serialize_as_a_list() {
        let s = CanarySteps::parse("canary-steps", "10,25,50,100").unwrap();
        assert_eq!(s.as_slice(), [10, 25, 50, 100]);
        assert_eq!(serde_json::to_string(&s).unwrap(), "[10,25,50,100]");
        let back: CanarySteps = serde_json::from_str("[50,100]").unwrap();
        assert_eq!(back.to_string(), "50,100");
        for (bad, why) in [
            ("10,5,100", "steps must rise"),
            ("10,50", "the last step must be 100"),
            ("0,100", "each step is a percentage from 1 to 100"),
            ("ten,100", "\"ten\" is not a percentage"),
        ] {
            let e = CanarySteps::parse("canary-steps", bad).unwrap_err();
            assert_eq!((e.field.as_str(), e.message.as_str()), ("canary-steps", why), "{bad}");
        }
        assert!(serde_json::from_str::<CanarySteps>("[100,50]").is_err());
    }

    #[test]
    fn outcomes_compare_by_failed_share() {
        let now = Outcomes {
            established: 10,
            reset: 4,
            refused: 2,
            timed_out: 0,
        };
        let d = now.since(&Outcomes {
            established: 2,
            ..Default::default()
        });
        assert_eq!((d.attempts(), d.failures()), (10, 6));
        assert_eq!(d.describe(), "6 of 10 failed (4 reset, 2 refused, 0 timed out)");
        assert_eq!(Outcomes::default().failure_ratio(), 0.0);
        assert_eq!(Outcomes::default().since(&now), Outcomes::default());
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
