//! Canary releases of a service: a second spec beside the stable one with a share of
//! new connections, promoted to stable or rolled back; and the rollback of a plain
//! update to the spec before it.

use super::{change, Versioned};
use crate::model::{Canary, ServiceMode, ServiceSpec, Task, TaskState, UpdateState, UpdateStatus};
use crate::store::state::{spec_differs_beyond_scale, Action, Change, ObjectKind, State};
use crate::store::{ApplyError, Rules};

impl State {
    // One argument per field of the command it applies.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_canary(
        &mut self,
        id: &str,
        expected_version: u64,
        spec: &ServiceSpec,
        weight: u8,
        at_ms: i64,
        rules: Rules,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_by_id(id)?;
        svc.expect_version(expected_version)?;
        if svc.spec.mode == ServiceMode::Global {
            return Err(ApplyError::Invalid(format!(
                "canary-weight: service {:?} is global; canaries need a replicated service",
                svc.name
            )));
        }
        check_weight(weight)?;
        if rules.checked() {
            self.check_references(spec)?;
            self.check_ports(spec, Some(id))?;
        }
        let svc = self.service_mut(id)?;
        let mut canary_spec = spec.clone();
        // The canary keeps the stable version's scale; only the stable replica
        // count says how many tasks the service has.
        canary_spec.mode = svc.spec.mode;
        svc.canary = Some(Canary {
            spec: canary_spec,
            spec_version: svc.next_spec_version(),
            weight,
            release: None,
        });
        svc.touch(at_ms);
        changes.push(change(ObjectKind::Service, Action::Updated, id, &svc.name));
        Ok(())
    }

    pub(super) fn set_canary_weight(
        &mut self,
        id: &str,
        weight: u8,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_mut(id)?;
        check_weight(weight)?;
        let name = &svc.name;
        let canary = svc.canary.as_mut().ok_or_else(|| {
            ApplyError::Invalid(format!(
                "canary-weight: service {name:?} has no canary: start one with `warren service update {name} --image IMG --canary-weight W`"
            ))
        })?;
        if let Some(r) = &canary.release {
            return Err(ApplyError::Invalid(format!(
                "canary-weight: service {name:?} is in a {} release that Warren steps: `warren service promote {name}` or `warren service rollback {name}`",
                r.strategy.as_str()
            )));
        }
        canary.weight = weight;
        svc.touch(at_ms);
        changes.push(change(ObjectKind::Service, Action::Updated, id, &svc.name));
        Ok(())
    }

    pub(super) fn promote_canary(&mut self, id: &str, at_ms: i64, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let released = self
            .service_by_id(id)?
            .canary
            .as_ref()
            .and_then(|c| c.release.as_ref())
            .map(|r| r.strategy.as_str());
        let message = released.map_or_else(String::new, |s| format!("{s} release promoted: requested"));
        self.promote_canary_because(id, message, at_ms, changes)
    }

    /// The canary becomes the stable version. In the same write, every old task
    /// whose slot a promoted task serves (running and healthy) is told to stop: the
    /// data plane never sees both versions as one group taking new connections.
    /// `message` (empty for a canary weighted by hand) completes the release's
    /// update status and goes with the event.
    pub(super) fn promote_canary_because(
        &mut self,
        id: &str,
        message: String,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_mut(id)?;
        let canary = svc
            .canary
            .take()
            .ok_or_else(|| ApplyError::Invalid(format!("service {:?} has no canary to promote", svc.name)))?;
        let mut spec = canary.spec;
        spec.mode = svc.spec.mode;
        svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec));
        svc.spec_version = canary.spec_version;
        // The promoted tasks already run it; the rest are replaced start-first.
        svc.update_status = match (canary.release, svc.update_status.take()) {
            (Some(_), Some(mut u)) if u.spec_version == canary.spec_version => {
                u.state = UpdateState::Completed;
                u.completed_ms = at_ms;
                u.message = message.clone();
                Some(u)
            }
            _ => None,
        };
        svc.touch(at_ms);
        let mut c = change(ObjectKind::Service, Action::Updated, id, &svc.name);
        c.message = message;
        changes.push(c);
        // The canary tasks become stable ones, in the first slots: the
        // orchestrator keeps them (the newest task of a slot wins) and replaces
        // the rest of the old version.
        let mut promoted: Vec<&mut Task> = self
            .tasks
            .values_mut()
            .filter(|t| t.service_id == id && t.canary && t.is_live())
            .collect();
        promoted.sort_by_key(|t| t.slot);
        let mut served = std::collections::BTreeSet::new();
        for (slot, t) in (1..).zip(promoted) {
            t.canary = false;
            t.slot = slot;
            t.touch(at_ms);
            if t.is_up() {
                served.insert(slot);
            }
            changes.push(change(ObjectKind::Task, Action::Updated, &t.id, ""));
        }
        for t in self.tasks.values_mut() {
            if t.service_id == id
                && !t.canary
                && t.is_live()
                && t.spec_version != canary.spec_version
                && served.contains(&t.slot)
            {
                t.desired_state = TaskState::Shutdown;
                t.touch(at_ms);
                changes.push(change(ObjectKind::Task, Action::Updated, &t.id, ""));
            }
        }
        Ok(())
    }

    /// Drops the canary; without one, swaps back to the spec before the last update.
    pub(super) fn rollback_service(
        &mut self,
        id: &str,
        at_ms: i64,
        rules: Rules,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_by_id(id)?;
        let restore = match (&svc.canary, &svc.previous_spec) {
            (Some(_), _) => None,
            (None, Some(previous)) => Some(previous.clone()),
            (None, None) => {
                return Err(ApplyError::Invalid(format!(
                    "service {:?} has no canary and no previous version to roll back to",
                    svc.name
                )))
            }
        };
        if let (Some(previous), true) = (&restore, rules.checked()) {
            self.check_references(previous)?;
            self.check_ports(previous, Some(id))?;
        }
        match restore {
            None => {
                let svc = self.service_mut(id)?;
                let release = svc.canary.take().and_then(|c| c.release.map(|_| c.spec_version));
                let mut c = change(ObjectKind::Service, Action::Updated, id, &svc.name);
                // A release ends here: all new connections return to the stable
                // version in this one write.
                if let Some(u) = svc.update_status.as_mut().filter(|u| release == Some(u.spec_version)) {
                    u.state = UpdateState::RollbackCompleted;
                    u.completed_ms = at_ms;
                    u.message = "rolled back: requested".into();
                    c.message = u.message.clone();
                }
                svc.touch(at_ms);
                changes.push(c);
            }
            Some(previous) => self.restore_previous(id, previous, "rolling back: requested".into(), at_ms, changes)?,
        }
        Ok(())
    }

    /// Returns to `previous` as a new spec version, rolled out with the rollback
    /// config of the spec being left. Tasks that still run `previous` (slots the
    /// update had not reached) are relabelled to the new version: a rollback does
    /// not restart what never changed.
    pub(super) fn restore_previous(
        &mut self,
        id: &str,
        mut previous: ServiceSpec,
        reason: String,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_mut(id)?;
        previous.mode = svc.spec.mode;
        let config = svc.spec.rollback;
        svc.previous_spec = Some(std::mem::replace(&mut svc.spec, previous));
        svc.spec_version = svc.next_spec_version();
        let version = svc.spec_version;
        svc.update_status = Some(UpdateStatus::new(
            UpdateState::RollingBack,
            version,
            config,
            at_ms,
            reason,
        ));
        svc.touch(at_ms);
        changes.push(change(ObjectKind::Service, Action::Updated, id, &svc.name));
        let restored = svc.spec.clone();
        for t in self.tasks.values_mut() {
            if t.service_id == id
                && !t.canary
                && t.is_live()
                && t.spec_version != version
                && !spec_differs_beyond_scale(&t.spec, &restored)
            {
                t.spec_version = version;
                t.touch(at_ms);
                changes.push(change(ObjectKind::Task, Action::Updated, &t.id, ""));
            }
        }
        Ok(())
    }
}

