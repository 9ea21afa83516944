//! The typed commands that the Raft log carries and the state machine applies, and
//! the result each one produces. A command holds everything needed to apply it
//! deterministically: IDs, timestamps and secrets are chosen by the proposer.
//!
//! The log outlives the code that wrote it: a command keeps the serialized shape it
//! had, new fields come with a serde default that means "as before" (`Rules`).

use super::ApplyError;
use crate::model::ingress::{AcmeChallenge, AcmeOrder, AcmeSettings, Certificate, Ingress, IngressSpec, NodeIngress};
use crate::model::{
    Availability, ClusterMeta, ConfigObject, Labels, Node, NodeMesh, NodeRole, NodeState, Platform, ReleaseStep,
    Resources, Secret, Service, ServiceSpec, Task, TaskState, TaskStatus, UpdateStep, Volume,
};
use serde::{Deserialize, Serialize};

/// The cross-manager rules a command is applied under: whether the secrets and
/// volumes its spec names must exist, whether what it removes may still be in use,
/// whether its published ports must be free. Entries that a manager wrote before
/// these rules moved into the state machine carry no `rules` field; they replay as
/// they applied then, so that every manager derives the same state from the same log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rules {
    /// Before the rules lived in apply (the serde default of an older entry).
    Unchecked,
    /// References, in-use and published-port uniqueness are decided in apply.
    V1,
}

impl Rules {
    /// What a proposer writes today.
    pub const CURRENT: Rules = Rules::V1;

    fn before_v1() -> Rules {
        Rules::Unchecked
    }

    pub fn checked(self) -> bool {
        self >= Rules::V1
    }
}

