//! The scheduler: places pending tasks on nodes. `schedule` is a pure function of
//! the state: filter every node (`filters`), then score the survivors — fewest tasks
//! of the same service first (spread), then least reserved — and place tasks one by
//! one, accounting for the placements made in the same round. Tasks that fit
//! nowhere stay pending with the reasons, Swarm-style.

use super::filters::{self, Rejection};
use crate::model::{Resources, TaskState};
use crate::store::{Command, State};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default, PartialEq)]
pub struct Placement {
    pub assignments: Vec<(String, String)>,
    /// Task ID and why it stays pending.
    pub unplaced: Vec<(String, String)>,
}

impl Placement {
    /// The commands that record this placement; empty when nothing changes.
    pub fn into_commands(self, state: &State, at_ms: i64) -> Vec<Command> {
        let mut cmds = Vec::new();
        if !self.assignments.is_empty() {
            cmds.push(Command::AssignTasks {
                assignments: self.assignments,
                at_ms,
            });
        }
        let changed: Vec<_> = self
            .unplaced
            .into_iter()
            .filter(|(id, msg)| state.tasks.get(id).is_some_and(|t| t.status.message != *msg))
            .collect();
        if !changed.is_empty() {
            cmds.push(Command::SetTasksPending {
                updates: changed,
                at_ms,
            });
        }
        cmds
    }
}

fn ratio(used: i64, cap: i64) -> f64 {
    if cap <= 0 {
        0.0
    } else {
        used as f64 / cap as f64
    }
}

/// Lower is better: tasks of the same service on the node, fill after placement
/// (millionths), all tasks on the node, then the node name for a stable order.
type Score<'a> = (u64, u64, u64, &'a str);