fn check_weight(weight: u8) -> Result<(), ApplyError> {
    if weight > 100 {
        return Err(ApplyError::Invalid(format!("canary-weight: {weight} is more than 100")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::fixtures::service;
    use crate::store::{Command, Rules, State};

    #[test]
    fn canary_lifecycle() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::CreateService {
                service: service("a", "web"),
                rules: Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        let mut v2 = s.services["a"].spec.clone();
        v2.image = "img:2".into();
        s.apply(
            &Command::StartCanary {
                id: "a".into(),
                expected_version: 1,
                spec: v2.clone(),
                weight: 20,
                at_ms: 1,
                rules: Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        let c = s.services["a"].canary.clone().unwrap();
        assert_eq!((c.weight, c.spec_version, c.spec.image.as_str()), (20, 2, "img:2"));
        assert_eq!(s.services["a"].spec.image, "img");
        s.apply(
            &Command::SetCanaryWeight {
                id: "a".into(),
                weight: 50,
                at_ms: 2,
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.services["a"].canary.as_ref().unwrap().weight, 50);
        let e = s
            .apply(
                &Command::SetCanaryWeight {
                    id: "a".into(),
                    weight: 101,
                    at_ms: 2,
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("canary-weight:"), "{e}");
        // A plain update is refused while a canary runs.
        let version = s.services["a"].version;
        let e = s
            .apply(
                &Command::UpdateService {
                    id: "a".into(),
                    expected_version: version,
                    spec: v2.clone(),
                    at_ms: 3,
                    rules: Rules::CURRENT,
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(e.to_string().contains("promote it or roll it back"), "{e}");
        s.apply(
            &Command::PromoteCanary {
                id: "a".into(),
                at_ms: 4,
            },
            &mut ch,
        )
        .unwrap();
        let svc = &s.services["a"];
        assert!(svc.canary.is_none());
        assert_eq!((svc.spec.image.as_str(), svc.spec_version), ("img:2", 2));
        // Rollback without a canary returns to the previous spec.
        s.apply(
            &Command::RollbackService {
                id: "a".into(),
                at_ms: 5,
                rules: Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.services["a"].spec.image, "img");
        assert_eq!(s.services["a"].spec_version, 3);
        s.apply(
            &Command::RollbackService {
                id: "a".into(),
                at_ms: 6,
                rules: Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.services["a"].spec.image, "img:2");
        let e = s
            .apply(
                &Command::PromoteCanary {
                    id: "a".into(),
                    at_ms: 7,
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(e.to_string().contains("no canary to promote"));
    }
}
