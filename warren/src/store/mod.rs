//! The replicated store: the typed `Command`s, the in-memory `State` they apply to
//! (`apply/`, one file per object family, with the rules that must hold across
//! managers), the `ApplyError` a refused command answers, and the redb-backed
//! openraft log store and state machine that make it durable. Every other component
//! reads the state through `Store` and learns of changes from its event stream; none
//! of them writes here except through a `Proposer` (Raft).

mod apply;
pub mod backup;
pub mod command;
mod endpoints;
pub mod error;
mod fake;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod log;
pub mod sm;
pub mod state;
pub mod types;
pub mod write;

pub use command::{ApplyOp, ApplyStep, Command, Response, Rules};
pub use error::{ApplyError, IngressPortFlag, User};
pub use fake::FakeProposer;
pub use state::{Action, Change, ObjectKind, State};
pub use write::{Member, Proposer, RaftStatus, WriteError};

use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// What one batch of applied log entries changed.
#[derive(Clone, Debug)]
pub struct Applied {
    /// Index of the last log entry in the batch.
    pub index: u64,
    pub changes: Vec<Change>,
    /// The whole state was replaced (a snapshot was installed): re-read everything.
    pub reset: bool,
}

/// Shared read access to the applied state, plus notifications.
pub struct Store {
    state: RwLock<State>,
    applied: watch::Sender<u64>,
    events: broadcast::Sender<Arc<Applied>>,
}

impl Store {
    pub fn new() -> Arc<Store> {
        let (applied, _) = watch::channel(0);
        let (events, _) = broadcast::channel(4096);
        Arc::new(Store {
            state: RwLock::new(State::default()),
            applied,
            events,
        })
    }

    /// Runs `f` on a consistent view of the state. Keep it short: appliers wait.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.events.subscribe()
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the local state machine has applied `index`; false on timeout.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub(crate) fn publish(&self, applied: Applied) {
        self.applied.send_replace(applied.index);
        // No receiver is fine: nobody is watching yet.
        let _ = self.events.send(Arc::new(applied));
    }
}
