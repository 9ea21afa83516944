//! The cluster's own record: its first entry (`Bootstrap`) and join-token rotation.

use super::change;
use crate::model::{ClusterMeta, Node, NodeRole};
use crate::store::state::{Action, Change, ObjectKind, State};
use crate::store::ApplyError;

impl State {
    pub(super) fn bootstrap(
        &mut self,
        meta: &ClusterMeta,
        node: &Node,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        if self.meta.is_some() {
            return Err(ApplyError::AlreadyExists("the cluster is already initialized".into()));
        }
        let mut node = node.clone();
        node.subnet = Some(super::nodes::allocate_subnet(&meta.pod_cidr, &self.nodes, &node.name)?);
        self.meta = Some(meta.clone());
        changes.push(change(ObjectKind::Cluster, Action::Created, &meta.cluster_id, ""));
        changes.push(change(ObjectKind::Node, Action::Created, &node.id, &node.name));
        self.nodes.insert(node.id.clone(), node);
        Ok(())
    }

    pub(super) fn rotate_join_token(
        &mut self,
        role: NodeRole,
        secret: &str,
        expires_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let meta = self
            .meta
            .as_mut()
            .ok_or_else(|| ApplyError::Invalid("the cluster is not initialized".into()))?;
        match role {
            NodeRole::Worker => {
                meta.worker_token_secret = secret.to_string();
                meta.worker_token_expires_ms = expires_ms;
            }
            NodeRole::Manager => {
                meta.manager_token_secret = secret.to_string();
                meta.manager_token_expires_ms = expires_ms;
            }
        }
        changes.push(change(ObjectKind::Cluster, Action::Updated, &meta.cluster_id, ""));
        Ok(())
    }
}
