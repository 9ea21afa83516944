//! The node's executor: turns the leader's assignment set into running containers
//! and back. One reconcile loop compares the assignment with what runs and starts
//! or stops a supervisor per task (`task`); supervisors pull, wire up the network,
//! secrets and volumes, run the container, watch its exit and health, and report
//! every state change; a task that is to stop drains its connections first
//! (`drain`). Containers that survive a daemon restart are adopted by
//! their labels, never duplicated or killed. Scheduling and restarts are the
//! managers' business, except while the node is cut off from every manager
//! (`restart_locally`): then a task that ends is run again here, under the same
//! task, by its restart policy.

mod drain;
mod health;
mod mounts;
mod task;

use crate::agent::executor::{Assignment, Executor, NodeNetwork, Report};
use crate::agent::node_service::{LogLines, NodeOps, NodeOpsError};
use crate::model::{now_ms, TaskState, TaskStatus};
use crate::network::{NetworkError, NetworkManager, PeerRoute};
use crate::runtime::{ContainerRuntime, ContainerStatus, LogOptions};
use futures::future::BoxFuture;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub struct WorkerConfig {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// Search domains written into the tasks' resolv.conf.
    pub search_domains: Vec<String>,
    /// Resolvers for the tasks besides the node's own DNS on the bridge address.
    pub upstream_dns: Vec<std::net::IpAddr>,
    /// Set: while the node is cut off from every manager, tasks that end are
    /// restarted here by their restart policy (the managers would otherwise).
    pub autonomy: Option<Arc<crate::agent::autonomy::Autonomy>>,
}

/// Builds the node network once the leader has said which subnet is the node's
/// (a seam: unit tests give a fake).
pub type NetworkFactory =
    Arc<dyn Fn(NodeNetwork) -> BoxFuture<'static, Result<Arc<dyn NetworkManager>, NetworkError>> + Send + Sync>;

pub struct Worker {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: WorkerConfig,
    runtime: Arc<dyn ContainerRuntime>,
    reports: mpsc::UnboundedSender<Report>,
    statuses: Mutex<HashMap<String, TaskStatus>>,
    desired: watch::Sender<Option<Assignment>>,
    net_info: watch::Sender<Option<NodeNetwork>>,
    /// What a stopping task's drain observes.
    traffic: Arc<dyn drain::Traffic>,
}

impl Inner {
    /// Records and sends a task's new status. A task never moves backwards.
    pub(crate) fn report(&self, task_id: &str, status: TaskStatus) {
        let mut map = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prev) = map.get(task_id) {
            if status.state < prev.state || (prev.state.is_terminal() && status.state != prev.state) {
                return;
            }
        }
        tracing::debug!(task = task_id, state = %status.state, message = %status.message, err = %status.err, "task status");
        map.insert(task_id.to_string(), status.clone());
        let _ = self.reports.send((task_id.to_string(), status));
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.cfg.data_dir.join("tasks").join(task_id)
    }

    fn secrets_dir(&self, task_id: &str) -> PathBuf {
        node_secrets_dir(&self.cfg.node_id).join(task_id)
    }

    fn volumes_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("volumes")
    }
}

/// Where node `node_id` mounts its tasks' secrets: tmpfs mounts outside the data
/// dir, so that secrets never reach a disk.
pub fn node_secrets_dir(node_id: &str) -> PathBuf {
    PathBuf::from("/run/warren/secrets").join(node_id)
}

pub fn status(state: TaskState, message: impl Into<String>) -> TaskStatus {
    TaskStatus {
        state,
        message: message.into(),
        timestamp_ms: now_ms(),
        ..Default::default()
    }
}

impl Worker {
    /// Starts the reconcile loop; adopts this node's containers first.
    pub fn start(
        cfg: WorkerConfig,
        runtime: Arc<dyn ContainerRuntime>,
        network: NetworkFactory,
        reports: mpsc::UnboundedSender<Report>,
        initial_network: Option<NodeNetwork>,
    ) -> Worker {
        let (desired, assignment) = watch::channel(None);
        let (net_info, _) = watch::channel(initial_network);
        let inner = Arc::new(Inner {
            cfg,
            runtime,
            reports,
            statuses: Mutex::new(HashMap::new()),
            desired,
            net_info,
            traffic: Arc::new(drain::NodeTraffic { assignment }),
        });
        tokio::spawn(reconcile_loop(inner.clone(), network));
        Worker { inner }
    }
}

