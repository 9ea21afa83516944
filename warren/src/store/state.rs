//! The cluster state as the managers replicate it, in memory, and the pure function
//! that applies one `Command` to it. Applying is deterministic (no clock, no
//! randomness, no I/O) and reports every object it touched as a `Change`, which the
//! state machine persists to redb and publishes as events.

use super::command::{ApplyError, Command};
use crate::model::{ClusterMeta, Node, NodeRole, Resources, Secret, Service, Task, TaskState, Volume};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    Cluster,
    Node,
    Service,
    Task,
    Secret,
    Volume,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Created,
    Updated,
    Removed,
}

/// One object touched by an applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ObjectKind,
    pub action: Action,
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub meta: Option<ClusterMeta>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
    pub secrets: BTreeMap<String, Secret>,
    pub volumes: BTreeMap<String, Volume>,
}

/// Finds an object by exact ID, exact name, or unique ID prefix, the way Docker does.
fn resolve<'a, T>(
    map: &'a BTreeMap<String, T>,
    name_of: impl Fn(&T) -> &str,
    what: &str,
    key: &str,
) -> Result<&'a T, ApplyError> {
    if key.is_empty() {
        return Err(ApplyError::Invalid(format!("{what}: a name or ID is required")));
    }
    if let Some(v) = map.get(key) {
        return Ok(v);
    }
    if let Some(v) = map.values().find(|v| name_of(v) == key) {
        return Ok(v);
    }
    let mut prefixed = map.range(key.to_string()..).take_while(|(id, _)| id.starts_with(key));
    match (prefixed.next(), prefixed.next()) {
        (Some((_, v)), None) => Ok(v),
        (Some(_), Some(_)) => Err(ApplyError::Invalid(format!(
            "{what} {key:?} is ambiguous: several IDs start with it"
        ))),
        _ => Err(ApplyError::NotFound(format!("{what} {key:?} not found"))),
    }
}

impl State {
    pub fn service(&self, key: &str) -> Result<&Service, ApplyError> {
        resolve(&self.services, |s| &s.name, "service", key)
    }

    pub fn node(&self, key: &str) -> Result<&Node, ApplyError> {
        resolve(&self.nodes, |n| &n.name, "node", key)
    }

    pub fn task(&self, key: &str) -> Result<&Task, ApplyError> {
        resolve(&self.tasks, |t| &t.id, "task", key)
    }

    pub fn secret(&self, key: &str) -> Result<&Secret, ApplyError> {
        resolve(&self.secrets, |s| &s.name, "secret", key)
    }

    pub fn volume(&self, key: &str) -> Result<&Volume, ApplyError> {
        resolve(&self.volumes, |v| &v.name, "volume", key)
    }

