//! One session of the agent with the leading manager's dispatcher: hello (who this
//! node is and what its tasks are doing), then heartbeats and task status reports
//! out; the leader's acceptance (managers, this node's subnet), assignment sets and
//! `NotLeader` redirects in. Each assignment set reaches the endpoints listeners
//! (data plane, DNS) before the executor.

use super::executor::{self, Executor, Report};
use super::link::SessionError;
use super::{AgentConfig, SessionInfo};
use crate::model::Platform;
use crate::wire::convert;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use warren_proto::v1 as pb;
use warren_proto::v1::agent_message::Msg as AgentMsg;
use warren_proto::v1::dispatcher_message::Msg as DispatcherMsg;

/// How a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SessionEnd {
    /// The manager is not the leader; this one is (may be empty mid-election).
    Redirect(String),
    Closed,
}

pub(super) async fn session(
    cfg: &AgentConfig,
    addr: &str,
    managers: &mut Vec<String>,
    executor: &dyn Executor,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let mut published = cfg.mesh.as_ref().map(|m| m.published());
    let hello = pb::AgentHello {
        node_id: cfg.node_id.clone(),
        hostname: cfg.hostname.clone(),
        resources: Some(convert::resources_to_pb(cfg.resources)),
        platform: Some(convert::platform_to_pb(&Platform::current())),
        warren_version: crate::VERSION.to_string(),
        tasks: convert::reports_to_pb(executor.statuses()),
        mesh: published
            .as_mut()
            .and_then(|p| p.borrow_and_update().as_ref().map(convert::mesh_to_pb)),
        metrics_port: u32::from(cfg.metrics_port),
        ingress_seed: convert::node_ingress_to_pb(cfg.ingress_seed),
        autonomy: cfg
            .autonomy
            .as_ref()
            .map(|a| a.report(crate::model::now_ms()))
            .unwrap_or_default(),
    };
    // Reports queued while disconnected are covered by the hello's statuses.
    while reports.try_recv().is_ok() {}
    tx.send(pb::AgentMessage {
        msg: Some(AgentMsg::Hello(hello)),
    })
    .await
    .map_err(|_| SessionError::Gone)?;
    let mut inbound = cfg.link.open(addr, ReceiverStream::new(rx)).await?;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let Some(msg) = msg.transpose().map_err(SessionError::Stream)? else {
                    return Ok(SessionEnd::Closed);
                };
                match msg.msg {
                    Some(DispatcherMsg::Accepted(a)) => {
                        tracing::info!("connected to the leader");
                        if let Some(au) = &cfg.autonomy {
                            au.session(true);
                        }
                        if let Some(au) = cfg.autonomy.as_ref().filter(|au| au.is_cut_off()) {
                            tracing::info!("back in touch with a leader: the node no longer runs on its own");
                            au.healed();
                        }
                        let period = Duration::from_millis(a.heartbeat_period_ms.max(100) as u64);
                        heartbeat = tokio::time::interval(period);
                        if !a.managers.is_empty() {
                            *managers = a.managers.clone();
                        }
                        let network = (!a.node_subnet.is_empty()).then(|| executor::NodeNetwork {
                            subnet: a.node_subnet.clone(),
                            cluster_cidr: a.cluster_cidr.clone(),
                        });
                        if let Some(n) = &network {
                            for l in &cfg.listeners {
                                l.configure(n);
                            }
                            if let Some(m) = &cfg.mesh {
                                m.configure(n);
                            }
                            executor.configure(n.clone());
                        }
                        (cfg.on_session)(&SessionInfo { managers: managers.clone(), network });
                    }
                    Some(DispatcherMsg::Assignments(a)) => {
                        if let Some(au) = &cfg.autonomy {
                            if let Err(e) = au.save(&a) {
                                tracing::warn!(error = %e, "cannot keep the assignment set for a restart while cut off");
                            }
                        }
                        assign(cfg, executor, a)
                    }
                    Some(DispatcherMsg::NotLeader(n)) => return Ok(SessionEnd::Redirect(n.leader_addr)),
                    None => {}
                }
            }
            Some(end) = mesh_changed(&mut published) => {
                if let Some(end) = end {
                    let msg = pb::AgentMessage { msg: Some(AgentMsg::Mesh(convert::mesh_to_pb(&end))) };
                    tx.send(msg).await.map_err(|_| SessionError::Gone)?;
                }
            }
            _ = heartbeat.tick() => {
                let outcomes = cfg
                    .listeners
                    .iter()
                    .flat_map(|l| l.outcomes())
                    .map(|(task_id, o)| pb::TaskConnectionOutcomes {
                        task_id,
                        established: o.established,
                        reset: o.reset,
                        refused: o.refused,
                        timed_out: o.timed_out,
                    })
                    .collect();
                let hb = pb::AgentMessage { msg: Some(AgentMsg::Heartbeat(pb::Heartbeat { outcomes })) };
                tx.send(hb).await.map_err(|_| SessionError::Gone)?;
            }
            r = reports.recv() => {
                let Some(first) = r else { return Ok(SessionEnd::Closed) };
                let mut batch = vec![first];
                while let Ok(more) = reports.try_recv() {
                    batch.push(more);
                }
                let msg = pb::AgentMessage {
                    msg: Some(AgentMsg::Status(pb::TaskStatusBatch { reports: convert::reports_to_pb(batch) })),
                };
                tx.send(msg).await.map_err(|_| SessionError::Gone)?;
            }
            _ = shutdown.changed() => return Ok(SessionEnd::Closed),
        }
    }
}

