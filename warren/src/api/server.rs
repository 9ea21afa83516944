//! `warren.v1.WarrenApi` on a manager: validates requests (one error naming the
//! field), turns them into `Command`s written through Raft, and answers reads from
//! the local state. Reads after a caller's own write see it, because `write` returns
//! only once this manager has applied the entry.

use crate::manager::ManagerCtx;
use crate::model::{
    self, new_id, now_ms, validate_name, NodeRole, NodeState, Resources, Service, ServiceMode, TaskState,
};
use crate::pki::JoinToken;
use crate::store::{ApplyError, Command, Rules, State};
use crate::wire::status::{apply_status, invalid, write_status};
use crate::wire::{auth, convert};
use sha2::Digest;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use warren_proto::v1 as pb;

/// Largest secret accepted, as in Swarm.
const MAX_SECRET_BYTES: usize = 500 * 1024;

pub struct ApiService {
    ctx: Arc<ManagerCtx>,
}

impl ApiService {
    pub fn new(ctx: Arc<ManagerCtx>) -> Self {
        ApiService { ctx }
    }

    async fn write(&self, cmd: Command) -> Result<(), Status> {
        self.ctx.raft.write(cmd).await.map_err(write_status)
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> Result<R, ApplyError>) -> Result<R, Status> {
        self.ctx.store.read(f).map_err(apply_status)
    }

    fn service_pb(&self, s: &State, svc: &Service) -> pb::Service {
        let mut c = TaskCounts::default();
        for t in s.tasks_of_service(&svc.id) {
            c.add(t);
        }
        convert::service_to_pb(svc, c.counts(svc))
    }

    fn node_pb(&self, s: &State, n: &model::Node, reserved: Resources) -> pb::Node {
        let manager = (n.role == NodeRole::Manager).then(|| {
            let leader = self.ctx.raft.leader().map(|(id, _)| id);
            pb::ManagerStatus {
                raft_id: n.raft_id,
                leader: leader == Some(n.raft_id),
                reachability: if n.state == NodeState::Ready {
                    "reachable"
                } else {
                    "unreachable"
                }
                .into(),
            }
        });
        let _ = s;
        convert::node_to_pb(n, reserved, manager)
    }

    /// Records the call's duration and outcome.
    fn done<T>(&self, method: &str, started: Instant, r: Result<T, Status>) -> Result<T, Status> {
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.ctx.metrics.observe_api(method, code, started);
        r
    }
}

/// Running tasks and the desired count (replicas, or eligible nodes for global
/// services, counted as the tasks meant to run).
/// Tasks meant to run, and running, of each version of a service.
#[derive(Default)]
struct TaskCounts {
    running: u64,
    wanted: u64,
    canary_running: u64,
}

impl TaskCounts {
    fn add(&mut self, t: &model::Task) {
        if t.desired_state != TaskState::Running {
            return;
        }
        let running = t.status.state == TaskState::Running;
        if t.canary {
            self.canary_running += u64::from(running);
        } else {
            self.wanted += 1;
            self.running += u64::from(running);
        }
    }

