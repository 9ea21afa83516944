//! Conversions between `warren.v1` protobuf messages and Warren's own types. This is
//! the only place that knows both: handlers, the agent and the CLI convert here and
//! work with `model` types everywhere else. Conversions from protobuf validate and
//! report the offending field.

use crate::model::{
    self, Availability, Canary, Constraint, EndpointMode, HealthCheck, HealthTest, Mount, MountKind, Node, NodeRole,
    NodeState, PortConfig, Protocol, PublishMode, RateLimit, Resources, RestartCondition, RestartPolicy, SecretRef,
    Service, ServiceMode, ServiceSpec, Task, TaskState, TaskStatus, ValidationError,
};
use crate::store::{Action, Change, ObjectKind};
use warren_proto::v1 as pb;

pub fn resources_to_pb(r: Resources) -> pb::Resources {
    pb::Resources {
        nano_cpus: r.nano_cpus,
        memory_bytes: r.memory_bytes,
    }
}

pub fn resources_from_pb(r: Option<pb::Resources>) -> Resources {
    r.map(|r| Resources {
        nano_cpus: r.nano_cpus,
        memory_bytes: r.memory_bytes,
    })
    .unwrap_or_default()
}

pub fn platform_to_pb(p: &model::Platform) -> pb::Platform {
    pb::Platform {
        os: p.os.clone(),
        arch: p.arch.clone(),
    }
}

pub fn platform_from_pb(p: Option<pb::Platform>) -> model::Platform {
    p.map(|p| model::Platform { os: p.os, arch: p.arch })
        .unwrap_or_default()
}

pub fn spec_to_pb(s: &ServiceSpec) -> pb::ServiceSpec {
    let (mode, replicas) = match s.mode {
        ServiceMode::Replicated { replicas } => (pb::ServiceMode::Replicated, replicas),
        ServiceMode::Global => (pb::ServiceMode::Global, 0),
    };
    pb::ServiceSpec {
        image: s.image.clone(),
        mode: mode as i32,
        replicas,
        env: s.env.clone(),
        constraints: s.constraints.iter().map(|c| c.to_string()).collect(),
        reservations: Some(resources_to_pb(s.reservations)),
        limits: Some(resources_to_pb(s.limits)),
        ports: s.ports.iter().map(port_to_pb).collect(),
        labels: s.labels.clone().into_iter().collect(),
        command: s.command.clone(),
        args: s.args.clone(),
        workdir: s.workdir.clone(),
        user: s.user.clone(),
        mounts: s
            .mounts
            .iter()
            .map(|m| pb::Mount {
                r#type: match m.kind {
                    MountKind::Volume => pb::MountType::Volume,
                    MountKind::Bind => pb::MountType::Bind,
                    MountKind::Tmpfs => pb::MountType::Tmpfs,
                } as i32,
                source: m.source.clone(),
                target: m.target.clone(),
                readonly: m.readonly,
            })
            .collect(),
        secrets: s
            .secrets
            .iter()
            .map(|r| pb::SecretReference {
                name: r.name.clone(),
                target: r.target.clone(),
            })
            .collect(),
        health: s.health.as_ref().map(health_to_pb),
        restart: Some(pb::RestartPolicy {
            condition: match s.restart.condition {
                RestartCondition::Any => pb::RestartCondition::Any,
                RestartCondition::OnFailure => pb::RestartCondition::OnFailure,
                RestartCondition::None => pb::RestartCondition::None,
            } as i32,
            delay_ms: s.restart.delay_ms,
            max_attempts: s.restart.max_attempts,
        }),
        stop_signal: s.stop_signal.clone(),
        stop_grace_ms: Some(s.stop_grace_ms),
        endpoint_mode: match s.endpoint_mode {
            EndpointMode::Vip => pb::EndpointMode::Vip,
            EndpointMode::Dnsrr => pb::EndpointMode::Dnsrr,
        } as i32,
        rate_limit: s.rate_limit.map(|r| pb::RateLimit {
            per_sec: r.per_sec,
            burst: r.burst,
        }),
    }
}

