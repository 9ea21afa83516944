//! The API's service and task calls: create, read, update (including canary
//! steps), scale, promote, roll back and remove services; list and read tasks.
//! Requests are validated here (one error naming the field) and become one
//! `Command` each.

use super::common::{read, service_pb, write, TaskCounts};
use crate::manager::ManagerCtx;
use crate::model::{self, new_id, now_ms, validate_name, Service, ServiceMode};
use crate::store::{Command, Rules};
use crate::wire::convert;
use crate::wire::status::invalid;
use tonic::Status;
use warren_proto::v1 as pb;

fn spec_of(spec: Option<pb::ServiceSpec>) -> Result<model::ServiceSpec, Status> {
    convert::spec_from_pb(spec.ok_or_else(|| Status::invalid_argument("spec: missing"))?).map_err(invalid)
}

/// The service named by `key` (ID, unique ID prefix or name), as the API shows it.
fn view(ctx: &ManagerCtx, key: &str) -> Result<pb::Service, Status> {
    read(ctx, |s| Ok(service_pb(s, s.service(key)?)))
}

fn id_of(ctx: &ManagerCtx, key: &str) -> Result<String, Status> {
    read(ctx, |s| Ok(s.service(key)?.id.clone()))
}

pub(super) async fn create(ctx: &ManagerCtx, req: pb::CreateServiceRequest) -> Result<pb::Service, Status> {
    validate_name("name", &req.name).map_err(invalid)?;
    let spec = spec_of(req.spec)?;
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
        update_status: None,
    };
    let id = svc.id.clone();
    let cmd = Command::CreateService {
        service: svc,
        rules: Rules::CURRENT,
    };
    match write(ctx, cmd).await {
        Ok(()) => {}
        // A retried forward may find its own earlier attempt applied.
        Err(s) if s.code() == tonic::Code::AlreadyExists && ctx.store.read(|st| st.services.contains_key(&id)) => {}
        Err(s) => return Err(s),
    }
    view(ctx, &id)
}

pub(super) fn get(ctx: &ManagerCtx, req: pb::GetServiceRequest) -> Result<pb::Service, Status> {
    view(ctx, &req.service)
}

pub(super) fn list(ctx: &ManagerCtx) -> pb::ListServicesResponse {
    let services = ctx.store.read(|s| {
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
    pb::ListServicesResponse { services }
}

pub(super) async fn update(ctx: &ManagerCtx, req: pb::UpdateServiceRequest) -> Result<pb::Service, Status> {
    let id = id_of(ctx, &req.service)?;
    let spec = spec_of(req.spec)?;
    let current = read(ctx, |s| Ok(s.service(&id)?.clone()))?;
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
    write(ctx, cmd).await?;
    view(ctx, &id)
}

pub(super) async fn promote(ctx: &ManagerCtx, req: pb::PromoteServiceRequest) -> Result<pb::Service, Status> {
    let id = id_of(ctx, &req.service)?;
    write(
        ctx,
        Command::PromoteCanary {
            id: id.clone(),
            at_ms: now_ms(),
        },
    )
    .await?;
    view(ctx, &id)
}

pub(super) async fn rollback(ctx: &ManagerCtx, req: pb::RollbackServiceRequest) -> Result<pb::Service, Status> {
    let id = id_of(ctx, &req.service)?;
    write(
        ctx,
        Command::RollbackService {
            id: id.clone(),
            at_ms: now_ms(),
            rules: Rules::CURRENT,
        },
    )
    .await?;
    view(ctx, &id)
}

pub(super) async fn scale(ctx: &ManagerCtx, req: pb::ScaleServiceRequest) -> Result<pb::Service, Status> {
    let id = id_of(ctx, &req.service)?;
    if req.replicas > 10_000 {
        return Err(Status::invalid_argument(format!(
            "replicas: {} is more than the limit of 10000",
            req.replicas
        )));
    }
    write(
        ctx,
        Command::ScaleService {
            id: id.clone(),
            replicas: req.replicas,
            at_ms: now_ms(),
        },
    )
    .await?;
    view(ctx, &id)
}

pub(super) async fn remove(ctx: &ManagerCtx, req: pb::RemoveServiceRequest) -> Result<pb::Empty, Status> {
    let id = id_of(ctx, &req.service)?;
    write(ctx, Command::RemoveService { id, at_ms: now_ms() }).await?;
    Ok(pb::Empty {})
}

pub(super) fn list_tasks(ctx: &ManagerCtx, req: pb::ListTasksRequest) -> Result<pb::ListTasksResponse, Status> {
    read(ctx, |s| {
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
    })
}

pub(super) fn get_task(ctx: &ManagerCtx, req: pb::GetTaskRequest) -> Result<pb::Task, Status> {
    read(ctx, |s| Ok(convert::task_to_pb(s.task(&req.task)?)))
}
