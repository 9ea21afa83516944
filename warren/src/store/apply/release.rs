//! Blue-green and stepped canary releases: a spec update whose strategy is not
//! rolling starts the new version as the service's canary (weight 0 for
//! blue-green, the first step's weight for a canary), and the updater's steps
//! move it on: the blue-green switch (weight 100 in one write, so every node
//! flips each service's table once), a canary step's start and advance, and the
//! promotion or rollback that ends the release. What a step implies is decided
//! here so that every manager agrees; when to take it is the updater's.

use super::change;
use crate::model::human_duration as human_ms;
use crate::model::{Canary, Release, ReleaseStep, ServiceSpec, UpdateState, UpdateStatus, UpdateStrategy};
use crate::store::state::{Action, Change, ObjectKind, State};
use crate::store::ApplyError;

impl State {
    /// The new spec becomes the canary of a release (the caller checked that it
    /// differs beyond scale and that no canary runs). A new replica count applies
    /// to the stable version at once, and so to the canary's.
    pub(super) fn start_release(
        &mut self,
        id: &str,
        spec: &ServiceSpec,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_mut(id)?;
        if svc.spec.endpoint_mode != spec.endpoint_mode {
            return Err(ApplyError::Invalid(format!(
                "update-strategy: a {} release of service {:?} cannot change the endpoint mode: use --update-strategy rolling",
                spec.update.strategy.as_str(),
                svc.name
            )));
        }
        let config = spec.update;
        let release = Release {
            strategy: config.strategy,
            config,
            step: 0,
            step_ms: 0,
            baseline_canary: Default::default(),
            baseline_stable: Default::default(),
        };
        svc.spec.mode = spec.mode;
        let mut canary_spec = spec.clone();
        canary_spec.mode = svc.spec.mode;
        let spec_version = svc.next_spec_version();
        let (weight, message) = match config.strategy {
            UpdateStrategy::BlueGreen => (
                0,
                "blue-green: starting the new version beside the old one; new connections switch once all of it is up"
                    .to_string(),
            ),
            UpdateStrategy::Canary => {
                let w = config.canary_steps.as_slice()[0];
                (w, format!("canary {}: starting its tasks", release.step_name()))
            }
            UpdateStrategy::Rolling => {
                return Err(ApplyError::Invalid(format!(
                    "service {:?}: a rolling update is not a release",
                    svc.name
                )))
            }
        };
        svc.canary = Some(Canary {
            spec: canary_spec,
            spec_version,
            weight,
            release: Some(release),
        });
        svc.update_status = Some(UpdateStatus::new(
            UpdateState::Updating,
            spec_version,
            config,
            at_ms,
            message.clone(),
        ));
        super::Versioned::touch(svc, at_ms);
        let mut c = change(ObjectKind::Service, Action::Updated, id, &svc.name);
        c.message = message;
        changes.push(c);
        Ok(())
    }

