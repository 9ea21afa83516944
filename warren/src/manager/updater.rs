//! The updater: steps every service's rolling update, as a pure function of the
//! state and the time. It admits the next batch of slots once the previous batch
//! is up and the update delay has passed, reports progress and failures (the state
//! machine decides whether they pause or roll back the update), and completes the
//! update once every slot runs the new version for the monitor period. Replacing
//! the tasks of an admitted slot, start-first or stop-first, is the orchestrator's;
//! everything it needs is in the replicated state, so a new leader resumes.
//!
//! It also steps blue-green and canary releases (`release_step`): the switch once
//! the whole new version is up, the end of the hold, and each canary step's
//! verdict from the connection outcomes the nodes' data planes count per task
//! (reported to this leader, passed in as `outcomes`).

use crate::model::{
    Availability, Canary, NodeState, Outcomes, Release, ReleaseStep, Service, ServiceMode, Task, TaskState,
    UpdateStatus, UpdateStep, UpdateStrategy,
};
use crate::store::{Command, State};
use std::collections::{BTreeMap, BTreeSet};

/// What identifies a slot in `UpdateStatus::admitted`: the replica number, or the
/// node of a global service's task.
pub fn slot_key(t: &Task) -> String {
    if t.slot > 0 {
        t.slot.to_string()
    } else {
        t.node_id.clone().unwrap_or_default()
    }
}

/// Running and, if it has a health check, passing it: ready for traffic.
pub fn is_up(t: &Task) -> bool {
    t.is_up()
}

/// Whether an outdated task in `key` may be replaced now.
pub fn admitted(svc: &Service, key: &str) -> bool {
    match &svc.update_status {
        Some(u) if u.state.governs() && u.spec_version == svc.spec_version => u.admitted.iter().any(|k| k == key),
        _ => true,
    }
}

#[derive(Debug, Default)]
pub struct Plan {
    pub commands: Vec<Command>,
    /// When the delay or the monitor period of some update runs out.
    pub wake_at_ms: Option<i64>,
}

/// Connection outcomes per task ID, summed over the nodes that reported them.
pub type TaskOutcomes = BTreeMap<String, Outcomes>;

pub fn plan(state: &State, now_ms: i64, outcomes: &TaskOutcomes) -> Plan {
    let mut plan = Plan::default();
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    let mut all_tasks: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        all_tasks.entry(&t.service_id).or_default().push(t);
        if !t.canary {
            by_service.entry(&t.service_id).or_default().push(t);
        }
    }
    for svc in state.services.values() {
        if let Some((c, r)) = svc.canary.as_ref().and_then(|c| c.release.as_ref().map(|r| (c, r))) {
            let tasks = all_tasks.get(svc.id.as_str()).map_or(&[][..], |v| &v[..]);
            let started_ms = svc
                .update_status
                .as_ref()
                .filter(|u| u.spec_version == c.spec_version)
                .map_or(0, |u| u.started_ms);
            let (step, wake) = release_step(svc, c, r, tasks, started_ms, now_ms, outcomes);
            plan.commands.extend(step.map(|step| Command::ReleaseStep {
                id: svc.id.clone(),
                spec_version: c.spec_version,
                step,
                at_ms: now_ms,
            }));
            if let Some(at) = wake {
                plan.wake_at_ms = Some(plan.wake_at_ms.map_or(at, |w: i64| w.min(at)));
            }
            continue;
        }
        let Some(u) = svc.update_status.as_ref().filter(|u| u.state.governs()) else {
            continue;
        };
        if u.spec_version != svc.spec_version {
            continue;
        }
        let tasks = by_service.get(svc.id.as_str()).cloned().unwrap_or_default();
        if let Some((step, wake)) = next_step(state, svc, u, &tasks, now_ms) {
            plan.commands.extend(step.map(|step| Command::UpdateStep {
                id: svc.id.clone(),
                spec_version: u.spec_version,
                step,
                at_ms: now_ms,
            }));
            if let Some(at) = wake {
                plan.wake_at_ms = Some(plan.wake_at_ms.map_or(at, |w: i64| w.min(at)));
            }
        }
    }
    plan
}

