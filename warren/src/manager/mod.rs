//! The manager's moving parts around the replicated store: the context the API and
//! the dispatcher share (`ManagerCtx`), and the leader's duties — orchestrator,
//! scheduler, heartbeat monitor and Raft membership reconciler — which run only
//! while this manager leads. Each duty watches the store and reconciles; none calls
//! another.

pub mod dispatcher;
pub mod filters;
pub mod orchestrator;
pub mod scheduler;

use crate::metrics::Metrics;
use crate::model::{now_ms, NodeRole, NodeState};
use crate::raft::RaftNode;
use crate::secrets::SecretsKey;
use crate::store::{Command, ObjectKind, State, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

#[derive(Clone, Debug)]
pub struct ManagerSettings {
    /// How often agents send heartbeats.
    pub heartbeat_period: Duration,
    /// A node is down after this long without a heartbeat.
    pub heartbeat_grace: Duration,
    /// Safety-net reconciliation interval; changes normally wake the loops at once.
    pub resync: Duration,
    pub orchestrator: orchestrator::Settings,
}

impl Default for ManagerSettings {
    fn default() -> Self {
        ManagerSettings {
            heartbeat_period: Duration::from_secs(1),
            heartbeat_grace: Duration::from_secs(5),
            resync: Duration::from_secs(30),
            orchestrator: orchestrator::Settings::default(),
        }
    }
}

/// What a manager's API, dispatcher and leader duties share.
pub struct ManagerCtx {
    pub node_id: String,
    /// This node's data dir (uploads are staged under it).
    pub data_dir: std::path::PathBuf,
    pub advertise_addr: String,
    pub raft: Arc<RaftNode>,
    pub store: Arc<Store>,
    pub secrets_key: SecretsKey,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<dispatcher::Sessions>,
    pub settings: ManagerSettings,
}

impl ManagerCtx {
    /// Addresses of every manager node, for agents and join commands.
    pub fn manager_addrs(&self) -> Vec<String> {
        self.store.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .map(|n| n.addr.clone())
                .collect()
        })
    }
}

/// Runs the leader's duties whenever this manager is leader, and stops them as soon
/// as it is not.
pub async fn run_leader_duties(ctx: Arc<ManagerCtx>) {
    let mut metrics = ctx.raft.raft.metrics();
    let mut duties: Option<JoinSet<()>> = None;
    loop {
        let leading = metrics.borrow().current_leader == Some(ctx.raft.id);
        match (leading, duties.is_some()) {
            (true, false) => {
                tracing::info!(node = %ctx.node_id, "became leader: starting orchestrator, scheduler and heartbeat monitor");
                let mut set = JoinSet::new();
                let c = ctx.clone();
                set.spawn(async move {
                    let settings = c.settings.orchestrator.clone();
                    run_component("orchestrator", c, move |s, now| {
                        let plan = orchestrator::reconcile(s, now, &settings);
                        (plan.commands, plan.wake_at_ms)
                    })
                    .await
                });
                let c = ctx.clone();
                set.spawn(async move {
                    run_component("scheduler", c, |s, now| {
                        (scheduler::schedule(s).into_commands(s, now), None)
                    })
                    .await
                });
                set.spawn(dispatcher::monitor_heartbeats(ctx.clone()));
                set.spawn(reconcile_membership(ctx.clone()));
                duties = Some(set);
            }
            (false, true) => {
                tracing::info!(node = %ctx.node_id, "no longer leader: stopping leader duties");
                duties = None;
            }
            _ => {}
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// A leader duty: computes commands from the state, writes them, and sleeps until
/// the store changes, its own deadline passes, or the resync interval elapses.
async fn run_component<F>(name: &'static str, ctx: Arc<ManagerCtx>, mut f: F)
where
    F: FnMut(&State, i64) -> (Vec<Command>, Option<i64>) + Send,
{
    let mut events = ctx.store.subscribe();
    let mut last_written: Option<Vec<Command>> = None;
    loop {
        let now = now_ms();
        let (cmds, wake_at) = ctx.store.read(|s| f(s, now));
        if !cmds.is_empty() && last_written.as_ref() != Some(&cmds) {
            let span = tracing::debug_span!("reconcile", component = name, commands = cmds.len());
            let _g = span.enter();
            match ctx.raft.write(Command::Batch(cmds.clone())).await {
                Ok(()) => {}
                Err(crate::store::WriteError::Apply(e)) => {
                    tracing::debug!(component = name, error = %e, "part of a reconcile batch was refused");
                }
                Err(e) => {
                    tracing::warn!(component = name, error = %e, "reconcile write failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            last_written = Some(cmds);
            continue;
        }
        let mut sleep_for = ctx.settings.resync;
        if let Some(at) = wake_at {
            sleep_for = sleep_for.min(Duration::from_millis((at - now).max(0) as u64 + 1));
        }
        tokio::select! {
            r = events.recv() => match r {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Coalesce a burst of changes into one pass.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    while events.try_recv().is_ok() {}
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(sleep_for) => {
                last_written = None;
            }
        }
    }
}

/// Keeps the Raft membership in line with the manager nodes in the state: a manager
/// removed with `warren node rm` leaves the Raft group. (New managers enter through
/// `Membership.JoinRaft`, once they are listening.)
async fn reconcile_membership(ctx: Arc<ManagerCtx>) {
    let mut events = ctx.store.subscribe();
    loop {
        let stale: Vec<u64> = ctx.store.read(|s| {
            if s.meta.is_none() {
                return vec![];
            }
            let known: std::collections::BTreeSet<u64> = s
                .nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .map(|n| n.raft_id)
                .collect();
            ctx.raft
                .members()
                .into_iter()
                .map(|(id, _, _)| id)
                .filter(|id| *id != ctx.raft.id && !known.contains(id))
                .collect()
        });
        for id in stale {
            tracing::info!(raft_id = id, "removing a deleted manager from the Raft membership");
            if let Err(e) = ctx.raft.remove_member(id).await {
                tracing::warn!(raft_id = id, error = %e, "removing a Raft member failed");
            }
        }
        tokio::select! {
            r = events.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                if let Ok(a) = r {
                    if !a.reset && !a.changes.iter().any(|c| c.kind == ObjectKind::Node) {
                        continue;
                    }
                }
            }
            _ = tokio::time::sleep(ctx.settings.resync) => {}
        }
    }
}

/// Marks a node ready if its heartbeats say so but the state does not.
pub(crate) async fn ensure_ready(ctx: &ManagerCtx, node_id: &str) {
    let needs = ctx
        .store
        .read(|s| s.nodes.get(node_id).is_some_and(|n| n.state != NodeState::Ready));
    if needs {
        let _ = ctx
            .raft
            .write(Command::SetNodeState {
                id: node_id.to_string(),
                state: NodeState::Ready,
                message: String::new(),
                at_ms: now_ms(),
            })
            .await;
    }
}