impl Executor for Worker {
    fn configure(&self, network: NodeNetwork) {
        self.inner.net_info.send_if_modified(|cur| {
            if cur.as_ref() == Some(&network) {
                false
            } else {
                *cur = Some(network);
                true
            }
        });
    }

    fn assign(&self, assignment: Assignment) {
        self.inner.desired.send_replace(Some(assignment));
    }

    fn statuses(&self) -> Vec<Report> {
        self.inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl NodeOps for Worker {
    fn logs(
        &self,
        task_ids: Vec<String>,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxFuture<'_, Result<LogLines, NodeOpsError>> {
        Box::pin(async move {
            let mut streams = Vec::new();
            for id in task_ids {
                match self.inner.runtime.logs(&id, LogOptions { tail, follow }).await {
                    Ok(s) => {
                        let tid = id.clone();
                        streams.push(
                            s.map(move |l| l.map(|line| (tid.clone(), line)).map_err(NodeOpsError::from))
                                .boxed(),
                        );
                    }
                    // A task that never got a container has no output.
                    Err(e) => tracing::debug!(task = %id, error = %e, "no logs"),
                }
            }
            Ok(futures::stream::select_all(streams).boxed())
        })
    }

    fn load_image(&self, archive: PathBuf) -> BoxFuture<'_, Result<Vec<String>, NodeOpsError>> {
        Box::pin(async move {
            let images = self.inner.runtime.import(&archive, None).await?;
            Ok(images.into_iter().map(|i| i.name).collect())
        })
    }
}

struct Supervisor {
    stop: watch::Sender<bool>,
}

/// Whether task `id`, which just ended, is to start again here, and after how
/// long: only while the node is cut off, and as its restart policy says.
fn restart_locally(
    inner: &Inner,
    desired: &watch::Receiver<Option<Assignment>>,
    id: &str,
    restarts: &mut HashMap<String, u64>,
) -> Option<Duration> {
    if !inner.cfg.autonomy.as_ref().is_some_and(|a| a.is_cut_off()) {
        return None;
    }
    let task = desired
        .borrow()
        .as_ref()
        .and_then(|a| a.tasks.iter().find(|t| t.id == id).cloned())?;
    let ended = inner
        .statuses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .map(|s| s.state)?;
    let done = restarts.entry(id.to_string()).or_default();
    let policy = task.spec.restart;
    if !restart_wanted(task.desired_state, ended, policy, *done) {
        return None;
    }
    *done += 1;
    Some(Duration::from_millis(policy.delay_ms))
}

/// The restart policy, applied by the node itself: a task that is still to run
/// and ended (failed, or completed under `any`) restarts, up to `max_attempts`.
fn restart_wanted(desired: TaskState, ended: TaskState, policy: crate::model::RestartPolicy, done: u64) -> bool {
    use crate::model::RestartCondition;
    if desired > TaskState::Running || (policy.max_attempts > 0 && done >= policy.max_attempts) {
        return false;
    }
    match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => ended == TaskState::Failed,
        RestartCondition::Any => matches!(ended, TaskState::Failed | TaskState::Complete),
    }
}

