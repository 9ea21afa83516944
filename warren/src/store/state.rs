//! The cluster state as the managers replicate it, in memory, and how readers find
//! objects in it. Changing it is `State::apply` (in `apply/`); every object that a
//! command touched is reported as a `Change`, which the state machine persists to redb
//! and publishes as events.

use super::ApplyError;
use crate::model::ingress::{AcmeState, Certificate, Ingress};
use crate::model::{ClusterMeta, ConfigObject, Node, Resources, Secret, Service, Task, Volume};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    Cluster,
    Node,
    Service,
    Task,
    Secret,
    Volume,
    Config,
    Ingress,
    Certificate,
    /// The cluster's ACME settings, accounts, orders and challenge answers.
    Acme,
}

impl ObjectKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectKind::Cluster => "cluster",
            ObjectKind::Node => "node",
            ObjectKind::Service => "service",
            ObjectKind::Task => "task",
            ObjectKind::Secret => "secret",
            ObjectKind::Volume => "volume",
            ObjectKind::Config => "config",
            ObjectKind::Ingress => "ingress",
            ObjectKind::Certificate => "certificate",
            ObjectKind::Acme => "acme",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Created,
    Updated,
    Removed,
}

/// One object touched by an applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ObjectKind,
    pub action: Action,
    pub id: String,
    pub name: String,
    /// Why, where the command says (a release step that advanced or rolled back).
    #[serde(default)]
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub meta: Option<ClusterMeta>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
    pub secrets: BTreeMap<String, Secret>,
    pub volumes: BTreeMap<String, Volume>,
    /// Config objects (issue 14); absent from snapshots written before them.
    #[serde(default)]
    pub configs: BTreeMap<String, ConfigObject>,
    #[serde(default)]
    pub ingresses: BTreeMap<String, Ingress>,
    #[serde(default)]
    pub certificates: BTreeMap<String, Certificate>,
    #[serde(default)]
    pub acme: AcmeState,
    /// Services removed while some of their tasks still run (drain): kept, out of
    /// every listing, so that the data plane keeps their tasks' established
    /// connections until the containers have exited.
    #[serde(default)]
    pub removed_services: BTreeMap<String, Service>,
}

/// Finds an object by exact ID, exact name, or unique ID prefix, the way Docker does.
fn resolve<'a, T>(
    map: &'a BTreeMap<String, T>,
    name_of: impl Fn(&T) -> &str,
    kind: ObjectKind,
    key: &str,
) -> Result<&'a T, ApplyError> {
    if key.is_empty() {
        return Err(ApplyError::Invalid(format!("{kind}: a name or ID is required")));
    }
    if let Some(v) = map.get(key) {
        return Ok(v);
    }
    if let Some(v) = map.values().find(|v| name_of(v) == key) {
        return Ok(v);
    }
    let mut prefixed = map.range(key.to_string()..).take_while(|(id, _)| id.starts_with(key));
    match (prefixed.next(), prefixed.next()) {
        (Some((_, v)), None) => Ok(v),
        (Some(_), Some(_)) => Err(ApplyError::Invalid(format!(
            "{kind} {key:?} is ambiguous: several IDs start with it"
        ))),
        _ => Err(ApplyError::not_found(kind, key)),
    }
}

impl State {
    pub fn service(&self, key: &str) -> Result<&Service, ApplyError> {
        resolve(&self.services, |s| &s.name, ObjectKind::Service, key)
    }

    pub fn node(&self, key: &str) -> Result<&Node, ApplyError> {
        resolve(&self.nodes, |n| &n.name, ObjectKind::Node, key)
    }

    pub fn task(&self, key: &str) -> Result<&Task, ApplyError> {
        resolve(&self.tasks, |t| &t.id, ObjectKind::Task, key)
    }

    pub fn secret(&self, key: &str) -> Result<&Secret, ApplyError> {
        resolve(&self.secrets, |s| &s.name, ObjectKind::Secret, key)
    }