pub fn schedule(state: &State) -> Placement {
    let mut pending: Vec<_> = state
        .tasks
        .values()
        .filter(|t| t.status.state == TaskState::Pending && t.desired_state <= TaskState::Running)
        .collect();
    if pending.is_empty() {
        return Placement::default();
    }
    pending.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));

    let mut reserved: BTreeMap<String, Resources> = state.reserved_by_node();
    let mut homes: filters::VolumeHomes = state
        .volumes
        .values()
        .map(|v| (v.name.clone(), v.node_id.clone()))
        .collect();
    // (node, service) -> live tasks of that service on that node.
    let mut spread: HashMap<(String, String), u64> = HashMap::new();
    let mut load: HashMap<String, u64> = HashMap::new();
    for t in state.tasks.values().filter(|t| t.is_live()) {
        if let Some(n) = &t.node_id {
            *spread.entry((n.clone(), t.service_id.clone())).or_default() += 1;
            *load.entry(n.clone()).or_default() += 1;
        }
    }

    let mut out = Placement::default();
    for task in pending {
        let candidates: Vec<_> = match &task.node_id {
            Some(n) => state.nodes.get(n).into_iter().collect(),
            None => state.nodes.values().collect(),
        };
        let mut best: Option<(&str, Score)> = None;
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        for node in &candidates {
            let used = reserved.get(&node.id).copied().unwrap_or_default();
            if let Err(r) = filters::check(node, &task.spec, used, &homes) {
                *rejections.entry(r).or_default() += 1;
                continue;
            }
            let same = spread
                .get(&(node.id.clone(), task.service_id.clone()))
                .copied()
                .unwrap_or(0);
            let after = used.saturating_add(task.spec.reservations);
            let fill = ratio(after.nano_cpus, node.resources.nano_cpus)
                .max(ratio(after.memory_bytes, node.resources.memory_bytes));
            // Scores compare as integers so that ties fall to the task count, then the name.
            let key = (
                same,
                (fill * 1_000_000.0) as u64,
                load.get(&node.id).copied().unwrap_or(0),
                node.name.as_str(),
            );
            if best.as_ref().is_none_or(|(_, k)| key < *k) {
                best = Some((node.id.as_str(), key));
            }
        }
        match best {
            Some((node_id, _)) => {
                let r = reserved.entry(node_id.to_string()).or_default();
                *r = r.saturating_add(task.spec.reservations);
                *spread
                    .entry((node_id.to_string(), task.service_id.clone()))
                    .or_default() += 1;
                *load.entry(node_id.to_string()).or_default() += 1;
                for v in task.spec.volume_names() {
                    if let Some(home @ None) = homes.get_mut(v) {
                        *home = Some(node_id.to_string());
                    }
                }
                out.assignments.push((task.id.clone(), node_id.to_string()));
            }
            None => {
                let reason = if candidates.is_empty() {
                    match &task.node_id {
                        Some(n) => format!("no suitable node (node {n} is gone)"),
                        None => "no suitable node (the cluster has no nodes)".to_string(),
                    }
                } else {
                    let parts: Vec<String> = rejections
                        .iter()
                        .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
                        .collect();
                    format!("no suitable node ({})", parts.join(", "))
                };
                out.unplaced.push((task.id.clone(), reason));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    pub(crate) fn node(id: &str) -> Node {
        Node {
            ingress: Default::default(),
            id: id.into(),
            name: format!("node-{id}"),
            role: NodeRole::Worker,
            availability: Availability::Active,
            labels: Default::default(),
            addr: String::new(),
            resources: Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 4 << 30,
            },
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

    fn pending(id: &str, svc: &str, spec: &ServiceSpec, created: i64) -> Task {
        Task {
            id: id.into(),
            service_id: svc.into(),
            service_name: svc.into(),
            slot: 1,
            node_id: None,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Pending,
                ..Default::default()
            },
            spec: spec.clone(),
            spec_version: 1,
            attempt: 0,
            canary: false,
            created_ms: created,
            updated_ms: created,
            version: 1,
        }
    }

    fn state(nodes: &[Node], tasks: &[Task]) -> State {
        let mut s = State::default();
        for n in nodes {
            s.nodes.insert(n.id.clone(), n.clone());
        }
        for t in tasks {
            s.tasks.insert(t.id.clone(), t.clone());
        }
        s
    }

    fn spec() -> ServiceSpec {
        ServiceSpec {
            image: "x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn nine_replicas_spread_three_per_node() {
        let tasks: Vec<_> = (0..9).map(|i| pending(&format!("t{i}"), "web", &spec(), i)).collect();
        let s = state(&[node("a"), node("b"), node("c")], &tasks);
        let p = schedule(&s);
        assert!(p.unplaced.is_empty());
        let mut per: HashMap<String, usize> = HashMap::new();
        for (_, n) in &p.assignments {
            *per.entry(n.clone()).or_default() += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
    }

    #[test]
    fn spread_counts_tasks_already_running() {
        let mut running = pending("r1", "web", &spec(), 0);
        running.node_id = Some("a".into());
        running.status.state = TaskState::Running;
        let s = state(&[node("a"), node("b")], &[running, pending("t1", "web", &spec(), 1)]);
        assert_eq!(schedule(&s).assignments, vec![("t1".to_string(), "b".to_string())]);
    }

    #[test]
    fn constraints_pin_tasks() {
        let mut b = node("b");
        b.labels.insert("zone".into(), "edge".into());
        let mut sp = spec();
        sp.constraints = vec![Constraint::parse("c", "node.labels.zone==edge").unwrap()];
        let tasks: Vec<_> = (0..4).map(|i| pending(&format!("t{i}"), "web", &sp, i)).collect();
        let s = state(&[node("a"), b, node("c")], &tasks);
        let p = schedule(&s);
        assert_eq!(p.assignments.len(), 4);
        assert!(p.assignments.iter().all(|(_, n)| n == "b"));
    }

    #[test]
    fn drained_and_down_nodes_get_nothing() {
        let mut a = node("a");
        a.availability = Availability::Drain;
        let mut b = node("b");
        b.state = NodeState::Down;
        let s = state(&[a, b, node("c")], &[pending("t1", "web", &spec(), 0)]);
        assert_eq!(schedule(&s).assignments, vec![("t1".to_string(), "c".to_string())]);
    }

    #[test]
    fn an_oversized_reservation_stays_pending_with_the_reasons() {
        let mut sp = spec();
        sp.reservations.memory_bytes = 64 << 30;
        let mut a = node("a");
        a.availability = Availability::Drain;
        let s = state(&[a, node("b"), node("c")], &[pending("t1", "web", &sp, 0)]);
        let p = schedule(&s);
        assert!(p.assignments.is_empty());
        assert_eq!(
            p.unplaced,
            vec![(
                "t1".to_string(),
                "no suitable node (node is drained on 1 node, insufficient memory on 2 nodes)".to_string()
            )]
        );
    }

    #[test]
    fn reservations_made_in_one_round_count() {
        let mut sp = spec();
        sp.reservations.memory_bytes = 3 << 30;
        let s = state(
            &[node("a"), node("b")],
            &[
                pending("t1", "web", &sp, 0),
                pending("t2", "web", &sp, 1),
                pending("t3", "web", &sp, 2),
            ],
        );
        let p = schedule(&s);
        assert_eq!(p.assignments.len(), 2);
        assert_eq!(p.unplaced.len(), 1);
        assert!(p.unplaced[0].1.contains("insufficient memory on 2 nodes"));
    }

    #[test]
    fn least_allocated_breaks_spread_ties() {
        let mut other = pending("o1", "db", &spec(), 0);
        other.node_id = Some("a".into());
        other.status.state = TaskState::Running;
        other.spec.reservations.memory_bytes = 2 << 30;
        let s = state(&[node("a"), node("b")], &[other, pending("t1", "web", &spec(), 1)]);
        assert_eq!(schedule(&s).assignments[0].1, "b");
    }

    #[test]
    fn tasks_sharing_a_new_volume_land_together_and_follow_it() {
        let mut sp = spec();
        sp.mounts = vec![Mount::parse("m", "type=volume,source=data,target=/d").unwrap()];
        let mut s = state(
            &[node("a"), node("b")],
            &[pending("t1", "db", &sp, 0), pending("t2", "db", &sp, 1)],
        );
        s.volumes.insert(
            "v".into(),
            Volume {
                id: "v".into(),
                name: "data".into(),
                driver: "local".into(),
                node_id: None,
                labels: Default::default(),
                options: Default::default(),
                created_ms: 0,
            },
        );
        let p = schedule(&s);
        assert_eq!(p.assignments.len(), 2);
        assert_eq!(p.assignments[0].1, p.assignments[1].1, "{p:?}");
        s.volumes.get_mut("v").unwrap().node_id = Some("b".into());
        let p = schedule(&s);
        assert!(p.assignments.iter().all(|(_, n)| n == "b"));
    }

    #[test]
    fn unchanged_reasons_produce_no_command() {
        let mut sp = spec();
        sp.reservations.memory_bytes = 64 << 30;
        let mut t = pending("t1", "web", &sp, 0);
        let s = state(&[node("a")], &[t.clone()]);
        let reason = schedule(&s).unplaced[0].1.clone();
        t.status.message = reason;
        let s = state(&[node("a")], &[t]);
        assert!(schedule(&s).into_commands(&s, 1).is_empty());
    }
}
