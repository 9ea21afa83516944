//! Tasks: what the orchestrator creates, places, stops and removes, and what the
//! agents report. These commands apply to every task they still can and skip the
//! rest (gone, moved on, or reported by the wrong node); they never fail.

use super::{change, Versioned};
use crate::model::{Task, TaskState, TaskStatus};
use crate::store::state::{Action, Change, ObjectKind, State};
use crate::store::ApplyError;

impl State {
    pub(super) fn create_tasks(&mut self, tasks: &[Task], changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        for t in tasks {
            if !self.services.contains_key(&t.service_id) || self.tasks.contains_key(&t.id) {
                continue;
            }
            self.tasks.insert(t.id.clone(), t.clone());
            changes.push(change(ObjectKind::Task, Action::Created, &t.id, ""));
        }
        Ok(())
    }

    pub(super) fn assign_tasks(
        &mut self,
        assignments: &[(String, String)],
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
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
            t.status.timestamp_ms = at_ms;
            t.touch(at_ms);
            changes.push(change(ObjectKind::Task, Action::Updated, task_id, ""));
        }
        Ok(())
    }

    pub(super) fn set_tasks_pending(
        &mut self,
        updates: &[(String, String)],
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        for (task_id, message) in updates {
            let Some(t) = self.tasks.get_mut(task_id) else {
                continue;
            };
            if t.status.state > TaskState::Pending || t.status.message == *message {
                continue;
            }
            t.status.state = TaskState::Pending;
            t.status.message = message.clone();
            t.status.timestamp_ms = at_ms;
            t.touch(at_ms);
            changes.push(change(ObjectKind::Task, Action::Updated, task_id, ""));
        }
        Ok(())
    }

    pub(super) fn set_tasks_desired(
        &mut self,
        ids: &[String],
        desired: TaskState,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        for id in ids {
            let Some(t) = self.tasks.get_mut(id) else {
                continue;
            };
            if t.desired_state == desired {
                continue;
            }
            t.desired_state = desired;
            t.touch(at_ms);
            changes.push(change(ObjectKind::Task, Action::Updated, id, ""));
        }
        Ok(())
    }

    pub(super) fn report_task_status(
        &mut self,
        node_id: &str,
        reports: &[(String, TaskStatus)],
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        for (task_id, status) in reports {
            let Some(t) = self.tasks.get_mut(task_id) else {
                continue;
            };
            if t.node_id.as_deref() != Some(node_id) {
                continue;
            }
            if status.state < t.status.state || t.status.state.is_terminal() && status.state != t.status.state {
                continue;
            }
            if t.status == *status {
                continue;
            }
            t.status = status.clone();
            // The agent's clock: the time of the state it reports.
            t.touch(status.timestamp_ms);
            changes.push(change(ObjectKind::Task, Action::Updated, task_id, ""));
        }
        Ok(())
    }

    pub(super) fn orphan_tasks(
        &mut self,
        ids: &[String],
        message: &str,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        for id in ids {
            let Some(t) = self.tasks.get_mut(id) else {
                continue;
            };
            if t.status.state.is_terminal() {
                continue;
            }
            t.status.state = TaskState::Orphaned;
            t.status.message = message.to_string();
            t.status.timestamp_ms = at_ms;
            t.touch(at_ms);
            changes.push(change(ObjectKind::Task, Action::Updated, id, ""));
        }
        Ok(())
    }

    pub(super) fn remove_tasks(&mut self, ids: &[String], changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        for id in ids {
            if self.tasks.remove(id).is_some() {
                changes.push(change(ObjectKind::Task, Action::Removed, id, ""));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Mount, TaskState, TaskStatus, Volume};
    use crate::store::fixtures::{node, service, task};
    use crate::store::{Command, Rules, State};

    fn create(service: crate::model::Service) -> Command {
        Command::CreateService {
            service,
            rules: Rules::CURRENT,
        }
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
        s.apply(&create(svc.clone()), &mut ch).unwrap();
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
        s.apply(&create(svc.clone()), &mut ch).unwrap();
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
        s.apply(&create(svc.clone()), &mut ch).unwrap();
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
}