fn health_to_pb(h: &HealthCheck) -> pb::HealthCheck {
    use pb::health_check::Test;
    pb::HealthCheck {
        test: Some(match &h.test {
            HealthTest::Cmd(c) => Test::Cmd(c.clone()),
            HealthTest::Http { port, path } => Test::Http(pb::HttpProbe {
                port: u32::from(*port),
                path: path.clone(),
            }),
            HealthTest::Tcp { port } => Test::TcpPort(u32::from(*port)),
            HealthTest::Disabled => Test::Disabled(true),
        }),
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        retries: h.retries,
        start_period_ms: h.start_period_ms,
    }
}

fn health_from_pb(h: pb::HealthCheck) -> Result<HealthCheck, ValidationError> {
    use pb::health_check::Test;
    let port = |p: u32| {
        u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| ValidationError::new("health", format!("port {p} is not between 1 and 65535")))
    };
    let test = match h.test {
        Some(Test::Cmd(c)) => HealthTest::Cmd(c),
        Some(Test::Http(p)) => HealthTest::Http {
            port: port(p.port)?,
            path: p.path,
        },
        Some(Test::TcpPort(p)) => HealthTest::Tcp { port: port(p)? },
        Some(Test::Disabled(_)) => HealthTest::Disabled,
        None => return Err(ValidationError::new("health", "a health check needs a test")),
    };
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    Ok(HealthCheck {
        test,
        interval_ms: or(h.interval_ms, HealthCheck::DEFAULT_INTERVAL_MS),
        timeout_ms: or(h.timeout_ms, HealthCheck::DEFAULT_TIMEOUT_MS),
        retries: if h.retries == 0 {
            HealthCheck::DEFAULT_RETRIES
        } else {
            h.retries
        },
        start_period_ms: h.start_period_ms,
    })
}