/// The next change of what the mesh publishes; never, without a mesh (or once
/// the component is gone).
async fn mesh_changed(
    rx: &mut Option<watch::Receiver<Option<crate::model::NodeMesh>>>,
) -> Option<Option<crate::model::NodeMesh>> {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return Some(r.borrow_and_update().clone());
        }
    }
    std::future::pending().await
}

/// Hands one assignment set to the listeners, then to the executor. What this
/// agent cannot read is skipped, with a warning, rather than failing the set.
pub(super) fn assign(cfg: &AgentConfig, executor: &dyn Executor, a: pb::Assignments) {
    let mut tasks = Vec::with_capacity(a.tasks.len());
    for t in a.tasks {
        let id = t.id.clone();
        match convert::task_from_pb(t) {
            Ok(t) => tasks.push(t),
            Err(e) => tracing::warn!(task = %id, error = %e, "ignoring an assignment this agent cannot read"),
        }
    }
    tracing::debug!(tasks = tasks.len(), index = a.index, "assignments");
    let all: Vec<crate::model::NodePeer> = a.peers.into_iter().filter_map(convert::peer_from_pb).collect();
    if let Some(m) = &cfg.mesh {
        let own = a.own_mesh.map(convert::mesh_from_pb);
        m.assign(&all, own.as_ref(), a.mesh_rotation);
    }
    let peers = all
        .into_iter()
        .filter_map(|p| Some((p.subnet, p.via?.parse().ok()?)))
        .collect();
    let mut services = Vec::with_capacity(a.services.len());
    for s in a.services {
        let name = s.name.clone();
        match convert::endpoints_from_pb(s) {
            Ok(s) => services.push(s),
            Err(e) => tracing::warn!(service = %name, error = %e, "ignoring endpoints this agent cannot read"),
        }
    }
    let ingress = a.ingress.map(|i| {
        let (view, bad) = convert::ingress_view_from_pb(i);
        for (route, e) in bad {
            tracing::warn!(route = %route, error = %e, "ignoring an ingress route this agent cannot read");
        }
        view
    });
    if let Some(au) = &cfg.autonomy {
        au.endpoints(&services);
    }
    for l in &cfg.listeners {
        l.ingress(ingress.as_ref());
        l.endpoints(&services);
    }
    executor.assign(executor::Assignment {
        tasks,
        secrets: a.secrets.into_iter().map(|s| (s.name, s.data)).collect(),
        peers,
        volumes: a.volumes,
        services,
        configs: a.configs.into_iter().map(|c| (c.name, c.data)).collect(),
    });
}