async fn reconcile_loop(inner: Arc<Inner>, factory: NetworkFactory) {
    let mut desired_rx = inner.desired.subscribe();
    let mut net_rx = inner.net_info.subscribe();
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<String>();
    let mut supervisors: HashMap<String, Supervisor> = HashMap::new();
    // Tasks whose supervisor ended here: they are not started again even while the
    // assignment still lists them (the manager has not processed the report yet).
    let mut finished: HashSet<String> = HashSet::new();
    let mut network: Option<Arc<dyn NetworkManager>> = None;
    let mut peers_set: Option<Vec<PeerRoute>> = None;

    // Containers that survived a restart, by task ID, waiting for the assignment
    // that says whether they are still wanted.
    let mut adoptable: BTreeMap<String, ContainerStatus> = BTreeMap::new();
    let labels = BTreeMap::from([(crate::runtime::LABEL_NODE.to_string(), inner.cfg.node_id.clone())]);
    match inner.runtime.list(&labels).await {
        Ok(containers) => {
            for c in containers {
                let id = c
                    .labels
                    .get(crate::runtime::LABEL_TASK_ID)
                    .cloned()
                    .unwrap_or_else(|| c.id.clone());
                let running = c
                    .task
                    .as_ref()
                    .is_some_and(|t| t.state == crate::runtime::TaskState::Running);
                // Nothing is reported until the assignment arrives: a status without
                // the task's address and health would take it out of every node's
                // balancing tables for a moment.
                tracing::info!(task = %id, running, "found a container of this node");
                adoptable.insert(id, c);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot list this node's containers"),
    }

    // Cut off from every manager, a task that ended is restarted here: its
    // restarts so far, and the channel its restart delay ends on.
    let mut local_restarts: HashMap<String, u64> = HashMap::new();
    let (restart_tx, mut restart_rx) = mpsc::unbounded_channel::<String>();

    let mut retry_network = false;
    loop {
        if network.is_none() {
            let info = net_rx.borrow().clone();
            if let Some(info) = info {
                match factory(info.clone()).await {
                    Ok(n) => {
                        tracing::info!(subnet = %info.subnet, "task network ready");
                        network = Some(n);
                        retry_network = false;
                    }
                    Err(e) => {
                        tracing::error!(subnet = %info.subnet, error = %e, "cannot set up the task network; retrying");
                        retry_network = true;
                    }
                }
            }
        }

        let assignment = desired_rx.borrow_and_update().clone();
        if let (Some(a), Some(net)) = (assignment, network.clone()) {
            let peers: Vec<PeerRoute> = a
                .peers
                .iter()
                .filter_map(|(subnet, via)| Some((subnet.parse().ok()?, *via)))
                .collect();
            if peers_set.as_ref() != Some(&peers) {
                match net.set_peer_routes(&peers).await {
                    Ok(()) => peers_set = Some(peers),
                    Err(e) => tracing::warn!(error = %e, "could not set the routes to other nodes"),
                }
            }
            let wanted: HashSet<&str> = a.tasks.iter().map(|t| t.id.as_str()).collect();
            for t in &a.tasks {
                let runs_here = supervisors.contains_key(&t.id);
                if t.desired_state <= TaskState::Running {
                    if runs_here || finished.contains(&t.id) {
                        continue;
                    }
                    let secrets: Vec<(String, Vec<u8>)> = t
                        .spec
                        .secrets
                        .iter()
                        .map(|r| (r.name.clone(), a.secrets.get(&r.name).cloned().unwrap_or_default()))
                        .collect();
                    let missing: Vec<&str> = t
                        .spec
                        .secrets
                        .iter()
                        .filter(|r| !a.secrets.contains_key(&r.name))
                        .map(|r| r.name.as_str())
                        .collect();
                    if !missing.is_empty() {
                        let mut st = status(TaskState::Rejected, "secrets unavailable");
                        st.err = format!("secret {} was not sent to this node (removed?)", missing.join(", "));
                        inner.report(&t.id, st);
                        finished.insert(t.id.clone());
                        continue;
                    }
                    let missing: Vec<&str> = t
                        .spec
                        .configs
                        .iter()
                        .filter(|r| !a.configs.contains_key(&r.name))
                        .map(|r| r.name.as_str())
                        .collect();
                    if !missing.is_empty() {
                        let mut st = status(TaskState::Rejected, "configs unavailable");
                        st.err = format!("config {} was not sent to this node (removed?)", missing.join(", "));
                        inner.report(&t.id, st);
                        finished.insert(t.id.clone());
                        continue;
                    }
                    let configs: Vec<(String, Vec<u8>)> = t
                        .spec
                        .configs
                        .iter()
                        .map(|r| (r.name.clone(), a.configs[&r.name].clone()))
                        .collect();
                    let (stop_tx, stop_rx) = watch::channel(false);
                    let adopted = adoptable.remove(&t.id);
                    let (inner2, net2, task, done) = (inner.clone(), net.clone(), t.clone(), finished_tx.clone());
                    let span = tracing::info_span!("task", task = %task.id, name = %task.name());
                    tokio::spawn(tracing::Instrument::instrument(
                        async move {
                            let id = task.id.clone();
                            let files = task::Files { secrets, configs };
                            task::supervise(inner2, net2, task, files, adopted, stop_rx).await;
                            let _ = done.send(id);
                        },
                        span,
                    ));
                    supervisors.insert(t.id.clone(), Supervisor { stop: stop_tx });
                } else if runs_here {
                    let _ = supervisors[&t.id].stop.send(true);
                } else if let Some(c) = adoptable.remove(&t.id) {
                    // Adopted, and now to be stopped: supervise it just to stop it.
                    let (stop_tx, stop_rx) = watch::channel(true);
                    let (inner2, net2, task, done) = (inner.clone(), net.clone(), t.clone(), finished_tx.clone());
                    tokio::spawn(async move {
                        let id = task.id.clone();
                        task::supervise(inner2, net2, task, task::Files::default(), Some(c), stop_rx).await;
                        let _ = done.send(id);
                    });
                    supervisors.insert(t.id.clone(), Supervisor { stop: stop_tx });
                } else if !finished.contains(&t.id) && !t.status.state.is_terminal() {
                    inner.report(&t.id, status(TaskState::Shutdown, "stopped before it started"));
                    finished.insert(t.id.clone());
                }
            }
            for (id, s) in &supervisors {
                if !wanted.contains(id.as_str()) {
                    let _ = s.stop.send(true);
                }
            }
            // What survived a restart but is no longer assigned: stop and remove it.
            let stale: Vec<String> = adoptable
                .keys()
                .filter(|id| !wanted.contains(id.as_str()))
                .cloned()
                .collect();
            for id in stale {
                if let Some(c) = adoptable.remove(&id) {
                    tracing::info!(task = %id, "removing a container that is no longer assigned here");
                    let (inner2, net2) = (inner.clone(), net.clone());
                    tokio::spawn(async move { task::remove_leftover(&inner2, net2.as_ref(), &id, &c.id).await });
                }
            }
            finished.retain(|id| wanted.contains(id.as_str()));
            let in_use: Vec<String> = a
                .tasks
                .iter()
                .filter(|t| supervisors.contains_key(&t.id))
                .flat_map(|t| t.spec.volume_names().map(str::to_string).collect::<Vec<_>>())
                .collect();
            mounts::collect_volumes(&inner.volumes_dir(), &a.volumes, &in_use);
        }

        tokio::select! {
            r = desired_rx.changed() => if r.is_err() { return },
            r = net_rx.changed() => {
                if r.is_err() {
                    return;
                }
            }
            Some(id) = finished_rx.recv() => {
                supervisors.remove(&id);
                if let Some(delay) = restart_locally(&inner, &desired_rx, &id, &mut local_restarts) {
                    let tx = restart_tx.clone();
                    let id = id.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(id);
                    });
                }
                finished.insert(id);
            }
            Some(id) = restart_rx.recv() => {
                // Still cut off: run it again under the same task (the managers learn
                // of it as running when the link is back, never of the failure).
                if inner.cfg.autonomy.as_ref().is_some_and(|a| a.is_cut_off()) && finished.remove(&id) {
                    tracing::info!(task = %id, "restarting a task locally: no manager answers");
                    inner.statuses.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    if let Some(a) = &inner.cfg.autonomy {
                        a.restarted();
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(2)), if retry_network => {}
        }
    }
}

#[cfg(test)]
mod restart_tests {
    use super::*;
    use crate::model::{RestartCondition, RestartPolicy};

    fn policy(condition: RestartCondition, max_attempts: u64) -> RestartPolicy {
        RestartPolicy {
            condition,
            delay_ms: 0,
            max_attempts,
        }
    }

    #[test]
    fn a_cut_off_node_restarts_tasks_as_their_policy_says() {
        let run = TaskState::Running;
        let any = policy(RestartCondition::Any, 0);
        assert!(restart_wanted(run, TaskState::Failed, any, 7));
        assert!(restart_wanted(run, TaskState::Complete, any, 0));
        assert!(!restart_wanted(run, TaskState::Shutdown, any, 0), "stopped on purpose");
        assert!(
            !restart_wanted(TaskState::Shutdown, TaskState::Failed, any, 0),
            "no longer wanted"
        );
        let on_failure = policy(RestartCondition::OnFailure, 2);
        assert!(restart_wanted(run, TaskState::Failed, on_failure, 1));
        assert!(
            !restart_wanted(run, TaskState::Failed, on_failure, 2),
            "attempts used up"
        );
        assert!(!restart_wanted(run, TaskState::Complete, on_failure, 0));
        assert!(!restart_wanted(
            run,
            TaskState::Failed,
            policy(RestartCondition::None, 0),
            0
        ));
    }
}