    /// Desired counts: the replicas (or, for global services, the tasks meant to run).
    fn counts(&self, svc: &Service) -> convert::Counts {
        let desired = match svc.spec.mode {
            ServiceMode::Replicated { replicas } => replicas,
            ServiceMode::Global => self.wanted,
        };
        convert::Counts {
            running: self.running,
            desired,
            canary_running: self.canary_running,
            canary_desired: svc.canary.as_ref().map_or(0, |c| c.replicas(desired)),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type LogStream = super::node_proxy::LineStream;

#[tonic::async_trait]
impl pb::warren_api_server::WarrenApi for ApiService {
    async fn create_service(&self, req: Request<pb::CreateServiceRequest>) -> Result<Response<pb::Service>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let req = req.into_inner();
            validate_name("name", &req.name).map_err(invalid)?;
            let spec = convert::spec_from_pb(req.spec.ok_or_else(|| Status::invalid_argument("spec: missing"))?)
                .map_err(invalid)?;
            let now = now_ms();
            let svc = Service {
                id: new_id(),
                name: req.name,
                spec,
                version: 1,
                spec_version: 1,
                created_ms: now,
                updated_ms: now,
                vip: None,
                dp_id: 0,
                canary: None,
                previous_spec: None,
            };
            let id = svc.id.clone();
            let cmd = Command::CreateService {
                service: svc,
                rules: Rules::CURRENT,
            };
            match self.write(cmd).await {
                Ok(()) => {}
                // A retried forward may find its own earlier attempt applied.
                Err(s)
                    if s.code() == tonic::Code::AlreadyExists
                        && self.ctx.store.read(|st| st.services.contains_key(&id)) => {}
                Err(s) => return Err(s),
            }
            self.read(|s| {
                let svc = s.service(&id)?;
                Ok(self.service_pb(s, svc))
            })
        }
        .await;
        self.done("CreateService", t, r).map(Response::new)
    }

    async fn get_service(&self, req: Request<pb::GetServiceRequest>) -> Result<Response<pb::Service>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let key = req.into_inner().service;
        let r = self.read(|s| Ok(self.service_pb(s, s.service(&key)?)));
        self.done("GetService", t, r).map(Response::new)
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let services = self.ctx.store.read(|s| {
            // One pass over the tasks instead of one per service.
            let mut counts: std::collections::HashMap<&str, TaskCounts> = std::collections::HashMap::new();
            for task in s.tasks.values() {
                counts.entry(task.service_id.as_str()).or_default().add(task);
            }
            let mut out: Vec<pb::Service> = s
                .services
                .values()
                .map(|svc| {
                    let c = counts.get(svc.id.as_str()).map(|c| c.counts(svc));
                    convert::service_to_pb(svc, c.unwrap_or_else(|| TaskCounts::default().counts(svc)))
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out
        });
        self.done(
            "ListServices",
            t,
            Ok(Response::new(pb::ListServicesResponse { services })),
        )
    }

    async fn update_service(&self, req: Request<pb::UpdateServiceRequest>) -> Result<Response<pb::Service>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let req = req.into_inner();
            let id = self.read(|s| Ok(s.service(&req.service)?.id.clone()))?;
            let spec = convert::spec_from_pb(req.spec.ok_or_else(|| Status::invalid_argument("spec: missing"))?)
                .map_err(invalid)?;
            let current = self.read(|s| Ok(s.service(&id)?.clone()))?;
            if matches!(current.spec.mode, ServiceMode::Global) != matches!(spec.mode, ServiceMode::Global) {
                return Err(Status::invalid_argument(
                    "mode: a service's mode cannot change; remove and re-create the service",
                ));
            }
            let cmd = match req.canary_weight {
                None => Command::UpdateService {
                    id: id.clone(),
                    expected_version: req.version,
                    spec,
                    at_ms: now_ms(),
                    rules: Rules::CURRENT,
                },
                Some(w) if w > 100 => {
                    return Err(Status::invalid_argument(format!(
                        "canary-weight: {w} is not between 0 and 100"
                    )))
                }
                Some(w) => {
                    let same_as_stable = !crate::store::state::spec_differs_beyond_scale(&current.spec, &spec);
                    let same_as_canary = current
                        .canary
                        .as_ref()
                        .is_some_and(|c| !crate::store::state::spec_differs_beyond_scale(&c.spec, &spec));
                    if current.canary.is_some() && (same_as_stable || same_as_canary) {
                        Command::SetCanaryWeight {
                            id: id.clone(),
                            weight: w as u8,
                            at_ms: now_ms(),
                        }
                    } else if same_as_stable {
                        return Err(Status::invalid_argument(
                            "canary-weight: nothing to run as a canary: change the service (e.g. --image) in the same update",
                        ));
                    } else {
                        Command::StartCanary {
                            id: id.clone(),
                            expected_version: req.version,
                            spec,
                            weight: w as u8,
                            at_ms: now_ms(),
                            rules: Rules::CURRENT,
                        }
                    }
                }
            };
            self.write(cmd).await?;
            self.read(|s| Ok(self.service_pb(s, s.service(&id)?)))
        }
        .await;
        self.done("UpdateService", t, r).map(Response::new)
    }

