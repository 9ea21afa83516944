//! `warren service ...`: build the spec from flags (validating it first, so bad
//! input fails before anything is sent), call the API, print what it answers.

use super::args::{Format, ModeArg, ServiceCmd, SpecArgs};
use super::client::{call, Client};
use super::render::services::{ServiceView, TaskView};
use super::render::{self, emit, error_line, json, line, Reported};
use crate::model::{
    self, parse_cpus, parse_key_value, parse_publish, parse_size, Constraint, ServiceMode, ServiceSpec,
};
use crate::wire::convert;
use anyhow::{anyhow, bail, Result};
use warren_proto::v1 as pb;

fn v(e: model::ValidationError) -> anyhow::Error {
    anyhow!("{e}")
}

/// Applies the flags of `create`/`update` to a spec.
fn apply_spec_args(spec: &mut ServiceSpec, a: &SpecArgs) -> Result<()> {
    if let Some(image) = &a.image {
        spec.image = image.clone();
    }
    if let Some(r) = a.replicas {
        match &mut spec.mode {
            ServiceMode::Replicated { replicas } => *replicas = r,
            ServiceMode::Global => {
                bail!("--replicas: a global service runs one task per eligible node; replicas cannot be set")
            }
        }
    }
    for e in &a.env {
        let (k, _) = parse_key_value("--env", e).map_err(v)?;
        spec.env
            .retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k.as_str()));
        spec.env.push(e.clone());
    }
    for c in &a.constraints {
        let c = Constraint::parse("--constraint", c).map_err(v)?;
        if !spec.constraints.contains(&c) {
            spec.constraints.push(c);
        }
    }
    if let Some(s) = &a.reserve_cpu {
        spec.reservations.nano_cpus = parse_cpus("--reserve-cpu", s).map_err(v)?;
    }
    if let Some(s) = &a.reserve_memory {
        spec.reservations.memory_bytes = parse_size("--reserve-memory", s).map_err(v)?;
    }
    if let Some(s) = &a.limit_cpu {
        spec.limits.nano_cpus = parse_cpus("--limit-cpu", s).map_err(v)?;
    }
    if let Some(s) = &a.limit_memory {
        spec.limits.memory_bytes = parse_size("--limit-memory", s).map_err(v)?;
    }
    for p in &a.publish {
        let p = parse_publish("--publish", p).map_err(v)?;
        spec.ports
            .retain(|x| !(x.published == p.published && x.protocol == p.protocol));
        spec.ports.push(p);
    }
    for l in &a.labels {
        let (k, val) = parse_key_value("--label", l).map_err(v)?;
        spec.labels.insert(k, val);
    }
    if let Some(w) = &a.workdir {
        spec.workdir = w.clone();
    }
    if let Some(u) = &a.user {
        spec.user = u.clone();
    }
    for m in &a.mounts {
        let m = model::Mount::parse("--mount", m).map_err(v)?;
        spec.mounts.retain(|x| x.target != m.target);
        spec.mounts.push(m);
    }
    for s in &a.secrets {
        let s = model::SecretRef::parse("--secret", s).map_err(v)?;
        spec.secrets.retain(|x| x.target != s.target);
        spec.secrets.push(s);
    }
    let test = if a.no_healthcheck {
        Some(model::HealthTest::Disabled)
    } else if let Some(c) = &a.health_cmd {
        Some(model::HealthTest::Cmd(c.clone()))
    } else if let Some(h) = &a.health_http {
        Some(model::parse_health_http("--health-http", h).map_err(v)?)
    } else {
        a.health_tcp.map(|port| model::HealthTest::Tcp { port })
    };
    if let Some(test) = test {
        let mut h = spec
            .health
            .clone()
            .unwrap_or_else(|| model::HealthCheck::new(test.clone()));
        h.test = test;
        spec.health = Some(h);
    }
    let tuning_given = a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_retries.is_some()
        || a.health_start_period.is_some();
    if tuning_given {
        let h = spec.health.as_mut().ok_or_else(|| {
            anyhow!("--health-interval/--health-timeout/--health-retries/--health-start-period need --health-cmd, --health-http or --health-tcp")
        })?;
        if let Some(d) = &a.health_interval {
            h.interval_ms = model::parse_duration("--health-interval", d).map_err(v)?.as_millis() as u64;
        }
        if let Some(d) = &a.health_timeout {
            h.timeout_ms = model::parse_duration("--health-timeout", d).map_err(v)?.as_millis() as u64;
        }
        if let Some(r) = a.health_retries {
            h.retries = r;
        }
        if let Some(d) = &a.health_start_period {
            h.start_period_ms = model::parse_duration("--health-start-period", d)
                .map_err(v)?
                .as_millis() as u64;
        }
    }
    if let Some(c) = &a.restart_condition {
        spec.restart.condition = model::RestartCondition::parse("--restart-condition", c).map_err(v)?;
    }
    if let Some(d) = &a.restart_delay {
        spec.restart.delay_ms = model::parse_duration("--restart-delay", d).map_err(v)?.as_millis() as u64;
    }
    if let Some(n) = a.restart_max_attempts {
        spec.restart.max_attempts = n;
    }
    if let Some(s) = &a.stop_signal {
        spec.stop_signal = model::parse_signal("--stop-signal", s).map_err(v)?;
    }
    if let Some(m) = &a.endpoint_mode {
        spec.endpoint_mode = model::EndpointMode::parse("--endpoint-mode", m).map_err(v)?;
    }
    match (&a.rate_limit, a.rate_burst) {
        (Some(r), _) if r == "none" || r == "0" => spec.rate_limit = None,
        (Some(r), burst) => {
            let per_sec = model::parse_rate("--rate-limit", r).map_err(v)?;
            let burst = burst.or(spec.rate_limit.map(|l| l.burst)).unwrap_or(per_sec);
            spec.rate_limit = Some(model::RateLimit { per_sec, burst });
        }
        (None, Some(burst)) => match &mut spec.rate_limit {
            Some(l) => l.burst = burst,
            None => bail!("--rate-burst needs --rate-limit"),
        },
        (None, None) => {}
    }
    if let Some(d) = &a.stop_grace_period {
        spec.stop_grace_ms = model::parse_duration("--stop-grace-period", d).map_err(v)?.as_millis() as u64;
    }
    super::rollout::apply(spec, &a.rollout)?;
    // Same checks as the server, with the CLI's flag names, before anything is sent.
    spec.validate().map_err(|e| anyhow!("--{e}"))?;
    Ok(())
}