/// The slots the update covers, in the order it replaces them.
fn slots(state: &State, svc: &Service, tasks: &[&Task]) -> Vec<String> {
    match svc.spec.mode {
        ServiceMode::Replicated { replicas } => (1..=replicas).map(|s| s.to_string()).collect(),
        ServiceMode::Global => {
            let on: BTreeSet<String> = tasks.iter().filter(|t| t.is_live()).map(|t| slot_key(t)).collect();
            state
                .nodes
                .values()
                .filter(|n| {
                    n.state != NodeState::Down
                        && n.availability != Availability::Drain
                        && super::filters::constraints(n, &svc.spec).is_ok()
                        && (n.is_schedulable() || on.contains(&n.id))
                })
                .map(|n| n.id.clone())
                .collect()
        }
    }
}

type Step<S = UpdateStep> = (Option<S>, Option<i64>);

fn next_step(state: &State, svc: &Service, u: &UpdateStatus, tasks: &[&Task], now_ms: i64) -> Option<Step> {
    let keys = slots(state, svc, tasks);
    let mut up: BTreeSet<String> = BTreeSet::new();
    let mut failed: Vec<&Task> = vec![];
    for t in tasks.iter().filter(|t| t.spec_version == u.spec_version) {
        if is_up(t) {
            up.insert(slot_key(t));
        }
        // A new task that ended by itself during this update: it failed to
        // start, exited, or failed its health check.
        let ended_by_itself =
            matches!(t.status.state, TaskState::Failed | TaskState::Rejected) && t.desired_state <= TaskState::Running;
        if ended_by_itself && t.status.timestamp_ms >= u.started_ms {
            failed.push(t);
        }
    }
    let updated = keys.iter().filter(|k| up.contains(*k)).count() as u64;
    let total = keys.len() as u64;
    let failures = failed.len() as u64;
    let in_flight = u.admitted.iter().any(|k| keys.contains(k) && !up.contains(k));
    let batch_done = !in_flight;
    if (updated, total, failures) != (u.updated, u.total, u.failures) || (batch_done && u.batch_done_ms == 0) {
        let last_failure = failed
            .iter()
            .max_by_key(|t| t.status.timestamp_ms)
            .map(|t| {
                let why = if t.status.err.is_empty() {
                    &t.status.message
                } else {
                    &t.status.err
                };
                format!("task {}: {why}", t.name())
            })
            .unwrap_or_default();
        let step = UpdateStep::Progress {
            updated,
            total,
            failures,
            batch_done,
            last_failure,
        };
        return Some((Some(step), None));
    }
    if !u.state.is_active() || u.batch_done_ms == 0 {
        return None;
    }
    let remaining: Vec<&String> = keys
        .iter()
        .filter(|k| !up.contains(*k) && !u.admitted.contains(k))
        .collect();
    if remaining.is_empty() {
        if updated < total {
            return None;
        }
        let at = u.batch_done_ms.saturating_add(u.config.monitor_ms as i64);
        return Some(if now_ms >= at {
            (Some(UpdateStep::Complete), None)
        } else {
            (None, Some(at))
        });
    }
    let at = u.batch_done_ms.saturating_add(u.config.delay_ms as i64);
    if now_ms < at {
        return Some((None, Some(at)));
    }
    let n = match u.config.parallelism {
        0 => remaining.len(),
        n => (n as usize).min(remaining.len()),
    };
    let slots = remaining[..n].iter().map(|k| k.to_string()).collect();
    Some((Some(UpdateStep::Admit { slots }), None))
}

