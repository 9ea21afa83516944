//! What every family of API handlers uses: writing a command and reading the state
//! with the errors mapped to statuses, and the views of services and nodes that
//! several calls answer with.

use crate::manager::ManagerCtx;
use crate::model::{self, NodeRole, NodeState, Resources, Service, ServiceMode, TaskState};
use crate::store::{ApplyError, Command, State};
use crate::wire::convert;
use crate::wire::status::{apply_status, write_status};
use tonic::Status;
use warren_proto::v1 as pb;

pub(super) async fn write(ctx: &ManagerCtx, cmd: Command) -> Result<(), Status> {
    ctx.raft.propose(cmd).await.map_err(write_status)
}

pub(super) fn read<R>(ctx: &ManagerCtx, f: impl FnOnce(&State) -> Result<R, ApplyError>) -> Result<R, Status> {
    ctx.store.read(f).map_err(apply_status)
}

pub(super) fn service_pb(s: &State, svc: &Service) -> pb::Service {
    let mut c = TaskCounts::default();
    for t in s.tasks_of_service(&svc.id) {
        c.add(t);
    }
    convert::service_to_pb(svc, c.counts(svc))
}

/// A node as the API shows it; `leader` is the Raft ID of the current leader.
pub(super) fn node_pb(n: &model::Node, reserved: Resources, leader: Option<u64>) -> pb::Node {
    let manager = (n.role == NodeRole::Manager).then(|| pb::ManagerStatus {
        raft_id: n.raft_id,
        leader: leader == Some(n.raft_id),
        reachability: if n.state == NodeState::Ready {
            "reachable"
        } else {
            "unreachable"
        }
        .into(),
    });
    convert::node_to_pb(n, reserved, manager)
}

/// Tasks meant to run, and running, of each version of a service.
#[derive(Default)]
pub(super) struct TaskCounts {
    running: u64,
    wanted: u64,
    canary_running: u64,
}

impl TaskCounts {
    pub(super) fn add(&mut self, t: &model::Task) {
        if t.desired_state != TaskState::Running {
            return;
        }
        let running = t.status.state == TaskState::Running;
        if t.canary {
            self.canary_running += u64::from(running);
        } else {
            self.wanted += 1;
            self.running += u64::from(running);
        }
    }

    /// Desired counts: the replicas (or, for global services, the tasks meant to run).
    pub(super) fn counts(&self, svc: &Service) -> convert::Counts {
        let desired = match svc.spec.mode {
            ServiceMode::Replicated { replicas } => replicas,
            ServiceMode::Global => self.wanted,
        };
        convert::Counts {
            running: self.running,
            desired,
            canary_running: self.canary_running,
            canary_desired: svc.canary.as_ref().map_or(0, |c| c.replicas(desired)),
        }
    }
}