    pub fn tasks_of_service<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| t.service_id == service_id)
    }

    pub fn tasks_on_node<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.node_id.as_deref() == Some(node_id))
    }

    /// Sum of the reservations of the live tasks on each node.
    pub fn reserved_by_node(&self) -> BTreeMap<String, Resources> {
        let mut out: BTreeMap<String, Resources> = BTreeMap::new();
        for t in self.tasks.values() {
            if let (Some(node), true) = (&t.node_id, t.is_live()) {
                let r = out.entry(node.clone()).or_default();
                *r = r.saturating_add(t.spec.reservations);
            }
        }
        out
    }

    /// Applies one command, appending what it touched to `changes`. A command that
    /// fails changes nothing (a batch keeps the parts that succeeded).
    pub fn apply(&mut self, cmd: &Command, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        match cmd {
            Command::Bootstrap { meta, node } => {
                if self.meta.is_some() {
                    return Err(ApplyError::AlreadyExists("the cluster is already initialized".into()));
                }
                let mut node = node.clone();
                node.subnet = Some(allocate_subnet(&meta.pod_cidr, &self.nodes, &node.name)?);
                self.meta = Some(meta.clone());
                changes.push(change(ObjectKind::Cluster, Action::Created, &meta.cluster_id, ""));
                self.nodes.insert(node.id.clone(), node.clone());
                changes.push(change(ObjectKind::Node, Action::Created, &node.id, &node.name));
                Ok(())
            }
            Command::RotateJoinToken { role, secret } => {
                let meta = self
                    .meta
                    .as_mut()
                    .ok_or_else(|| ApplyError::Invalid("the cluster is not initialized".into()))?;
                match role {
                    NodeRole::Worker => meta.worker_token_secret = secret.clone(),
                    NodeRole::Manager => meta.manager_token_secret = secret.clone(),
                }
                changes.push(change(ObjectKind::Cluster, Action::Updated, &meta.cluster_id, ""));
                Ok(())
            }
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) {
                    return Err(ApplyError::AlreadyExists(format!("node {} already exists", node.id)));
                }
                if let Some(other) = self.nodes.values().find(|n| n.name == node.name) {
                    return Err(ApplyError::AlreadyExists(format!(
                        "node name {:?} is already used by node {}: remove it with `warren node rm {}` or pick another --node-name",
                        node.name, other.id, other.name
                    )));
                }
                let mut node = node.clone();
                if let Some(meta) = &self.meta {
                    node.subnet = Some(allocate_subnet(&meta.pod_cidr, &self.nodes, &node.name)?);
                }
                self.nodes.insert(node.id.clone(), node.clone());
                changes.push(change(ObjectKind::Node, Action::Created, &node.id, &node.name));
                Ok(())
            }
            Command::NodeHello {
                id,
                resources,
                platform,
                warren_version,
                at_ms,
            } => {
                let node = self.node_mut(id)?;
                node.resources = *resources;
                node.platform = platform.clone();
                node.warren_version = warren_version.clone();
                node.state = crate::model::NodeState::Ready;
                node.message.clear();
                node.updated_ms = *at_ms;
                node.version += 1;
                changes.push(change(ObjectKind::Node, Action::Updated, id, &node.name.clone()));
                Ok(())
            }
            Command::SetNodeState {
                id,
                state,
                message,
                at_ms,
            } => {
                let node = self.node_mut(id)?;
                if node.state == *state && node.message == *message {
                    return Ok(());
                }
                node.state = *state;
                node.message = message.clone();
                node.updated_ms = *at_ms;
                node.version += 1;
                changes.push(change(ObjectKind::Node, Action::Updated, id, &node.name.clone()));
                Ok(())
            }
            Command::UpdateNode {
                id,
                availability,
                label_add,
                label_rm,
                at_ms,
            } => {
                let node = self.node_mut(id)?;
                if let Some(a) = availability {
                    node.availability = *a;
                }
                for k in label_rm {
                    node.labels.remove(k);
                }
                for (k, v) in label_add {
                    node.labels.insert(k.clone(), v.clone());
                }
                node.updated_ms = *at_ms;
                node.version += 1;
                changes.push(change(ObjectKind::Node, Action::Updated, id, &node.name.clone()));
                Ok(())
            }
            Command::RemoveNode { id } => {
                let node = self
                    .nodes
                    .remove(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("node {id:?} not found")))?;
                changes.push(change(ObjectKind::Node, Action::Removed, id, &node.name));
                for t in self.tasks.values_mut() {
                    if t.node_id.as_deref() == Some(id.as_str()) && !t.status.state.is_terminal() {
                        t.status.state = TaskState::Orphaned;
                        t.status.message = format!("node {} was removed", node.name);
                        t.version += 1;
                        changes.push(change(ObjectKind::Task, Action::Updated, &t.id, ""));
                    }
                }
                Ok(())
            }
            Command::CreateService { service } => {
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
                let mut service = service.clone();
                let used: std::collections::HashSet<u32> = self.services.values().map(|s| s.dp_id).collect();
                // Every node's data plane numbers services 0..MAX_SERVICES.
                service.dp_id = (1..warren_common::MAX_SERVICES).find(|n| !used.contains(n)).ok_or_else(|| {
                    ApplyError::Invalid(format!(
                        "cannot create service {}: the cluster already has {} services, the most a node's data plane balances",
                        service.name,
                        warren_common::MAX_SERVICES - 1
                    ))
                })?;
                service.vip = match service.spec.endpoint_mode {
                    crate::model::EndpointMode::Vip => Some(self.allocate_vip(&service.name)?),
                    crate::model::EndpointMode::Dnsrr => None,
                };
                self.services.insert(service.id.clone(), service.clone());
                changes.push(change(ObjectKind::Service, Action::Created, &service.id, &service.name));
                Ok(())
            }
            Command::UpdateService {
                id,
                expected_version,
                spec,
                at_ms,
            } => {
                let svc = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("service {id:?} not found")))?;
                if svc.version != *expected_version {
                    return Err(ApplyError::Conflict(format!(
                        "service {:?} changed since it was read (version {} read, now {}): read it again and retry",
                        svc.name, expected_version, svc.version
                    )));
                }
                let changed = spec_differs_beyond_scale(&svc.spec, spec);
                if changed && svc.canary.is_some() {
                    return Err(ApplyError::Invalid(format!(
                        "service {:?} has a canary running: promote it or roll it back first (scaling and --canary-weight are allowed)",
                        svc.name
                    )));
                }
                let (name, old_mode) = (svc.name.clone(), svc.spec.endpoint_mode);
                let vip = match (old_mode, spec.endpoint_mode) {
                    (crate::model::EndpointMode::Dnsrr, crate::model::EndpointMode::Vip) => {
                        Some(Some(self.allocate_vip(&name)?))
                    }
                    (crate::model::EndpointMode::Vip, crate::model::EndpointMode::Dnsrr) => Some(None),
                    _ => None,
                };
                let svc = self.services.get_mut(id).expect("checked above");
                if let Some(v) = vip {
                    svc.vip = v;
                }
                if changed {
                    svc.previous_spec = Some(svc.spec.clone());
                    svc.spec_version = svc.spec_version.max(svc.canary.as_ref().map_or(0, |c| c.spec_version)) + 1;
                }
                svc.spec = spec.clone();
                svc.version += 1;
                svc.updated_ms = *at_ms;
                changes.push(change(ObjectKind::Service, Action::Updated, id, &name));
                Ok(())
            }
            Command::ScaleService { id, replicas, at_ms } => {
                let svc = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("service {id:?} not found")))?;
                match &mut svc.spec.mode {
                    crate::model::ServiceMode::Replicated { replicas: r } => *r = *replicas,
                    crate::model::ServiceMode::Global => {
                        return Err(ApplyError::Invalid(format!(
                            "replicas: service {:?} is global; only replicated services can be scaled",
                            svc.name
                        )))
                    }
                }
                svc.version += 1;
                svc.updated_ms = *at_ms;
                changes.push(change(ObjectKind::Service, Action::Updated, id, &svc.name.clone()));
                Ok(())
            }
            Command::RemoveService { id, at_ms } => {
                let svc = self
                    .services
                    .remove(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("service {id:?} not found")))?;
                changes.push(change(ObjectKind::Service, Action::Removed, id, &svc.name));
                for t in self.tasks.values_mut() {
                    if t.service_id == *id && t.desired_state != TaskState::Remove {
                        t.desired_state = TaskState::Remove;
                        t.updated_ms = *at_ms;
                        t.version += 1;
                        changes.push(change(ObjectKind::Task, Action::Updated, &t.id, ""));
                    }
                }
                Ok(())
            }
            Command::StartCanary {
                id,
                expected_version,
                spec,
                weight,
                at_ms,
            } => {
                let svc = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("service {id:?} not found")))?;
                if svc.version != *expected_version {
                    return Err(ApplyError::Conflict(format!(
                        "service {:?} changed since it was read (version {} read, now {}): read it again and retry",
                        svc.name, expected_version, svc.version
                    )));
                }
                if svc.spec.mode == crate::model::ServiceMode::Global {
                    return Err(ApplyError::Invalid(format!(
                        "canary-weight: service {:?} is global; canaries need a replicated service",
                        svc.name
                    )));
                }
                if *weight > 100 {
                    return Err(ApplyError::Invalid(format!("canary-weight: {weight} is more than 100")));
                }
                let next = svc.spec_version.max(svc.canary.as_ref().map_or(0, |c| c.spec_version)) + 1;
                let mut canary_spec = spec.clone();
                // The canary keeps the stable version's scale; only the stable replica
                // count says how many tasks the service has.
                canary_spec.mode = svc.spec.mode;
                svc.canary = Some(crate::model::Canary {
                    spec: canary_spec,
                    spec_version: next,
                    weight: *weight,
                });
                svc.version += 1;
                svc.updated_ms = *at_ms;
                changes.push(change(ObjectKind::Service, Action::Updated, id, &svc.name.clone()));
                Ok(())
            }
            Command::SetCanaryWeight { id, weight, at_ms } => {
                let svc = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("service {id:?} not found")))?;
                if *weight > 100 {
                    return Err(ApplyError::Invalid(format!("canary-weight: {weight} is more than 100")));
                }
                let name = svc.name.clone();
                let canary = svc.canary.as_mut().ok_or_else(|| {
                    ApplyError::Invalid(format!(
                        "canary-weight: service {name:?} has no canary: start one with `warren service update {name} --image IMG --canary-weight W`"
                    ))
                })?;
                canary.weight = *weight;
                svc.version += 1;
                svc.updated_ms = *at_ms;
                changes.push(change(ObjectKind::Service, Action::Updated, id, &name));
                Ok(())
            }
            Command::PromoteCanary { id, at_ms } => {
                let svc = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("service {id:?} not found")))?;
                let name = svc.name.clone();
                let canary = svc
                    .canary
                    .take()
                    .ok_or_else(|| ApplyError::Invalid(format!("service {name:?} has no canary to promote")))?;
                let mut spec = canary.spec;
                spec.mode = svc.spec.mode;
                svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec));
                svc.spec_version = canary.spec_version;
                svc.version += 1;
                svc.updated_ms = *at_ms;
                changes.push(change(ObjectKind::Service, Action::Updated, id, &name));
                // The canary tasks become stable ones, in the first slots: the
                // orchestrator keeps them (the newest task of a slot wins) and replaces
                // the rest of the old version.
                let mut slot = 0;
                let mut promoted: Vec<&mut Task> = self
                    .tasks
                    .values_mut()
                    .filter(|t| t.service_id == *id && t.canary && t.is_live())
                    .collect();
                promoted.sort_by_key(|t| t.slot);
                for t in promoted {
                    slot += 1;
                    t.canary = false;
                    t.slot = slot;
                    t.version += 1;
                    t.updated_ms = *at_ms;
                    changes.push(change(ObjectKind::Task, Action::Updated, &t.id, ""));
                }
                Ok(())
            }
            Command::RollbackService { id, at_ms } => {
                let svc = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("service {id:?} not found")))?;
                let name = svc.name.clone();
                if svc.canary.take().is_none() {
                    let previous = svc.previous_spec.take().ok_or_else(|| {
                        ApplyError::Invalid(format!(
                            "service {name:?} has no canary and no previous version to roll back to"
                        ))
                    })?;
                    let mut previous = previous;
                    previous.mode = svc.spec.mode;
                    svc.previous_spec = Some(std::mem::replace(&mut svc.spec, previous));
                    svc.spec_version += 1;
                }
                svc.version += 1;
                svc.updated_ms = *at_ms;
                changes.push(change(ObjectKind::Service, Action::Updated, id, &name));
                Ok(())
            }
            Command::CreateTasks { tasks } => {
                for t in tasks {
                    if !self.services.contains_key(&t.service_id) || self.tasks.contains_key(&t.id) {
                        continue;
                    }
                    self.tasks.insert(t.id.clone(), t.clone());
                    changes.push(change(ObjectKind::Task, Action::Created, &t.id, ""));
                }
                Ok(())
            }
            Command::AssignTasks { assignments, at_ms } => {
                for (task_id, node_id) in assignments {
                    if !self.nodes.contains_key(node_id) {
                        continue;
                    }
                    let Some(t) = self.tasks.get_mut(task_id) else {
                        continue;
                    };
                    if t.status.state != TaskState::Pending || t.desired_state > TaskState::Running {
                        continue;
                    }
                    // A local volume lives where its first task runs.
                    for name in t.spec.volume_names() {
                        if let Some(v) = self.volumes.values_mut().find(|v| v.name == name) {
                            if v.node_id.is_none() {
                                v.node_id = Some(node_id.clone());
                                changes.push(change(ObjectKind::Volume, Action::Updated, &v.id, &v.name));
                            }
                        }
                    }
                    t.node_id = Some(node_id.clone());
                    t.status.state = TaskState::Assigned;
                    t.status.message = "scheduled".into();
                    t.status.timestamp_ms = *at_ms;
                    t.updated_ms = *at_ms;
                    t.version += 1;
                    changes.push(change(ObjectKind::Task, Action::Updated, task_id, ""));
                }
                Ok(())
            }
            Command::SetTasksPending { updates, at_ms } => {
                for (task_id, message) in updates {
                    let Some(t) = self.tasks.get_mut(task_id) else {
                        continue;
                    };
                    if t.status.state > TaskState::Pending || t.status.message == *message {
                        continue;
                    }
                    t.status.state = TaskState::Pending;
                    t.status.message = message.clone();
                    t.status.timestamp_ms = *at_ms;
                    t.updated_ms = *at_ms;
                    t.version += 1;
                    changes.push(change(ObjectKind::Task, Action::Updated, task_id, ""));
                }
                Ok(())
            }
            Command::SetTasksDesired { ids, desired, at_ms } => {
                for id in ids {
                    let Some(t) = self.tasks.get_mut(id) else {
                        continue;
                    };
                    if t.desired_state == *desired {
                        continue;
                    }
                    t.desired_state = *desired;
                    t.updated_ms = *at_ms;
                    t.version += 1;
                    changes.push(change(ObjectKind::Task, Action::Updated, id, ""));
                }
                Ok(())
            }
            Command::ReportTaskStatus { node_id, reports } => {
                for (task_id, status) in reports {
                    let Some(t) = self.tasks.get_mut(task_id) else {
                        continue;
                    };
                    if t.node_id.as_deref() != Some(node_id.as_str()) {
                        continue;
                    }
                    if status.state < t.status.state || t.status.state.is_terminal() && status.state != t.status.state {
                        continue;
                    }
                    if t.status == *status {
                        continue;
                    }
                    t.status = status.clone();
                    t.updated_ms = status.timestamp_ms;
                    t.version += 1;
                    changes.push(change(ObjectKind::Task, Action::Updated, task_id, ""));
                }
                Ok(())
            }
            Command::OrphanTasks { ids, message, at_ms } => {
                for id in ids {
                    let Some(t) = self.tasks.get_mut(id) else {
                        continue;
                    };
                    if t.status.state.is_terminal() {
                        continue;
                    }
                    t.status.state = TaskState::Orphaned;
                    t.status.message = message.clone();
                    t.status.timestamp_ms = *at_ms;
                    t.updated_ms = *at_ms;
                    t.version += 1;
                    changes.push(change(ObjectKind::Task, Action::Updated, id, ""));
                }
                Ok(())
            }
            Command::RemoveTasks { ids } => {
                for id in ids {
                    if self.tasks.remove(id).is_some() {
                        changes.push(change(ObjectKind::Task, Action::Removed, id, ""));
                    }
                }
                Ok(())
            }
            Command::CreateSecret { secret } => {
                if self.secrets.values().any(|s| s.name == secret.name) || self.secrets.contains_key(&secret.id) {
                    return Err(ApplyError::AlreadyExists(format!(
                        "secret {:?} already exists",
                        secret.name
                    )));
                }
                self.secrets.insert(secret.id.clone(), secret.clone());
                changes.push(change(ObjectKind::Secret, Action::Created, &secret.id, &secret.name));
                Ok(())
            }
            Command::RemoveSecret { id } => {
                let s = self
                    .secrets
                    .remove(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("secret {id:?} not found")))?;
                changes.push(change(ObjectKind::Secret, Action::Removed, id, &s.name));
                Ok(())
            }
            Command::CreateVolume { volume } => {
                if self.volumes.values().any(|v| v.name == volume.name) || self.volumes.contains_key(&volume.id) {
                    return Err(ApplyError::AlreadyExists(format!(
                        "volume {:?} already exists",
                        volume.name
                    )));
                }
                self.volumes.insert(volume.id.clone(), volume.clone());
                changes.push(change(ObjectKind::Volume, Action::Created, &volume.id, &volume.name));
                Ok(())
            }
            Command::RemoveVolume { id } => {
                let v = self
                    .volumes
                    .remove(id)
                    .ok_or_else(|| ApplyError::NotFound(format!("volume {id:?} not found")))?;
                changes.push(change(ObjectKind::Volume, Action::Removed, id, &v.name));
                Ok(())
            }
            Command::Batch(cmds) => {
                let mut first_err = None;
                for c in cmds {
                    if let Err(e) = self.apply(c, changes) {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            }
        }
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

    fn node_mut(&mut self, id: &str) -> Result<&mut Node, ApplyError> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| ApplyError::NotFound(format!("node {id:?} not found")))
    }
}

