//! `State::apply`: the pure function that applies one `Command`, as a short dispatch
//! to one function per object family (cluster, nodes, services, their canaries and
//! rolling updates, tasks, secrets and volumes), with the rules that must hold across managers
//! (references, in use, published ports) in `rules`. Applying is deterministic (no
//! clock, no randomness, no I/O), and a command that fails changes nothing (a batch
//! keeps the parts that succeeded).

mod canary;
mod cluster;
mod ingress;
mod manifest;
mod nodes;
mod release;
mod rules;
mod secrets_volumes;
mod services;
mod tasks;
mod updates;

use super::state::{Action, Change, ObjectKind, State};
use super::{ApplyError, Command};
use crate::model::{Node, Service, Task};

impl State {
    /// Applies one command, appending what it touched to `changes`.
    pub fn apply(&mut self, cmd: &Command, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let result = self.apply_command(cmd, changes);
        if !self.removed_services.is_empty() {
            let tasks = &self.tasks;
            self.removed_services.retain(|id, _| {
                tasks
                    .values()
                    .any(|t| t.service_id == *id && t.status.state == crate::model::TaskState::Running)
            });
        }
        result
    }

    fn apply_command(&mut self, cmd: &Command, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        match cmd {
            Command::Bootstrap { meta, node } => self.bootstrap(meta, node, changes),
            Command::RotateJoinToken {
                role,
                secret,
                expires_ms,
            } => self.rotate_join_token(*role, secret, *expires_ms, changes),
            Command::SetCertExpiry { expiry_ms } => self.set_cert_expiry(*expiry_ms, changes),
            Command::SetNodeCertificate { id, expires_ms } => {
                let node = self.node_mut(id)?;
                node.cert_expires_ms = *expires_ms;
                let name = node.name.clone();
                changes.push(change(ObjectKind::Node, Action::Updated, id, &name));
                Ok(())
            }

            Command::AddNode { node } => self.add_node(node, changes),
            Command::NodeHello {
                id,
                resources,
                platform,
                warren_version,
                at_ms,
                metrics_port,
                autonomy,
            } => {
                self.node_hello(id, *resources, platform, warren_version, *at_ms, changes)?;
                self.node_metrics_port(id, *metrics_port);
                self.node_autonomy(id, autonomy);
                Ok(())
            }
            Command::SetNodeState {
                id,
                state,
                message,
                at_ms,
            } => self.set_node_state(id, *state, message, *at_ms, changes),
            Command::UpdateNode {
                id,
                availability,
                label_add,
                label_rm,
                at_ms,
            } => self.update_node(id, *availability, label_add, label_rm, *at_ms, changes),
            Command::RemoveNode { id } => self.remove_node(id, changes),

            Command::CreateService { service, rules } => self.create_service(service, *rules, changes),
            Command::UpdateService {
                id,
                expected_version,
                spec,
                at_ms,
                rules,
            } => self.update_service(id, *expected_version, spec, *at_ms, *rules, changes),
            Command::ScaleService { id, replicas, at_ms } => self.scale_service(id, *replicas, *at_ms, changes),
            Command::RemoveService { id, at_ms } => self.remove_service(id, *at_ms, changes),
            Command::StartCanary {
                id,
                expected_version,
                spec,
                weight,
                at_ms,
                rules,
            } => self.start_canary(id, *expected_version, spec, *weight, *at_ms, *rules, changes),
            Command::SetCanaryWeight { id, weight, at_ms } => self.set_canary_weight(id, *weight, *at_ms, changes),
            Command::PromoteCanary { id, at_ms } => self.promote_canary(id, *at_ms, changes),
            Command::RollbackService { id, at_ms, rules } => self.rollback_service(id, *at_ms, *rules, changes),
            Command::UpdateStep {
                id,
                spec_version,
                step,
                at_ms,
            } => self.update_step(id, *spec_version, step, *at_ms, changes),

            Command::CreateTasks { tasks } => self.create_tasks(tasks, changes),
            Command::AssignTasks { assignments, at_ms } => self.assign_tasks(assignments, *at_ms, changes),
            Command::SetTasksPending { updates, at_ms } => self.set_tasks_pending(updates, *at_ms, changes),
            Command::SetTasksDesired { ids, desired, at_ms } => self.set_tasks_desired(ids, *desired, *at_ms, changes),
            Command::ReportTaskStatus { node_id, reports } => self.report_task_status(node_id, reports, changes),
            Command::OrphanTasks { ids, message, at_ms } => self.orphan_tasks(ids, message, *at_ms, changes),
            Command::RemoveTasks { ids } => self.remove_tasks(ids, changes),

            Command::CreateSecret { secret } => self.create_secret(secret, changes),
            Command::RemoveSecret { id, rules } => self.remove_secret(id, *rules, changes),
            Command::CreateVolume { volume } => self.create_volume(volume, changes),
            Command::RemoveVolume { id, rules } => self.remove_volume(id, *rules, changes),
            Command::SetNodeMesh { id, mesh, at_ms } => self.set_node_mesh(id, mesh, *at_ms, changes),
            Command::RotateNodeKey { id, at_ms } => self.rotate_node_key(id, *at_ms, changes),

            Command::ReleaseStep {
                id,
                spec_version,
                step,
                at_ms,
            } => self.release_step(id, *spec_version, step, *at_ms, changes),

            Command::CreateIngress { ingress } => self.create_ingress(ingress, changes),
            Command::UpdateIngress {
                id,
                expected_version,
                spec,
                at_ms,
            } => self.update_ingress(id, *expected_version, spec, *at_ms, changes),
            Command::RemoveIngress { id } => self.remove_ingress(id, changes),
            Command::CreateCertificate { certificate } => self.create_certificate(certificate, changes),
            Command::RemoveCertificate { id } => self.remove_certificate(id, changes),
            Command::SetNodeIngress { id, ingress, at_ms } => self.set_node_ingress(id, *ingress, *at_ms, changes),
            Command::SeedNodeIngress { id, ingress, at_ms } => {
                if self.node_mut(id)?.ingress.is_some() {
                    return Ok(());
                }
                self.set_node_ingress(id, Some(*ingress), *at_ms, changes)
            }
            Command::SetAcmeSettings { settings } => self.set_acme_settings(settings, changes),
            Command::SaveAcmeAccount {
                directory_url,
                credentials_sealed,
            } => self.save_acme_account(directory_url, credentials_sealed, changes),
            Command::BeginAcmeOrder { order } => self.begin_acme_order(order, changes),
            Command::PublishAcmeChallenges { challenges } => self.publish_acme_challenges(challenges, changes),
            Command::FinishAcmeOrder { order_url, certificate } => {
                self.finish_acme_order(order_url, certificate, changes)
            }
            Command::DropAcmeOrder { order_url } => self.drop_acme_order(order_url, changes),
            Command::Restore { state, node } => self.restore(state, node, changes),

            Command::Batch(cmds) => {
                let mut first_err = None;
                for c in cmds {
                    if let Err(e) = self.apply(c, changes) {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            }

            Command::CreateConfig { config } => self.create_config(config, changes),
            Command::RemoveConfig { id, rules } => self.remove_config(id, *rules, changes),
            Command::Apply { steps } => self.apply_manifest(steps, changes),
        }
    }

    /// The node with exact ID `id` (commands carry resolved IDs).
    fn node_mut(&mut self, id: &str) -> Result<&mut Node, ApplyError> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Node, id))
    }

    fn service_by_id(&self, id: &str) -> Result<&Service, ApplyError> {
        self.services
            .get(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Service, id))
    }

    fn service_mut(&mut self, id: &str) -> Result<&mut Service, ApplyError> {
        self.services
            .get_mut(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Service, id))
    }
}

/// A replicated record with a version that every change bumps (readers and the
/// optimistic concurrency of updates rely on it).
trait Versioned {
    fn bump(&mut self);
    fn set_updated(&mut self, at_ms: i64);

    /// A change made at `at_ms`, the proposer's clock.
    fn touch(&mut self, at_ms: i64) {
        self.bump();
        self.set_updated(at_ms);
    }
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn bump(&mut self) {
                self.version += 1;
            }
            fn set_updated(&mut self, at_ms: i64) {
                self.updated_ms = at_ms;
            }
        }
    )*};
}
versioned!(Node, Service, Task, crate::model::ingress::Ingress);

fn change(kind: ObjectKind, action: Action, id: &str, name: &str) -> Change {
    Change {
        kind,
        action,
        id: id.to_string(),
        name: name.to_string(),
        message: String::new(),
    }
}