/// The next step of a release, and when to look again.
fn release_step(
    svc: &Service,
    c: &Canary,
    r: &Release,
    tasks: &[&Task],
    started_ms: i64,
    now_ms: i64,
    outcomes: &TaskOutcomes,
) -> Step<ReleaseStep> {
    let replicas = match svc.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => 0,
    };
    let new: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.canary && t.spec_version == c.spec_version)
        .collect();
    // A new task that ended by itself (failed to start, exited, failed its health
    // check) ends the release: the stable version still has all of its tasks.
    let failed = new
        .iter()
        .filter(|t| {
            matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
                && t.desired_state <= TaskState::Running
                && t.status.timestamp_ms >= started_ms
        })
        .max_by_key(|t| t.status.timestamp_ms);
    if let Some(t) = failed {
        let why = if t.status.err.is_empty() {
            &t.status.message
        } else {
            &t.status.err
        };
        let reason = match r.strategy {
            UpdateStrategy::Canary => format!("canary {}: task {} failed: {why}", r.step_name(), t.name()),
            _ => format!("blue-green: task {} of the new version failed: {why}", t.name()),
        };
        return (Some(ReleaseStep::RollBack { reason }), None);
    }
    let up = new.iter().filter(|t| t.is_up()).count() as u64;
    let all_up = up >= c.replicas(replicas);
    let sum = |canary: bool| {
        let mut o = Outcomes::default();
        for t in tasks.iter().filter(|t| t.canary == canary) {
            if canary && t.spec_version != c.spec_version {
                continue;
            }
            if let Some(x) = outcomes.get(&t.id) {
                o.add(x);
            }
        }
        o
    };
    match (r.strategy, r.step, r.step_ms) {
        (UpdateStrategy::BlueGreen, 0, _) => (all_up.then_some(ReleaseStep::Switch), None),
        (UpdateStrategy::BlueGreen, _, since) => {
            let at = since.saturating_add(r.config.blue_green_hold_ms as i64);
            if now_ms >= at {
                let reason = format!(
                    "the hold of {} passed",
                    crate::model::human_duration(r.config.blue_green_hold_ms)
                );
                (Some(ReleaseStep::Promote { reason }), None)
            } else {
                (None, Some(at))
            }
        }
        (UpdateStrategy::Canary, _, 0) => (
            all_up.then(|| ReleaseStep::Begin {
                canary: sum(true),
                stable: sum(false),
            }),
            None,
        ),
        (UpdateStrategy::Canary, step, since) => {
            let at = since.saturating_add(r.config.canary_interval_ms as i64);
            if now_ms < at {
                return (None, Some(at));
            }
            let dc = sum(true).since(&r.baseline_canary);
            let ds = sum(false).since(&r.baseline_stable);
            let (fc, fs) = (dc.failure_ratio(), ds.failure_ratio());
            let limit = r.config.canary_max_failure_ratio;
            let counts = format!("canary {}, stable {}", dc.describe(), ds.describe());
            if dc.failures() > 0 && fc > fs + limit {
                let reason = format!(
                    "canary {}: {counts}: the canary's failed share {fc:.2} exceeds the stable version's {fs:.2} by more than {limit}",
                    r.step_name()
                );
                return (Some(ReleaseStep::RollBack { reason }), None);
            }
            let last = step as usize + 1 >= r.config.canary_steps.as_slice().len();
            let step = if last {
                ReleaseStep::Promote {
                    reason: format!("every step passed, the last with {counts}"),
                }
            } else {
                ReleaseStep::Advance { reason: counts }
            };
            (Some(step), None)
        }
        (UpdateStrategy::Rolling, _, _) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::{orchestrator, scheduler};
    use crate::model::{FailureAction, HealthCheck, HealthTest, UpdateConfig, UpdateState};
    use crate::store::fixtures::{node, service};
    use crate::store::{FakeProposer, Proposer, Rules, Store};
    use std::sync::Arc;

    /// The leader's duties over a `FakeProposer`, and agents that run every
    /// assigned task at once; a task of `failing_image` fails its health check.
    struct Sim {
        store: Arc<Store>,
        raft: Arc<FakeProposer>,
        now: i64,
        failing_image: &'static str,
        /// Most tasks of the new version not up at any one time.
        max_in_flight: usize,
        /// Fewest slots with a task up at any one time.
        min_up: usize,
        /// What the nodes' data planes report; `round` adds connections to every
        /// task that is up, failing ones to tasks of `resetting_image`.
        outcomes: TaskOutcomes,
        resetting_image: &'static str,
        /// The images that took new connections, per round (by the endpoints' weights).
        serving: Vec<BTreeSet<String>>,
        weights: Vec<u8>,
    }

    impl Sim {
        fn new() -> Sim {
            let store = Store::new();
            let raft = FakeProposer::new(store.clone());
            store.write(|s| {
                s.nodes.insert("a".into(), node("a", "a"));
                s.nodes.insert("b".into(), node("b", "b"));
            });
            Sim {
                store,
                raft,
                now: 1_000,
                failing_image: "broken",
                max_in_flight: 0,
                min_up: usize::MAX,
                outcomes: TaskOutcomes::new(),
                resetting_image: "resets",
                serving: vec![],
                weights: vec![],
            }
        }

        /// The images that new connections go to, as a node's data plane splits
        /// them: ready endpoints, canary weight between the groups (a group
        /// without endpoints gives its share to the other).
        fn serving_now(&self) -> BTreeSet<String> {
            self.store.read(|s| {
                let eps = s.service_endpoints().into_iter().find(|e| e.id == "svc").unwrap();
                let image = |id: &str| s.tasks[id].spec.image.clone();
                // As every node's data plane selects: draining tasks take no new
                // connections while another task can (drain, issue 10 item 1).
                let any_live = eps.endpoints.iter().any(|e| e.ready && !e.draining);
                let ready: Vec<_> = eps
                    .endpoints
                    .iter()
                    .filter(|e| e.ready && (!e.draining || !any_live))
                    .collect();
                let (canary, stable): (Vec<_>, Vec<_>) = ready.into_iter().partition(|e| e.canary);
                let groups = match (stable.is_empty(), canary.is_empty(), eps.canary_weight) {
                    (false, false, 0) => vec![stable],
                    (false, false, 100) => vec![canary],
                    _ => vec![stable, canary],
                };
                groups.into_iter().flatten().map(|e| image(&e.task_id)).collect()
            })
        }

        /// A new leader: the same replicated state behind another proposer.
        fn fail_over(&mut self) {
            let state = self.store.read(|s| s.clone());
            let store = Store::new();
            store.write(|s| *s = state);
            self.raft = FakeProposer::new(store.clone());
            self.store = store;
        }

        async fn propose(&self, cmd: Command) {
            // Refusals are part of the test: the state machine decides.
            let _ = self.raft.propose(cmd).await;
        }

        fn svc(&self) -> Service {
            self.store.read(|s| s.services["svc"].clone())
        }

        /// One pass of every duty and agent, then the clock moves on by `ms`.
        async fn round(&mut self, ms: i64) {
            let now = self.now;
            let orchestrated = self
                .store
                .read(|s| orchestrator::reconcile(s, now, &Default::default()));
            for c in orchestrated.commands {
                self.propose(c).await;
            }
            let cmds = self.store.read(|s| scheduler::schedule(s).into_commands(s, now));
            for c in cmds {
                self.propose(c).await;
            }
            for c in self.store.read(|s| plan(s, now, &self.outcomes).commands) {
                self.propose(c).await;
            }
            let serving = self.serving_now();
            self.serving.push(serving);
            if let Some(w) = self.svc().canary.map(|c| c.weight) {
                if self.weights.last() != Some(&w) {
                    self.weights.push(w);
                }
            }
            let resetting = self.resetting_image;
            let up: Vec<(String, bool)> = self.store.read(|s| {
                s.tasks
                    .values()
                    .filter(|t| is_up(t))
                    .map(|t| (t.id.clone(), t.spec.image == resetting))
                    .collect()
            });
            for (id, resets) in up {
                let o = self.outcomes.entry(id).or_default();
                o.established += 10;
                if resets {
                    o.reset += 10;
                }
            }
            let failing = self.failing_image;
            self.store.write(|s| {
                for t in s.tasks.values_mut() {
                    let st = &mut t.status;
                    if t.desired_state >= TaskState::Shutdown && !st.state.is_terminal() && t.node_id.is_some() {
                        st.state = TaskState::Shutdown;
                    } else if t.desired_state == TaskState::Running && st.state == TaskState::Assigned {
                        st.state = TaskState::Running;
                        st.health = "starting".into();
                        st.addr = "10.0.0.2".into();
                    } else if st.state == TaskState::Running && st.health == "starting" {
                        // One round later the first check has run.
                        if t.spec.image == failing {
                            st.state = TaskState::Failed;
                            st.health = "unhealthy".into();
                            st.err = "task: unhealthy: probe exited with 1".into();
                        } else {
                            st.health = "healthy".into();
                        }
                    }
                    st.timestamp_ms = now;
                }
            });
            self.now += ms;
            let (in_flight, up) = self.store.read(|s| {
                let svc = &s.services["svc"];
                let new = s
                    .tasks
                    .values()
                    .filter(|t| t.spec_version == svc.spec_version && t.is_live() && !is_up(t))
                    .count();
                let up: BTreeSet<u64> = s.tasks.values().filter(|t| is_up(t)).map(|t| t.slot).collect();
                (new, up.len())
            });
            self.max_in_flight = self.max_in_flight.max(in_flight);
            self.min_up = self.min_up.min(up);
        }

        async fn until(&mut self, what: &str, done: impl Fn(&Service) -> bool) {
            for _ in 0..200 {
                if done(&self.svc()) {
                    return;
                }
                self.round(250).await;
            }
            panic!("{what} did not happen: {:?}", self.svc().update_status);
        }

        async fn update(&self, image: &str) {
            let svc = self.svc();
            let mut spec = svc.spec.clone();
            spec.image = image.into();
            self.propose(Command::UpdateService {
                id: svc.id,
                expected_version: svc.version,
                spec,
                at_ms: self.now,
                rules: Rules::CURRENT,
            })
            .await;
        }

        fn images(&self) -> Vec<String> {
            self.store.read(|s| {
                let mut v: Vec<String> = s
                    .tasks
                    .values()
                    .filter(|t| t.is_live())
                    .map(|t| t.spec.image.clone())
                    .collect();
                v.sort();
                v
            })
        }
    }

    async fn six_replicas(config: UpdateConfig) -> Sim {
        let mut sim = Sim::new();
        let mut svc = service("svc", "web");
        svc.spec.mode = ServiceMode::Replicated { replicas: 6 };
        svc.spec.update = config;
        svc.spec.health = Some(HealthCheck {
            test: HealthTest::Cmd("true".into()),
            interval_ms: 1_000,
            timeout_ms: 1_000,
            retries: 1,
            start_period_ms: 0,
        });
        sim.propose(Command::CreateService {
            service: svc,
            rules: Rules::CURRENT,
        })
        .await;
        for _ in 0..4 {
            sim.round(100).await;
        }
        assert_eq!(sim.images(), vec!["img"; 6]);
        sim.min_up = usize::MAX;
        sim.max_in_flight = 0;
        sim.serving.clear();
        sim
    }

    fn two_at_a_time() -> UpdateConfig {
        UpdateConfig {
            parallelism: 2,
            delay_ms: 1_000,
            monitor_ms: 2_000,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn replaces_two_at_a_time_start_first_and_completes() {
        let mut sim = six_replicas(two_at_a_time()).await;
        sim.update("img:2").await;
        let mut progress = vec![];
        for _ in 0..200 {
            let u = sim.svc().update_status.unwrap();
            if progress.last() != Some(&u.updated) {
                progress.push(u.updated);
            }
            if u.state == UpdateState::Completed {
                break;
            }
            sim.round(250).await;
        }
        let u = sim.svc().update_status.unwrap();
        assert_eq!(u.state, UpdateState::Completed, "{u:?}");
        assert_eq!(
            (u.progress(), u.message.as_str()),
            ("6/6 updated".into(), "update completed")
        );
        assert_eq!(progress, vec![0, 2, 4, 6]);
        assert_eq!(sim.max_in_flight, 2, "at most one batch of new tasks starts at a time");
        assert_eq!(sim.min_up, 6, "no slot went without a ready task (start-first)");
        assert_eq!(sim.images(), vec!["img:2"; 6]);
    }

    #[tokio::test]
    async fn a_failing_health_check_rolls_back_after_the_first_batch() {
        let mut sim = six_replicas(UpdateConfig {
            failure_action: FailureAction::Rollback,
            ..two_at_a_time()
        })
        .await;
        let before: BTreeSet<String> = sim.store.read(|s| s.tasks.keys().cloned().collect());
        sim.update("broken").await;
        sim.until("the rollback", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::RollbackCompleted
        })
        .await;
        let svc = sim.svc();
        let u = svc.update_status.unwrap();
        assert!(
            u.message.starts_with("rolled back: 2 of 6 new tasks failed"),
            "{}",
            u.message
        );
        assert!(u.message.contains("unhealthy"), "{}", u.message);
        assert_eq!(svc.spec.image, "img");
        assert_eq!(sim.images(), vec!["img"; 6]);
        // Only the first batch ever ran the broken version, and the old tasks
        // were never stopped: the rollback relabelled them.
        let broken_slots: BTreeSet<u64> = sim.store.read(|s| {
            s.tasks
                .values()
                .filter(|t| t.spec.image == "broken")
                .map(|t| t.slot)
                .collect()
        });
        assert_eq!(broken_slots, BTreeSet::from([1, 2]));
        let live: BTreeSet<String> = sim
            .store
            .read(|s| s.tasks.values().filter(|t| t.is_live()).map(|t| t.id.clone()).collect());
        assert_eq!(live, before);
        assert_eq!(sim.min_up, 6);
    }

    #[tokio::test]
    async fn a_failure_pauses_the_update_with_its_reason() {
        let mut sim = six_replicas(two_at_a_time()).await;
        sim.update("broken").await;
        sim.until("the pause", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::Paused
        })
        .await;
        for _ in 0..20 {
            sim.round(500).await;
        }
        let u = sim.svc().update_status.unwrap();
        assert_eq!(u.state, UpdateState::Paused);
        assert!(u.message.starts_with("update paused: "), "{}", u.message);
        assert_eq!(
            u.admitted,
            vec!["1".to_string(), "2".into()],
            "no batch after the pause"
        );
        assert_eq!(
            sim.images().iter().filter(|i| *i == "img").count(),
            6,
            "the old tasks keep serving"
        );
        // `service rollback` returns to the old spec with the rollback config.
        let id = sim.svc().id;
        sim.propose(Command::RollbackService {
            id,
            at_ms: sim.now,
            rules: Rules::CURRENT,
        })
        .await;
        sim.until("the rollback", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::RollbackCompleted
        })
        .await;
        assert_eq!(sim.images(), vec!["img"; 6]);
    }

    #[tokio::test]
    async fn a_new_leader_resumes_the_update() {
        let mut sim = six_replicas(two_at_a_time()).await;
        sim.update("img:2").await;
        sim.until("the second batch", |s| s.update_status.as_ref().unwrap().updated >= 2)
            .await;
        sim.fail_over();
        sim.until("completion", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::Completed
        })
        .await;
        assert_eq!(sim.images(), vec!["img:2"; 6]);
        assert_eq!(sim.min_up, 6);
    }

    fn release(strategy: crate::model::UpdateStrategy) -> UpdateConfig {
        UpdateConfig {
            strategy,
            blue_green_hold_ms: 2_000,
            canary_steps: crate::model::CanarySteps::parse("s", "10,50,100").unwrap(),
            canary_interval_ms: 1_000,
            canary_max_failure_ratio: 0.1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn blue_green_switches_new_connections_in_one_step_then_promotes() {
        let mut sim = six_replicas(release(crate::model::UpdateStrategy::BlueGreen)).await;
        sim.update("img:2").await;
        sim.until("the promotion", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::Completed
        })
        .await;
        for _ in 0..4 {
            sim.round(250).await;
        }
        let old = BTreeSet::from(["img".to_string()]);
        let new = BTreeSet::from(["img:2".to_string()]);
        let mut phases = sim.serving.clone();
        phases.dedup();
        assert_eq!(phases, vec![old, new], "never both versions, never none");
        assert_eq!(sim.weights, vec![0, 100]);
        let u = sim.svc().update_status.unwrap();
        assert_eq!(u.message, "blue-green release promoted: the hold of 2s passed");
        assert_eq!(sim.images(), vec!["img:2"; 6]);
        assert_eq!(sim.min_up, 6);
    }

    #[tokio::test]
    async fn blue_green_rollback_during_the_hold_flips_back_at_once() {
        let mut sim = six_replicas(release(crate::model::UpdateStrategy::BlueGreen)).await;
        sim.update("img:2").await;
        sim.until("the switch", |s| s.canary.as_ref().is_some_and(|c| c.weight == 100))
            .await;
        sim.round(0).await;
        assert_eq!(sim.serving_now(), BTreeSet::from(["img:2".to_string()]));
        let id = sim.svc().id;
        sim.propose(Command::RollbackService {
            id,
            at_ms: sim.now,
            rules: Rules::CURRENT,
        })
        .await;
        // The write itself sends every new connection back.
        assert_eq!(sim.serving_now(), BTreeSet::from(["img".to_string()]));
        let u = sim.svc().update_status.unwrap();
        assert_eq!(
            (u.state, u.message.as_str()),
            (UpdateState::RollbackCompleted, "rolled back: requested")
        );
        for _ in 0..4 {
            sim.round(250).await;
        }
        assert_eq!(sim.images(), vec!["img"; 6]);
    }

    #[tokio::test]
    async fn a_good_canary_is_promoted_step_by_step() {
        let mut sim = six_replicas(release(crate::model::UpdateStrategy::Canary)).await;
        sim.update("img:2").await;
        sim.until("the promotion", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::Completed
        })
        .await;
        assert_eq!(sim.weights, vec![10, 50, 100]);
        let u = sim.svc().update_status.unwrap();
        assert!(
            u.message
                .starts_with("canary release promoted: every step passed, the last with canary 0 of "),
            "{}",
            u.message
        );
        for _ in 0..4 {
            sim.round(250).await;
        }
        assert_eq!(sim.images(), vec!["img:2"; 6]);
        assert_eq!(sim.min_up, 6);
    }

    #[tokio::test]
    async fn a_canary_that_resets_connections_is_rolled_back_at_the_first_step() {
        let mut sim = six_replicas(release(crate::model::UpdateStrategy::Canary)).await;
        sim.update("resets").await;
        sim.until("the rollback", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::RollbackCompleted
        })
        .await;
        assert_eq!(sim.weights, vec![10], "no step after the first");
        let u = sim.svc().update_status.unwrap();
        assert!(
            u.message.starts_with("rolled back: canary step 1/3 (10%): canary ")
                && u.message.contains(" reset, 0 refused, 0 timed out), stable 0 of ")
                && u.message
                    .ends_with("exceeds the stable version's 0.00 by more than 0.1"),
            "{}",
            u.message
        );
        for _ in 0..4 {
            sim.round(250).await;
        }
        assert_eq!(sim.images(), vec!["img"; 6]);
    }

    #[tokio::test]
    async fn a_canary_task_that_fails_its_health_check_ends_the_release() {
        let mut sim = six_replicas(release(crate::model::UpdateStrategy::Canary)).await;
        sim.update("broken").await;
        sim.until("the rollback", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::RollbackCompleted
        })
        .await;
        let u = sim.svc().update_status.unwrap();
        assert!(u.message.contains("failed: task: unhealthy"), "{}", u.message);
        assert_eq!(sim.svc().spec.image, "img");
    }

    #[tokio::test]
    async fn parallelism_zero_replaces_everything_at_once_stop_first() {
        let mut sim = six_replicas(UpdateConfig {
            parallelism: 0,
            order: Some(crate::model::UpdateOrder::StopFirst),
            ..two_at_a_time()
        })
        .await;
        sim.update("img:2").await;
        sim.until("admitting every slot", |s| {
            s.update_status.as_ref().unwrap().admitted.len() == 6
        })
        .await;
        sim.round(0).await;
        // Stop-first: the old tasks are told to stop as their slots are admitted.
        let stopping = sim.store.read(|s| {
            s.tasks
                .values()
                .filter(|t| t.spec.image == "img" && t.desired_state == TaskState::Shutdown)
                .count()
        });
        assert_eq!(stopping, 6);
        sim.until("completion", |s| {
            s.update_status.as_ref().unwrap().state == UpdateState::Completed
        })
        .await;
    }
}
