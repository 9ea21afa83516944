//! The orchestrator: turns services into tasks. `reconcile` is a pure function of
//! the state and the time: it fills empty replica slots (after a restart delay when
//! the previous task failed), scales down, replaces tasks whose spec is outdated or
//! whose node is down, drained or gone, runs one task per eligible node for global
//! services, and removes finished tasks beyond the history limit. Placement is the
//! scheduler's job; stopping containers is the agents'.

use super::{filters, updater};
use crate::model::{
    new_id, NodeState, RestartCondition, Service, ServiceMode, Task, TaskState, TaskStatus, UpdateOrder,
};
use crate::store::{Command, State};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
pub struct Settings {
    /// Finished tasks kept per slot (per node for global services).
    pub history_limit: usize,
    /// Upper bound of the backoff between restarts of a failing slot.
    pub max_restart_backoff_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            history_limit: 5,
            max_restart_backoff_ms: 300_000,
        }
    }
}

/// What to do about an empty slot, from the task that last ran in it.
#[derive(Debug, PartialEq, Eq)]
enum Refill {
    /// Create a task now, as restart number `attempt`.
    Now { attempt: u64 },
    /// The restart delay has not passed yet.
    At(i64),
    /// The restart policy says the slot stays empty.
    Never,
}

/// The slot's most recent task decides: one that ended by itself (exit, failure,
/// rejection) is restarted per the service's restart policy, after its delay,
/// doubled for each consecutive restart up to a bound; one stopped by Warren
/// (scaling, update, drain, node loss) is replaced at once.
/// One version of a service: the stable one, or its canary.
struct Version<'a> {
    spec: &'a crate::model::ServiceSpec,
    spec_version: u64,
    canary: bool,
}

impl<'a> Version<'a> {
    fn stable(svc: &'a Service) -> Self {
        Version {
            spec: &svc.spec,
            spec_version: svc.spec_version,
            canary: false,
        }
    }
}

fn refill(v: &Version<'_>, previous: &[&Task], now_ms: i64, settings: &Settings) -> Refill {
    let Some(last) = previous.iter().max_by_key(|t| (t.created_ms, t.id.as_str())) else {
        return Refill::Now { attempt: 0 };
    };
    let ended_by_itself = matches!(
        last.status.state,
        TaskState::Failed | TaskState::Rejected | TaskState::Complete
    ) && last.desired_state <= TaskState::Running;
    if !ended_by_itself || last.spec_version != v.spec_version {
        return Refill::Now { attempt: 0 };
    }
    let policy = &v.spec.restart;
    let failed = last.status.state != TaskState::Complete;
    let allowed = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => failed,
        RestartCondition::Any => true,
    };
    let attempt = last.attempt + 1;
    if !allowed || (policy.max_attempts > 0 && attempt > policy.max_attempts) {
        return Refill::Never;
    }
    let backoff = (policy.delay_ms as i64)
        .saturating_mul(1 << last.attempt.min(6))
        .min(settings.max_restart_backoff_ms.max(policy.delay_ms as i64));
    let at = last.status.timestamp_ms.saturating_add(backoff);
    if now_ms < at {
        Refill::At(at)
    } else {
        Refill::Now { attempt }
    }
}

#[derive(Debug, Default)]
pub struct Plan {
    pub commands: Vec<Command>,
    /// The earliest time at which reconciling again may do something new (a restart
    /// delay expiring), if any.
    pub wake_at_ms: Option<i64>,
}

fn new_task(svc: &Service, v: &Version<'_>, slot: u64, node: Option<String>, attempt: u64, now_ms: i64) -> Task {
    Task {
        id: new_id(),
        service_id: svc.id.clone(),
        service_name: svc.name.clone(),
        slot,
        node_id: node,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Pending,
            message: "pending task scheduling".into(),
            timestamp_ms: now_ms,
            ..Default::default()
        },
        spec: v.spec.clone(),
        spec_version: v.spec_version,
        attempt,
        canary: v.canary,
        created_ms: now_ms,
        updated_ms: now_ms,
        version: 1,
    }
}

/// Where one slot's decisions go.
struct SlotOut<'a> {
    create: &'a mut Vec<Task>,
    shutdown: &'a mut BTreeSet<String>,
    wake: Option<i64>,
}