// A command is built once per write and moved into the log; boxing the large
// variants would only add an allocation to every one.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// First entry of a new cluster: its identity and the initial manager.
    Bootstrap {
        meta: ClusterMeta,
        node: Node,
    },
    RotateJoinToken {
        role: NodeRole,
        secret: String,
        /// Unix ms after which the new token is refused; 0: never.
        #[serde(default)]
        expires_ms: i64,
    },

    /// `cluster init|update --cert-expiry`: how long node certificates issued from
    /// now on last.
    SetCertExpiry {
        expiry_ms: i64,
    },
    /// A manager issued node `id` a new certificate (renewal), expiring then.
    SetNodeCertificate {
        id: String,
        expires_ms: i64,
    },

    /// A node joined with a valid token.
    AddNode {
        node: Node,
    },
    /// A node's agent opened its session: refresh what the node reports about itself.
    NodeHello {
        id: String,
        resources: Resources,
        platform: Platform,
        warren_version: String,
        at_ms: i64,
        /// 0: not said (an agent from before this field).
        #[serde(default)]
        metrics_port: u16,
        /// What the agent did on its own while cut off (empty: it was not).
        #[serde(default)]
        autonomy: String,
    },
    SetNodeState {
        id: String,
        state: NodeState,
        message: String,
        at_ms: i64,
    },
    UpdateNode {
        id: String,
        availability: Option<Availability>,
        label_add: Labels,
        label_rm: Vec<String>,
        at_ms: i64,
    },
    RemoveNode {
        id: String,
    },

    CreateService {
        service: Service,
        #[serde(default = "Rules::before_v1")]
        rules: Rules,
    },
    UpdateService {
        id: String,
        /// The version the caller read; a mismatch is a conflict.
        expected_version: u64,
        spec: ServiceSpec,
        at_ms: i64,
        #[serde(default = "Rules::before_v1")]
        rules: Rules,
    },
    ScaleService {
        id: String,
        replicas: u64,
        at_ms: i64,
    },
    /// Deletes the service and marks its tasks for removal.
    RemoveService {
        id: String,
        at_ms: i64,
    },
    /// Runs `spec` beside the stable version, taking `weight`% of new connections
    /// (replaces a canary already running).
    StartCanary {
        id: String,
        expected_version: u64,
        spec: ServiceSpec,
        weight: u8,
        at_ms: i64,
        #[serde(default = "Rules::before_v1")]
        rules: Rules,
    },
    SetCanaryWeight {
        id: String,
        weight: u8,
        at_ms: i64,
    },
    /// The canary becomes the stable version.
    PromoteCanary {
        id: String,
        at_ms: i64,
    },
    /// Drops the canary; without one, returns to the spec before the last update.
    RollbackService {
        id: String,
        at_ms: i64,
        #[serde(default = "Rules::before_v1")]
        rules: Rules,
    },
    /// A step of the rolling update to spec version `spec_version` (refused once a
    /// newer spec has started its own update).
    UpdateStep {
        id: String,
        spec_version: u64,
        step: UpdateStep,
        at_ms: i64,
    },

    /// New tasks from the orchestrator; ignored for services that are gone.
    CreateTasks {
        tasks: Vec<Task>,
    },
    /// The scheduler's placements. Only tasks still pending are placed.
    AssignTasks {
        assignments: Vec<(String, String)>,
        at_ms: i64,
    },
    /// The scheduler found no node: keep pending and record why.
    SetTasksPending {
        updates: Vec<(String, String)>,
        at_ms: i64,
    },
    SetTasksDesired {
        ids: Vec<String>,
        desired: TaskState,
        at_ms: i64,
    },
    /// A node's agent reported task states; reports for tasks that are not on that
    /// node, or that would move a task backwards, are ignored.
    ReportTaskStatus {
        node_id: String,
        reports: Vec<(String, TaskStatus)>,
    },
    /// The orchestrator marks tasks whose node is gone or down.
    OrphanTasks {
        ids: Vec<String>,
        message: String,
        at_ms: i64,
    },
    RemoveTasks {
        ids: Vec<String>,
    },

    CreateSecret {
        secret: Secret,
    },
    RemoveSecret {
        id: String,
        #[serde(default = "Rules::before_v1")]
        rules: Rules,
    },
    CreateVolume {
        volume: Volume,
    },
    RemoveVolume {
        id: String,
        #[serde(default = "Rules::before_v1")]
        rules: Rules,
    },

    /// Several commands in one log entry; each applies on its own and the first
    /// error is the batch's result.
    Batch(Vec<Command>),

    /// A step of the blue-green or canary release of spec version `spec_version`
    /// (the service's canary); refused once that release is over.
    ReleaseStep {
        id: String,
        spec_version: u64,
        step: ReleaseStep,
        at_ms: i64,
    },

    // Issue 14: config objects and manifests (`warren apply -f`, `stack deploy`).
    CreateConfig {
        config: ConfigObject,
    },
    RemoveConfig {
        id: String,
        rules: Rules,
    },
    /// A manifest's changes, all or nothing: every step is applied to a copy of the
    /// state and the copy replaces the state only if none failed; the first failure
    /// is the result, with its step's manifest field path.
    Apply {
        steps: Vec<ApplyStep>,
    },

    /// What a node publishes of its mesh end: its public key (and next key during
    /// a rotation) and endpoint. The rotation counter stays the managers'.
    SetNodeMesh {
        id: String,
        mesh: NodeMesh,
        at_ms: i64,
    },
    /// `warren node update --rotate-key`: asks the node for a key rotation.
    RotateNodeKey {
        id: String,
        at_ms: i64,
    },

    /// A new ingress route (`warren ingress create`).
    CreateIngress {
        ingress: Ingress,
    },
    UpdateIngress {
        id: String,
        /// The version the caller read; a mismatch is a conflict.
        expected_version: u64,
        spec: IngressSpec,
        at_ms: i64,
    },
    RemoveIngress {
        id: String,
    },
    /// An uploaded certificate (its key already sealed by the proposer).
    CreateCertificate {
        certificate: Certificate,
    },
    /// Refused while a route names it.
    RemoveCertificate {
        id: String,
    },
    /// Whether and where nodes' ingresses run (`warren node update --ingress`).
    SetNodeIngress {
        id: String,
        ingress: Option<NodeIngress>,
        at_ms: i64,
    },
    /// `warren daemon --ingress`: the node's ingress unless its record has one, so
    /// that a restart with the flag never undoes a `node update`.
    SeedNodeIngress {
        id: String,
        ingress: NodeIngress,
        at_ms: i64,
    },
    /// `warren cluster update --acme-*`; None turns ACME off.
    SetAcmeSettings {
        settings: Option<AcmeSettings>,
    },
    /// The ACME account at a directory, its credentials sealed.
    SaveAcmeAccount {
        directory_url: String,
        credentials_sealed: Vec<u8>,
    },
    /// An order placed at the CA, recorded before its challenges are published
    /// (replaces an order for the same certificate).
    BeginAcmeOrder {
        order: AcmeOrder,
    },
    PublishAcmeChallenges {
        challenges: Vec<AcmeChallenge>,
    },
    /// The certificate an order obtained (created or replaced, key sealed), and
    /// the order and its answers dropped, in one write.
    FinishAcmeOrder {
        order_url: String,
        certificate: Certificate,
    },
    DropAcmeOrder {
        order_url: String,
    },
    /// First entry of a cluster restored from a backup (`warren cluster restore`):
    /// the backup's state, with its nodes removed (their tasks orphaned, so that
    /// they are placed again) and `node` as the only manager.
    Restore {
        state: Box<super::State>,
        node: Node,
    },
}

