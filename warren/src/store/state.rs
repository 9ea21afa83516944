//! The cluster state as the managers replicate it, in memory, and the pure function
//! that applies one `Command` to it. Applying is deterministic (no clock, no
//! randomness, no I/O) and reports every object it touched as a `Change`, which the
//! state machine persists to redb and publishes as events.

use super::command::{ApplyError, Command};
use crate::model::{
    ClusterMeta, Node, NodeRole, Resources, Secret, Service, Task, TaskState, Volume,
};
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
        return Err(ApplyError::Invalid(format!(
            "{what}: a name or ID is required"
        )));
    }
    if let Some(v) = map.get(key) {
        return Ok(v);
    }
    if let Some(v) = map.values().find(|v| name_of(v) == key) {
        return Ok(v);
    }
    let mut prefixed = map
        .range(key.to_string()..)
        .take_while(|(id, _)| id.starts_with(key));
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

    pub fn tasks_of_service<'a>(
        &'a self,
        service_id: &'a str,
    ) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.service_id == service_id)
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
                    return Err(ApplyError::AlreadyExists(
                        "the cluster is already initialized".into(),
                    ));
                }
                self.meta = Some(meta.clone());
                changes.push(change(
                    ObjectKind::Cluster,
                    Action::Created,
                    &meta.cluster_id,
                    "",
                ));
                self.nodes.insert(node.id.clone(), node.clone());
                changes.push(change(
                    ObjectKind::Node,
                    Action::Created,
                    &node.id,
                    &node.name,
                ));
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
                changes.push(change(
                    ObjectKind::Cluster,
                    Action::Updated,
                    &meta.cluster_id,
                    "",
                ));
                Ok(())
            }
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) {
                    return Err(ApplyError::AlreadyExists(format!(
                        "node {} already exists",
                        node.id
                    )));
                }
                if let Some(other) = self.nodes.values().find(|n| n.name == node.name) {
                    return Err(ApplyError::AlreadyExists(format!(
                        "node name {:?} is already used by node {}: remove it with `warren node rm {}` or pick another --node-name",
                        node.name, other.id, other.name
                    )));
                }
                self.nodes.insert(node.id.clone(), node.clone());
                changes.push(change(
                    ObjectKind::Node,
                    Action::Created,
                    &node.id,
                    &node.name,
                ));
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
                changes.push(change(
                    ObjectKind::Node,
                    Action::Updated,
                    id,
                    &node.name.clone(),
                ));
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
                changes.push(change(
                    ObjectKind::Node,
                    Action::Updated,
                    id,
                    &node.name.clone(),
                ));
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
                changes.push(change(
                    ObjectKind::Node,
                    Action::Updated,
                    id,
                    &node.name.clone(),
                ));
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
                self.services.insert(service.id.clone(), service.clone());
                changes.push(change(
                    ObjectKind::Service,
                    Action::Created,
                    &service.id,
                    &service.name,
                ));
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
                if spec_differs_beyond_scale(&svc.spec, spec) {
                    svc.spec_version += 1;
                }
                svc.spec = spec.clone();
                svc.version += 1;
                svc.updated_ms = *at_ms;
                changes.push(change(
                    ObjectKind::Service,
                    Action::Updated,
                    id,
                    &svc.name.clone(),
                ));
                Ok(())
            }
            Command::ScaleService {
                id,
                replicas,
                at_ms,
            } => {
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
                changes.push(change(
                    ObjectKind::Service,
                    Action::Updated,
                    id,
                    &svc.name.clone(),
                ));
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
            Command::CreateTasks { tasks } => {
                for t in tasks {
                    if !self.services.contains_key(&t.service_id) || self.tasks.contains_key(&t.id)
                    {
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
                    if t.status.state != TaskState::Pending || t.desired_state > TaskState::Running
                    {
                        continue;
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
            Command::SetTasksDesired {
                ids,
                desired,
                at_ms,
            } => {
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
                    if status.state < t.status.state
                        || t.status.state.is_terminal() && status.state != t.status.state
                    {
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
            Command::OrphanTasks {
                ids,
                message,
                at_ms,
            } => {
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
                if self.secrets.values().any(|s| s.name == secret.name)
                    || self.secrets.contains_key(&secret.id)
                {
                    return Err(ApplyError::AlreadyExists(format!(
                        "secret {:?} already exists",
                        secret.name
                    )));
                }
                self.secrets.insert(secret.id.clone(), secret.clone());
                changes.push(change(
                    ObjectKind::Secret,
                    Action::Created,
                    &secret.id,
                    &secret.name,
                ));
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
                if self.volumes.values().any(|v| v.name == volume.name)
                    || self.volumes.contains_key(&volume.id)
                {
                    return Err(ApplyError::AlreadyExists(format!(
                        "volume {:?} already exists",
                        volume.name
                    )));
                }
                self.volumes.insert(volume.id.clone(), volume.clone());
                changes.push(change(
                    ObjectKind::Volume,
                    Action::Created,
                    &volume.id,
                    &volume.name,
                ));
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

    fn node_mut(&mut self, id: &str) -> Result<&mut Node, ApplyError> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| ApplyError::NotFound(format!("node {id:?} not found")))
    }
}

/// Whether running tasks must be replaced: anything but the replica count changed.
pub fn spec_differs_beyond_scale(
    a: &crate::model::ServiceSpec,
    b: &crate::model::ServiceSpec,
) -> bool {
    let mut a = a.clone();
    let mut b = b.clone();
    if let (
        crate::model::ServiceMode::Replicated { .. },
        crate::model::ServiceMode::Replicated { .. },
    ) = (a.mode, b.mode)
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
        s.apply(
            &Command::CreateService {
                service: svc.clone(),
            },
            &mut ch,
        )
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
        s.apply(
            &Command::CreateService {
                service: svc.clone(),
            },
            &mut ch,
        )
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
        s.apply(
            &Command::CreateService {
                service: svc.clone(),
            },
            &mut ch,
        )
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
