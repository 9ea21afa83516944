//! The leader's duties — orchestrator, updater, scheduler, heartbeat monitor and Raft
//! membership reconciler — which run only while this manager leads. Each duty
//! watches the store and reconciles; none calls another.

use super::ctx::ManagerCtx;
use super::{dispatcher, orchestrator, scheduler, updater};
use crate::model::{now_ms, NodeRole};
use crate::store::{Command, ObjectKind, State};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Runs the leader's duties whenever this manager is leader, and stops them as soon
/// as it is not.
pub async fn run_leader_duties(ctx: Arc<ManagerCtx>) {
    let mut leadership = ctx.raft.leadership();
    let mut duties: Option<JoinSet<()>> = None;
    loop {
        let leading = *leadership.borrow_and_update() == Some(ctx.raft.id());
        match (leading, duties.is_some()) {
            (true, false) => {
                tracing::info!(node = %ctx.node_id, "became leader: starting orchestrator, updater, scheduler and heartbeat monitor");
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
                    let sessions = c.sessions.clone();
                    run_component("updater", c, move |s, now| {
                        let plan = updater::plan(s, now, &sessions.outcomes_by_task());
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
        if leadership.changed().await.is_err() {
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
            match ctx.raft.propose(Command::Batch(cmds.clone())).await {
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
            let me = ctx.raft.id();
            ctx.raft
                .status()
                .members
                .into_iter()
                .map(|m| m.id)
                .filter(|id| *id != me && !known.contains(id))
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
