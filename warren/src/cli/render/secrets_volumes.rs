//! What `secret ls` and `volume ls` show.

use super::{ago, short_id, table};
use serde::Serialize;
use std::collections::BTreeMap;
use warren_proto::v1 as pb;

#[derive(Serialize)]
pub struct SecretView {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_ms: i64,
    pub digest: String,
}

impl SecretView {
    pub fn from_pb(s: pb::Secret) -> SecretView {
        SecretView {
            id: s.id,
            name: s.name,
            labels: s.labels.into_iter().collect(),
            created_ms: s.created_ms,
            digest: s.digest,
        }
    }
}

/// `secret ls`.
pub fn secrets_table(views: &[SecretView]) -> String {
    table(
        &["ID", "NAME", "CREATED"],
        views
            .iter()
            .map(|s| vec![short_id(&s.id), s.name.clone(), ago(s.created_ms)])
            .collect(),
    )
}

#[derive(Serialize)]
pub struct VolumeView {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub node_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub created_ms: i64,
}

impl VolumeView {
    pub fn from_pb(x: pb::Volume) -> VolumeView {
        VolumeView {
            id: x.id,
            name: x.name,
            driver: x.driver,
            node_id: (!x.node_id.is_empty()).then_some(x.node_id),
            labels: x.labels.into_iter().collect(),
            options: x.options.into_iter().collect(),
            created_ms: x.created_ms,
        }
    }
}

/// `volume ls`.
pub fn volumes_table(views: &[VolumeView]) -> String {
    table(
        &["DRIVER", "VOLUME NAME", "NODE"],
        views
            .iter()
            .map(|x| {
                vec![
                    x.driver.clone(),
                    x.name.clone(),
                    x.node_id.clone().map(|n| short_id(&n)).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    )
}
