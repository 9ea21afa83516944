//! Connection-aware drain of a task that is to stop, before its stop signal: wait
//! until this node's data plane no longer picks the task for new connections (the
//! managers gave it weight 0 on every node and in the ingress), then until the
//! established connections it accepted, counted inside its own network namespace
//! (so clients on other nodes and the ingress count too), have stayed at zero for
//! a settle time, or until the service's drain timeout runs out. The phases are a
//! pure function ([`Drain::step`]); what it observes comes through [`Traffic`].
//! Not the stop itself, nor destroying sockets after the exit (the data plane does
//! that when the task leaves its service's endpoints).

use crate::agent::executor::Assignment;
use crate::network::NetworkError;
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Zero connections must last this long: a client that picked the task just
/// before the weight changed on another node, or the ingress, may still connect.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How often the phases are looked at again.
pub const POLL: Duration = Duration::from_millis(200);

/// What a drain observes (a seam: unit tests give a fake).
pub trait Traffic: Send + Sync {
    /// Whether this node's data plane may still pick the task for new connections.
    fn selected(&self, task_id: &str) -> bool;
    /// Established connections the task accepted, inside its namespace `netns`.
    fn accepted(&self, netns: &Path) -> BoxFuture<'static, Result<usize, NetworkError>>;
}

/// Where a drain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// This node still picks the task for new connections.
    Deselecting,
    /// Connections are open (or zero for less than [`SETTLE`]).
    Draining { zero_since: Option<Instant> },
}

/// How a drain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No connection left for [`SETTLE`].
    Drained,
    /// The drain timeout ran out; `open` connections were left (None: the task
    /// was still selected for new connections).
    TimedOut { open: Option<usize> },
    /// The connections could not be counted; the task stops without waiting.
    Uncountable(String),
}

/// The next step of a drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    Stop(Outcome),
}

/// One task's drain.
#[derive(Clone, Debug)]
pub struct Drain {
    deadline: Instant,
    pub phase: Phase,
}

impl Drain {
    pub fn new(now: Instant, timeout: Duration) -> Drain {
        Drain {
            deadline: now + timeout,
            phase: Phase::Deselecting,
        }
    }

    /// The step after observing `selected` and, once deselected, the count of
    /// accepted connections (`None` while still selected: nothing was counted).
    pub fn step(&mut self, now: Instant, selected: bool, accepted: Option<Result<usize, String>>) -> Step {
        if selected {
            self.phase = Phase::Deselecting;
            return if now >= self.deadline {
                Step::Stop(Outcome::TimedOut { open: None })
            } else {
                Step::Wait
            };
        }
        let n = match accepted {
            None => {
                self.phase = Phase::Draining { zero_since: None };
                return Step::Wait;
            }
            Some(Err(e)) => return Step::Stop(Outcome::Uncountable(e)),
            Some(Ok(n)) => n,
        };
        let zero_since = match (n, self.phase) {
            (0, Phase::Draining { zero_since: Some(t) }) => Some(t),
            (0, _) => Some(now),
            _ => None,
        };
        self.phase = Phase::Draining { zero_since };
        match zero_since {
            Some(t) if now.duration_since(t) >= SETTLE => Step::Stop(Outcome::Drained),
            _ if now >= self.deadline => Step::Stop(Outcome::TimedOut { open: Some(n) }),
            _ => Step::Wait,
        }
    }
}

