//! Tasks on the wire: states, statuses and tasks, in both directions.

use super::service::{spec_from_pb, spec_to_pb};
use crate::model::{Task, TaskState, TaskStatus, ValidationError};
use warren_proto::v1 as pb;

pub fn task_state_to_pb(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::New => pb::TaskState::New,
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Accepted => pb::TaskState::Accepted,
        TaskState::Preparing => pb::TaskState::Preparing,
        TaskState::Starting => pb::TaskState::Starting,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Complete => pb::TaskState::Complete,
        TaskState::Shutdown => pb::TaskState::Shutdown,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Rejected => pb::TaskState::Rejected,
        TaskState::Remove => pb::TaskState::Remove,
        TaskState::Orphaned => pb::TaskState::Orphaned,
    }
}

pub fn task_state_from_pb(v: i32) -> TaskState {
    match pb::TaskState::try_from(v).unwrap_or(pb::TaskState::New) {
        pb::TaskState::New => TaskState::New,
        pb::TaskState::Pending => TaskState::Pending,
        pb::TaskState::Assigned => TaskState::Assigned,
        pb::TaskState::Accepted => TaskState::Accepted,
        pb::TaskState::Preparing => TaskState::Preparing,
        pb::TaskState::Starting => TaskState::Starting,
        pb::TaskState::Running => TaskState::Running,
        pb::TaskState::Complete => TaskState::Complete,
        pb::TaskState::Shutdown => TaskState::Shutdown,
        pb::TaskState::Failed => TaskState::Failed,
        pb::TaskState::Rejected => TaskState::Rejected,
        pb::TaskState::Remove => TaskState::Remove,
        pb::TaskState::Orphaned => TaskState::Orphaned,
    }
}

pub fn task_status_to_pb(s: &TaskStatus) -> pb::TaskStatus {
    pb::TaskStatus {
        state: task_state_to_pb(s.state) as i32,
        message: s.message.clone(),
        err: s.err.clone(),
        timestamp_ms: s.timestamp_ms,
        exit_code: s.exit_code.unwrap_or(0),
        has_exit_code: s.exit_code.is_some(),
        container_id: s.container_id.clone(),
        addr: s.addr.clone(),
        health: s.health.clone(),
    }
}

pub fn task_status_from_pb(s: pb::TaskStatus) -> TaskStatus {
    TaskStatus {
        state: task_state_from_pb(s.state),
        message: s.message,
        err: s.err,
        timestamp_ms: s.timestamp_ms,
        exit_code: s.has_exit_code.then_some(s.exit_code),
        container_id: s.container_id,
        addr: s.addr,
        health: s.health,
    }
}

pub fn task_to_pb(t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        service_id: t.service_id.clone(),
        service_name: t.service_name.clone(),
        slot: t.slot,
        node_id: t.node_id.clone().unwrap_or_default(),
        desired_state: task_state_to_pb(t.desired_state) as i32,
        status: Some(task_status_to_pb(&t.status)),
        spec: Some(spec_to_pb(&t.spec)),
        spec_version: t.spec_version,
        created_ms: t.created_ms,
        updated_ms: t.updated_ms,
        version: t.version,
        attempt: t.attempt,
        canary: t.canary,
    }
}

pub fn task_from_pb(t: pb::Task) -> Result<Task, ValidationError> {
    Ok(Task {
        id: t.id,
        service_id: t.service_id,
        service_name: t.service_name,
        slot: t.slot,
        node_id: (!t.node_id.is_empty()).then_some(t.node_id),
        desired_state: task_state_from_pb(t.desired_state),
        status: task_status_from_pb(t.status.unwrap_or_default()),
        spec: spec_from_pb(t.spec.unwrap_or_default())?,
        spec_version: t.spec_version,
        attempt: t.attempt,
        canary: t.canary,
        created_ms: t.created_ms,
        updated_ms: t.updated_ms,
        version: t.version,
    })
}

/// Task states as an agent reports them.
pub fn reports_to_pb(reports: Vec<(String, TaskStatus)>) -> Vec<pb::TaskStatusReport> {
    reports
        .into_iter()
        .map(|(task_id, s)| pb::TaskStatusReport {
            task_id,
            status: Some(task_status_to_pb(&s)),
        })
        .collect()
}

/// The dispatcher's side; a report without a status is dropped.
pub fn reports_from_pb(reports: Vec<pb::TaskStatusReport>) -> Vec<(String, TaskStatus)> {
    reports
        .into_iter()
        .filter_map(|r| Some((r.task_id, task_status_from_pb(r.status?))))
        .collect()
}
