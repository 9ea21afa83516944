//! What `cluster info` and `events` show.

use super::{ago, or_dash, short_id, Text};
use serde::Serialize;
use warren_proto::v1 as pb;

#[derive(Serialize)]
pub struct EventView {
    pub index: u64,
    pub kind: String,
    pub action: String,
    pub id: String,
    pub name: String,
    pub timestamp_ms: i64,
    /// Why, where the change says (a release step).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl EventView {
    pub fn from_pb(ev: pb::Event) -> EventView {
        let kind = pb::ObjectKind::try_from(ev.kind)
            .map(|k| k.as_str_name().trim_start_matches("OBJECT_KIND_").to_ascii_lowercase())
            .unwrap_or_default();
        let action = pb::EventAction::try_from(ev.action)
            .map(|a| a.as_str_name().trim_start_matches("EVENT_ACTION_").to_ascii_lowercase())
            .unwrap_or_default();
        EventView {
            index: ev.index,
            kind,
            action,
            id: ev.id,
            name: ev.name,
            timestamp_ms: ev.timestamp_ms,
            message: ev.message,
        }
    }

    /// One line of JSON per event.
    pub fn json_line(&self) -> anyhow::Result<String> {
        Ok(format!("{}\n", serde_json::to_string(self)?))
    }

    pub fn text_line(&self) -> String {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.timestamp_ms.max(0) as u64);
        let name = if self.name.is_empty() {
            String::new()
        } else {
            format!(" {}", self.name)
        };
        let message = if self.message.is_empty() {
            String::new()
        } else {
            format!(": {}", self.message)
        };
        format!(
            "{} {} {}{name} ({}) index={}{message}\n",
            humantime::format_rfc3339_millis(at),
            self.kind,
            self.action,
            short_id(&self.id),
            self.index
        )
    }
}

#[derive(Serialize)]
pub struct MemberView {
    pub raft_id: u64,
    pub node_id: String,
    pub addr: String,
    pub leader: bool,
    pub voter: bool,
    pub matched_index: u64,
}

#[derive(Serialize)]
pub struct ClusterView {
    pub cluster_id: String,
    pub created_ms: i64,
    pub leader_node_id: String,
    pub leader_addr: String,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberView>,
    pub ca_digest: String,
    pub nodes: u64,
    pub services: u64,
    pub tasks: u64,
    pub pod_cidr: String,
    /// "wireguard" or "native" ("native" from managers that predate the mesh).
    pub overlay: String,
    /// How long node certificates issued from now on last (ms).
    pub cert_expiry_ms: i64,
    pub node_id: String,
    pub snapshot_index: u64,
    pub purged_index: u64,
    /// The ingress's ACME settings and orders in progress; None: ACME is off.
    pub acme: Option<AcmeView>,
}

#[derive(Serialize)]
pub struct AcmeView {
    pub email: String,
    pub directory_url: String,
    pub custom_ca: bool,
    pub renew_before_ms: u64,
    /// Certificate names with an order in progress.
    pub orders: Vec<String>,
}

impl ClusterView {
    pub fn from_pb(i: pb::ClusterInfo) -> ClusterView {
        ClusterView {
            cluster_id: i.cluster_id,
            created_ms: i.created_ms,
            leader_node_id: i.leader_node_id,
            leader_addr: i.leader_addr,
            term: i.term,
            last_log_index: i.last_log_index,
            applied_index: i.applied_index,
            members: i
                .members
                .into_iter()
                .map(|m| MemberView {
                    raft_id: m.raft_id,
                    node_id: m.node_id,
                    addr: m.addr,
                    leader: m.leader,
                    voter: m.voter,
                    matched_index: m.matched_index,
                })
                .collect(),
            ca_digest: i.ca_digest,
            nodes: i.nodes,
            services: i.services,
            tasks: i.tasks,
            pod_cidr: i.pod_cidr,
            overlay: if i.overlay.is_empty() {
                "native".into()
            } else {
                i.overlay
            },
            cert_expiry_ms: i.cert_expiry_ms,
            node_id: i.node_id,
            snapshot_index: i.snapshot_index,
            purged_index: i.purged_index,
            acme: i.acme.filter(|a| a.enabled).map(|a| AcmeView {
                email: a.email,
                directory_url: a.directory_url,
                custom_ca: a.custom_ca,
                renew_before_ms: a.renew_before_ms,
                orders: a.orders.into_iter().map(|o| o.certificate).collect(),
            }),
        }
    }

    /// `cluster info`.
    pub fn text(&self) -> String {
        let mut t = Text::default();
        t.line(format_args!("Cluster ID:   {}", self.cluster_id));
        t.line(format_args!("Created:      {}", ago(self.created_ms)));
        t.line(format_args!("CA digest:    sha256:{}", self.ca_digest));
        t.line(format_args!("Pod CIDR:     {}", self.pod_cidr));
        t.line(format_args!("Overlay:      {}", self.overlay));
        t.line(format_args!(
            "Certificates: {} (node certificates; renewed at two thirds)",
            humantime::format_duration(std::time::Duration::from_millis(self.cert_expiry_ms.max(0) as u64))
        ));
        t.line(format_args!(
            "Leader:       {} ({})",
            or_dash(&short_id(&self.leader_node_id)),
            or_dash(&self.leader_addr)
        ));
        t.line(format_args!(
            "Raft:         term {}, last log index {}, applied {}, snapshot at {}, purged to {}",
            self.term, self.last_log_index, self.applied_index, self.snapshot_index, self.purged_index
        ));
        t.line(format_args!(
            "Objects:      {} nodes, {} services, {} tasks",
            self.nodes, self.services, self.tasks
        ));
        match &self.acme {
            Some(a) => t.line(format_args!(
                "ACME:         {} at {}, renew {}d before expiry{}",
                a.email,
                a.directory_url,
                a.renew_before_ms / 86_400_000,
                if a.orders.is_empty() {
                    String::new()
                } else {
                    format!(", ordering {}", a.orders.join(", "))
                }
            )),
            None => t.line("ACME:         off"),
        }
        t.line("Managers:");
        for m in &self.members {
            t.line(format_args!(
                "  {:<14} {:<22} {}{}",
                or_dash(&short_id(&m.node_id)),
                m.addr,
                if m.voter { "voter" } else { "learner" },
                if m.leader { ", leader" } else { "" }
            ));
        }
        t.0
    }
}