/// Converts and validates a spec from the wire.
pub fn spec_from_pb(s: pb::ServiceSpec) -> Result<ServiceSpec, ValidationError> {
    let mode = match pb::ServiceMode::try_from(s.mode) {
        Ok(pb::ServiceMode::Replicated) => ServiceMode::Replicated { replicas: s.replicas },
        Ok(pb::ServiceMode::Global) => {
            if s.replicas != 0 {
                return Err(ValidationError::new(
                    "replicas",
                    "replicas cannot be set on a global service (it runs one task per eligible node)",
                ));
            }
            ServiceMode::Global
        }
        Err(_) => return Err(ValidationError::new("mode", format!("unknown service mode {}", s.mode))),
    };
    let constraints = s
        .constraints
        .iter()
        .map(|c| Constraint::parse("constraint", c))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = s.ports.into_iter().map(port_from_pb).collect::<Result<Vec<_>, _>>()?;
    let mounts = s
        .mounts
        .into_iter()
        .map(|m| {
            Ok(Mount {
                kind: match pb::MountType::try_from(m.r#type) {
                    Ok(pb::MountType::Volume) => MountKind::Volume,
                    Ok(pb::MountType::Bind) => MountKind::Bind,
                    Ok(pb::MountType::Tmpfs) => MountKind::Tmpfs,
                    Err(_) => {
                        return Err(ValidationError::new(
                            "mount",
                            format!("unknown mount type {}", m.r#type),
                        ))
                    }
                },
                source: m.source,
                target: m.target,
                readonly: m.readonly,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secrets = s
        .secrets
        .into_iter()
        .map(|r| SecretRef {
            target: if r.target.is_empty() {
                format!("/run/secrets/{}", r.name)
            } else {
                r.target
            },
            name: r.name,
        })
        .collect();
    let restart = match s.restart {
        None => RestartPolicy::default(),
        Some(r) => RestartPolicy {
            condition: match pb::RestartCondition::try_from(r.condition) {
                Ok(pb::RestartCondition::Any) => RestartCondition::Any,
                Ok(pb::RestartCondition::OnFailure) => RestartCondition::OnFailure,
                Ok(pb::RestartCondition::None) => RestartCondition::None,
                Err(_) => {
                    return Err(ValidationError::new(
                        "restart-condition",
                        format!("unknown condition {}", r.condition),
                    ))
                }
            },
            delay_ms: r.delay_ms,
            max_attempts: r.max_attempts,
        },
    };
    let spec = ServiceSpec {
        image: s.image,
        mode,
        env: s.env,
        command: s.command,
        args: s.args,
        constraints,
        reservations: resources_from_pb(s.reservations),
        limits: resources_from_pb(s.limits),
        ports,
        labels: s.labels.into_iter().collect(),
        workdir: s.workdir,
        user: s.user,
        mounts,
        secrets,
        health: s.health.map(health_from_pb).transpose()?,
        restart,
        stop_signal: s.stop_signal,
        stop_grace_ms: s.stop_grace_ms.unwrap_or(10_000),
        endpoint_mode: match pb::EndpointMode::try_from(s.endpoint_mode) {
            Ok(pb::EndpointMode::Vip) => EndpointMode::Vip,
            Ok(pb::EndpointMode::Dnsrr) => EndpointMode::Dnsrr,
            Err(_) => {
                return Err(ValidationError::new(
                    "endpoint-mode",
                    format!("unknown endpoint mode {}", s.endpoint_mode),
                ))
            }
        },
        rate_limit: s.rate_limit.map(|r| RateLimit {
            per_sec: r.per_sec,
            burst: r.burst,
        }),
    };
    spec.validate()?;
    Ok(spec)
}

fn port_to_pb(p: &PortConfig) -> pb::PortConfig {
    pb::PortConfig {
        published: u32::from(p.published),
        target: u32::from(p.target),
        protocol: match p.protocol {
            Protocol::Tcp => pb::PortProtocol::Tcp,
            Protocol::Udp => pb::PortProtocol::Udp,
        } as i32,
        mode: match p.mode {
            PublishMode::Ingress => pb::PublishMode::Ingress,
            PublishMode::Host => pb::PublishMode::Host,
        } as i32,
    }
}

fn port_from_pb(p: pb::PortConfig) -> Result<PortConfig, ValidationError> {
    let port = |v: u32, what: &str| {
        u16::try_from(v)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| ValidationError::new("publish", format!("{what} port {v} is not between 1 and 65535")))
    };
    Ok(PortConfig {
        published: port(p.published, "published")?,
        target: port(p.target, "target")?,
        protocol: match pb::PortProtocol::try_from(p.protocol) {
            Ok(pb::PortProtocol::Tcp) => Protocol::Tcp,
            Ok(pb::PortProtocol::Udp) => Protocol::Udp,
            Err(_) => {
                return Err(ValidationError::new(
                    "publish",
                    format!("unknown protocol {}", p.protocol),
                ))
            }
        },
        mode: match pb::PublishMode::try_from(p.mode) {
            Ok(pb::PublishMode::Ingress) => PublishMode::Ingress,
            Ok(pb::PublishMode::Host) => PublishMode::Host,
            Err(_) => {
                return Err(ValidationError::new(
                    "publish",
                    format!("unknown publish mode {}", p.mode),
                ))
            }
        },
    })
}

/// Running and desired tasks of a service's stable and canary versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub running: u64,
    pub desired: u64,
    pub canary_running: u64,
    pub canary_desired: u64,
}

pub fn service_to_pb(s: &Service, c: Counts) -> pb::Service {
    pb::Service {
        id: s.id.clone(),
        name: s.name.clone(),
        spec: Some(spec_to_pb(&s.spec)),
        version: s.version,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        replicas: Some(pb::ReplicaStatus {
            running: c.running,
            desired: c.desired,
        }),
        spec_version: s.spec_version,
        vip: s.vip.map(|v| v.to_string()).unwrap_or_default(),
        canary: s.canary.as_ref().map(|k| pb::CanaryStatus {
            spec: Some(spec_to_pb(&k.spec)),
            weight: u32::from(k.weight),
            spec_version: k.spec_version,
            replicas: Some(pb::ReplicaStatus {
                running: c.canary_running,
                desired: c.canary_desired,
            }),
        }),
        has_previous_spec: s.previous_spec.is_some(),
    }
}

/// For clients: the service record back from the wire (the replica counts are
/// returned beside it).
pub fn service_from_pb(s: pb::Service) -> Result<(Service, Counts), ValidationError> {
    let spec = spec_from_pb(s.spec.unwrap_or_default())?;
    let (running, desired) = s.replicas.map(|r| (r.running, r.desired)).unwrap_or((0, 0));
    let mut counts = Counts {
        running,
        desired,
        ..Default::default()
    };
    let canary = match s.canary {
        None => None,
        Some(c) => {
            if let Some(r) = c.replicas {
                counts.canary_running = r.running;
                counts.canary_desired = r.desired;
            }
            Some(Canary {
                spec: spec_from_pb(c.spec.unwrap_or_default())?,
                spec_version: c.spec_version,
                weight: c.weight.min(100) as u8,
            })
        }
    };
    Ok((
        Service {
            id: s.id,
            name: s.name,
            spec,
            version: s.version,
            spec_version: s.spec_version,
            created_ms: s.created_ms,
            updated_ms: s.updated_ms,
            vip: s.vip.parse().ok(),
            dp_id: 0,
            canary,
            previous_spec: None,
        },
        counts,
    ))
}

pub fn task_state_to_pb(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::New => pb::TaskState::New,
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Accepted => pb::TaskState::Accepted,
        TaskState::Preparing => pb::TaskState::Preparing,
        TaskState::Starting => pb::TaskState::Starting,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Complete => pb::TaskState::Complete,
        TaskState::Shutdown => pb::TaskState::Shutdown,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Rejected => pb::TaskState::Rejected,
        TaskState::Remove => pb::TaskState::Remove,
        TaskState::Orphaned => pb::TaskState::Orphaned,
    }
}

pub fn task_state_from_pb(v: i32) -> TaskState {
    match pb::TaskState::try_from(v).unwrap_or(pb::TaskState::New) {
        pb::TaskState::New => TaskState::New,
        pb::TaskState::Pending => TaskState::Pending,
        pb::TaskState::Assigned => TaskState::Assigned,
        pb::TaskState::Accepted => TaskState::Accepted,
        pb::TaskState::Preparing => TaskState::Preparing,
        pb::TaskState::Starting => TaskState::Starting,
        pb::TaskState::Running => TaskState::Running,
        pb::TaskState::Complete => TaskState::Complete,
        pb::TaskState::Shutdown => TaskState::Shutdown,
        pb::TaskState::Failed => TaskState::Failed,
        pb::TaskState::Rejected => TaskState::Rejected,
        pb::TaskState::Remove => TaskState::Remove,
        pb::TaskState::Orphaned => TaskState::Orphaned,
    }
}

pub fn task_status_to_pb(s: &TaskStatus) -> pb::TaskStatus {
    pb::TaskStatus {
        state: task_state_to_pb(s.state) as i32,
        message: s.message.clone(),
        err: s.err.clone(),
        timestamp_ms: s.timestamp_ms,
        exit_code: s.exit_code.unwrap_or(0),
        has_exit_code: s.exit_code.is_some(),
        container_id: s.container_id.clone(),
        addr: s.addr.clone(),
        health: s.health.clone(),
    }
}

pub fn task_status_from_pb(s: pb::TaskStatus) -> TaskStatus {
    TaskStatus {
        state: task_state_from_pb(s.state),
        message: s.message,
        err: s.err,
        timestamp_ms: s.timestamp_ms,
        exit_code: s.has_exit_code.then_some(s.exit_code),
        container_id: s.container_id,
        addr: s.addr,
        health: s.health,
    }
}

pub fn task_to_pb(t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        service_id: t.service_id.clone(),
        service_name: t.service_name.clone(),
        slot: t.slot,
        node_id: t.node_id.clone().unwrap_or_default(),
        desired_state: task_state_to_pb(t.desired_state) as i32,
        status: Some(task_status_to_pb(&t.status)),
        spec: Some(spec_to_pb(&t.spec)),
        spec_version: t.spec_version,
        created_ms: t.created_ms,
        updated_ms: t.updated_ms,
        version: t.version,
        attempt: t.attempt,
        canary: t.canary,
    }
}

pub fn task_from_pb(t: pb::Task) -> Result<Task, ValidationError> {
    Ok(Task {
        id: t.id,
        service_id: t.service_id,
        service_name: t.service_name,
        slot: t.slot,
        node_id: (!t.node_id.is_empty()).then_some(t.node_id),
        desired_state: task_state_from_pb(t.desired_state),
        status: task_status_from_pb(t.status.unwrap_or_default()),
        spec: spec_from_pb(t.spec.unwrap_or_default())?,
        spec_version: t.spec_version,
        attempt: t.attempt,
        canary: t.canary,
        created_ms: t.created_ms,
        updated_ms: t.updated_ms,
        version: t.version,
    })
}

pub fn role_to_pb(r: NodeRole) -> pb::NodeRole {
    match r {
        NodeRole::Worker => pb::NodeRole::Worker,
        NodeRole::Manager => pb::NodeRole::Manager,
    }
}

pub fn role_from_pb(v: i32) -> NodeRole {
    match pb::NodeRole::try_from(v) {
        Ok(pb::NodeRole::Manager) => NodeRole::Manager,
        _ => NodeRole::Worker,
    }
}

pub fn availability_to_pb(a: Availability) -> pb::Availability {
    match a {
        Availability::Active => pb::Availability::Active,
        Availability::Pause => pb::Availability::Pause,
        Availability::Drain => pb::Availability::Drain,
    }
}

pub fn availability_from_pb(v: i32) -> Result<Availability, ValidationError> {
    match pb::Availability::try_from(v) {
        Ok(pb::Availability::Active) => Ok(Availability::Active),
        Ok(pb::Availability::Pause) => Ok(Availability::Pause),
        Ok(pb::Availability::Drain) => Ok(Availability::Drain),
        Err(_) => Err(ValidationError::new(
            "availability",
            format!("unknown availability {v}"),
        )),
    }
}

fn node_state_to_pb(s: NodeState) -> pb::NodeState {
    match s {
        NodeState::Unknown => pb::NodeState::Unknown,
        NodeState::Ready => pb::NodeState::Ready,
        NodeState::Down => pb::NodeState::Down,
    }
}

fn node_state_from_pb(v: i32) -> NodeState {
    match pb::NodeState::try_from(v) {
        Ok(pb::NodeState::Ready) => NodeState::Ready,
        Ok(pb::NodeState::Down) => NodeState::Down,
        _ => NodeState::Unknown,
    }
}

pub fn node_to_pb(n: &Node, reserved: Resources, manager: Option<pb::ManagerStatus>) -> pb::Node {
    pb::Node {
        id: n.id.clone(),
        name: n.name.clone(),
        role: role_to_pb(n.role) as i32,
        availability: availability_to_pb(n.availability) as i32,
        labels: n.labels.clone().into_iter().collect(),
        addr: n.addr.clone(),
        resources: Some(resources_to_pb(n.resources)),
        state: node_state_to_pb(n.state) as i32,
        message: n.message.clone(),
        platform: Some(platform_to_pb(&n.platform)),
        manager,
        created_ms: n.created_ms,
        updated_ms: n.updated_ms,
        version: n.version,
        reserved: Some(resources_to_pb(reserved)),
        warren_version: n.warren_version.clone(),
        subnet: n.subnet.clone().unwrap_or_default(),
    }
}

/// For clients: the node back from the wire, with what only the API adds.
pub fn node_from_pb(n: pb::Node) -> (Node, Resources, Option<pb::ManagerStatus>) {
    let node = Node {
        id: n.id,
        name: n.name,
        role: role_from_pb(n.role),
        availability: availability_from_pb(n.availability).unwrap_or_default(),
        labels: n.labels.into_iter().collect(),
        addr: n.addr,
        resources: resources_from_pb(n.resources),
        platform: platform_from_pb(n.platform),
        state: node_state_from_pb(n.state),
        message: n.message,
        raft_id: n.manager.as_ref().map(|m| m.raft_id).unwrap_or(0),
        subnet: (!n.subnet.is_empty()).then_some(n.subnet),
        warren_version: n.warren_version,
        created_ms: n.created_ms,
        updated_ms: n.updated_ms,
        version: n.version,
    };
    (node, resources_from_pb(n.reserved), n.manager)
}

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

pub fn object_kind_to_pb(k: ObjectKind) -> pb::ObjectKind {
    match k {
        ObjectKind::Cluster => pb::ObjectKind::Cluster,
        ObjectKind::Node => pb::ObjectKind::Node,
        ObjectKind::Service => pb::ObjectKind::Service,
        ObjectKind::Task => pb::ObjectKind::Task,
        ObjectKind::Secret => pb::ObjectKind::Secret,
        ObjectKind::Volume => pb::ObjectKind::Volume,
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
    }
}

pub fn endpoints_to_pb(s: &model::ServiceEndpoints) -> pb::ServiceEndpoints {
    pb::ServiceEndpoints {
        id: s.id.clone(),
        name: s.name.clone(),
        dp_id: s.dp_id,
        vip: s.vip.map(|v| v.to_string()).unwrap_or_default(),
        endpoint_mode: match s.endpoint_mode {
            EndpointMode::Vip => pb::EndpointMode::Vip,
            EndpointMode::Dnsrr => pb::EndpointMode::Dnsrr,
        } as i32,
        ports: s.ports.iter().map(port_to_pb).collect(),
        canary_weight: u32::from(s.canary_weight),
        rate_limit: s.rate_limit.map(|r| pb::RateLimit {
            per_sec: r.per_sec,
            burst: r.burst,
        }),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| pb::Endpoint {
                task_id: e.task_id.clone(),
                slot: e.slot,
                addr: e.addr.to_string(),
                node_id: e.node_id.clone(),
                canary: e.canary,
                ready: e.ready,
            })
            .collect(),
    }
}