/// One slot of a service (a replica number, or a node of a global service) and
/// how its outdated task may be replaced.
struct Slot<'a> {
    svc: &'a Service,
    v: &'a Version<'a>,
    slot: u64,
    node: Option<&'a String>,
    /// The rolling update has reached this slot (or none governs the service).
    admitted: bool,
    order: UpdateOrder,
}

impl Slot<'_> {
    /// Keeps one task running the current version; while there is none, or it is
    /// not up yet, an outdated one keeps serving unless the slot is admitted
    /// stop-first. An outdated task goes once a current one is up.
    fn settle(&self, in_slot: &[&Task], alive: &[&Task], now_ms: i64, settings: &Settings, out: &mut SlotOut<'_>) {
        let newest_first = |ts: &mut Vec<&Task>| ts.sort_by_key(|t| std::cmp::Reverse((t.created_ms, t.id.clone())));
        let (mut current, mut outdated): (Vec<&Task>, Vec<&Task>) = alive
            .iter()
            .copied()
            .partition(|t| t.spec_version == self.v.spec_version && t.canary == self.v.canary);
        newest_first(&mut current);
        // The outdated task to keep serving is one that is up, else the newest.
        outdated.sort_by_key(|t| std::cmp::Reverse((updater::is_up(t), t.created_ms, t.id.clone())));
        out.shutdown.extend(current.iter().skip(1).map(|t| t.id.clone()));
        let current_up = current.first().is_some_and(|t| updater::is_up(t));
        let keep_outdated = if current_up || (self.admitted && self.order == UpdateOrder::StopFirst) {
            0
        } else {
            1
        };
        out.shutdown
            .extend(outdated.iter().skip(keep_outdated).map(|t| t.id.clone()));
        let replace = current.is_empty() && (self.admitted || outdated.is_empty());
        if !replace {
            return;
        }
        match refill(self.v, in_slot, now_ms, settings) {
            Refill::Now { attempt } => out.create.push(new_task(
                self.svc,
                self.v,
                self.slot,
                self.node.cloned(),
                attempt,
                now_ms,
            )),
            Refill::At(at) => out.wake = Some(out.wake.map_or(at, |w| w.min(at))),
            Refill::Never => {}
        }
    }
}