/// Drains task `task_id` (namespace `netns`) for at most `timeout`.
pub async fn run(traffic: &dyn Traffic, task_id: &str, netns: &Path, timeout: Duration) -> Outcome {
    let mut drain = Drain::new(Instant::now(), timeout);
    loop {
        let selected = traffic.selected(task_id);
        let accepted = if selected {
            None
        } else {
            Some(traffic.accepted(netns).await.map_err(|e| e.to_string()))
        };
        let open = accepted.as_ref().and_then(|a| a.as_ref().ok().copied());
        match drain.step(Instant::now(), selected, accepted) {
            Step::Stop(outcome) => return outcome,
            Step::Wait => tracing::trace!(task = task_id, selected, open, "draining"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The real observations: this node's data plane was synced with the endpoints of
/// the latest assignment before the worker got it, so they say what it picks; the
/// count is sock_diag's.
pub struct NodeTraffic {
    pub assignment: watch::Receiver<Option<Assignment>>,
}

impl Traffic for NodeTraffic {
    fn selected(&self, task_id: &str) -> bool {
        self.assignment.borrow().as_ref().is_some_and(|a| {
            a.services
                .iter()
                .flat_map(|s| &s.endpoints)
                .any(|e| e.task_id == task_id && e.ready && !e.draining)
        })
    }

    fn accepted(&self, netns: &Path) -> BoxFuture<'static, Result<usize, NetworkError>> {
        let netns: PathBuf = netns.to_path_buf();
        Box::pin(async move { crate::network::accepted_connections(&netns).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn waits_for_the_deselection_then_for_zero_connections_that_last() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Drain::new(t0, T);
        assert_eq!(d.step(at(0), true, None), Step::Wait);
        assert_eq!(d.phase, Phase::Deselecting);
        assert_eq!(d.step(at(200), false, Some(Ok(2))), Step::Wait);
        assert_eq!(d.step(at(400), false, Some(Ok(0))), Step::Wait);
        assert_eq!(
            d.phase,
            Phase::Draining {
                zero_since: Some(at(400))
            }
        );
        // A late connection (picked on another node before its weight changed)
        // starts the settle time again.
        assert_eq!(d.step(at(800), false, Some(Ok(1))), Step::Wait);
        assert_eq!(d.step(at(1000), false, Some(Ok(0))), Step::Wait);
        assert_eq!(d.step(at(1900), false, Some(Ok(0))), Step::Wait);
        assert_eq!(d.step(at(2000), false, Some(Ok(0))), Step::Stop(Outcome::Drained));
    }

    #[test]
    fn the_timeout_ends_a_drain_whatever_is_open() {
        let t0 = Instant::now();
        let mut d = Drain::new(t0, Duration::from_secs(2));
        assert_eq!(d.step(t0 + Duration::from_secs(1), false, Some(Ok(3))), Step::Wait);
        assert_eq!(
            d.step(t0 + Duration::from_secs(2), false, Some(Ok(3))),
            Step::Stop(Outcome::TimedOut { open: Some(3) })
        );
        let mut d = Drain::new(t0, Duration::from_secs(2));
        assert_eq!(
            d.step(t0 + Duration::from_secs(2), true, None),
            Step::Stop(Outcome::TimedOut { open: None })
        );
        // Zero connections settle even when the timeout is shorter than the settle
        // time is left: the timeout wins.
        let mut d = Drain::new(t0, Duration::from_millis(500));
        assert_eq!(d.step(t0, false, Some(Ok(0))), Step::Wait);
        assert_eq!(
            d.step(t0 + Duration::from_millis(500), false, Some(Ok(0))),
            Step::Stop(Outcome::TimedOut { open: Some(0) })
        );
    }

    #[test]
    fn a_count_that_fails_stops_at_once() {
        let t0 = Instant::now();
        let mut d = Drain::new(t0, T);
        assert_eq!(
            d.step(t0, false, Some(Err("no namespace".into()))),
            Step::Stop(Outcome::Uncountable("no namespace".into()))
        );
    }

    struct Fake {
        selected: AtomicBool,
        open: AtomicUsize,
        counted: AtomicUsize,
    }

    impl Traffic for Arc<Fake> {
        fn selected(&self, _task_id: &str) -> bool {
            self.selected.load(Ordering::SeqCst)
        }
        fn accepted(&self, _netns: &Path) -> BoxFuture<'static, Result<usize, NetworkError>> {
            self.counted.fetch_add(1, Ordering::SeqCst);
            let n = self.open.load(Ordering::SeqCst);
            Box::pin(async move { Ok(n) })
        }
    }

    use std::sync::Arc;

    #[tokio::test]
    async fn run_counts_only_once_deselected_and_ends_when_connections_finish() {
        let fake = Arc::new(Fake {
            selected: AtomicBool::new(true),
            open: AtomicUsize::new(1),
            counted: AtomicUsize::new(0),
        });
        let f2 = fake.clone();
        let started = Instant::now();
        let drain = tokio::spawn(async move { run(&f2, "t", Path::new("/nowhere"), T).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(fake.counted.load(Ordering::SeqCst), 0, "counted while still selected");
        fake.selected.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!drain.is_finished(), "a connection is still open");
        assert!(fake.counted.load(Ordering::SeqCst) > 0);
        fake.open.store(0, Ordering::SeqCst);
        let zero_at = Instant::now();
        assert_eq!(drain.await.unwrap(), Outcome::Drained);
        assert!(zero_at.elapsed() >= SETTLE - POLL, "{:?}", started.elapsed());
    }
}
