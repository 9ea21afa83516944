//! The cluster's own record: its first entry (`Bootstrap`, or `Restore` from a
//! backup), join-token rotation and the node certificates' lifetime.

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

    /// A restored cluster's first entry: the backup's state, whose nodes are gone.
    /// They are removed as `node rm` removes a node (revoked, their tasks orphaned and
    /// so placed again), the local volumes they held are freed to be placed anew
    /// (their data was on those nodes, not in the backup), and `node` becomes the
    /// only one. Built aside and swapped in whole: a refusal changes nothing.
    pub(super) fn restore(&mut self, backup: &State, node: &Node, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        if self.meta.is_some() {
            return Err(ApplyError::AlreadyExists("the cluster is already initialized".into()));
        }
        let Some(meta) = backup.meta.as_ref() else {
            return Err(ApplyError::Invalid("restore: the backup holds no cluster".into()));
        };
        let mut s = backup.clone();
        // Everything is new to this state machine: every row is written.
        let mut ch = vec![change(ObjectKind::Cluster, Action::Created, &meta.cluster_id, "")];
        ch.push(change(ObjectKind::Acme, Action::Created, &meta.cluster_id, ""));
        let all = |kind, ids: Vec<(&String, &str)>, ch: &mut Vec<Change>| {
            ch.extend(
                ids.into_iter()
                    .map(|(id, name)| change(kind, Action::Created, id, name)),
            );
        };
        all(
            ObjectKind::Node,
            s.nodes.iter().map(|(k, v)| (k, v.name.as_str())).collect(),
            &mut ch,
        );
        all(
            ObjectKind::Service,
            s.services.iter().map(|(k, v)| (k, v.name.as_str())).collect(),
            &mut ch,
        );
        all(ObjectKind::Task, s.tasks.keys().map(|k| (k, "")).collect(), &mut ch);
        all(
            ObjectKind::Secret,
            s.secrets.iter().map(|(k, v)| (k, v.name.as_str())).collect(),
            &mut ch,
        );
        all(
            ObjectKind::Volume,
            s.volumes.iter().map(|(k, v)| (k, v.name.as_str())).collect(),
            &mut ch,
        );
        all(
            ObjectKind::Config,
            s.configs.iter().map(|(k, v)| (k, v.name.as_str())).collect(),
            &mut ch,
        );
        all(
            ObjectKind::Ingress,
            s.ingresses.iter().map(|(k, v)| (k, v.name.as_str())).collect(),
            &mut ch,
        );
        all(
            ObjectKind::Certificate,
            s.certificates.iter().map(|(k, v)| (k, v.name.as_str())).collect(),
            &mut ch,
        );
        let old: Vec<String> = s.nodes.keys().cloned().collect();
        for id in &old {
            s.remove_node(id, &mut ch)?;
        }
        for v in s.volumes.values_mut() {
            if v.node_id.as_ref().is_some_and(|n| old.contains(n)) {
                v.node_id = None;
                ch.push(change(ObjectKind::Volume, Action::Updated, &v.id, &v.name));
            }
        }
        let mut node = node.clone();
        node.subnet = Some(super::nodes::allocate_subnet(&meta.pod_cidr, &s.nodes, &node.name)?);
        ch.push(change(ObjectKind::Node, Action::Created, &node.id, &node.name));
        s.nodes.insert(node.id.clone(), node);
        *self = s;
        changes.extend(ch);
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

    pub(super) fn set_cert_expiry(&mut self, expiry_ms: i64, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let d = std::time::Duration::from_millis(u64::try_from(expiry_ms).unwrap_or(0));
        crate::model::validate_cert_expiry("cert-expiry", d).map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let meta = self
            .meta
            .as_mut()
            .ok_or_else(|| ApplyError::Invalid("the cluster is not initialized".into()))?;
        meta.cert_expiry_ms = expiry_ms;
        changes.push(change(ObjectKind::Cluster, Action::Updated, &meta.cluster_id, ""));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{ClusterMeta, DEFAULT_CERT_EXPIRY};
    use crate::store::fixtures::node;
    use crate::store::{Command, State};
    use std::time::Duration;

    #[test]
    fn the_certificate_lifetime_defaults_for_old_state_and_refuses_bad_values() {
        // State from before the setting has no field: the 90-day default.
        let old: ClusterMeta = serde_json::from_str(r#"{"cluster_id":"c","created_ms":0,"ca_cert_pem":"","ca_key_sealed":[],"worker_token_secret":"","manager_token_secret":"","pod_cidr":"10.88.0.0/16"}"#).unwrap();
        assert_eq!(old.cert_expiry(), DEFAULT_CERT_EXPIRY);
        let mut s = State::default();
        let mut ch = vec![];
        let meta = ClusterMeta {
            pod_cidr: "10.88.0.0/16".into(),
            ..Default::default()
        };
        s.apply(
            &Command::Bootstrap {
                meta,
                node: node("n1", "one"),
            },
            &mut ch,
        )
        .unwrap();
        s.apply(&Command::SetCertExpiry { expiry_ms: 6_000 }, &mut ch).unwrap();
        assert_eq!(s.meta.as_ref().unwrap().cert_expiry(), Duration::from_secs(6));
        let err = s
            .apply(&Command::SetCertExpiry { expiry_ms: 1_000 }, &mut ch)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cert-expiry: certificate lifetime 1s is out of range"),
            "{err}"
        );
        assert_eq!(s.meta.as_ref().unwrap().cert_expiry_ms, 6_000);
        s.apply(
            &Command::SetNodeCertificate {
                id: "n1".into(),
                expires_ms: 42,
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!(s.nodes["n1"].cert_expires_ms, 42);
        assert!(s
            .apply(
                &Command::SetNodeCertificate {
                    id: "gone".into(),
                    expires_ms: 1,
                },
                &mut ch,
            )
            .is_err());
    }
}
