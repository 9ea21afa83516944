//! Secrets, volumes and the store's change events on the wire.

use crate::model;
use crate::store::{Action, Change, ObjectKind};
use warren_proto::v1 as pb;

pub fn secret_to_pb(s: &model::Secret) -> pb::Secret {
    pb::Secret {
        id: s.id.clone(),
        name: s.name.clone(),
        labels: s.labels.clone().into_iter().collect(),
        created_ms: s.created_ms,
        digest: s.digest.clone(),
    }
}

pub fn volume_to_pb(v: &model::Volume) -> pb::Volume {
    pb::Volume {
        id: v.id.clone(),
        name: v.name.clone(),
        driver: v.driver.clone(),
        node_id: v.node_id.clone().unwrap_or_default(),
        labels: v.labels.clone().into_iter().collect(),
        options: v.options.clone().into_iter().collect(),
        created_ms: v.created_ms,
    }
}

pub fn config_to_pb(c: &model::ConfigObject) -> pb::ConfigObject {
    pb::ConfigObject {
        id: c.id.clone(),
        name: c.name.clone(),
        labels: c.labels.clone().into_iter().collect(),
        digest: c.digest.clone(),
        created_ms: c.created_ms,
        size: c.data.len() as u64,
    }
}

pub fn object_kind_to_pb(k: ObjectKind) -> pb::ObjectKind {
    match k {
        ObjectKind::Cluster => pb::ObjectKind::Cluster,
        ObjectKind::Node => pb::ObjectKind::Node,
        ObjectKind::Service => pb::ObjectKind::Service,
        ObjectKind::Task => pb::ObjectKind::Task,
        ObjectKind::Secret => pb::ObjectKind::Secret,
        ObjectKind::Volume => pb::ObjectKind::Volume,
        ObjectKind::Config => pb::ObjectKind::Config,
        ObjectKind::Ingress => pb::ObjectKind::Ingress,
        ObjectKind::Certificate => pb::ObjectKind::Certificate,
        ObjectKind::Acme => pb::ObjectKind::Acme,
    }
}

pub fn event_to_pb(c: &Change, index: u64, at_ms: i64) -> pb::Event {
    pb::Event {
        index,
        kind: object_kind_to_pb(c.kind) as i32,
        action: match c.action {
            Action::Created => pb::EventAction::Created,
            Action::Updated => pb::EventAction::Updated,
            Action::Removed => pb::EventAction::Removed,
        } as i32,
        id: c.id.clone(),
        name: c.name.clone(),
        timestamp_ms: at_ms,
        message: c.message.clone(),
    }
}