    pub(super) fn release_step(
        &mut self,
        id: &str,
        spec_version: u64,
        step: &ReleaseStep,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_mut(id)?;
        let name = svc.name.clone();
        let canary = svc
            .canary
            .as_mut()
            .filter(|c| c.spec_version == spec_version && c.release.is_some())
            .ok_or_else(|| {
                ApplyError::Invalid(format!(
                    "service {name:?} has no release of spec version {spec_version} in progress"
                ))
            })?;
        let Some(r) = canary.release.as_mut() else {
            unreachable!("filtered above")
        };
        let refuse = |what: &str, r: &Release| {
            ApplyError::Invalid(format!(
                "service {name:?}: cannot {what}: the {} release is at step {} ({})",
                r.strategy.as_str(),
                r.step,
                if r.step_ms == 0 { "starting" } else { "running" }
            ))
        };
        let steps = r.config.canary_steps;
        let message = match step {
            ReleaseStep::Switch => {
                if r.strategy != UpdateStrategy::BlueGreen || r.step != 0 {
                    return Err(refuse("switch", r));
                }
                r.step = 1;
                r.step_ms = at_ms;
                canary.weight = 100;
                format!(
                    "blue-green: every task of the new version is up: all new connections switched to it; the old version stays for {} or until `warren service promote {name}`",
                    human_ms(r.config.blue_green_hold_ms)
                )
            }
            ReleaseStep::Begin { canary: c, stable } => {
                if r.strategy != UpdateStrategy::Canary || r.step_ms != 0 {
                    return Err(refuse("begin a step", r));
                }
                r.step_ms = at_ms;
                r.baseline_canary = *c;
                r.baseline_stable = *stable;
                format!(
                    "canary {}: its tasks are up; judged after {}",
                    r.step_name(),
                    human_ms(r.config.canary_interval_ms)
                )
            }
            ReleaseStep::Advance { reason } => {
                let next = r.step as usize + 1;
                if r.strategy != UpdateStrategy::Canary || r.step_ms == 0 || next >= steps.as_slice().len() {
                    return Err(refuse("advance", r));
                }
                let passed = r.step_name();
                r.step = next as u32;
                r.step_ms = 0;
                canary.weight = steps.as_slice()[next];
                format!("canary {passed} passed ({reason}): advancing to {}", r.step_name())
            }
            ReleaseStep::Promote { reason } => {
                let message = format!("{} release promoted: {reason}", r.strategy.as_str());
                return self.promote_canary_because(id, message, at_ms, changes);
            }
            ReleaseStep::RollBack { reason } => {
                let message = format!("rolled back: {reason}");
                svc.canary = None;
                if let Some(u) = svc.update_status.as_mut().filter(|u| u.spec_version == spec_version) {
                    u.state = UpdateState::RollbackCompleted;
                    u.completed_ms = at_ms;
                    u.message = message.clone();
                }
                super::Versioned::touch(svc, at_ms);
                let mut c = change(ObjectKind::Service, Action::Updated, id, &name);
                c.message = message;
                changes.push(c);
                return Ok(());
            }
        };
        if let Some(u) = svc.update_status.as_mut().filter(|u| u.spec_version == spec_version) {
            u.message = message.clone();
        }
        super::Versioned::touch(svc, at_ms);
        let mut c = change(ObjectKind::Service, Action::Updated, id, &name);
        c.message = message;
        changes.push(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{CanarySteps, Outcomes, ReleaseStep, ServiceMode, UpdateState, UpdateStrategy};
    use crate::store::fixtures::service;
    use crate::store::{Command, Rules, State};

    fn with_release(strategy: UpdateStrategy) -> State {
        let mut s = State::default();
        let mut ch = vec![];
        let mut svc = service("a", "web");
        svc.spec.mode = ServiceMode::Replicated { replicas: 4 };
        s.apply(
            &Command::CreateService {
                service: svc,
                rules: Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        let mut v2 = s.services["a"].spec.clone();
        v2.image = "img:2".into();
        v2.update.strategy = strategy;
        v2.update.canary_steps = CanarySteps::parse("canary-steps", "25,100").unwrap();
        s.apply(
            &Command::UpdateService {
                id: "a".into(),
                expected_version: s.services["a"].version,
                spec: v2,
                at_ms: 10,
                rules: Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        s
    }

    fn step(s: &mut State, step: ReleaseStep) -> Result<Vec<crate::store::state::Change>, crate::store::ApplyError> {
        let mut ch = vec![];
        let v = s.services["a"].canary.as_ref().map_or(2, |c| c.spec_version);
        s.apply(
            &Command::ReleaseStep {
                id: "a".into(),
                spec_version: v,
                step,
                at_ms: 20,
            },
            &mut ch,
        )
        .map(|_| ch)
    }

    #[test]
    fn blue_green_starts_beside_switches_once_and_rolls_back_at_once() {
        let mut s = with_release(UpdateStrategy::BlueGreen);
        let svc = &s.services["a"];
        assert_eq!(svc.spec.image, "img", "the stable version stays until promoted");
        let c = svc.canary.as_ref().unwrap();
        assert_eq!((c.weight, c.replicas(4), c.spec.image.as_str()), (0, 4, "img:2"));
        assert_eq!(svc.update_status.as_ref().unwrap().spec_version, c.spec_version);
        let e = step(
            &mut s,
            ReleaseStep::Begin {
                canary: Outcomes::default(),
                stable: Outcomes::default(),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("cannot begin a step"), "{e}");
        let ch = step(&mut s, ReleaseStep::Switch).unwrap();
        assert!(ch[0].message.contains("all new connections switched"), "{:?}", ch[0]);
        assert_eq!(s.services["a"].canary.as_ref().unwrap().weight, 100);
        assert!(step(&mut s, ReleaseStep::Switch).is_err(), "one switch");
        let ch = step(
            &mut s,
            ReleaseStep::RollBack {
                reason: "requested".into(),
            },
        )
        .unwrap();
        assert_eq!(ch[0].message, "rolled back: requested");
        let svc = &s.services["a"];
        assert!(svc.canary.is_none());
        assert_eq!(
            svc.update_status.as_ref().unwrap().state,
            UpdateState::RollbackCompleted
        );
        assert!(step(&mut s, ReleaseStep::Switch).is_err(), "the release is over");
    }

    #[test]
    fn canary_steps_advance_then_promote() {
        let mut s = with_release(UpdateStrategy::Canary);
        assert_eq!(s.services["a"].canary.as_ref().unwrap().weight, 25);
        assert!(
            step(&mut s, ReleaseStep::Advance { reason: "x".into() }).is_err(),
            "not begun"
        );
        step(
            &mut s,
            ReleaseStep::Begin {
                canary: Outcomes::default(),
                stable: Outcomes::default(),
            },
        )
        .unwrap();
        let ch = step(
            &mut s,
            ReleaseStep::Advance {
                reason: "0 of 9 failed".into(),
            },
        )
        .unwrap();
        assert_eq!(
            ch[0].message,
            "canary step 1/2 (25%) passed (0 of 9 failed): advancing to step 2/2 (100%)"
        );
        assert_eq!(s.services["a"].canary.as_ref().unwrap().weight, 100);
        step(
            &mut s,
            ReleaseStep::Begin {
                canary: Outcomes::default(),
                stable: Outcomes::default(),
            },
        )
        .unwrap();
        assert!(
            step(&mut s, ReleaseStep::Advance { reason: "x".into() }).is_err(),
            "the last step"
        );
        let ch = step(
            &mut s,
            ReleaseStep::Promote {
                reason: "every step passed".into(),
            },
        )
        .unwrap();
        assert_eq!(ch[0].message, "canary release promoted: every step passed");
        let svc = &s.services["a"];
        assert!(svc.canary.is_none());
        assert_eq!((svc.spec.image.as_str(), svc.spec_version), ("img:2", 2));
        let u = svc.update_status.as_ref().unwrap();
        assert_eq!((u.state, u.spec_version), (UpdateState::Completed, 2));
    }
}
