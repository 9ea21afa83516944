//! `RaftNode`: one manager's Raft member over the redb stores, and the single way
//! the rest of Warren writes to the replicated state (`write`, behind
//! `store::Proposer`). A write made on a follower is forwarded to the leader and
//! returns once this manager has applied it too, so that a client reading right
//! after its own write sees it.

use super::network::Peers;
use super::{Raft, StorageError};
use crate::store::log::LogStore;
use crate::store::sm::StateMachine;
use crate::store::{Command, Member, Proposer, RaftStatus, Response, Store, WriteError};
use crate::wire::channel::ChannelError;
use async_trait::async_trait;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use warren_proto::v1::RaftPayload;

/// Timing and compaction settings.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Take a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    pub write_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        // A follower of a committed leader waits for the leader's lease (the election
        // maximum) plus a random election timeout before standing: 650-800 ms, that
        // is six or more missed heartbeats, so a busy machine does not trigger
        // elections, and a dead leader is replaced well within a second.
        RaftTuning {
            heartbeat_ms: 100,
            election_min_ms: 250,
            election_max_ms: 400,
            snapshot_every: 5000,
            write_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the Raft directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("cannot open the Raft log {path}: {source}")]
    Log {
        path: String,
        source: Box<redb::DatabaseError>,
    },
    #[error("cannot open the Raft state {path}: {source}")]
    State { path: String, source: Box<StorageError> },
    #[error("invalid Raft settings: {0}")]
    Config(#[from] openraft::ConfigError),
    // openraft's errors are large; boxed, they keep every Result of the daemon small.
    #[error("raft failed to start: {0}")]
    Fatal(#[source] Box<openraft::error::Fatal<u64>>),
    #[error("initializing the Raft group: {0}")]
    Initialize(#[source] Box<RaftError<u64, openraft::error::InitializeError<u64, BasicNode>>>),
}

/// Why a write could not be forwarded to the leader (retried until the deadline).
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("encoding the command: {0}")]
    Encode(serde_json::Error),
    #[error("decoding the leader's reply: {0}")]
    Decode(serde_json::Error),
    #[error("the leader did not take it: {}", .0.message())]
    Status(#[from] tonic::Status),
}

impl ForwardError {
    /// True when the leader cannot have seen the write: no connection was made,
    /// or the leader's call layer refused the request before its handler ran.
    /// Anything else (a reset connection, a deadline) leaves the outcome open.
    fn never_reached_the_leader(&self) -> bool {
        match self {
            ForwardError::Channel(_) | ForwardError::Encode(_) => true,
            ForwardError::Decode(_) => false,
            ForwardError::Status(s) => {
                use tonic::Code;
                if matches!(
                    s.code(),
                    Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented
                ) {
                    return true;
                }
                let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
                while let Some(c) = cause {
                    if c.is::<tonic::ConnectError>() {
                        return true;
                    }
                    cause = c.source();
                }
                false
            }
        }
    }
}

/// Why a write whose quorum went while it was in the log, uncommitted, is unconfirmed.
fn in_flight(lost: &WriteError) -> String {
    format!("the quorum was lost while it was in flight: {lost}")
}

/// What the leader answers a follower's request for a read index.
#[derive(Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    /// Every write acknowledged before the request is at or below this index.
    Index(u64),
    NotLeader,
    Failed(String),
}

/// How long a member goes without a leader, or a leader without hearing from a
/// majority, before it says the quorum is lost. An election after a leader's death
/// takes 0.7-1.2 s here (lease, then one election timeout); a longer gap is a
/// partition or a majority down, and writes then fail at once instead of waiting
/// out the write timeout.
const QUORUM_GRACE: Duration = Duration::from_millis(1500);

/// How long a read waits for the leader to confirm the read index before it is
/// served from the local state, marked stale.
const READ_CONFIRM: Duration = Duration::from_secs(1);