/// The first /24 of `cidr` no node uses yet. Deterministic, so every manager
/// applying the same command picks the same subnet.
fn allocate_subnet(cidr: &str, nodes: &BTreeMap<String, Node>, node_name: &str) -> Result<String, ApplyError> {
    let invalid = || ApplyError::Invalid(format!("the cluster CIDR {cidr:?} is not a valid IPv4 CIDR"));
    let (ip, len) = cidr.split_once('/').ok_or_else(invalid)?;
    let base = u32::from(ip.parse::<std::net::Ipv4Addr>().map_err(|_| invalid())?);
    let len: u32 = len.parse().map_err(|_| invalid())?;
    if len > 24 {
        return Err(invalid());
    }
    let used: std::collections::BTreeSet<&str> = nodes.values().filter_map(|n| n.subnet.as_deref()).collect();
    for i in 0..(1u32 << (24 - len)) {
        let subnet = format!("{}/24", std::net::Ipv4Addr::from(base + (i << 8)));
        if !used.contains(subnet.as_str()) {
            return Ok(subnet);
        }
    }
    Err(ApplyError::Invalid(format!(
        "no free /24 left in the cluster CIDR {cidr} for node {node_name}: remove nodes that are gone, or re-create the cluster with a larger --pod-cidr"
    )))
}