    async fn promote_service(&self, req: Request<pb::PromoteServiceRequest>) -> Result<Response<pb::Service>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let key = req.into_inner().service;
            let id = self.read(|s| Ok(s.service(&key)?.id.clone()))?;
            self.write(Command::PromoteCanary {
                id: id.clone(),
                at_ms: now_ms(),
            })
            .await?;
            self.read(|s| Ok(self.service_pb(s, s.service(&id)?)))
        }
        .await;
        self.done("PromoteService", t, r).map(Response::new)
    }

    async fn rollback_service(
        &self,
        req: Request<pb::RollbackServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let key = req.into_inner().service;
            let id = self.read(|s| Ok(s.service(&key)?.id.clone()))?;
            self.write(Command::RollbackService {
                id: id.clone(),
                at_ms: now_ms(),
                rules: Rules::CURRENT,
            })
            .await?;
            self.read(|s| Ok(self.service_pb(s, s.service(&id)?)))
        }
        .await;
        self.done("RollbackService", t, r).map(Response::new)
    }

    async fn scale_service(&self, req: Request<pb::ScaleServiceRequest>) -> Result<Response<pb::Service>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let req = req.into_inner();
            let id = self.read(|s| Ok(s.service(&req.service)?.id.clone()))?;
            if req.replicas > 10_000 {
                return Err(Status::invalid_argument(format!(
                    "replicas: {} is more than the limit of 10000",
                    req.replicas
                )));
            }
            self.write(Command::ScaleService {
                id: id.clone(),
                replicas: req.replicas,
                at_ms: now_ms(),
            })
            .await?;
            self.read(|s| Ok(self.service_pb(s, s.service(&id)?)))
        }
        .await;
        self.done("ScaleService", t, r).map(Response::new)
    }

    async fn remove_service(&self, req: Request<pb::RemoveServiceRequest>) -> Result<Response<pb::Empty>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let key = req.into_inner().service;
            let id = self.read(|s| Ok(s.service(&key)?.id.clone()))?;
            self.write(Command::RemoveService { id, at_ms: now_ms() }).await?;
            Ok(pb::Empty {})
        }
        .await;
        self.done("RemoveService", t, r).map(Response::new)
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Result<Response<pb::ListTasksResponse>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let req = req.into_inner();
        let r = self.read(|s| {
            let service = if req.service.is_empty() {
                None
            } else {
                Some(s.service(&req.service)?.id.clone())
            };
            let node = if req.node.is_empty() {
                None
            } else {
                Some(s.node(&req.node)?.id.clone())
            };
            let mut tasks: Vec<&model::Task> = s
                .tasks
                .values()
                .filter(|t| service.as_ref().is_none_or(|id| &t.service_id == id))
                .filter(|t| node.as_ref().is_none_or(|id| t.node_id.as_ref() == Some(id)))
                .collect();
            tasks.sort_by(|a, b| {
                (&a.service_name, a.slot, &a.node_id, std::cmp::Reverse(a.created_ms)).cmp(&(
                    &b.service_name,
                    b.slot,
                    &b.node_id,
                    std::cmp::Reverse(b.created_ms),
                ))
            });
            Ok(pb::ListTasksResponse {
                tasks: tasks.into_iter().map(convert::task_to_pb).collect(),
            })
        });
        self.done("ListTasks", t, r).map(Response::new)
    }

    async fn get_task(&self, req: Request<pb::GetTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let key = req.into_inner().task;
        let r = self.read(|s| Ok(convert::task_to_pb(s.task(&key)?)));
        self.done("GetTask", t, r).map(Response::new)
    }

    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let nodes = self.ctx.store.read(|s| {
            let reserved = s.reserved_by_node();
            let mut nodes: Vec<pb::Node> = s
                .nodes
                .values()
                .map(|n| self.node_pb(s, n, reserved.get(&n.id).copied().unwrap_or_default()))
                .collect();
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes
        });
        self.done("ListNodes", t, Ok(Response::new(pb::ListNodesResponse { nodes })))
    }

    async fn get_node(&self, req: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let key = req.into_inner().node;
        let r = self.read(|s| {
            let n = s.node(&key)?;
            let reserved = s.reserved_by_node().get(&n.id).copied().unwrap_or_default();
            Ok(self.node_pb(s, n, reserved))
        });
        self.done("GetNode", t, r).map(Response::new)
    }

    async fn get_node_dataplane(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::NodeDataplane>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let key = req.into_inner().node;
        let r = async {
            let (id, name, addr, state) = self.read(|s| {
                let n = s.node(&key)?;
                Ok((n.id.clone(), n.name.clone(), n.addr.clone(), n.state))
            })?;
            if state == crate::model::NodeState::Down {
                return Err(Status::unavailable(format!("node {name} is down")));
            }
            super::node_proxy::dataplane(&self.ctx, &id, &name, &addr).await
        }
        .await;
        self.done("GetNodeDataplane", t, r).map(Response::new)
    }

    async fn update_node(&self, req: Request<pb::UpdateNodeRequest>) -> Result<Response<pb::Node>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let req = req.into_inner();
            let id = self.read(|s| Ok(s.node(&req.node)?.id.clone()))?;
            let availability = req
                .availability
                .map(convert::availability_from_pb)
                .transpose()
                .map_err(invalid)?;
            for k in req.label_add.keys().chain(req.label_rm.iter()) {
                if k.trim().is_empty() || k.contains('=') {
                    return Err(Status::invalid_argument(format!("label: invalid label key {k:?}")));
                }
            }
            self.write(Command::UpdateNode {
                id: id.clone(),
                availability,
                label_add: req.label_add.into_iter().collect(),
                label_rm: req.label_rm,
                at_ms: now_ms(),
            })
            .await?;
            self.read(|s| {
                let n = s.node(&id)?;
                let reserved = s.reserved_by_node().get(&n.id).copied().unwrap_or_default();
                Ok(self.node_pb(s, n, reserved))
            })
        }
        .await;
        self.done("UpdateNode", t, r).map(Response::new)
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::Empty>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let req = req.into_inner();
            let (node, managers) = self.read(|s| {
                let n = s.node(&req.node)?.clone();
                let managers = s.nodes.values().filter(|n| n.role == NodeRole::Manager).count();
                Ok((n, managers))
            })?;
            if node.id == self.ctx.node_id {
                return Err(Status::failed_precondition(format!(
                    "node {} is the manager answering this request: run `warren node rm` on another manager",
                    node.name
                )));
            }
            if node.state != NodeState::Down && !req.force {
                return Err(Status::failed_precondition(format!(
                    "node {} is {} and would keep running its tasks: stop it first, or use --force",
                    node.name,
                    node.state.as_str()
                )));
            }
            if node.role == NodeRole::Manager && managers <= 1 {
                return Err(Status::failed_precondition("cannot remove the last manager"));
            }
            self.write(Command::RemoveNode { id: node.id }).await?;
            Ok(pb::Empty {})
        }
        .await;
        self.done("RemoveNode", t, r).map(Response::new)
    }

    async fn create_secret(&self, req: Request<pb::CreateSecretRequest>) -> Result<Response<pb::Secret>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let req = req.into_inner();
            validate_name("name", &req.name).map_err(invalid)?;
            if req.data.is_empty() {
                return Err(Status::invalid_argument("data: a secret cannot be empty"));
            }
            if req.data.len() > MAX_SECRET_BYTES {
                return Err(Status::invalid_argument(format!(
                    "data: {} bytes is more than the limit of {MAX_SECRET_BYTES}",
                    req.data.len()
                )));
            }
            let secret = model::Secret {
                id: new_id(),
                name: req.name,
                labels: req.labels.into_iter().collect(),
                sealed: self.ctx.secrets_key.seal(&req.data),
                digest: hex::encode(sha2::Sha256::digest(&req.data)),
                created_ms: now_ms(),
            };
            let id = secret.id.clone();
            self.write(Command::CreateSecret { secret }).await?;
            self.read(|s| Ok(convert::secret_to_pb(s.secret(&id)?)))
        }
        .await;
        self.done("CreateSecret", t, r).map(Response::new)
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let mut secrets: Vec<pb::Secret> = self
            .ctx
            .store
            .read(|s| s.secrets.values().map(convert::secret_to_pb).collect());
        secrets.sort_by(|a, b| a.name.cmp(&b.name));
        self.done("ListSecrets", t, Ok(Response::new(pb::ListSecretsResponse { secrets })))
    }

    async fn remove_secret(&self, req: Request<pb::RemoveSecretRequest>) -> Result<Response<pb::Empty>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let key = req.into_inner().secret;
            let id = self.read(|s| Ok(s.secret(&key)?.id.clone()))?;
            self.write(Command::RemoveSecret {
                id,
                rules: Rules::CURRENT,
            })
            .await?;
            Ok(pb::Empty {})
        }
        .await;
        self.done("RemoveSecret", t, r).map(Response::new)
    }

    async fn create_volume(&self, req: Request<pb::CreateVolumeRequest>) -> Result<Response<pb::Volume>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let req = req.into_inner();
            validate_name("name", &req.name).map_err(invalid)?;
            let driver = if req.driver.is_empty() {
                "local".to_string()
            } else {
                req.driver
            };
            if driver != "local" {
                return Err(Status::invalid_argument(format!(
                    "driver: unknown volume driver {driver:?} (supported: local)"
                )));
            }
            let volume = model::Volume {
                id: new_id(),
                name: req.name,
                driver,
                node_id: None,
                labels: req.labels.into_iter().collect(),
                options: req.options.into_iter().collect(),
                created_ms: now_ms(),
            };
            let id = volume.id.clone();
            self.write(Command::CreateVolume { volume }).await?;
            self.read(|s| Ok(convert::volume_to_pb(s.volume(&id)?)))
        }
        .await;
        self.done("CreateVolume", t, r).map(Response::new)
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let mut volumes: Vec<pb::Volume> = self
            .ctx
            .store
            .read(|s| s.volumes.values().map(convert::volume_to_pb).collect());
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        self.done("ListVolumes", t, Ok(Response::new(pb::ListVolumesResponse { volumes })))
    }

    async fn remove_volume(&self, req: Request<pb::RemoveVolumeRequest>) -> Result<Response<pb::Empty>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let key = req.into_inner().volume;
            let id = self.read(|s| Ok(s.volume(&key)?.id.clone()))?;
            self.write(Command::RemoveVolume {
                id,
                rules: Rules::CURRENT,
            })
            .await?;
            Ok(pb::Empty {})
        }
        .await;
        self.done("RemoveVolume", t, r).map(Response::new)
    }

    async fn get_join_token(&self, req: Request<pb::GetJoinTokenRequest>) -> Result<Response<pb::JoinToken>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let r = async {
            let req = req.into_inner();
            let role = convert::role_from_pb(req.role);
            if req.rotate {
                self.write(Command::RotateJoinToken {
                    role,
                    secret: crate::pki::new_token_secret(),
                })
                .await?;
            }
            let meta = self
                .ctx
                .store
                .read(|s| s.meta.clone())
                .ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
            let token = JoinToken {
                ca_digest: crate::pki::ca_digest(&meta.ca_cert_pem).map_err(|e| Status::internal(e.to_string()))?,
                secret: match role {
                    NodeRole::Worker => meta.worker_token_secret,
                    NodeRole::Manager => meta.manager_token_secret,
                },
            };
            Ok(pb::JoinToken {
                role: convert::role_to_pb(role) as i32,
                token: token.to_string(),
                managers: self.ctx.manager_addrs(),
            })
        }
        .await;
        self.done("GetJoinToken", t, r).map(Response::new)
    }

    async fn get_cluster_info(
        &self,
        req: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfo>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let m = self.ctx.raft.raft.metrics().borrow().clone();
        let leader = m.current_leader;
        let members = self.ctx.raft.members();
        let replication = m.replication.clone().unwrap_or_default();
        let info = self.ctx.store.read(|s| {
            let meta = s.meta.clone().unwrap_or_default();
            let by_raft: std::collections::HashMap<u64, &model::Node> = s
                .nodes
                .values()
                .filter(|n| n.raft_id != 0)
                .map(|n| (n.raft_id, n))
                .collect();
            let leader_node = leader.and_then(|id| by_raft.get(&id));
            pb::ClusterInfo {
                cluster_id: meta.cluster_id.clone(),
                created_ms: meta.created_ms,
                leader_node_id: leader_node.map(|n| n.id.clone()).unwrap_or_default(),
                leader_addr: self.ctx.raft.leader().map(|(_, a)| a).unwrap_or_default(),
                term: m.current_term,
                last_log_index: m.last_log_index.unwrap_or(0),
                applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
                members: members
                    .iter()
                    .map(|(id, addr, voter)| pb::RaftMember {
                        raft_id: *id,
                        node_id: by_raft.get(id).map(|n| n.id.clone()).unwrap_or_default(),
                        addr: addr.clone(),
                        leader: leader == Some(*id),
                        voter: *voter,
                        matched_index: replication
                            .get(id)
                            .and_then(|l| l.as_ref())
                            .map(|l| l.index)
                            .unwrap_or(0),
                    })
                    .collect(),
                ca_digest: crate::pki::ca_digest(&meta.ca_cert_pem).unwrap_or_default(),
                nodes: s.nodes.len() as u64,
                services: s.services.len() as u64,
                tasks: s.tasks.len() as u64,
                pod_cidr: meta.pod_cidr,
                node_id: self.ctx.node_id.clone(),
                service_cidr: meta.service_cidr.clone(),
                snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
                purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            }
        });
        self.done("GetClusterInfo", t, Ok(Response::new(info)))
    }

    type ServiceLogsStream = LogStream;

    async fn service_logs(&self, req: Request<pb::ServiceLogsRequest>) -> Result<Response<LogStream>, Status> {
        auth::require_manager(&req)?;
        let req = req.into_inner();
        let by_node = self.read(|s| {
            let svc = s.service(&req.service)?;
            Ok(super::node_proxy::group_by_node(s, s.tasks_of_service(&svc.id)))
        })?;
        let lines = super::node_proxy::logs(self.ctx.clone(), by_node, req.follow, req.tail).await?;
        Ok(Response::new(lines))
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(&self, req: Request<pb::TaskLogsRequest>) -> Result<Response<LogStream>, Status> {
        auth::require_manager(&req)?;
        let req = req.into_inner();
        let by_node = self.read(|s| {
            let t = s.task(&req.task)?;
            if t.node_id.is_none() {
                return Err(ApplyError::Invalid(format!(
                    "task {} has not been placed on a node yet",
                    t.name()
                )));
            }
            Ok(super::node_proxy::group_by_node(s, std::iter::once(t)))
        })?;
        let lines = super::node_proxy::logs(self.ctx.clone(), by_node, req.follow, req.tail).await?;
        Ok(Response::new(lines))
    }

    async fn load_image(
        &self,
        req: Request<tonic::Streaming<pb::LoadImageChunk>>,
    ) -> Result<Response<pb::LoadImageReply>, Status> {
        let t = Instant::now();
        auth::require_manager(&req)?;
        let spool = self.ctx.data_dir.join("spool");
        let r = super::node_proxy::load_image(self.ctx.clone(), req.into_inner(), spool).await;
        self.done("LoadImage", t, r).map(Response::new)
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(&self, req: Request<pb::WatchEventsRequest>) -> Result<Response<EventStream>, Status> {
        auth::require_manager(&req)?;
        let kinds: Vec<i32> = req.into_inner().kinds;
        let mut rx = self.ctx.store.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let applied = match rx.recv().await {
                    Ok(a) => a,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let msg = format!("the watcher fell behind by {n} batches of events; resubscribe and re-read");
                        let _ = tx.send(Err(Status::data_loss(msg))).await;
                        return;
                    }
                    Err(_) => return,
                };
                let at = now_ms();
                for c in &applied.changes {
                    let ev = convert::event_to_pb(c, applied.index, at);
                    if !kinds.is_empty() && !kinds.contains(&ev.kind) {
                        continue;
                    }
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            out,
        ))))
    }
}