pub async fn run(c: &mut Client, cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Create {
            name,
            spec: a,
            mode,
            command,
            quiet,
        } => {
            model::validate_name("name", &name).map_err(v)?;
            let mut spec = ServiceSpec {
                mode: match mode {
                    ModeArg::Replicated => ServiceMode::Replicated { replicas: 1 },
                    ModeArg::Global => ServiceMode::Global,
                },
                ..Default::default()
            };
            if a.image.is_none() {
                bail!("--image: an image is required");
            }
            apply_spec_args(&mut spec, &a)?;
            if !command.is_empty() {
                spec.command = command;
            }
            let svc = call(c.create_service(pb::CreateServiceRequest {
                name,
                spec: Some(convert::spec_to_pb(&spec)),
            }))
            .await?;
            // Docker prints the ID either way; -q is accepted for scripts that pass it.
            let _ = quiet;
            line(&svc.id)?;
        }
        ServiceCmd::Ls { format, quiet } => {
            let list = call(c.list_services(pb::ListServicesRequest {})).await?;
            let views = list
                .services
                .into_iter()
                .map(ServiceView::from_pb)
                .collect::<Result<Vec<_>>>()?;
            if quiet {
                for s in views {
                    line(&s.service.id)?;
                }
            } else if format == Format::Json {
                emit(&json(&views)?)?;
            } else {
                emit(&render::services::services_table(&views))?;
            }
        }
        ServiceCmd::Inspect { service, format } => {
            let s = ServiceView::from_pb(call(c.get_service(pb::GetServiceRequest { service })).await?)?;
            if format == Format::Json {
                emit(&json(&s)?)?;
            } else {
                emit(&render::services::service_text(&s))?;
            }
        }
        ServiceCmd::Ps { service, format } => {
            let svc = call(c.get_service(pb::GetServiceRequest {
                service: service.clone(),
            }))
            .await?;
            let tasks = call(c.list_tasks(pb::ListTasksRequest {
                service: svc.id.clone(),
                node: String::new(),
            }))
            .await?;
            let names = super::node::names(c).await?;
            let views = tasks
                .tasks
                .into_iter()
                .map(|t| TaskView::from_pb(t, &names))
                .collect::<Result<Vec<_>>>()?;
            if format == Format::Json {
                emit(&json(&views)?)?;
            } else {
                emit(&render::services::tasks_table(&views))?;
            }
        }
        ServiceCmd::Scale { services } => {
            let mut parsed = Vec::new();
            for s in &services {
                let (name, n) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow!("invalid scale {s:?}: expected NAME=REPLICAS"))?;
                let n: u64 = n
                    .parse()
                    .map_err(|_| anyhow!("invalid scale {s:?}: {n:?} is not a number of replicas"))?;
                parsed.push((name.to_string(), n));
            }
            // Output lost to a closed pipe does not stop the changes.
            let mut printed = Ok(());
            for (name, n) in parsed {
                call(c.scale_service(pb::ScaleServiceRequest {
                    service: name.clone(),
                    replicas: n,
                }))
                .await?;
                printed = printed.and(line(&format!("{name} scaled to {n}")));
            }
            printed?;
        }
        ServiceCmd::Update {
            service,
            spec: a,
            env_rm,
            constraint_rm,
            publish_rm,
            label_rm,
            mount_rm,
            secret_rm,
            canary_weight,
            force,
            rollback,
            detach,
        } => {
            if rollback {
                let svc = call(c.rollback_service(pb::RollbackServiceRequest {
                    service: service.clone(),
                }))
                .await?;
                if !detach {
                    super::rollout::follow(c, svc, true).await?;
                }
                line(&service)?;
                return Ok(());
            }
            if canary_weight.is_some_and(|w| w > 100) {
                bail!(
                    "--canary-weight: {} is not between 0 and 100",
                    canary_weight.unwrap_or(0)
                );
            }
            let current = call(c.get_service(pb::GetServiceRequest {
                service: service.clone(),
            }))
            .await?;
            let version = current.version;
            let mut spec = convert::spec_from_pb(current.spec.unwrap_or_default()).map_err(v)?;
            for k in &env_rm {
                spec.env
                    .retain(|e| e.split_once('=').map(|(ek, _)| ek).unwrap_or(e) != k);
            }
            for cr in &constraint_rm {
                let cr = Constraint::parse("--constraint-rm", cr).map_err(v)?;
                spec.constraints.retain(|x| *x != cr);
            }
            for p in &publish_rm {
                let port: u16 = p
                    .split('/')
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| anyhow!("--publish-rm: invalid port {p:?}"))?;
                spec.ports.retain(|x| x.published != port);
            }
            for k in &label_rm {
                spec.labels.remove(k);
            }
            for t in &mount_rm {
                if !spec.mounts.iter().any(|m| &m.target == t) {
                    bail!("--mount-rm: the service has no mount at {t}");
                }
                spec.mounts.retain(|m| &m.target != t);
            }
            for n in &secret_rm {
                if !spec.secrets.iter().any(|s| &s.name == n) {
                    bail!("--secret-rm: the service does not use secret {n}");
                }
                spec.secrets.retain(|s| &s.name != n);
            }
            apply_spec_args(&mut spec, &a)?;
            if force {
                spec.force_update += 1;
            }
            let svc = call(c.update_service(pb::UpdateServiceRequest {
                service: current.id,
                version,
                spec: Some(convert::spec_to_pb(&spec)),
                canary_weight,
            }))
            .await?;
            // Only a new spec version starts an update to follow (a canary or a
            // scale does not).
            if !detach && svc.spec_version != current.spec_version {
                super::rollout::follow(c, svc, false).await?;
            }
            line(&service)?;
        }
        ServiceCmd::Promote { service } => {
            call(c.promote_service(pb::PromoteServiceRequest {
                service: service.clone(),
            }))
            .await?;
            line(&format!("{service}: the canary is now the stable version"))?;
        }
        ServiceCmd::Rollback { service, detach } => {
            let svc = call(c.rollback_service(pb::RollbackServiceRequest {
                service: service.clone(),
            }))
            .await?;
            if !detach {
                super::rollout::follow(c, svc, true).await?;
            }
            line(&format!("{service}: rolled back"))?;
        }
        ServiceCmd::Logs { service, opts } => {
            let stream = call(c.service_logs(pb::ServiceLogsRequest {
                service,
                follow: opts.follow,
                tail: opts.tail.unwrap_or(0),
            }))
            .await?;
            super::task::print_logs(stream, true).await?;
        }
        ServiceCmd::Rm { services } => {
            // Each service on its own, as Docker does: one line per failure, then a
            // failed exit.
            let (mut failed, mut printed) = (false, Ok(()));
            for s in services {
                match c.remove_service(pb::RemoveServiceRequest { service: s.clone() }).await {
                    Ok(_) => printed = printed.and(line(&s)),
                    Err(e) => {
                        error_line(&format!("error: {}", e.message()));
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(Reported.into());
            }
            printed?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_flags_replace_by_key_and_validate() {
        let mut spec = ServiceSpec {
            image: "a".into(),
            env: vec!["A=1".into(), "B=2".into()],
            ..Default::default()
        };
        let args = SpecArgs {
            env: vec!["A=3".into()],
            publish: vec!["8080:80".into(), "8080:81".into()],
            replicas: Some(4),
            ..Default::default()
        };
        apply_spec_args(&mut spec, &args).unwrap();
        assert_eq!(spec.env, vec!["B=2".to_string(), "A=3".to_string()]);
        assert_eq!(spec.ports.len(), 1);
        assert_eq!(spec.ports[0].target, 81);
        assert_eq!(spec.replicas(), Some(4));

        let bad = SpecArgs {
            reserve_memory: Some("lots".into()),
            ..Default::default()
        };
        let e = apply_spec_args(&mut spec, &bad).unwrap_err().to_string();
        assert!(e.starts_with("--reserve-memory: invalid size"), "{e}");

        let mut global = ServiceSpec {
            image: "a".into(),
            mode: ServiceMode::Global,
            ..Default::default()
        };
        let e = apply_spec_args(
            &mut global,
            &SpecArgs {
                replicas: Some(2),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--replicas:"), "{e}");
    }
}