pub fn reconcile(state: &State, now_ms: i64, settings: &Settings) -> Plan {
    let mut plan = Plan::default();
    let mut create = Vec::new();
    let mut shutdown = BTreeSet::new();
    let mut orphan = Vec::new();
    let mut remove = BTreeSet::new();
    let wake = |at: i64, plan: &mut Plan| {
        plan.wake_at_ms = Some(plan.wake_at_ms.map_or(at, |w: i64| w.min(at)));
    };

    // Tasks whose node is down or gone no longer count; mark them so that their
    // slots are filled elsewhere.
    for t in state.tasks.values() {
        if t.status.state.is_terminal() {
            continue;
        }
        let Some(node_id) = &t.node_id else { continue };
        match state.nodes.get(node_id) {
            None => orphan.push((t.id.clone(), format!("node {node_id} was removed"))),
            Some(n) if n.state == NodeState::Down => orphan.push((t.id.clone(), format!("node {} is down", n.name))),
            Some(n) if n.state == NodeState::Unreachable => {
                // The node's agent keeps the task running on its own; its slot
                // moves only once the service's grace is over.
                let grace = state
                    .services
                    .get(&t.service_id)
                    .map_or(0, |s| i64::try_from(s.spec.reschedule_after_ms).unwrap_or(i64::MAX));
                let due = n.last_contact_ms.saturating_add(grace);
                if now_ms >= due {
                    orphan.push((t.id.clone(), format!("node {} is unreachable", n.name)));
                } else {
                    wake(due, &mut plan);
                }
            }
            _ => {}
        }
    }
    let orphaned: BTreeSet<&str> = orphan.iter().map(|(id, _)| id.as_str()).collect();
    let live = |t: &Task| t.is_live() && !orphaned.contains(t.id.as_str());

    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        by_service.entry(&t.service_id).or_default().push(t);
    }

    for svc in state.services.values() {
        let tasks = by_service.get(svc.id.as_str()).cloned().unwrap_or_default();
        // On a drained node: stop it (its slot is refilled below, elsewhere).
        let mut stale = BTreeSet::new();
        for t in tasks.iter().filter(|t| live(t)) {
            let drained = t
                .node_id
                .as_ref()
                .and_then(|n| state.nodes.get(n))
                .is_some_and(|n| n.availability == crate::model::Availability::Drain);
            if drained {
                stale.insert(t.id.clone());
            }
        }
        let still_live = |t: &&Task| live(t) && !stale.contains(&t.id);
        let order = svc
            .update_status
            .as_ref()
            .map_or(svc.spec.update, |u| u.config)
            .order_for(&svc.spec);
        let mut out = SlotOut {
            create: &mut create,
            shutdown: &mut shutdown,
            wake: None,
        };
        match svc.spec.mode {
            ServiceMode::Replicated { replicas } => {
                let mut versions = vec![(Version::stable(svc), replicas)];
                if let Some(c) = &svc.canary {
                    let v = Version {
                        spec: &c.spec,
                        spec_version: c.spec_version,
                        canary: true,
                    };
                    versions.push((v, c.replicas(replicas)));
                }
                for canary in [false, true] {
                    let want = versions.iter().find(|(v, _)| v.canary == canary);
                    let count = want.map_or(0, |(_, n)| *n);
                    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
                    for t in tasks.iter().filter(|t| t.canary == canary) {
                        slots.entry(t.slot).or_default().push(t);
                    }
                    if let Some((v, _)) = want {
                        for slot in 1..=count {
                            let in_slot = slots.get(&slot).cloned().unwrap_or_default();
                            let alive: Vec<&Task> = in_slot.iter().copied().filter(still_live).collect();
                            // Canaries are not rolled: they start beside the stable version.
                            let admitted = canary || updater::admitted(svc, &slot.to_string());
                            let at = Slot {
                                svc,
                                v,
                                slot,
                                node: None,
                                admitted,
                                order,
                            };
                            at.settle(&in_slot, &alive, now_ms, settings, &mut out);
                        }
                    }
                    for (_, in_slot) in slots.range(count + 1..) {
                        out.shutdown
                            .extend(in_slot.iter().filter(|t| live(t)).map(|t| t.id.clone()));
                    }
                }
            }
            ServiceMode::Global => {
                let mut by_node: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
                for t in &tasks {
                    if let Some(n) = &t.node_id {
                        by_node.entry(n).or_default().push(t);
                    }
                }
                for node in state.nodes.values() {
                    let on_node = by_node.get(node.id.as_str()).cloned().unwrap_or_default();
                    let keep_ok = node.state != NodeState::Down
                        && !on_node.iter().any(|t| orphaned.contains(t.id.as_str()))
                        && node.availability != crate::model::Availability::Drain
                        && filters::constraints(node, &svc.spec).is_ok();
                    let alive: Vec<&Task> = on_node.iter().copied().filter(still_live).collect();
                    if !keep_ok {
                        out.shutdown.extend(alive.iter().map(|t| t.id.clone()));
                        continue;
                    }
                    if alive.is_empty() && !node.is_schedulable() {
                        continue;
                    }
                    let v = Version::stable(svc);
                    let at = Slot {
                        svc,
                        v: &v,
                        slot: 0,
                        node: Some(&node.id),
                        admitted: updater::admitted(svc, &node.id),
                        order,
                    };
                    at.settle(&on_node, &alive, now_ms, settings, &mut out);
                }
                // Tasks on nodes that no longer exist were orphaned above.
            }
        }
        if let Some(at) = out.wake {
            wake(at, &mut plan);
        }
        shutdown.extend(stale);
    }

    // Garbage: tasks to remove that can no longer run anywhere, tasks that were
    // never placed and are no longer wanted, and history beyond the limit.
    let mut history: BTreeMap<(&str, u64, &str), Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        let node_gone = t
            .node_id
            .as_ref()
            .is_none_or(|n| state.nodes.get(n).is_none_or(|n| n.state.is_away()));
        let finished = t.status.state.is_terminal() || orphaned.contains(t.id.as_str());
        if t.desired_state == TaskState::Remove && (finished || node_gone) {
            remove.insert(t.id.clone());
            continue;
        }
        let unplaced = t.node_id.is_none() && t.status.state <= TaskState::Pending;
        if unplaced && (t.desired_state > TaskState::Running || shutdown.contains(&t.id)) {
            remove.insert(t.id.clone());
            continue;
        }
        if finished {
            let node_key = if t.slot == 0 {
                t.node_id.as_deref().unwrap_or("")
            } else {
                ""
            };
            history.entry((&t.service_id, t.slot, node_key)).or_default().push(t);
        }
    }
    for (_, mut done) in history {
        if done.len() > settings.history_limit {
            done.sort_by_key(|t| std::cmp::Reverse((t.updated_ms, t.id.clone())));
            remove.extend(done[settings.history_limit..].iter().map(|t| t.id.clone()));
        }
    }

    let mut cmds = Vec::new();
    if !orphan.is_empty() {
        // One message per command: group by message.
        let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, msg) in orphan {
            grouped.entry(msg).or_default().push(id);
        }
        for (message, ids) in grouped {
            cmds.push(Command::OrphanTasks {
                ids: ids.clone(),
                message,
                at_ms: now_ms,
            });
            cmds.push(Command::SetTasksDesired {
                ids,
                desired: TaskState::Shutdown,
                at_ms: now_ms,
            });
        }
    }
    let shutdown: Vec<String> = shutdown
        .into_iter()
        .filter(|id| !remove.contains(id))
        .filter(|id| {
            state
                .tasks
                .get(id)
                .is_some_and(|t| t.desired_state < TaskState::Shutdown)
        })
        .collect();
    if !shutdown.is_empty() {
        cmds.push(Command::SetTasksDesired {
            ids: shutdown,
            desired: TaskState::Shutdown,
            at_ms: now_ms,
        });
    }
    if !create.is_empty() {
        cmds.push(Command::CreateTasks { tasks: create });
    }
    if !remove.is_empty() {
        cmds.push(Command::RemoveTasks {
            ids: remove.into_iter().collect(),
        });
    }
    plan.commands = cmds;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn node(id: &str) -> Node {
        Node {
            ingress: Default::default(),
            id: id.into(),
            name: id.into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: Default::default(),
            addr: String::new(),
            resources: Resources::default(),
            platform: Platform::current(),
            state: NodeState::Ready,
            message: String::new(),
            raft_id: 0,
            subnet: None,
            mesh: None,
            warren_version: String::new(),
            created_ms: 0,
            updated_ms: 0,
            version: 1,
            metrics_port: 0,
            last_contact_ms: 0,
            cert_expires_ms: 0,
            autonomy: String::new(),
        }
    }

    fn service(mode: ServiceMode) -> Service {
        Service {
            id: "svc".into(),
            name: "web".into(),
            spec: ServiceSpec {
                image: "x".into(),
                mode,
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
            update_status: None,
        }
    }

    fn apply(state: &mut State, plan: Plan) {
        let mut ch = vec![];
        for c in plan.commands {
            state.apply(&c, &mut ch).unwrap();
        }
    }

    fn live_count(s: &State) -> usize {
        s.tasks.values().filter(|t| t.is_live()).count()
    }

    /// Places pending tasks and marks them running, as scheduler + agents would.
    fn run_all(s: &mut State) {
        let p = super::super::scheduler::schedule(s);
        let mut ch = vec![];
        for c in p.into_commands(s, 1) {
            s.apply(&c, &mut ch).unwrap();
        }
        for t in s.tasks.values_mut() {
            if t.status.state == TaskState::Assigned && t.desired_state == TaskState::Running {
                t.status.state = TaskState::Running;
            }
            if t.desired_state >= TaskState::Shutdown && !t.status.state.is_terminal() && t.node_id.is_some() {
                t.status.state = TaskState::Shutdown;
            }
        }
    }

    fn settle(s: &mut State, now: i64) {
        for _ in 0..10 {
            let plan = reconcile(s, now, &Settings::default());
            if plan.commands.is_empty() {
                run_all(s);
                if reconcile(s, now, &Settings::default()).commands.is_empty() {
                    return;
                }
                continue;
            }
            apply(s, plan);
            run_all(s);
        }
        panic!("did not settle");
    }

    #[test]
    fn fills_slots_and_is_idempotent() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 3 }));
        let plan = reconcile(&s, 0, &Settings::default());
        assert_eq!(plan.commands.len(), 1);
        apply(&mut s, plan);
        assert_eq!(live_count(&s), 3);
        let slots: BTreeSet<u64> = s.tasks.values().map(|t| t.slot).collect();
        assert_eq!(slots, BTreeSet::from([1, 2, 3]));
        assert!(reconcile(&s, 0, &Settings::default()).commands.is_empty());
    }

    #[test]
    fn zero_replicas_creates_nothing() {
        let mut s = State::default();
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 0 }));
        assert!(reconcile(&s, 0, &Settings::default()).commands.is_empty());
    }

    #[test]
    fn scale_down_stops_the_highest_slots() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 4 }));
        settle(&mut s, 0);
        s.services.get_mut("svc").unwrap().spec.mode = ServiceMode::Replicated { replicas: 2 };
        settle(&mut s, 0);
        let running: BTreeSet<u64> = s.tasks.values().filter(|t| t.is_live()).map(|t| t.slot).collect();
        assert_eq!(running, BTreeSet::from([1, 2]));
    }

    #[test]
    fn tasks_on_a_down_node_are_orphaned_and_replaced() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.nodes.insert("b".into(), node("b"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 2 }));
        settle(&mut s, 0);
        let on_a = s.tasks.values().filter(|t| t.node_id.as_deref() == Some("a")).count();
        assert_eq!(on_a, 1);
        s.nodes.get_mut("a").unwrap().state = NodeState::Down;
        settle(&mut s, 0);
        let live: Vec<_> = s.tasks.values().filter(|t| t.is_live()).collect();
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|t| t.node_id.as_deref() == Some("b")));
        let orphan = s
            .tasks
            .values()
            .find(|t| t.status.state == TaskState::Orphaned)
            .unwrap();
        assert_eq!(orphan.status.message, "node a is down");
    }

    #[test]
    fn tasks_on_an_unreachable_node_keep_their_slots_until_the_services_grace_is_over() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.nodes.insert("b".into(), node("b"));
        let mut svc = service(ServiceMode::Replicated { replicas: 2 });
        svc.spec.reschedule_after_ms = 60_000;
        s.services.insert("svc".into(), svc);
        settle(&mut s, 0);
        let on_a: Vec<String> = s
            .tasks
            .values()
            .filter(|t| t.node_id.as_deref() == Some("a"))
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(on_a.len(), 1);
        let a = s.nodes.get_mut("a").unwrap();
        a.state = NodeState::Unreachable;
        a.last_contact_ms = 1_000;
        // 1. Within the grace: nothing moves, and the orchestrator wakes at its end.
        let plan = reconcile(&s, 30_000, &Settings::default());
        assert!(plan.commands.is_empty(), "{:?}", plan.commands);
        assert_eq!(plan.wake_at_ms, Some(61_000));
        // 2. Past it: the task is orphaned and its slot filled on b.
        settle(&mut s, 61_000);
        let orphan = &s.tasks[&on_a[0]];
        assert_eq!(orphan.status.state, TaskState::Orphaned);
        assert_eq!(orphan.status.message, "node a is unreachable");
        let live: Vec<_> = s.tasks.values().filter(|t| t.is_live()).collect();
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|t| t.node_id.as_deref() == Some("b")));
    }

    #[test]
    fn draining_moves_tasks_away() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.nodes.insert("b".into(), node("b"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 4 }));
        settle(&mut s, 0);
        s.nodes.get_mut("a").unwrap().availability = Availability::Drain;
        settle(&mut s, 0);
        assert!(s
            .tasks
            .values()
            .filter(|t| t.is_live())
            .all(|t| t.node_id.as_deref() == Some("b")));
        assert_eq!(live_count(&s), 4);
    }

    #[test]
    fn a_failed_task_is_replaced_after_the_restart_delay() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 1 }));
        settle(&mut s, 0);
        let t = s.tasks.values_mut().next().unwrap();
        t.status.state = TaskState::Failed;
        t.status.timestamp_ms = 1_000;
        let plan = reconcile(&s, 2_000, &Settings::default());
        assert!(plan.commands.is_empty());
        assert_eq!(plan.wake_at_ms, Some(6_000));
        let plan = reconcile(&s, 6_000, &Settings::default());
        match &plan.commands[0] {
            Command::CreateTasks { tasks } => assert_eq!(tasks[0].attempt, 1),
            c => panic!("{c:?}"),
        }
    }

    fn ended(state: TaskState, attempt: u64, at: i64) -> Task {
        let svc = service(ServiceMode::Replicated { replicas: 1 });
        let mut t = new_task(&svc, &Version::stable(&svc), 1, Some("a".into()), attempt, at - 100);
        t.status.state = state;
        t.status.timestamp_ms = at;
        t
    }

    #[test]
    fn restart_policies() {
        let settings = Settings::default();
        let mut svc = service(ServiceMode::Replicated { replicas: 1 });
        svc.spec.restart.delay_ms = 1_000;
        let failed = ended(TaskState::Failed, 0, 10_000);
        let done = ended(TaskState::Complete, 0, 10_000);
        // any: both restart, after the delay.
        assert_eq!(
            refill(&Version::stable(&svc), &[&failed], 10_500, &settings),
            Refill::At(11_000)
        );
        assert_eq!(
            refill(&Version::stable(&svc), &[&done], 11_000, &settings),
            Refill::Now { attempt: 1 }
        );
        // on-failure: a clean exit stays down.
        svc.spec.restart.condition = RestartCondition::OnFailure;
        assert_eq!(
            refill(&Version::stable(&svc), &[&done], 20_000, &settings),
            Refill::Never
        );
        assert_eq!(
            refill(&Version::stable(&svc), &[&failed], 20_000, &settings),
            Refill::Now { attempt: 1 }
        );
        // none: nothing restarts.
        svc.spec.restart.condition = RestartCondition::None;
        assert_eq!(
            refill(&Version::stable(&svc), &[&failed], 20_000, &settings),
            Refill::Never
        );
        // max attempts: the third restart is the last one allowed.
        svc.spec.restart.condition = RestartCondition::Any;
        svc.spec.restart.max_attempts = 3;
        let third = ended(TaskState::Failed, 2, 10_000);
        let mut fourth = ended(TaskState::Failed, 3, 10_000);
        fourth.created_ms += 1;
        assert!(matches!(
            refill(&Version::stable(&svc), &[&third], 99_000, &settings),
            Refill::Now { attempt: 3 }
        ));
        assert_eq!(
            refill(&Version::stable(&svc), &[&third, &fourth], 99_000, &settings),
            Refill::Never
        );
        // Backoff doubles per consecutive restart: attempt 2 waits 4 x the delay.
        svc.spec.restart.max_attempts = 0;
        assert_eq!(
            refill(&Version::stable(&svc), &[&third], 10_000, &settings),
            Refill::At(14_000)
        );
        // A task stopped by Warren (not by itself) is replaced at once, as attempt 0.
        let mut stopped = ended(TaskState::Shutdown, 4, 10_000);
        stopped.desired_state = TaskState::Shutdown;
        assert_eq!(
            refill(&Version::stable(&svc), &[&stopped], 10_000, &settings),
            Refill::Now { attempt: 0 }
        );
    }

    #[test]
    fn an_update_replaces_every_task() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 2 }));
        settle(&mut s, 0);
        let svc = s.services.get_mut("svc").unwrap();
        svc.spec.image = "y".into();
        svc.spec_version = 2;
        settle(&mut s, 0);
        let live: Vec<_> = s.tasks.values().filter(|t| t.is_live()).collect();
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|t| t.spec.image == "y" && t.spec_version == 2));
    }

    #[test]
    fn canaries_run_beside_the_stable_version_and_promote_or_roll_back() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 5 }));
        settle(&mut s, 0);
        let mut ch = vec![];
        let mut v2 = s.services["svc"].spec.clone();
        v2.image = "y".into();
        let version = s.services["svc"].version;
        s.apply(
            &Command::StartCanary {
                id: "svc".into(),
                expected_version: version,
                spec: v2,
                weight: 20,
                at_ms: 1,
                rules: crate::store::Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        settle(&mut s, 0);
        let live: Vec<_> = s.tasks.values().filter(|t| t.is_live()).collect();
        assert_eq!(live.iter().filter(|t| !t.canary && t.spec.image == "x").count(), 5);
        assert_eq!(live.iter().filter(|t| t.canary && t.spec.image == "y").count(), 1);
        // Weight 50 at 5 replicas: three canary tasks.
        s.apply(
            &Command::SetCanaryWeight {
                id: "svc".into(),
                weight: 50,
                at_ms: 2,
            },
            &mut ch,
        )
        .unwrap();
        settle(&mut s, 0);
        assert_eq!(s.tasks.values().filter(|t| t.is_live() && t.canary).count(), 3);
        // Promote: every task runs the new version, no canary left.
        s.apply(
            &Command::PromoteCanary {
                id: "svc".into(),
                at_ms: 3,
            },
            &mut ch,
        )
        .unwrap();
        settle(&mut s, 0);
        let live: Vec<_> = s.tasks.values().filter(|t| t.is_live()).collect();
        assert_eq!(live.len(), 5);
        assert!(live.iter().all(|t| !t.canary && t.spec.image == "y"), "{live:?}");
        // A new canary, then rollback: the canary tasks go, the stable ones stay.
        let mut v3 = s.services["svc"].spec.clone();
        v3.image = "z".into();
        let version = s.services["svc"].version;
        s.apply(
            &Command::StartCanary {
                id: "svc".into(),
                expected_version: version,
                spec: v3,
                weight: 10,
                at_ms: 4,
                rules: crate::store::Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        settle(&mut s, 0);
        assert_eq!(s.tasks.values().filter(|t| t.is_live() && t.canary).count(), 1);
        s.apply(
            &Command::RollbackService {
                id: "svc".into(),
                at_ms: 5,
                rules: crate::store::Rules::CURRENT,
            },
            &mut ch,
        )
        .unwrap();
        settle(&mut s, 0);
        let live: Vec<_> = s.tasks.values().filter(|t| t.is_live()).collect();
        assert_eq!(live.len(), 5);
        assert!(live.iter().all(|t| !t.canary && t.spec.image == "y"));
    }

    #[test]
    fn global_services_run_once_per_eligible_node() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        let mut b = node("b");
        b.labels.insert("edge".into(), "yes".into());
        s.nodes.insert("b".into(), b);
        s.nodes.insert("c".into(), node("c"));
        let mut svc = service(ServiceMode::Global);
        svc.spec.constraints = vec![Constraint::parse("c", "node.labels.edge!=no").unwrap()];
        s.services.insert("svc".into(), svc);
        settle(&mut s, 0);
        let nodes: BTreeSet<String> = s
            .tasks
            .values()
            .filter(|t| t.is_live())
            .filter_map(|t| t.node_id.clone())
            .collect();
        assert_eq!(nodes, BTreeSet::from(["a".into(), "b".into(), "c".into()]));
        s.nodes.get_mut("c").unwrap().labels.insert("edge".into(), "no".into());
        settle(&mut s, 0);
        assert_eq!(live_count(&s), 2);
    }

    #[test]
    fn removed_services_lose_their_finished_tasks() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 2 }));
        settle(&mut s, 0);
        let mut ch = vec![];
        s.apply(
            &Command::RemoveService {
                id: "svc".into(),
                at_ms: 1,
            },
            &mut ch,
        )
        .unwrap();
        settle(&mut s, 0);
        assert!(s.tasks.is_empty(), "{:?}", s.tasks);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = State::default();
        s.nodes.insert("a".into(), node("a"));
        s.services
            .insert("svc".into(), service(ServiceMode::Replicated { replicas: 1 }));
        s.services.get_mut("svc").unwrap().spec.restart.delay_ms = 0;
        for i in 0..8 {
            settle(&mut s, i * 10_000);
            for t in s.tasks.values_mut().filter(|t| t.is_live()) {
                t.status.state = TaskState::Failed;
                t.status.timestamp_ms = i * 10_000;
                t.updated_ms = i * 10_000;
            }
        }
        settle(&mut s, 100_000);
        let finished = s.tasks.values().filter(|t| t.status.state.is_terminal()).count();
        assert_eq!(finished, Settings::default().history_limit);
    }
}
