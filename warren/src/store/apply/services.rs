//! Services: creation (a data-plane number and a virtual IP each), spec updates
//! (which start a rolling update, stepped in `updates`), scaling and removal (which marks the service's tasks for removal). The canary
//! commands are in `canary`.

use super::{change, Versioned};
use crate::model::{EndpointMode, Service, ServiceMode, ServiceSpec, TaskState, UpdateState, UpdateStatus};
use crate::store::state::{spec_differs_beyond_scale, Action, Change, ObjectKind, State};
use crate::store::{ApplyError, Rules};

impl State {
    pub(super) fn create_service(
        &mut self,
        service: &Service,
        rules: Rules,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        if self.services.contains_key(&service.id) {
            return Err(ApplyError::AlreadyExists(format!(
                "service {} already exists",
                service.id
            )));
        }
        if self.services.values().any(|s| s.name == service.name) {
            return Err(ApplyError::AlreadyExists(format!(
                "service {:?} already exists",
                service.name
            )));
        }
        if rules.checked() {
            self.check_references(&service.spec)?;
            self.check_ports(&service.spec, None)?;
        }
        let mut service = service.clone();
        let used: std::collections::HashSet<u32> = self
            .services
            .values()
            .chain(self.removed_services.values())
            .map(|s| s.dp_id)
            .collect();
        // Every node's data plane numbers services 0..MAX_SERVICES.
        service.dp_id = (1..warren_common::MAX_SERVICES)
            .find(|n| !used.contains(n))
            .ok_or_else(|| {
                ApplyError::Invalid(format!(
                "cannot create service {}: the cluster already has {} services, the most a node's data plane balances",
                service.name,
                warren_common::MAX_SERVICES - 1
            ))
            })?;
        service.vip = match service.spec.endpoint_mode {
            EndpointMode::Vip => Some(self.allocate_vip(&service.name)?),
            EndpointMode::Dnsrr => None,
        };
        changes.push(change(ObjectKind::Service, Action::Created, &service.id, &service.name));
        self.services.insert(service.id.clone(), service);
        Ok(())
    }

    pub(super) fn update_service(
        &mut self,
        id: &str,
        expected_version: u64,
        spec: &ServiceSpec,
        at_ms: i64,
        rules: Rules,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_by_id(id)?;
        svc.expect_version(expected_version)?;
        let changed = spec_differs_beyond_scale(&svc.spec, spec);
        if changed && svc.canary.is_some() {
            return Err(ApplyError::Invalid(format!(
                "service {:?} has a canary running: promote it or roll it back first (scaling and --canary-weight are allowed)",
                svc.name
            )));
        }
        if rules.checked() {
            self.check_references(spec)?;
            self.check_ports(spec, Some(id))?;
        }
        if changed && spec.update.strategy != crate::model::UpdateStrategy::Rolling {
            return self.start_release(id, spec, at_ms, changes);
        }
        let vip = match (svc.spec.endpoint_mode, spec.endpoint_mode) {
            (EndpointMode::Dnsrr, EndpointMode::Vip) => Some(Some(self.allocate_vip(&svc.name)?)),
            (EndpointMode::Vip, EndpointMode::Dnsrr) => Some(None),
            _ => None,
        };
        let svc = self.service_mut(id)?;
        if let Some(v) = vip {
            svc.vip = v;
        }
        if changed {
            svc.previous_spec = Some(svc.spec.clone());
            svc.spec_version = svc.next_spec_version();
            svc.update_status = Some(UpdateStatus::new(
                UpdateState::Updating,
                svc.spec_version,
                spec.update,
                at_ms,
                "update in progress".into(),
            ));
        }
        svc.spec = spec.clone();
        svc.touch(at_ms);
        changes.push(change(ObjectKind::Service, Action::Updated, id, &svc.name));
        Ok(())
    }

    pub(super) fn scale_service(
        &mut self,
        id: &str,
        replicas: u64,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let svc = self.service_mut(id)?;
        match &mut svc.spec.mode {
            ServiceMode::Replicated { replicas: r } => *r = replicas,
            ServiceMode::Global => {
                return Err(ApplyError::Invalid(format!(
                    "replicas: service {:?} is global; only replicated services can be scaled",
                    svc.name
                )))
            }
        }
        svc.touch(at_ms);
        changes.push(change(ObjectKind::Service, Action::Updated, id, &svc.name));
        Ok(())
    }

