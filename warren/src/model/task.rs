//! Tasks: one scheduled instance of a service, with the spec it was created from,
//! where it is placed, what it should do (`desired_state`) and what it last reported
//! (`status`). States follow Swarm's so that `service ps` reads the same.

use super::ServiceSpec;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    #[default]
    New,
    /// Waiting for the scheduler to find a node.
    Pending,
    /// Placed on a node; the node has not acknowledged it yet.
    Assigned,
    Accepted,
    Preparing,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    /// Desired state only: stop the task and delete it.
    Remove,
    /// Its node went down; it may still run there, but it no longer counts.
    Orphaned,
}

impl TaskState {
    /// The task will not run again.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// Why the task is in this state ("no suitable node: ...", "exit code 1").
    pub message: String,
    pub err: String,
    pub timestamp_ms: i64,
    pub exit_code: Option<i32>,
    pub container_id: String,
    pub addr: String,
    /// `starting`, `healthy` or `unhealthy` while a health check runs; empty without one.
    #[serde(default)]
    pub health: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    /// 1-based replica number for replicated services, 0 for global ones.
    pub slot: u64,
    /// Set for global tasks at creation, for replicated ones by the scheduler.
    pub node_id: Option<String>,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    pub spec: ServiceSpec,
    pub spec_version: u64,
    /// Restarts of this slot so far (0 for the first task), for `max_attempts`.
    #[serde(default)]
    pub attempt: u64,
    /// A task of the service's canary version (its slots are counted apart).
    #[serde(default)]
    pub canary: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub version: u64,
}

impl Task {
    /// Counted towards the service's replicas: meant to run and not finished.
    pub fn is_live(&self) -> bool {
        self.desired_state <= TaskState::Running && !self.status.state.is_terminal()
    }

    /// Running and, if it has a health check, passing it: ready for traffic.
    pub fn is_up(&self) -> bool {
        let healthy = match self.status.health.as_str() {
            "healthy" => true,
            // A spec with its own check reports "starting" before it passes.
            "" => self
                .spec
                .health
                .as_ref()
                .is_none_or(|h| h.test == super::HealthTest::Disabled),
            _ => false,
        };
        self.is_live() && self.status.state == TaskState::Running && healthy
    }

    /// Swarm-style name: `web.2` for a replica, `web.<node>` for a global task.
    pub fn name(&self) -> String {
        if self.slot > 0 {
            format!("{}.{}", self.service_name, self.slot)
        } else {
            let node = self.node_id.as_deref().unwrap_or("unassigned");
            format!("{}.{}", self.service_name, &node[..node.len().min(12)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states() {
        assert!(!TaskState::Running.is_terminal());
        assert!(!TaskState::Pending.is_terminal());
        for s in [
            TaskState::Complete,
            TaskState::Shutdown,
            TaskState::Failed,
            TaskState::Rejected,
            TaskState::Orphaned,
        ] {
            assert!(s.is_terminal(), "{s}");
        }
    }
}
