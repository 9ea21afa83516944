//! Services: what the user asked for (`ServiceSpec`) and the replicated record that
//! carries it (`Service`). Validation of a spec lives here so that the CLI, the API
//! and the state machine agree on what is valid.

use super::{
    Constraint, ContainerOptions, HealthCheck, Labels, Mount, MountKind, Resources, RestartPolicy, SecretRef,
    UpdateConfig, UpdateStatus, ValidationError,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceMode {
    Replicated { replicas: u64 },
    Global,
}

impl Default for ServiceMode {
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishMode {
    /// On every node, balanced over all tasks.
    #[default]
    Ingress,
    /// Only on the nodes running a task, to those local tasks.
    Host,
}

/// How clients reach a service's tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointMode {
    /// A virtual IP, balanced by the data plane.
    #[default]
    Vip,
    /// DNS round robin over the tasks' own addresses.
    Dnsrr,
}

impl EndpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        match s {
            "vip" => Ok(EndpointMode::Vip),
            "dnsrr" => Ok(EndpointMode::Dnsrr),
            _ => Err(ValidationError::new(
                field,
                format!("invalid endpoint mode {s:?}: expected vip or dnsrr"),
            )),
        }
    }
}

/// Which tasks a node's data plane sends a new connection to (issue 12).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointLocality {
    /// Every ready task, wherever it runs.
    #[default]
    Any,
    /// The tasks on the client's node while any of them is ready, else every task:
    /// no mesh hop for a client next to a replica, no outage when it has none.
    PreferLocal,
}

impl EndpointLocality {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointLocality::Any => "any",
            EndpointLocality::PreferLocal => "prefer-local",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        match s {
            "any" => Ok(EndpointLocality::Any),
            "prefer-local" => Ok(EndpointLocality::PreferLocal),
            _ => Err(ValidationError::new(
                field,
                format!("invalid endpoint locality {s:?}: expected any or prefer-local"),
            )),
        }
    }
}

/// New connections (and UDP datagrams) per client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

/// `--rate-limit N/s` (or `N`).
pub fn parse_rate(field: &str, s: &str) -> Result<u32, ValidationError> {
    let n = s.trim().trim_end_matches("/s");
    n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ValidationError::new(
            field,
            format!("invalid rate {s:?}: expected a number of new connections per second, e.g. 100/s"),
        )
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
    pub mode: PublishMode,
}

impl std::fmt::Display for PortConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.mode == PublishMode::Host {
            write!(f, "mode=host,")?;
        }
        write!(f, "{}:{}/{}", self.published, self.target, self.protocol.as_str())
    }
}

/// The desired state of a service, as the user wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub image: String,
    pub mode: ServiceMode,
    /// `KEY=VALUE`, in order.
    pub env: Vec<String>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub constraints: Vec<Constraint>,
    pub reservations: Resources,
    pub limits: Resources,
    pub ports: Vec<PortConfig>,
    pub labels: Labels,
    /// Working directory and user (`uid[:gid]` or a name from the image); empty
    /// means the image's.
    #[serde(default)]
    pub workdir: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Config objects mounted read-only (issue 14).
    #[serde(default)]
    pub configs: Vec<super::ConfigRef>,
    /// None: the image's HEALTHCHECK, if any.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Empty: the image's stop signal, else SIGTERM.
    #[serde(default)]
    pub stop_signal: String,
    /// How long a task may take to stop before it is killed.
    #[serde(default = "default_grace")]
    pub stop_grace_ms: u64,
    /// How long a task that is to stop waits for its established connections to
    /// finish (with no new ones arriving) before it gets the stop signal; 0 stops
    /// it at once.
    #[serde(default = "default_drain")]
    pub drain_timeout_ms: u64,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Whether new connections prefer the client node's own tasks.
    #[serde(default)]
    pub endpoint_locality: EndpointLocality,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    // Swarm's container flags (issue 10, item 5): hostname, init, read-only root,
    // capabilities, ulimits, sysctls, pids limit, DNS servers. Kept in one struct so
    // that specs from before it load with its defaults.
    #[serde(default)]
    pub container: ContainerOptions,
    /// How a change of this spec replaces the tasks, and how a rollback does.
    #[serde(default)]
    pub update: UpdateConfig,
    #[serde(default)]
    pub rollback: UpdateConfig,
    /// Bumped by `service update --force`: a new spec version with nothing else changed.
    #[serde(default)]
    pub force_update: u64,
    /// How long the tasks of an unreachable node keep their slots before they are
    /// placed elsewhere (`--reschedule-after`); 0: at once, as for a down node.
    #[serde(default = "default_reschedule_after")]
    pub reschedule_after_ms: u64,
}

/// `--reschedule-after`'s default: 5 min, for edge sites whose links drop.
pub const DEFAULT_RESCHEDULE_AFTER_MS: u64 = 300_000;

fn default_reschedule_after() -> u64 {
    DEFAULT_RESCHEDULE_AFTER_MS
}

fn default_grace() -> u64 {
    10_000
}