    pub(super) fn remove_service(&mut self, id: &str, at_ms: i64, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let name = &self.service_by_id(id)?.name;
        if let Some(route) = self.ingresses.values().find(|i| i.spec.service == *name) {
            return Err(ApplyError::InUse {
                kind: ObjectKind::Service,
                name: name.clone(),
                user: crate::store::User::Ingress(route.name.clone()),
            });
        }
        let svc = self
            .services
            .remove(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Service, id))?;
        changes.push(change(ObjectKind::Service, Action::Removed, id, &svc.name));
        if self
            .tasks
            .values()
            .any(|t| t.service_id == id && t.status.state == TaskState::Running)
        {
            // Its tasks drain: the data plane keeps their flows until they exit.
            self.removed_services.insert(id.to_string(), svc);
        }
        for t in self.tasks.values_mut() {
            if t.service_id == id && t.desired_state != TaskState::Remove {
                t.desired_state = TaskState::Remove;
                t.touch(at_ms);
                changes.push(change(ObjectKind::Task, Action::Updated, &t.id, ""));
            }
        }
        Ok(())
    }

    /// The lowest free address of the service CIDR (not its network or broadcast
    /// address). Deterministic, like every other allocation in `apply`.
    fn allocate_vip(&self, service: &str) -> Result<std::net::Ipv4Addr, ApplyError> {
        let cidr = self
            .meta
            .as_ref()
            .map(|m| m.service_cidr.clone())
            .unwrap_or_else(crate::model::default_service_cidr);
        let invalid = || ApplyError::Invalid(format!("the service CIDR {cidr:?} is not a valid IPv4 CIDR"));
        let (ip, len) = cidr.split_once('/').ok_or_else(invalid)?;
        let base = u32::from(ip.parse::<std::net::Ipv4Addr>().map_err(|_| invalid())?);
        let len: u32 = len.parse().map_err(|_| invalid())?;
        if !(8..=30).contains(&len) {
            return Err(invalid());
        }
        let size = 1u32 << (32 - len);
        let used: std::collections::HashSet<std::net::Ipv4Addr> =
            self.services.values().filter_map(|s| s.vip).collect();
        (1..size - 1)
            .map(|i| std::net::Ipv4Addr::from(base + i))
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                ApplyError::Invalid(format!(
                    "no free virtual IP left in the service CIDR {cidr} for service {service}"
                ))
            })
    }
}

impl Service {
    /// Refuses a write based on a read of another version of the service.
    pub(super) fn expect_version(&self, read: u64) -> Result<(), ApplyError> {
        if self.version == read {
            return Ok(());
        }
        Err(ApplyError::Conflict {
            service: self.name.clone(),
            read,
            now: self.version,
        })
    }

    /// The spec version a new spec gets: above the stable one and any canary's.
    pub(super) fn next_spec_version(&self) -> u64 {
        self.spec_version
            .max(self.canary.as_ref().map_or(0, |c| c.spec_version))
            + 1
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{EndpointMode, TaskState};
    use crate::store::fixtures::{service, task};
    use crate::store::{ApplyError, Command, Rules, State};

    fn create(service: crate::model::Service) -> Command {
        Command::CreateService {
            service,
            rules: Rules::CURRENT,
        }
    }

    #[test]
    fn duplicate_service_names_are_refused_and_change_nothing() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(&create(service("a", "web")), &mut ch).unwrap();
        let before = s.clone();
        let mut ch2 = vec![];
        let err = s.apply(&create(service("b", "web")), &mut ch2).unwrap_err();
        assert_eq!(err.to_string(), "service \"web\" already exists");
        assert_eq!(s, before);
        assert!(ch2.is_empty());
    }