/// When the leader last changed, and to what: the clock of `QUORUM_GRACE`.
#[derive(Clone, Copy)]
struct LeaderClock {
    leader: Option<u64>,
    since: Instant,
}

/// What the leader answers a forwarded write.
#[derive(Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    Applied {
        response: Response,
        index: u64,
    },
    /// Refused before it was proposed: not applied.
    NotLeader,
    /// Not applied.
    Failed(String),
    /// Proposed, then not committed in time or the quorum went: it may still commit.
    Unconfirmed(String),
}

pub struct RaftNode {
    pub raft: Raft,
    pub id: u64,
    store: Arc<Store>,
    peers: Peers,
    tuning: RaftTuning,
    leader: watch::Receiver<Option<u64>>,
    clock: Arc<std::sync::Mutex<LeaderClock>>,
}

impl RaftNode {
    pub async fn start(
        id: u64,
        dir: &Path,
        store: Arc<Store>,
        peers: Peers,
        tuning: RaftTuning,
    ) -> Result<Arc<RaftNode>, StartError> {
        std::fs::create_dir_all(dir).map_err(|source| StartError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let log_path = dir.join("raft-log.redb");
        let log = LogStore::open(&log_path).map_err(|source| StartError::Log {
            path: log_path.display().to_string(),
            source: Box::new(source),
        })?;
        let sm_path = dir.join("raft-state.redb");
        let sm = StateMachine::open(&sm_path, store.clone()).map_err(|source| StartError::State {
            path: sm_path.display().to_string(),
            source: Box::new(source),
        })?;
        let config = Config {
            cluster_name: "warren".into(),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_min_ms,
            election_timeout_max: tuning.election_max_ms,
            install_snapshot_timeout: 30_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
            max_in_snapshot_log_to_keep: (tuning.snapshot_every / 4).max(16),
            purge_batch_size: (tuning.snapshot_every / 2).clamp(1, 256),
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(id, Arc::new(config), peers.clone(), log, sm)
            .await
            .map_err(|e| StartError::Fatal(Box::new(e)))?;
        let clock = Arc::new(std::sync::Mutex::new(LeaderClock {
            leader: None,
            since: Instant::now(),
        }));
        Ok(Arc::new(RaftNode {
            leader: follow_leader(&raft, clock.clone()),
            clock,
            raft,
            id,
            store,
            peers,
            tuning,
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Makes this member the single voter of a new cluster.
    pub async fn initialize(&self, addr: &str) -> Result<(), StartError> {
        let mut members = BTreeMap::new();
        members.insert(self.id, BasicNode { addr: addr.to_string() });
        self.raft
            .initialize(members)
            .await
            .map_err(|e| StartError::Initialize(Box::new(e)))
    }

    /// Waits until some member is leader; false on timeout.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        let mut rx = self.raft.metrics();
        tokio::time::timeout(timeout, rx.wait_for(|m| m.current_leader.is_some()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Proposes `cmd` and waits until it is applied here. Follows the leader: a
    /// follower forwards to it, retrying across an election until the deadline, but
    /// only while every earlier attempt was refused before it reached a log. Once an
    /// attempt may have been appended (proposed here, or forwarded and the answer
    /// lost), the outcome is `WriteError::Unconfirmed`, never a retry: a retried
    /// create would apply twice, and a write reported as not committed could still
    /// commit under the next leader.
    pub async fn write(&self, cmd: Command) -> Result<(), WriteError> {
        let deadline = Instant::now() + self.tuning.write_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                // Every attempt so far was refused: nothing of this write is in a log.
                return Err(if Proposer::leader(self).is_none() {
                    WriteError::NoLeader
                } else {
                    WriteError::Timeout(self.tuning.write_timeout)
                });
            }
            self.quorum()?;
            let attempt = tokio::select! {
                a = tokio::time::timeout(remaining, self.raft.client_write(cmd.clone())) => a,
                e = self.quorum_lost() => return Err(WriteError::Unconfirmed(in_flight(&e))),
            };
            match attempt {
                Err(_) => {
                    return Err(WriteError::Unconfirmed(format!(
                        "it was proposed but not committed within {:?}",
                        self.tuning.write_timeout
                    )))
                }
                Ok(Ok(resp)) => return resp.data.into_result().map_err(WriteError::Apply),
                // Refused before it was appended, or appended and then truncated by
                // a new leader: either way not applied, so another attempt is safe.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd)))) => {
                    if let Some(node) = fwd.leader_node {
                        match self.forward(&node.addr, &cmd, remaining).await {
                            Ok(ForwardReply::Applied { response, index }) => {
                                let left = deadline.saturating_duration_since(Instant::now());
                                if !self.store.wait_applied(index, left).await {
                                    return Err(WriteError::Unconfirmed(format!(
                                        "the leader committed it at index {index}, but this manager had not applied it within {:?}",
                                        self.tuning.write_timeout
                                    )));
                                }
                                return response.into_result().map_err(WriteError::Apply);
                            }
                            Ok(ForwardReply::Failed(e)) => return Err(WriteError::Raft(e)),
                            Ok(ForwardReply::Unconfirmed(e)) => return Err(WriteError::Unconfirmed(e)),
                            Ok(ForwardReply::NotLeader) => {}
                            Err(e) if e.never_reached_the_leader() => {
                                tracing::debug!(leader = %node.addr, error = %e, "forwarding a write failed before it reached the leader; retrying");
                            }
                            Err(e) => {
                                tracing::debug!(leader = %node.addr, error = %e, "the answer to a forwarded write was lost");
                                return Err(WriteError::Unconfirmed(format!(
                                    "it was forwarded to the leader at {} and the answer was lost: {e}",
                                    node.addr
                                )));
                            }
                        }
                    }
                }
                Ok(Err(RaftError::APIError(e))) => return Err(WriteError::Raft(e.to_string())),
                Ok(Err(RaftError::Fatal(e))) => {
                    return Err(WriteError::Unconfirmed(format!(
                        "raft stopped while it was in flight: {e}"
                    )))
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn forward(&self, addr: &str, cmd: &Command, timeout: Duration) -> Result<ForwardReply, ForwardError> {
        let mut client = self.peers.raft_client(addr)?;
        let data = serde_json::to_vec(cmd).map_err(ForwardError::Encode)?;
        let mut req = tonic::Request::new(RaftPayload { data });
        req.set_timeout(timeout);
        let reply = client.forward(req).await?;
        serde_json::from_slice(&reply.into_inner().data).map_err(ForwardError::Decode)
    }

    /// Leader side of a forwarded write.
    pub(crate) async fn handle_forward(&self, cmd: Command) -> ForwardReply {
        if let Err(e) = self.quorum() {
            return ForwardReply::Failed(e.to_string());
        }
        let attempt = tokio::select! {
            a = tokio::time::timeout(self.tuning.write_timeout, self.raft.client_write(cmd)) => a,
            e = self.quorum_lost() => return ForwardReply::Unconfirmed(in_flight(&e)),
        };
        match attempt {
            Err(_) => ForwardReply::Unconfirmed(format!(
                "the leader proposed it but it was not committed within {:?}",
                self.tuning.write_timeout
            )),
            Ok(Ok(resp)) => ForwardReply::Applied {
                response: resp.data,
                index: resp.log_id.index,
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => ForwardReply::NotLeader,
            Ok(Err(RaftError::APIError(e))) => ForwardReply::Failed(e.to_string()),
            Ok(Err(RaftError::Fatal(e))) => {
                ForwardReply::Unconfirmed(format!("raft stopped on the leader while it was in flight: {e}"))
            }
        }
    }

    /// Whether this member can still expect a write to commit: a follower trusts
    /// the leader it follows (the leader answers for its own quorum); a leader needs
    /// an acknowledgement from a majority within `QUORUM_GRACE`; a member without a
    /// leader gets `QUORUM_GRACE` for an election.
    fn quorum(&self) -> Result<(), WriteError> {
        let m = self.raft.metrics().borrow().clone();
        let voters = m.membership_config.membership().voter_ids().count();
        if voters <= 1 && m.current_leader == Some(self.id) {
            return Ok(());
        }
        let clock = *self.clock.lock().unwrap_or_else(|p| p.into_inner());
        let lost = match m.current_leader {
            Some(l) if l == self.id => match m.millis_since_quorum_ack {
                Some(ms) => Duration::from_millis(ms) > QUORUM_GRACE,
                // Not acknowledged yet since it was elected.
                None => clock.leader == Some(self.id) && clock.since.elapsed() > QUORUM_GRACE,
            },
            Some(_) => false,
            None => clock.leader.is_none() && clock.since.elapsed() > QUORUM_GRACE,
        };
        if lost {
            Err(WriteError::NoQuorum {
                voters: voters.max(1),
                needed: voters / 2 + 1,
            })
        } else {
            Ok(())
        }
    }

    /// Resolves when `quorum` fails: races a write that would otherwise wait out
    /// its timeout.
    async fn quorum_lost(&self) -> WriteError {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Err(e) = self.quorum() {
                return e;
            }
        }
    }

    /// A linearizable read point: the leader confirms its leadership with a
    /// majority (openraft's read index); a follower asks the leader for that index
    /// and waits until it has applied it.
    pub async fn linearize(&self) -> Result<(), WriteError> {
        self.quorum()?;
        let deadline = Instant::now() + READ_CONFIRM;
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.ok_or(WriteError::NoLeader)?;
        let index = if leader == self.id {
            self.read_index().await?
        } else {
            let addr = m
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
                .ok_or(WriteError::NoLeader)?;
            let mut client = self
                .peers
                .raft_client(&addr)
                .map_err(|e| WriteError::Raft(format!("asking the leader for a read index: {e}")))?;
            let mut req = tonic::Request::new(RaftPayload { data: Vec::new() });
            req.set_timeout(READ_CONFIRM);
            let reply = client
                .read_index(req)
                .await
                .map_err(|e| WriteError::Raft(format!("asking the leader for a read index: {}", e.message())))?;
            match serde_json::from_slice(&reply.into_inner().data) {
                Ok(ReadIndexReply::Index(i)) => i,
                Ok(ReadIndexReply::NotLeader) => return Err(WriteError::NoLeader),
                Ok(ReadIndexReply::Failed(e)) => return Err(WriteError::Raft(e)),
                Err(e) => return Err(WriteError::Raft(format!("decoding the leader's read index: {e}"))),
            }
        };
        if !self
            .store
            .wait_applied(index, deadline.saturating_duration_since(Instant::now()))
            .await
        {
            return Err(WriteError::Timeout(READ_CONFIRM));
        }
        Ok(())
    }

    /// Leader only: confirms leadership with a majority and returns the index a
    /// linearizable read must see applied.
    async fn read_index(&self) -> Result<u64, WriteError> {
        match tokio::time::timeout(READ_CONFIRM, self.raft.get_read_log_id()).await {
            Err(_) => Err(WriteError::Timeout(READ_CONFIRM)),
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(_))) => Err(WriteError::NoLeader),
            Ok(Err(RaftError::Fatal(e))) => Err(WriteError::Raft(e.to_string())),
        }
    }

    /// Leader side of a follower's read index request.
    pub(crate) async fn handle_read_index(&self) -> ReadIndexReply {
        if let Err(e) = self.quorum() {
            return ReadIndexReply::Failed(e.to_string());
        }
        match self.read_index().await {
            Ok(i) => ReadIndexReply::Index(i),
            Err(WriteError::NoLeader) => ReadIndexReply::NotLeader,
            Err(e) => ReadIndexReply::Failed(e.to_string()),
        }
    }

    /// Leader only: adds a manager as a learner, waits until it has caught up, then
    /// makes it a voter.
    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<(), WriteError> {
        self.raft
            .add_learner(id, BasicNode { addr: addr.to_string() }, true)
            .await
            .map_err(|e| WriteError::Raft(format!("adding manager {id} at {addr} as a learner: {e}")))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| WriteError::Raft(format!("making manager {id} a voter: {e}")))?;
        Ok(())
    }

    /// Leader only: removes a manager from the Raft group.
    pub async fn remove_member(&self, id: u64) -> Result<(), WriteError> {
        let (voter, learner) = {
            let m = self.raft.metrics().borrow().clone();
            let mem = m.membership_config.membership().clone();
            let voter = mem.voter_ids().any(|v| v == id);
            let learner = mem.learner_ids().any(|v| v == id);
            (voter, learner)
        };
        if voter {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| WriteError::Raft(format!("removing manager {id} from the voters: {e}")))?;
        }
        if voter || learner {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|e| WriteError::Raft(format!("removing manager {id}: {e}")))?;
        }
        Ok(())
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// A watch of the leader's ID alone, fed from openraft's metrics (which change with
/// every applied entry), so that waiters wake only when leadership moves.
fn follow_leader(raft: &Raft, clock: Arc<std::sync::Mutex<LeaderClock>>) -> watch::Receiver<Option<u64>> {
    let mut metrics = raft.metrics();
    let (tx, rx) = watch::channel(metrics.borrow().current_leader);
    let tick = move |leader: Option<u64>| {
        let mut c = clock.lock().unwrap_or_else(|p| p.into_inner());
        if c.leader != leader {
            *c = LeaderClock {
                leader,
                since: Instant::now(),
            };
        }
    };
    tick(*rx.borrow());
    tokio::spawn(async move {
        // Ends when Raft shuts down (its metrics sender goes) or nobody watches.
        while metrics.changed().await.is_ok() {
            let leader = metrics.borrow_and_update().current_leader;
            tick(leader);
            tx.send_if_modified(|l| std::mem::replace(l, leader) != leader);
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[async_trait]
impl Proposer for RaftNode {
    async fn propose(&self, cmd: Command) -> Result<(), WriteError> {
        self.write(cmd).await
    }

    fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        RaftStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            members: membership
                .nodes()
                .map(|(id, n)| Member {
                    id: *id,
                    addr: n.addr.clone(),
                    voter: voters.contains(id),
                    matched: replication.get(id).and_then(|l| l.as_ref()).map(|l| l.index),
                })
                .collect(),
        }
    }

    fn leadership(&self) -> watch::Receiver<Option<u64>> {
        self.leader.clone()
    }

    async fn linearize(&self) -> Result<(), WriteError> {
        RaftNode::linearize(self).await
    }

    async fn add_voter(&self, id: u64, addr: &str) -> Result<(), WriteError> {
        RaftNode::add_voter(self, id, addr).await
    }

    async fn remove_member(&self, id: u64) -> Result<(), WriteError> {
        RaftNode::remove_member(self, id).await
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::ForwardError;
    use tonic::Status;

    #[test]
    fn only_a_refused_connection_or_request_means_the_leader_never_saw_a_forwarded_write() {
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))));
        assert!(ForwardError::Status(refused).never_reached_the_leader());
        assert!(ForwardError::Status(Status::invalid_argument("undecodable raft message")).never_reached_the_leader());
        // A connection that broke mid-call, or a deadline: the leader may have it.
        assert!(!ForwardError::Status(Status::unavailable("transport error")).never_reached_the_leader());
        assert!(!ForwardError::Status(Status::deadline_exceeded("Timeout expired")).never_reached_the_leader());
        let garbled = serde_json::from_slice::<u64>(b"x").unwrap_err();
        assert!(!ForwardError::Decode(garbled).never_reached_the_leader());
    }
}