/// One change of a manifest's apply, with the field path it comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyStep {
    /// `services.web`, `secrets.db_password`: the prefix of an error's field path.
    pub field: String,
    pub op: ApplyOp,
}

#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ApplyOp {
    /// Create the secret unless one of its name holds the same value (digest); a
    /// different value is refused: secrets are immutable, as in Swarm.
    Secret(Secret),
    /// The same for a config.
    Config(ConfigObject),
    /// Create the volume unless one of its name exists.
    Volume(Volume),
    /// A service or removal command: `CreateService`, `UpdateService`,
    /// `RemoveService`, `RemoveSecret`, `RemoveConfig` or `RemoveVolume`; also
    /// `CreateIngress`, `UpdateIngress` and `RemoveIngress`.
    Run(Command),
    /// Create the uploaded certificate, or replace the one of its name (keeping its
    /// ID, so routes naming it follow) unless it holds the same chain.
    Certificate(Certificate),
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Bootstrap { .. } => "bootstrap",
            Command::RotateJoinToken { .. } => "rotate_join_token",
            Command::SetCertExpiry { .. } => "set_cert_expiry",
            Command::SetNodeCertificate { .. } => "set_node_certificate",
            Command::AddNode { .. } => "add_node",
            Command::NodeHello { .. } => "node_hello",
            Command::SetNodeState { .. } => "set_node_state",
            Command::UpdateNode { .. } => "update_node",
            Command::RemoveNode { .. } => "remove_node",
            Command::CreateService { .. } => "create_service",
            Command::UpdateService { .. } => "update_service",
            Command::ScaleService { .. } => "scale_service",
            Command::RemoveService { .. } => "remove_service",
            Command::StartCanary { .. } => "start_canary",
            Command::SetCanaryWeight { .. } => "set_canary_weight",
            Command::PromoteCanary { .. } => "promote_canary",
            Command::RollbackService { .. } => "rollback_service",
            Command::UpdateStep { .. } => "update_step",
            Command::CreateTasks { .. } => "create_tasks",
            Command::AssignTasks { .. } => "assign_tasks",
            Command::SetTasksPending { .. } => "set_tasks_pending",
            Command::SetTasksDesired { .. } => "set_tasks_desired",
            Command::ReportTaskStatus { .. } => "report_task_status",
            Command::OrphanTasks { .. } => "orphan_tasks",
            Command::RemoveTasks { .. } => "remove_tasks",
            Command::CreateSecret { .. } => "create_secret",
            Command::RemoveSecret { .. } => "remove_secret",
            Command::CreateVolume { .. } => "create_volume",
            Command::RemoveVolume { .. } => "remove_volume",
            Command::Batch(_) => "batch",
            Command::ReleaseStep { .. } => "release_step",

            Command::CreateConfig { .. } => "create_config",
            Command::RemoveConfig { .. } => "remove_config",
            Command::Apply { .. } => "apply",
            Command::SetNodeMesh { .. } => "set_node_mesh",
            Command::RotateNodeKey { .. } => "rotate_node_key",
            Command::CreateIngress { .. } => "create_ingress",
            Command::UpdateIngress { .. } => "update_ingress",
            Command::RemoveIngress { .. } => "remove_ingress",
            Command::CreateCertificate { .. } => "create_certificate",
            Command::RemoveCertificate { .. } => "remove_certificate",
            Command::SetNodeIngress { .. } => "set_node_ingress",
            Command::SeedNodeIngress { .. } => "seed_node_ingress",
            Command::SetAcmeSettings { .. } => "set_acme_settings",
            Command::SaveAcmeAccount { .. } => "save_acme_account",
            Command::BeginAcmeOrder { .. } => "begin_acme_order",
            Command::PublishAcmeChallenges { .. } => "publish_acme_challenges",
            Command::FinishAcmeOrder { .. } => "finish_acme_order",
            Command::DropAcmeOrder { .. } => "drop_acme_order",
            Command::Restore { .. } => "restore",
        }
    }
}

/// What the state machine returns for each applied entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub error: Option<ApplyError>,
}

impl Response {
    pub fn ok() -> Self {
        Response { error: None }
    }

    pub fn into_result(self) -> Result<(), ApplyError> {
        match self.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
