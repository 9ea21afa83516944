//! Services on the wire: specs (ports, mounts, health checks, restart policy,
//! canary settings) in both directions, validated from the wire with the field
//! named, and the service view with its replica counts.

use super::container::{container_from_pb, container_to_pb};
use super::node::{resources_from_pb, resources_to_pb};
use crate::model::{
    Canary, CanarySteps, ConfigRef, Constraint, EndpointLocality, EndpointMode, FailureAction, HealthCheck, HealthTest,
    Mount, MountKind, PortConfig, Protocol, PublishMode, RateLimit, Release, RestartCondition, RestartPolicy,
    SecretRef, Service, ServiceMode, ServiceSpec, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus, UpdateStrategy,
    ValidationError,
};
use warren_proto::v1 as pb;

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
        configs: s
            .configs
            .iter()
            .map(|r| pb::ConfigReference {
                name: r.name.clone(),
                target: r.target.clone(),
                mode: r.mode,
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
        drain_timeout_ms: Some(s.drain_timeout_ms),
        reschedule_after_ms: Some(s.reschedule_after_ms),
        endpoint_mode: match s.endpoint_mode {
            EndpointMode::Vip => pb::EndpointMode::Vip,
            EndpointMode::Dnsrr => pb::EndpointMode::Dnsrr,
        } as i32,
        endpoint_locality: locality_to_pb(s.endpoint_locality),
        rate_limit: s.rate_limit.map(|r| pb::RateLimit {
            per_sec: r.per_sec,
            burst: r.burst,
        }),
        container: container_to_pb(&s.container),
        update: Some(update_config_to_pb(&s.update)),
        rollback: Some(update_config_to_pb(&s.rollback)),
        force_update: s.force_update,
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
    let configs = s
        .configs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            crate::model::validate_name(&format!("configs[{i}]"), &r.name)?;
            let target = if r.target.is_empty() {
                format!("/{}", r.name)
            } else {
                r.target
            };
            if !target.starts_with('/') {
                return Err(ValidationError::new(
                    format!("configs[{i}].target"),
                    format!("{target:?} is not an absolute path"),
                ));
            }
            if r.mode > 0o7777 {
                return Err(ValidationError::new(
                    format!("configs[{i}].mode"),
                    format!("{:o} is not a file mode", r.mode),
                ));
            }
            Ok(ConfigRef {
                name: r.name,
                target,
                mode: if r.mode == 0 { 0o444 } else { r.mode },
            })
        })
        .collect::<Result<Vec<_>, ValidationError>>()?;
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
        configs,
        health: s.health.map(health_from_pb).transpose()?,
        restart,
        stop_signal: s.stop_signal,
        stop_grace_ms: s.stop_grace_ms.unwrap_or(10_000),
        drain_timeout_ms: s.drain_timeout_ms.unwrap_or(crate::model::DEFAULT_DRAIN_MS),
        reschedule_after_ms: s
            .reschedule_after_ms
            .unwrap_or(crate::model::DEFAULT_RESCHEDULE_AFTER_MS),
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
        endpoint_locality: locality_from_pb(s.endpoint_locality).ok_or_else(|| {
            ValidationError::new(
                "endpoint-locality",
                format!("unknown endpoint locality {}", s.endpoint_locality),
            )
        })?,
        rate_limit: s.rate_limit.map(|r| RateLimit {
            per_sec: r.per_sec,
            burst: r.burst,
        }),
        container: container_from_pb(s.container)?,
        update: s
            .update
            .map(|c| update_config_from_pb("update", c))
            .transpose()?
            .unwrap_or_default(),
        rollback: s
            .rollback
            .map(|c| update_config_from_pb("rollback", c))
            .transpose()?
            .unwrap_or_default(),
        force_update: s.force_update,
    };
    spec.validate()?;
    Ok(spec)
}

pub fn locality_to_pb(l: EndpointLocality) -> i32 {
    let pb = match l {
        EndpointLocality::Any => pb::EndpointLocality::Any,
        EndpointLocality::PreferLocal => pb::EndpointLocality::PreferLocal,
    };
    pb as i32
}

/// None for a value this version does not know.
pub fn locality_from_pb(v: i32) -> Option<EndpointLocality> {
    match pb::EndpointLocality::try_from(v).ok()? {
        pb::EndpointLocality::Any => Some(EndpointLocality::Any),
        pb::EndpointLocality::PreferLocal => Some(EndpointLocality::PreferLocal),
    }
}

pub fn update_config_to_pb(c: &UpdateConfig) -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: Some(c.parallelism),
        delay_ms: c.delay_ms,
        failure_action: match c.failure_action {
            FailureAction::Pause => pb::UpdateFailureAction::Pause,
            FailureAction::Continue => pb::UpdateFailureAction::Continue,
            FailureAction::Rollback => pb::UpdateFailureAction::Rollback,
        } as i32,
        monitor_ms: Some(c.monitor_ms),
        max_failure_ratio: c.max_failure_ratio,
        order: match c.order {
            None => pb::UpdateOrder::Auto,
            Some(UpdateOrder::StartFirst) => pb::UpdateOrder::StartFirst,
            Some(UpdateOrder::StopFirst) => pb::UpdateOrder::StopFirst,
        } as i32,
        strategy: match c.strategy {
            UpdateStrategy::Rolling => pb::UpdateStrategy::Rolling,
            UpdateStrategy::BlueGreen => pb::UpdateStrategy::BlueGreen,
            UpdateStrategy::Canary => pb::UpdateStrategy::Canary,
        } as i32,
        blue_green_hold_ms: Some(c.blue_green_hold_ms),
        canary_steps: c.canary_steps.as_slice().iter().map(|w| u32::from(*w)).collect(),
        canary_interval_ms: Some(c.canary_interval_ms),
        canary_max_failure_ratio: Some(c.canary_max_failure_ratio),
    }
}