/// `--drain-timeout`'s default: 30 s.
pub const DEFAULT_DRAIN_MS: u64 = 30_000;

fn default_drain() -> u64 {
    DEFAULT_DRAIN_MS
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            image: String::new(),
            mode: ServiceMode::default(),
            env: vec![],
            command: vec![],
            args: vec![],
            constraints: vec![],
            reservations: Resources::default(),
            limits: Resources::default(),
            ports: vec![],
            labels: Labels::default(),
            workdir: String::new(),
            user: String::new(),
            mounts: vec![],
            secrets: vec![],
            configs: vec![],
            health: None,
            restart: RestartPolicy::default(),
            stop_signal: String::new(),
            stop_grace_ms: default_grace(),
            drain_timeout_ms: default_drain(),
            endpoint_mode: EndpointMode::Vip,
            endpoint_locality: EndpointLocality::Any,
            rate_limit: None,
            container: ContainerOptions::default(),
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            force_update: 0,
            reschedule_after_ms: default_reschedule_after(),
        }
    }
}

impl ServiceSpec {
    /// Names of the local volumes the tasks mount (anonymous ones are the tasks'
    /// own: no volume object, no placement, no data kept after the task).
    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.mounts
            .iter()
            .filter(|m| m.kind == MountKind::Volume && !m.is_anonymous())
            .map(|m| m.source.as_str())
    }

    pub fn replicas(&self) -> Option<u64> {
        match self.mode {
            ServiceMode::Replicated { replicas } => Some(replicas),
            ServiceMode::Global => None,
        }
    }

    /// Checks a spec the way every entry point must: the first problem found is
    /// reported with the field it concerns.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.image.trim().is_empty() {
            return Err(ValidationError::new("image", "an image is required"));
        }
        if self.image.chars().any(|c| c.is_whitespace()) {
            return Err(ValidationError::new(
                "image",
                format!("invalid image reference {:?}: contains whitespace", self.image),
            ));
        }
        if let ServiceMode::Replicated { replicas } = self.mode {
            if replicas > 10_000 {
                return Err(ValidationError::new(
                    "replicas",
                    format!("{replicas} replicas is more than the limit of 10000"),
                ));
            }
        }
        for e in &self.env {
            super::parse_key_value("env", e)?;
        }
        for (field, r) in [("reservations", self.reservations), ("limits", self.limits)] {
            if r.nano_cpus < 0 || r.memory_bytes < 0 {
                return Err(ValidationError::new(field, "resources cannot be negative"));
            }
        }
        if self.limits.memory_bytes != 0 && self.limits.memory_bytes < 4 << 20 {
            return Err(ValidationError::new(
                "limit-memory",
                "a memory limit must be at least 4MiB",
            ));
        }
        if self.limits.memory_bytes != 0 && self.reservations.memory_bytes > self.limits.memory_bytes {
            return Err(ValidationError::new(
                "reserve-memory",
                "the memory reservation is larger than the memory limit",
            ));
        }
        if self.limits.nano_cpus != 0 && self.reservations.nano_cpus > self.limits.nano_cpus {
            return Err(ValidationError::new(
                "reserve-cpu",
                "the CPU reservation is larger than the CPU limit",
            ));
        }
        if !self.workdir.is_empty() && !self.workdir.starts_with('/') {
            return Err(ValidationError::new(
                "workdir",
                format!("{:?} must be an absolute path", self.workdir),
            ));
        }
        let mut targets = std::collections::HashSet::new();
        for m in &self.mounts {
            m.validate("mount")?;
            if !targets.insert(m.target.as_str()) {
                return Err(ValidationError::new("mount", format!("two mounts at {}", m.target)));
            }
        }
        for s in &self.secrets {
            super::validate_name("secret", &s.name)?;
            if !s.target.starts_with('/') {
                return Err(ValidationError::new(
                    "secret",
                    format!("target {:?} must be an absolute path", s.target),
                ));
            }
            if !targets.insert(s.target.as_str()) {
                return Err(ValidationError::new(
                    "secret",
                    format!("{} is already a mount target", s.target),
                ));
            }
        }
        if let Some(h) = &self.health {
            h.validate()?;
        }
        self.container.validate()?;
        self.update.validate("update")?;
        self.rollback.validate("rollback")?;
        if self.update.strategy != super::UpdateStrategy::Rolling && self.mode == ServiceMode::Global {
            return Err(ValidationError::new(
                "update-strategy",
                format!(
                    "{} needs a replicated service: a global service runs one task per node",
                    self.update.strategy.as_str()
                ),
            ));
        }
        if let Some(r) = &self.rate_limit {
            if r.per_sec == 0 {
                return Err(ValidationError::new("rate-limit", "must be at least 1/s"));
            }
            if r.burst == 0 {
                return Err(ValidationError::new("rate-burst", "must be at least 1"));
            }
            // The data plane's token bucket is exact up to these (warren-common).
            if r.per_sec > warren_common::RL_MAX_RATE {
                return Err(ValidationError::new(
                    "rate-limit",
                    format!("must be at most {}/s", warren_common::RL_MAX_RATE),
                ));
            }
            if r.burst > warren_common::RL_MAX_BURST {
                return Err(ValidationError::new(
                    "rate-burst",
                    format!("must be at most {}", warren_common::RL_MAX_BURST),
                ));
            }
        }
        if self.endpoint_mode == EndpointMode::Dnsrr && self.ports.iter().any(|p| p.mode == PublishMode::Ingress) {
            return Err(ValidationError::new(
                "endpoint-mode",
                "dnsrr services have no virtual IP: publish their ports with mode=host",
            ));
        }
        if !self.stop_signal.is_empty() {
            super::parse_signal("stop-signal", &self.stop_signal)?;
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.ports {
            if p.published == 0 || p.target == 0 {
                return Err(ValidationError::new("publish", "ports must be between 1 and 65535"));
            }
            if !seen.insert((p.published, p.protocol)) {
                return Err(ValidationError::new(
                    "publish",
                    format!("port {}/{} is published twice", p.published, p.protocol.as_str()),
                ));
            }
        }
        Ok(())
    }
}