    #[test]
    fn update_with_a_stale_version_conflicts() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(&create(service("a", "web")), &mut ch).unwrap();
        let mut spec = s.services["a"].spec.clone();
        spec.image = "img:2".into();
        s.apply(
            &Command::UpdateService {
                id: "a".into(),
                expected_version: 1,
                spec: spec.clone(),
                at_ms: 5,
                rules: Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.services["a"].version, 2);
        assert_eq!(s.services["a"].spec_version, 2);
        let err = s
            .apply(
                &Command::UpdateService {
                    id: "a".into(),
                    expected_version: 1,
                    spec,
                    at_ms: 6,
                    rules: Rules::CURRENT,
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(matches!(err, ApplyError::Conflict { read: 1, now: 2, .. }), "{err:?}");
    }

    #[test]
    fn scaling_does_not_change_the_spec_version() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(&create(service("a", "web")), &mut ch).unwrap();
        s.apply(
            &Command::ScaleService {
                id: "a".into(),
                replicas: 5,
                at_ms: 1,
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.services["a"].spec.replicas(), Some(5));
        assert_eq!(s.services["a"].spec_version, 1);
    }

    #[test]
    fn removing_a_service_marks_its_tasks_for_removal() {
        let mut s = State::default();
        let mut ch = vec![];
        let svc = service("a", "web");
        s.apply(&create(svc.clone()), &mut ch).unwrap();
        s.apply(
            &Command::CreateTasks {
                tasks: vec![task("t1", &svc)],
            },
            &mut ch,
        )
        .unwrap();
        s.apply(
            &Command::RemoveService {
                id: "a".into(),
                at_ms: 1,
            },
            &mut ch,
        )
        .unwrap();
        assert!(s.services.is_empty());
        assert_eq!(s.tasks["t1"].desired_state, TaskState::Remove);
    }

    #[test]
    fn a_removed_service_with_running_tasks_stays_for_the_data_plane_until_they_exit() {
        let mut s = State::default();
        let mut ch = vec![];
        let svc = service("a", "web");
        s.apply(&create(svc.clone()), &mut ch).unwrap();
        let mut t = task("t1", &svc);
        t.node_id = Some("n1".into());
        t.status.state = TaskState::Running;
        t.status.addr = "10.0.0.2".into();
        s.apply(&Command::CreateTasks { tasks: vec![t] }, &mut ch).unwrap();
        s.apply(
            &Command::RemoveService {
                id: "a".into(),
                at_ms: 1,
            },
            &mut ch,
        )
        .unwrap();
        assert!(s.services.is_empty());
        let eps = s.service_endpoints();
        assert_eq!(eps.len(), 1);
        assert!(eps[0].removed);
        assert!(eps[0].endpoints[0].draining);
        // Its data plane id is not handed out while its flows live on.
        s.apply(&create(service("b", "api")), &mut ch).unwrap();
        assert_ne!(s.services["b"].dp_id, eps[0].dp_id);
        let mut exited = s.tasks["t1"].status.clone();
        exited.state = TaskState::Shutdown;
        s.apply(
            &Command::ReportTaskStatus {
                node_id: "n1".into(),
                reports: vec![("t1".into(), exited)],
            },
            &mut ch,
        )
        .unwrap();
        assert!(s.removed_services.is_empty());
        assert!(s.service_endpoints().iter().all(|e| !e.removed));
    }

    #[test]
    fn services_get_distinct_vips_and_data_plane_ids_that_are_reused() {
        let mut s = State::default();
        let mut ch = vec![];
        for (id, name) in [("a", "one"), ("b", "two")] {
            s.apply(&create(service(id, name)), &mut ch).unwrap();
        }
        let mut dnsrr = service("c", "three");
        dnsrr.spec.endpoint_mode = EndpointMode::Dnsrr;
        s.apply(&create(dnsrr), &mut ch).unwrap();
        assert_eq!(s.services["a"].vip, Some("10.96.0.1".parse().unwrap()));
        assert_eq!(s.services["b"].vip, Some("10.96.0.2".parse().unwrap()));
        assert_eq!(s.services["c"].vip, None);
        assert_eq!(
            (s.services["a"].dp_id, s.services["b"].dp_id, s.services["c"].dp_id),
            (1, 2, 3)
        );
        s.apply(
            &Command::RemoveService {
                id: "a".into(),
                at_ms: 1,
            },
            &mut ch,
        )
        .unwrap();
        s.apply(&create(service("d", "four")), &mut ch).unwrap();
        assert_eq!(s.services["d"].vip, Some("10.96.0.1".parse().unwrap()));
        assert_eq!(s.services["d"].dp_id, 1);
    }

    #[test]
    fn no_service_beyond_what_a_data_plane_balances() {
        let mut s = State::default();
        for n in 1..warren_common::MAX_SERVICES {
            let mut svc = service(&format!("s{n}"), &format!("svc-{n}"));
            svc.dp_id = n;
            s.services.insert(svc.id.clone(), svc);
        }
        let before = s.clone();
        let e = s.apply(&create(service("x", "one-too-many")), &mut vec![]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot create service one-too-many: the cluster already has 16383 services, the most a node's data plane balances"
        );
        assert!(s == before, "a refused create changes nothing");
    }
}