/// Whether running tasks must be replaced: anything but the replica count changed.
pub fn spec_differs_beyond_scale(a: &crate::model::ServiceSpec, b: &crate::model::ServiceSpec) -> bool {
    let mut a = a.clone();
    let mut b = b.clone();
    if let (crate::model::ServiceMode::Replicated { .. }, crate::model::ServiceMode::Replicated { .. }) =
        (a.mode, b.mode)
    {
        a.mode = crate::model::ServiceMode::Replicated { replicas: 0 };
        b.mode = crate::model::ServiceMode::Replicated { replicas: 0 };
    }
    a != b
}

fn change(kind: ObjectKind, action: Action, id: &str, name: &str) -> Change {
    Change {
        kind,
        action,
        id: id.to_string(),
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    pub(crate) fn node(id: &str, name: &str) -> Node {
        Node {
            id: id.into(),
            name: name.into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: Default::default(),
            addr: "127.0.0.1:1".into(),
            resources: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            },
            platform: Platform::current(),
            state: NodeState::Ready,
            message: String::new(),
            raft_id: 0,
            subnet: None,
            warren_version: String::new(),
            created_ms: 0,
            updated_ms: 0,
            version: 1,
        }
    }

    fn service(id: &str, name: &str) -> Service {
        Service {
            id: id.into(),
            name: name.into(),
            spec: ServiceSpec {
                image: "img".into(),
                mode: ServiceMode::Replicated { replicas: 1 },
                ..Default::default()
            },
            version: 1,
            spec_version: 1,
            created_ms: 0,
            updated_ms: 0,
            vip: None,
            dp_id: 0,
            canary: None,
            previous_spec: None,
        }
    }

    fn task(id: &str, svc: &Service) -> Task {
        Task {
            id: id.into(),
            service_id: svc.id.clone(),
            service_name: svc.name.clone(),
            slot: 1,
            node_id: None,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Pending,
                ..Default::default()
            },
            spec: svc.spec.clone(),
            spec_version: 1,
            attempt: 0,
            canary: false,
            created_ms: 0,
            updated_ms: 0,
            version: 1,
        }
    }

    #[test]
    fn duplicate_service_names_are_refused_and_change_nothing() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::CreateService {
                service: service("a", "web"),
            },
            &mut ch,
        )
        .unwrap();
        let before = s.clone();
        let mut ch2 = vec![];
        let err = s
            .apply(
                &Command::CreateService {
                    service: service("b", "web"),
                },
                &mut ch2,
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "service \"web\" already exists");
        assert_eq!(s, before);
        assert!(ch2.is_empty());
    }

    #[test]
    fn update_with_a_stale_version_conflicts() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::CreateService {
                service: service("a", "web"),
            },
            &mut ch,
        )
        .unwrap();
        let mut spec = s.services["a"].spec.clone();
        spec.image = "img:2".into();
        s.apply(
            &Command::UpdateService {
                id: "a".into(),
                expected_version: 1,
                spec: spec.clone(),
                at_ms: 5,
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
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(matches!(err, ApplyError::Conflict(_)));
    }

    #[test]
    fn scaling_does_not_change_the_spec_version() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::CreateService {
                service: service("a", "web"),
            },
            &mut ch,
        )
        .unwrap();
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
        s.apply(&Command::CreateService { service: svc.clone() }, &mut ch)
            .unwrap();
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
    fn assignment_only_places_pending_tasks_on_known_nodes() {
        let mut s = State::default();
        let mut ch = vec![];
        let svc = service("a", "web");
        s.apply(
            &Command::AddNode {
                node: node("n1", "one"),
            },
            &mut ch,
        )
        .unwrap();
        s.apply(&Command::CreateService { service: svc.clone() }, &mut ch)
            .unwrap();
        s.apply(
            &Command::CreateTasks {
                tasks: vec![task("t1", &svc), task("t2", &svc)],
            },
            &mut ch,
        )
        .unwrap();
        s.apply(
            &Command::AssignTasks {
                assignments: vec![("t1".into(), "n1".into()), ("t2".into(), "nope".into())],
                at_ms: 1,
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.tasks["t1"].node_id.as_deref(), Some("n1"));
        assert_eq!(s.tasks["t1"].status.state, TaskState::Assigned);
        assert_eq!(s.tasks["t2"].node_id, None);
    }

    #[test]
    fn status_reports_never_move_a_task_backwards_or_come_from_another_node() {
        let mut s = State::default();
        let mut ch = vec![];
        let svc = service("a", "web");
        s.apply(
            &Command::AddNode {
                node: node("n1", "one"),
            },
            &mut ch,
        )
        .unwrap();
        s.apply(&Command::CreateService { service: svc.clone() }, &mut ch)
            .unwrap();
        s.apply(
            &Command::CreateTasks {
                tasks: vec![task("t1", &svc)],
            },
            &mut ch,
        )
        .unwrap();
        s.apply(
            &Command::AssignTasks {
                assignments: vec![("t1".into(), "n1".into())],
                at_ms: 1,
            },
            &mut ch,
        )
        .unwrap();
        let running = TaskStatus {
            state: TaskState::Running,
            ..Default::default()
        };
        s.apply(
            &Command::ReportTaskStatus {
                node_id: "n2".into(),
                reports: vec![("t1".into(), running.clone())],
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.tasks["t1"].status.state, TaskState::Assigned);
        s.apply(
            &Command::ReportTaskStatus {
                node_id: "n1".into(),
                reports: vec![("t1".into(), running)],
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.tasks["t1"].status.state, TaskState::Running);
        let back = TaskStatus {
            state: TaskState::Starting,
            ..Default::default()
        };
        s.apply(
            &Command::ReportTaskStatus {
                node_id: "n1".into(),
                reports: vec![("t1".into(), back)],
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.tasks["t1"].status.state, TaskState::Running);
    }

    #[test]
    fn resolve_by_name_id_and_prefix() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::CreateService {
                service: service("abc123", "web"),
            },
            &mut ch,
        )
        .unwrap();
        s.apply(
            &Command::CreateService {
                service: service("abd456", "api"),
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.service("web").unwrap().id, "abc123");
        assert_eq!(s.service("abc123").unwrap().name, "web");
        assert_eq!(s.service("abd").unwrap().name, "api");
        assert!(matches!(s.service("ab"), Err(ApplyError::Invalid(_))));
        assert!(matches!(s.service("zzz"), Err(ApplyError::NotFound(_))));
    }

    #[test]
    fn nodes_get_distinct_subnets_of_the_cluster_cidr_and_reuse_freed_ones() {
        let mut s = State::default();
        let mut ch = vec![];
        let meta = ClusterMeta {
            pod_cidr: "10.88.0.0/23".into(),
            ..Default::default()
        };
        s.apply(
            &Command::Bootstrap {
                meta,
                node: node("n1", "one"),
            },
            &mut ch,
        )
        .unwrap();
        s.apply(
            &Command::AddNode {
                node: node("n2", "two"),
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.nodes["n1"].subnet.as_deref(), Some("10.88.0.0/24"));
        assert_eq!(s.nodes["n2"].subnet.as_deref(), Some("10.88.1.0/24"));
        let err = s
            .apply(
                &Command::AddNode {
                    node: node("n3", "three"),
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(err.to_string().contains("no free /24 left"), "{err}");
        assert!(!s.nodes.contains_key("n3"));
        s.apply(&Command::RemoveNode { id: "n1".into() }, &mut ch).unwrap();
        s.apply(
            &Command::AddNode {
                node: node("n3", "three"),
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.nodes["n3"].subnet.as_deref(), Some("10.88.0.0/24"));
    }

    #[test]
    fn services_get_distinct_vips_and_data_plane_ids_that_are_reused() {
        let mut s = State::default();
        let mut ch = vec![];
        for (id, name) in [("a", "one"), ("b", "two")] {
            s.apply(
                &Command::CreateService {
                    service: service(id, name),
                },
                &mut ch,
            )
            .unwrap();
        }
        let mut dnsrr = service("c", "three");
        dnsrr.spec.endpoint_mode = EndpointMode::Dnsrr;
        s.apply(&Command::CreateService { service: dnsrr }, &mut ch).unwrap();
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
        s.apply(
            &Command::CreateService {
                service: service("d", "four"),
            },
            &mut ch,
        )
        .unwrap();
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
        let e = s
            .apply(
                &Command::CreateService {
                    service: service("x", "one-too-many"),
                },
                &mut vec![],
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot create service one-too-many: the cluster already has 16383 services, the most a node's data plane balances"
        );
        assert!(s == before, "a refused create changes nothing");
    }

    #[test]
    fn canary_lifecycle() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::CreateService {
                service: service("a", "web"),
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

    #[test]
    fn a_local_volume_is_bound_to_the_node_of_its_first_task() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::AddNode {
                node: node("n1", "one"),
            },
            &mut ch,
        )
        .unwrap();
        let vol = Volume {
            id: "v1".into(),
            name: "data".into(),
            driver: "local".into(),
            node_id: None,
            labels: Default::default(),
            options: Default::default(),
            created_ms: 0,
        };
        s.apply(&Command::CreateVolume { volume: vol }, &mut ch).unwrap();
        let mut svc = service("a", "db");
        svc.spec.mounts = vec![Mount::parse("m", "type=volume,source=data,target=/data").unwrap()];
        s.apply(&Command::CreateService { service: svc.clone() }, &mut ch)
            .unwrap();
        s.apply(
            &Command::CreateTasks {
                tasks: vec![task("t1", &svc)],
            },
            &mut ch,
        )
        .unwrap();
        s.apply(
            &Command::AssignTasks {
                assignments: vec![("t1".into(), "n1".into())],
                at_ms: 1,
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.volumes["v1"].node_id.as_deref(), Some("n1"));
    }

    #[test]
    fn duplicate_node_names_are_refused_with_a_hint() {
        let mut s = State::default();
        let mut ch = vec![];
        s.apply(
            &Command::AddNode {
                node: node("n1", "edge"),
            },
            &mut ch,
        )
        .unwrap();
        let err = s
            .apply(
                &Command::AddNode {
                    node: node("n2", "edge"),
                },
                &mut ch,
            )
            .unwrap_err();
        assert!(err.to_string().contains("warren node rm edge"), "{err}");
    }
}