/// Agent side; endpoints with an unreadable address are dropped.
pub fn endpoints_from_pb(s: pb::ServiceEndpoints) -> Result<model::ServiceEndpoints, ValidationError> {
    Ok(model::ServiceEndpoints {
        id: s.id,
        name: s.name,
        dp_id: s.dp_id,
        vip: s.vip.parse().ok(),
        endpoint_mode: match pb::EndpointMode::try_from(s.endpoint_mode) {
            Ok(pb::EndpointMode::Dnsrr) => EndpointMode::Dnsrr,
            _ => EndpointMode::Vip,
        },
        ports: s.ports.into_iter().map(port_from_pb).collect::<Result<_, _>>()?,
        canary_weight: s.canary_weight.min(100) as u8,
        rate_limit: s.rate_limit.map(|r| RateLimit {
            per_sec: r.per_sec,
            burst: r.burst,
        }),
        endpoints: s
            .endpoints
            .into_iter()
            .filter_map(|e| {
                Some(model::Endpoint {
                    addr: e.addr.parse().ok()?,
                    task_id: e.task_id,
                    slot: e.slot,
                    node_id: e.node_id,
                    canary: e.canary,
                    ready: e.ready,
                })
            })
            .collect(),
    })
}

/// A node's data-plane status as the API shows it (None: `--dataplane none`).
pub fn dataplane_to_pb(node_name: &str, st: Option<&crate::dataplane::DataplaneStatus>) -> pb::NodeDataplane {
    let Some(st) = st else {
        return pb::NodeDataplane {
            node_name: node_name.to_string(),
            ..Default::default()
        };
    };
    pb::NodeDataplane {
        node_name: node_name.to_string(),
        enabled: true,
        programs: st
            .programs
            .iter()
            .map(|p| pb::DataplaneProgram {
                program: p.program.clone(),
                target: p.target.clone(),
                adopted: p.adopted,
            })
            .collect(),
        maps: st
            .maps
            .iter()
            .map(|m| pb::DataplaneMap {
                name: m.name.clone(),
                entries: m.entries,
                capacity: m.capacity,
            })
            .collect(),
        sock_destroy: st.sock_destroy,
        services: st.services.len() as u64,
        backends: st.backends.len() as u64,
        connections: st.services.iter().map(|s| s.connections).sum(),
        drops: st.services.iter().map(|s| s.drops.total()).sum(),
        errors: st.errors.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let spec = ServiceSpec {
            image: "reg:5000/app:1".into(),
            mode: ServiceMode::Replicated { replicas: 3 },
            env: vec!["A=1".into()],
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "true".into()],
            constraints: vec![Constraint::parse("c", "node.labels.zone==edge").unwrap()],
            reservations: Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 64 << 20,
            },
            limits: Resources {
                nano_cpus: 1_000_000_000,
                memory_bytes: 128 << 20,
            },
            ports: vec![PortConfig {
                published: 8080,
                target: 80,
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
            }],
            labels: [("a".to_string(), "b".to_string())].into_iter().collect(),
            workdir: "/srv".into(),
            user: "1000:1000".into(),
            mounts: vec![
                Mount::parse("m", "type=volume,source=data,target=/data").unwrap(),
                Mount::parse("m", "type=bind,source=/etc,target=/host-etc,ro").unwrap(),
                Mount::parse("m", "type=tmpfs,target=/scratch").unwrap(),
            ],
            secrets: vec![SecretRef::parse("s", "source=db,target=/etc/db").unwrap()],
            health: Some(HealthCheck {
                test: HealthTest::Http {
                    port: 8080,
                    path: "/healthz".into(),
                },
                interval_ms: 1000,
                timeout_ms: 500,
                retries: 2,
                start_period_ms: 3000,
            }),
            restart: RestartPolicy {
                condition: RestartCondition::OnFailure,
                delay_ms: 100,
                max_attempts: 3,
            },
            stop_signal: "SIGQUIT".into(),
            stop_grace_ms: 0,
            endpoint_mode: EndpointMode::Dnsrr,
            rate_limit: Some(RateLimit {
                per_sec: 50,
                burst: 100,
            }),
        };
        assert_eq!(spec_from_pb(spec_to_pb(&spec)).unwrap(), spec);
        for test in [
            HealthTest::Cmd("true".into()),
            HealthTest::Tcp { port: 7 },
            HealthTest::Disabled,
        ] {
            let mut s = spec.clone();
            s.health = Some(HealthCheck::new(test));
            assert_eq!(spec_from_pb(spec_to_pb(&s)).unwrap(), s);
        }
    }

    #[test]
    fn replicas_on_a_global_service_are_refused() {
        let p = pb::ServiceSpec {
            image: "x".into(),
            mode: pb::ServiceMode::Global as i32,
            replicas: 2,
            ..Default::default()
        };
        assert_eq!(spec_from_pb(p).unwrap_err().field, "replicas");
    }

    #[test]
    fn bad_wire_values_name_their_field() {
        let p = pb::ServiceSpec {
            image: "x".into(),
            constraints: vec!["bogus".into()],
            ..Default::default()
        };
        assert_eq!(spec_from_pb(p).unwrap_err().field, "constraint");
        let p = pb::ServiceSpec {
            image: "x".into(),
            ports: vec![pb::PortConfig {
                published: 70000,
                target: 80,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(spec_from_pb(p).unwrap_err().field, "publish");
        let p = pb::ServiceSpec {
            image: "x".into(),
            mode: 7,
            ..Default::default()
        };
        assert_eq!(spec_from_pb(p).unwrap_err().field, "mode");
    }

    #[test]
    fn task_status_keeps_the_exit_code_presence() {
        let s = TaskStatus {
            state: TaskState::Failed,
            exit_code: Some(0),
            ..Default::default()
        };
        assert_eq!(task_status_from_pb(task_status_to_pb(&s)), s);
        let s = TaskStatus::default();
        assert_eq!(task_status_from_pb(task_status_to_pb(&s)).exit_code, None);
    }
}