/// `field` is the flag prefix (`update` or `rollback`).
pub fn update_config_from_pb(field: &str, c: pb::UpdateConfig) -> Result<UpdateConfig, ValidationError> {
    let defaults = UpdateConfig::default();
    Ok(UpdateConfig {
        parallelism: c.parallelism.unwrap_or(defaults.parallelism),
        delay_ms: c.delay_ms,
        failure_action: match pb::UpdateFailureAction::try_from(c.failure_action) {
            Ok(pb::UpdateFailureAction::Pause) => FailureAction::Pause,
            Ok(pb::UpdateFailureAction::Continue) => FailureAction::Continue,
            Ok(pb::UpdateFailureAction::Rollback) => FailureAction::Rollback,
            Err(_) => {
                return Err(ValidationError::new(
                    format!("{field}-failure-action"),
                    format!("unknown failure action {}", c.failure_action),
                ))
            }
        },
        monitor_ms: c.monitor_ms.unwrap_or(defaults.monitor_ms),
        max_failure_ratio: c.max_failure_ratio,
        order: match pb::UpdateOrder::try_from(c.order) {
            Ok(pb::UpdateOrder::Auto) => None,
            Ok(pb::UpdateOrder::StartFirst) => Some(UpdateOrder::StartFirst),
            Ok(pb::UpdateOrder::StopFirst) => Some(UpdateOrder::StopFirst),
            Err(_) => {
                return Err(ValidationError::new(
                    format!("{field}-order"),
                    format!("unknown update order {}", c.order),
                ))
            }
        },
        strategy: match pb::UpdateStrategy::try_from(c.strategy) {
            Ok(pb::UpdateStrategy::Rolling) => UpdateStrategy::Rolling,
            Ok(pb::UpdateStrategy::BlueGreen) => UpdateStrategy::BlueGreen,
            Ok(pb::UpdateStrategy::Canary) => UpdateStrategy::Canary,
            Err(_) => {
                return Err(ValidationError::new(
                    "update-strategy",
                    format!("unknown update strategy {}", c.strategy),
                ))
            }
        },
        blue_green_hold_ms: c.blue_green_hold_ms.unwrap_or(defaults.blue_green_hold_ms),
        canary_steps: if c.canary_steps.is_empty() {
            defaults.canary_steps
        } else {
            let weights = c
                .canary_steps
                .iter()
                .map(|w| u8::try_from(*w).unwrap_or(u8::MAX))
                .collect::<Vec<u8>>();
            CanarySteps::from_weights("canary-steps", &weights)?
        },
        canary_interval_ms: c.canary_interval_ms.unwrap_or(defaults.canary_interval_ms),
        canary_max_failure_ratio: c.canary_max_failure_ratio.unwrap_or(defaults.canary_max_failure_ratio),
    })
}

fn update_status_to_pb(u: &UpdateStatus) -> pb::UpdateStatus {
    pb::UpdateStatus {
        state: u.state.as_str().into(),
        spec_version: u.spec_version,
        updated: u.updated,
        total: u.total,
        failures: u.failures,
        message: u.message.clone(),
        started_ms: u.started_ms,
        completed_ms: u.completed_ms,
        config: Some(update_config_to_pb(&u.config)),
    }
}

fn update_status_from_pb(u: pb::UpdateStatus) -> Result<UpdateStatus, ValidationError> {
    let state = [
        UpdateState::Updating,
        UpdateState::Paused,
        UpdateState::Completed,
        UpdateState::RollingBack,
        UpdateState::RollbackPaused,
        UpdateState::RollbackCompleted,
    ]
    .into_iter()
    .find(|s| s.as_str() == u.state)
    .ok_or_else(|| ValidationError::new("update_status", format!("unknown update state {:?}", u.state)))?;
    let config = update_config_from_pb("update", u.config.unwrap_or_default())?;
    let mut status = UpdateStatus::new(state, u.spec_version, config, u.started_ms, u.message);
    status.updated = u.updated;
    status.total = u.total;
    status.failures = u.failures;
    status.completed_ms = u.completed_ms;
    Ok(status)
}

pub(super) fn port_to_pb(p: &PortConfig) -> pb::PortConfig {
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

pub(super) fn port_from_pb(p: pb::PortConfig) -> Result<PortConfig, ValidationError> {
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
            release_strategy: k
                .release
                .as_ref()
                .map_or_else(String::new, |r| r.strategy.as_str().to_string()),
            release_step: k.release.as_ref().map_or(0, |r| r.step),
        }),
        has_previous_spec: s.previous_spec.is_some(),
        update_status: s.update_status.as_ref().map(update_status_to_pb),
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
            let spec = spec_from_pb(c.spec.unwrap_or_default())?;
            // A client sees a release's strategy and step; its timing and
            // counters stay on the managers.
            let release = match c.release_strategy.as_str() {
                "" => None,
                s => Some(Release {
                    strategy: UpdateStrategy::parse("release_strategy", s)?,
                    config: spec.update,
                    step: c.release_step,
                    step_ms: 0,
                    baseline_canary: Default::default(),
                    baseline_stable: Default::default(),
                }),
            };
            Some(Canary {
                spec,
                spec_version: c.spec_version,
                weight: c.weight.min(100) as u8,
                release,
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
            update_status: s.update_status.map(update_status_from_pb).transpose()?,
        },
        counts,
    ))
}