/// A service as stored in the replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub spec: ServiceSpec,
    /// Bumped by every change to the record; optimistic concurrency for updates.
    pub version: u64,
    /// Bumped when the spec changes; tasks remember which spec version they run.
    pub spec_version: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The service's virtual IP (endpoint mode `vip`), from the service CIDR.
    #[serde(default)]
    pub vip: Option<std::net::Ipv4Addr>,
    /// A small number naming the service in the data plane's maps; never reused
    /// while the service exists.
    #[serde(default)]
    pub dp_id: u32,
    /// A new version running beside the stable one and taking `weight`% of new
    /// connections.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// The spec before the last update, for `service rollback`.
    #[serde(default)]
    pub previous_spec: Option<ServiceSpec>,
    /// The rolling update (or rollback) to the current spec, if one was started.
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub spec: ServiceSpec,
    /// The version the canary tasks run (a spec version above the stable one's).
    pub spec_version: u64,
    /// Percent of new connections, 0-100.
    pub weight: u8,
    /// Set when the canary is a blue-green or stepped canary release that the
    /// updater drives; None for a canary weighted by hand.
    #[serde(default)]
    pub release: Option<super::Release>,
}

impl Canary {
    /// Canary tasks to run: enough for the weight at the service's scale, and at
    /// least one (the traffic split is the data plane's, not the task count's).
    /// Blue-green runs the complete new version from the start.
    pub fn replicas(&self, stable_replicas: u64) -> u64 {
        if self
            .release
            .as_ref()
            .is_some_and(|r| r.strategy == super::UpdateStrategy::BlueGreen)
        {
            return stable_replicas.max(1);
        }
        ((stable_replicas * u64::from(self.weight)).div_ceil(100)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            image: "busybox:1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_minimal_spec_is_valid() {
        spec().validate().unwrap();
    }

    #[test]
    fn bad_specs_name_their_field() {
        let mut s = spec();
        s.image = String::new();
        assert_eq!(s.validate().unwrap_err().field, "image");

        let mut s = spec();
        s.env = vec!["NOEQUALS".into()];
        assert_eq!(s.validate().unwrap_err().field, "env");

        let mut s = spec();
        s.limits.memory_bytes = 64 << 20;
        s.reservations.memory_bytes = 128 << 20;
        assert_eq!(s.validate().unwrap_err().field, "reserve-memory");

        let mut s = spec();
        s.limits.memory_bytes = 1024;
        assert_eq!(s.validate().unwrap_err().field, "limit-memory");

        let mut s = spec();
        let p = PortConfig {
            published: 80,
            target: 80,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
        };
        s.ports = vec![p, p];
        assert_eq!(s.validate().unwrap_err().field, "publish");

        let mut s = spec();
        s.rate_limit = Some(RateLimit {
            per_sec: 1_000_001,
            burst: 1,
        });
        let e = s.validate().unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("rate-limit", "must be at most 1000000/s")
        );
        s.rate_limit = Some(RateLimit {
            per_sec: 1_000_000,
            burst: 1_000_001,
        });
        assert_eq!(s.validate().unwrap_err().field, "rate-burst");
        s.rate_limit = Some(RateLimit {
            per_sec: 1_000_000,
            burst: 1_000_000,
        });
        s.validate().unwrap();
    }

    #[test]
    fn a_spec_from_before_the_container_options_loads() {
        let mut old = serde_json::to_value(spec()).unwrap();
        old.as_object_mut().unwrap().remove("container").expect("serialized");
        let loaded: ServiceSpec = serde_json::from_value(old).unwrap();
        assert_eq!(loaded, spec());
        let mut s = spec();
        s.container.sysctls.insert("vm.swappiness".into(), "1".into());
        assert_eq!(s.validate().unwrap_err().field, "sysctl");
    }

    #[test]
    fn zero_replicas_is_valid() {
        let mut s = spec();
        s.mode = ServiceMode::Replicated { replicas: 0 };
        s.validate().unwrap();
        assert_eq!(s.replicas(), Some(0));
    }
}