    pub fn volume(&self, key: &str) -> Result<&Volume, ApplyError> {
        resolve(&self.volumes, |v| &v.name, ObjectKind::Volume, key)
    }

    pub fn config(&self, key: &str) -> Result<&ConfigObject, ApplyError> {
        resolve(&self.configs, |c| &c.name, ObjectKind::Config, key)
    }

    pub fn ingress(&self, key: &str) -> Result<&Ingress, ApplyError> {
        resolve(&self.ingresses, |i| &i.name, ObjectKind::Ingress, key)
    }

    pub fn certificate(&self, key: &str) -> Result<&Certificate, ApplyError> {
        resolve(&self.certificates, |c| &c.name, ObjectKind::Certificate, key)
    }

    pub fn tasks_of_service<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| t.service_id == service_id)
    }

    pub fn tasks_on_node<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.node_id.as_deref() == Some(node_id))
    }

    /// Sum of the reservations of the live tasks on each node.
    pub fn reserved_by_node(&self) -> BTreeMap<String, Resources> {
        let mut out: BTreeMap<String, Resources> = BTreeMap::new();
        for t in self.tasks.values() {
            if let (Some(node), true) = (&t.node_id, t.is_live()) {
                let r = out.entry(node.clone()).or_default();
                *r = r.saturating_add(t.spec.reservations);
            }
        }
        out
    }
}

/// Whether running tasks must be replaced: anything but the replica count and the
/// update and rollback configs changed.
pub fn spec_differs_beyond_scale(a: &crate::model::ServiceSpec, b: &crate::model::ServiceSpec) -> bool {
    let mut a = a.clone();
    let mut b = b.clone();
    if let (crate::model::ServiceMode::Replicated { .. }, crate::model::ServiceMode::Replicated { .. }) =
        (a.mode, b.mode)
    {
        a.mode = crate::model::ServiceMode::Replicated { replicas: 0 };
        b.mode = crate::model::ServiceMode::Replicated { replicas: 0 };
    }
    // How tasks are replaced is not what they run: changing it replaces nothing.
    a.update = b.update;
    a.rollback = b.rollback;
    a != b
}

#[cfg(test)]
mod tests {
    use crate::store::fixtures::service;
    use crate::store::{ApplyError, Command, ObjectKind, Rules, State};

    #[test]
    fn a_state_written_before_the_ingress_loads_without_one() {
        let mut old = serde_json::to_value(State::default()).unwrap();
        for k in ["ingresses", "certificates", "acme"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let mut node = serde_json::to_value(crate::model::fixtures::node("n1", "n1")).unwrap();
        node.as_object_mut().unwrap().remove("ingress");
        old["nodes"] = serde_json::json!({ "n1": node });
        let s: State = serde_json::from_value(old).unwrap();
        assert!(s.ingresses.is_empty() && s.certificates.is_empty());
        assert_eq!(s.acme, Default::default());
        assert_eq!(s.nodes["n1"].ingress, None);
    }

    #[test]
    fn resolve_by_name_id_and_prefix() {
        let mut s = State::default();
        let mut ch = vec![];
        for (id, name) in [("abc123", "web"), ("abd456", "api")] {
            s.apply(
                &Command::CreateService {
                    service: service(id, name),
                    rules: Rules::CURRENT,
                },
                &mut ch,
            )
            .unwrap();
        }
        assert_eq!(s.service("web").unwrap().id, "abc123");
        assert_eq!(s.service("abc123").unwrap().name, "web");
        assert_eq!(s.service("abd").unwrap().name, "api");
        assert!(matches!(s.service("ab"), Err(ApplyError::Invalid(_))));
        assert!(matches!(
            s.service("zzz"),
            Err(ApplyError::NotFound {
                kind: ObjectKind::Service,
                ..
            })
        ));
    }
}
