//! `warren service ...`: build the spec from flags (validating it first, so bad
//! input fails before anything is sent), call the API, print what it answers.

use super::args::{ContainerArgs, ContainerRmArgs, Format, ModeArg, ServiceCmd, SpecArgs};
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
    if let Some(l) = &a.endpoint_locality {
        spec.endpoint_locality = model::EndpointLocality::parse("--endpoint-locality", l).map_err(v)?;
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
    if let Some(d) = &a.drain_timeout {
        spec.drain_timeout_ms = model::parse_duration("--drain-timeout", d).map_err(v)?.as_millis() as u64;
    }
    if let Some(d) = &a.reschedule_after {
        spec.reschedule_after_ms = model::parse_duration("--reschedule-after", d).map_err(v)?.as_millis() as u64;
    }
    apply_container_args(spec, &a.container)?;
    super::rollout::apply(spec, &a.rollout)?;
    // Same checks as the server, with the CLI's flag names, before anything is sent.
    spec.validate().map_err(|e| anyhow!("--{e}"))?;
    Ok(())
}

// Swarm's container flags and create syntax (issue 10, item 5).

/// Words of `--entrypoint` and `--args`, split as Docker does (a shell's quoting).
fn split_words(flag: &str, s: &str) -> Result<Vec<String>> {
    shlex::split(s).ok_or_else(|| anyhow!("{flag}: unbalanced quotes in {s:?}"))
}

/// Applies the container flags shared by create and update: values replace, lists
/// add (or replace by key); `--cap-add X` also takes X off the dropped list and
/// `--cap-drop X` off the added one, as `docker service update` does.
fn apply_container_args(spec: &mut ServiceSpec, a: &ContainerArgs) -> Result<()> {
    if let Some(e) = &a.entrypoint {
        spec.command = split_words("--entrypoint", e)?;
    }
    let o = &mut spec.container;
    if let Some(h) = &a.hostname {
        o.hostname = h.clone();
    }
    if let Some(b) = a.init {
        o.init = b;
    }
    if let Some(b) = a.read_only {
        o.read_only = b;
    }
    for c in &a.cap_add {
        let c = model::parse_capability("--cap-add", c).map_err(v)?;
        o.cap_drop.retain(|x| *x != c);
        if !o.cap_add.contains(&c) {
            o.cap_add.push(c);
        }
    }
    for c in &a.cap_drop {
        let c = model::parse_capability("--cap-drop", c).map_err(v)?;
        o.cap_add.retain(|x| *x != c);
        if !o.cap_drop.contains(&c) {
            o.cap_drop.push(c);
        }
    }
    for u in &a.ulimits {
        let u = model::Ulimit::parse("--ulimit", u).map_err(v)?;
        o.ulimits.retain(|x| x.name != u.name);
        o.ulimits.push(u);
    }
    for kv in &a.sysctls {
        let (k, val) = model::parse_sysctl("--sysctl", kv).map_err(v)?;
        o.sysctls.insert(k, val);
    }
    if let Some(n) = a.limit_pids {
        o.pids_limit = n;
    }
    for d in &a.dns {
        let d = model::parse_dns("--dns", d).map_err(v)?;
        if !o.dns.contains(&d) {
            o.dns.push(d);
        }
    }
    Ok(())
}

/// The removals of `service update` (`--ulimit-rm`, `--sysctl-rm`, `--dns-rm`) and
/// `--args`.
fn apply_container_rm(spec: &mut ServiceSpec, a: &ContainerRmArgs) -> Result<()> {
    if let Some(args) = &a.args {
        spec.args = split_words("--args", args)?;
    }
    let o = &mut spec.container;
    for n in &a.ulimit_rm {
        let n = n.trim().to_ascii_lowercase();
        if !o.ulimits.iter().any(|u| u.name == n) {
            bail!("--ulimit-rm: the service has no ulimit {n}");
        }
        o.ulimits.retain(|u| u.name != n);
    }
    for k in &a.sysctl_rm {
        let k = k.trim().replace('/', ".");
        if o.sysctls.remove(&k).is_none() {
            bail!("--sysctl-rm: the service sets no sysctl {k}");
        }
    }
    for d in &a.dns_rm {
        let d = model::parse_dns("--dns-rm", d).map_err(v)?;
        if !o.dns.contains(&d) {
            bail!("--dns-rm: the service has no name server {d}");
        }
        o.dns.retain(|x| *x != d);
    }
    Ok(())
}

/// The name and spec of `service create`, from either syntax: `--name NAME IMAGE
/// [COMMAND] [ARG...]` (Swarm's: the words replace the image's CMD) or `NAME --image
/// IMAGE [-- COMMAND...]` (the words replace ENTRYPOINT and CMD, unless
/// `--entrypoint` is given, when they are its arguments).
fn create_spec(
    name: Option<String>,
    first: Option<String>,
    rest: Vec<String>,
    a: &SpecArgs,
    mode: ModeArg,
    env_files: &[std::path::PathBuf],
) -> Result<(String, ServiceSpec)> {
    let mut spec = ServiceSpec {
        mode: match mode {
            ModeArg::Replicated => ServiceMode::Replicated { replicas: 1 },
            ModeArg::Global => ServiceMode::Global,
        },
        ..Default::default()
    };
    let (name, words_are_args) = match (name, first) {
        (Some(name), Some(image)) => {
            if let Some(flag) = &a.image {
                bail!(
                    "--image: the image is given twice, as --image {flag} and as the argument {image}                      after --name; give only one"
                );
            }
            spec.image = image;
            (name, true)
        }
        (Some(name), None) => {
            if a.image.is_none() {
                bail!("IMAGE: an image is required: warren service create --name {name} IMAGE [COMMAND...]");
            }
            (name, true)
        }
        (None, Some(name)) => {
            if a.image.is_none() {
                bail!(
                    "--image: an image is required: warren service create {name} --image IMAGE,                      or with Swarm's syntax warren service create --name NAME {name} [COMMAND...]"
                );
            }
            (name, false)
        }
        (None, None) => {
            bail!("--name: a service name is required: warren service create --name NAME IMAGE [COMMAND...]")
        }
    };
    model::validate_name("name", &name).map_err(|e| anyhow!("--{e}"))?;
    for path in env_files {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow!("--env-file: cannot read {}: {e}", path.display()))?;
        let vars = model::parse_env_file("env-file", &text, |k| std::env::var(k).ok())
            .map_err(|e| anyhow!("--env-file: {}: {}", path.display(), e.message))?;
        for kv in vars {
            let key = kv.split_once('=').map(|(k, _)| k.to_string()).unwrap_or_default();
            spec.env
                .retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(key.as_str()));
            spec.env.push(kv);
        }
    }
    apply_spec_args(&mut spec, a)?;
    if !rest.is_empty() {
        if words_are_args || a.container.entrypoint.is_some() {
            spec.args = rest;
        } else {
            spec.command = rest;
        }
    }
    spec.validate().map_err(|e| anyhow!("--{e}"))?;
    Ok((name, spec))
}

pub async fn run(c: &mut Client, cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Create {
            name,
            first,
            rest,
            spec: a,
            mode,
            env_files,
            quiet,
        } => {
            let (name, spec) = create_spec(name, first, rest, &a, mode, &env_files)?;
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
            container_rm,
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
            apply_container_rm(&mut spec, &container_rm)?;
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
            // scale does not); a blue-green or canary release is one too.
            let release = svc
                .canary
                .as_ref()
                .is_some_and(|c| !c.release_strategy.is_empty() && c.spec_version > current.spec_version);
            if !detach && (svc.spec_version != current.spec_version || release) {
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

    /// `service create` as parsed from a command line, then built into a spec.
    fn create(argv: &[&str]) -> Result<(String, ServiceSpec)> {
        use super::super::args::{Cli, Command};
        use clap::Parser;
        let cli = Cli::try_parse_from(["warren", "service", "create"].iter().chain(argv))?;
        let Command::Service(cmd) = cli.command else {
            unreachable!("parsed as service")
        };
        let ServiceCmd::Create {
            name,
            first,
            rest,
            spec,
            mode,
            env_files,
            ..
        } = *cmd
        else {
            unreachable!("parsed as create")
        };
        create_spec(name, first, rest, &spec, mode, &env_files)
    }

    #[test]
    fn swarm_syntax_takes_the_image_and_its_command_after_the_name() {
        let (name, spec) = create(&[
            "--name",
            "web",
            "--replicas",
            "2",
            "nginx:1",
            "sh",
            "-c",
            "echo hi; exit 0",
        ])
        .unwrap();
        assert_eq!(name, "web");
        assert_eq!(spec.image, "nginx:1");
        assert_eq!(spec.replicas(), Some(2));
        // Swarm's positional command replaces CMD; the image's ENTRYPOINT stays.
        assert_eq!(
            (spec.command.len(), spec.args.clone()),
            (0, vec!["sh".into(), "-c".into(), "echo hi; exit 0".into()])
        );

        let (_, spec) = create(&["--name", "web", "--entrypoint", "/bin/sh -c", "busybox:1", "echo 'a b'"]).unwrap();
        assert_eq!(spec.command, ["/bin/sh", "-c"]);
        assert_eq!(spec.args, ["echo 'a b'"]);

        let (_, spec) = create(&["--name", "web", "--image", "busybox:1"]).unwrap();
        assert_eq!(spec.image, "busybox:1");
    }

    #[test]
    fn the_old_syntax_keeps_working() {
        let (name, spec) = create(&[
            "web",
            "--image",
            "busybox:1",
            "--replicas",
            "3",
            "--",
            "sh",
            "-c",
            "true",
        ])
        .unwrap();
        assert_eq!(
            (name.as_str(), spec.image.as_str(), spec.replicas()),
            ("web", "busybox:1", Some(3))
        );
        // As before: the words after -- replace ENTRYPOINT and CMD.
        assert_eq!(spec.command, ["sh", "-c", "true"]);
        assert!(spec.args.is_empty());
        let (_, spec) = create(&["web", "--image", "busybox:1", "--entrypoint", "/bin/echo", "--", "hi"]).unwrap();
        assert_eq!(
            (spec.command.as_slice(), spec.args.as_slice()),
            (&["/bin/echo".to_string()][..], &["hi".to_string()][..])
        );
    }

    #[test]
    fn mixed_syntaxes_name_the_argument() {
        let e = |argv: &[&str]| create(argv).unwrap_err().to_string();
        let m = e(&["--name", "web", "--image", "a:1", "b:1"]);
        assert!(m.starts_with("--image: the image is given twice"), "{m}");
        let m = e(&["web"]);
        assert!(m.starts_with("--image: an image is required"), "{m}");
        let m = e(&["--name", "web"]);
        assert!(m.starts_with("IMAGE: an image is required"), "{m}");
        let m = e(&["--image", "a:1"]);
        assert!(m.starts_with("--name: a service name is required"), "{m}");
        let m = e(&["--name", "bad name", "a:1"]);
        assert!(m.starts_with("--name: invalid name"), "{m}");
        let m = e(&["--name", "web", "--entrypoint", "sh -c 'x", "a:1"]);
        assert!(m.starts_with("--entrypoint: unbalanced quotes"), "{m}");
    }

    #[test]
    fn container_flags_build_the_options_and_bad_ones_name_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join("app.env");
        std::fs::write(&env_file, "# settings\nFROM_FILE=1\nBOTH=file\n").unwrap();
        let f = env_file.to_str().unwrap();
        #[rustfmt::skip]
        let (_, spec) = create(&[
            "--name", "web", "--hostname", "web-host", "--env-file", f, "--env", "BOTH=flag", "--init", "--read-only",
            "--cap-add", "NET_ADMIN", "--cap-drop", "net_raw,mknod", "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=64",
            "--sysctl", "net.core.somaxconn=512", "--limit-pids", "50", "--dns", "10.0.0.53",
            "--publish", "published=8080,target=80,mode=host,protocol=udp", "busybox:1", "sleep", "1",
        ]).unwrap();
        let o = &spec.container;
        assert_eq!(spec.env, ["FROM_FILE=1", "BOTH=flag"]);
        assert_eq!(o.hostname, "web-host");
        assert!(o.init && o.read_only);
        assert_eq!(o.cap_add, ["CAP_NET_ADMIN"]);
        assert_eq!(o.cap_drop, ["CAP_NET_RAW", "CAP_MKNOD"]);
        let ulimits: Vec<String> = o.ulimits.iter().map(|u| u.to_string()).collect();
        assert_eq!(ulimits, ["nofile=1024:2048", "nproc=64:64"]);
        assert_eq!(o.sysctls["net.core.somaxconn"], "512");
        assert_eq!(o.pids_limit, 50);
        assert_eq!(o.dns, ["10.0.0.53".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(spec.ports[0].to_string(), "mode=host,8080:80/udp");

        let e = |argv: &[&str]| create(argv).unwrap_err().to_string();
        for (flag, value) in [
            ("--cap-add", "NET_WIZARD"),
            ("--cap-drop", "nope"),
            ("--ulimit", "nofile=2048:1024"),
            ("--ulimit", "files=1"),
            ("--sysctl", "kernel.panic=1"),
            ("--dns", "resolver.example"),
            ("--hostname", "under_score"),
            ("--publish", "published=8080,targt=80"),
        ] {
            let m = e(&["--name", "web", flag, value, "busybox:1"]);
            assert!(m.starts_with(&format!("{flag}: ")), "{flag} {value}: {m}");
        }
        let m = e(&["--name", "web", "--env-file", "/nonexistent/app.env", "busybox:1"]);
        assert!(m.starts_with("--env-file: cannot read /nonexistent/app.env"), "{m}");
        std::fs::write(&env_file, "BAD KEY=1\n").unwrap();
        let m = e(&["--name", "web", "--env-file", f, "busybox:1"]);
        assert!(m.starts_with("--env-file: ") && m.contains("line 1"), "{m}");
    }

    #[test]
    fn update_adds_and_removes_container_options() {
        let mut spec = ServiceSpec {
            image: "a".into(),
            ..Default::default()
        };
        let add = ContainerArgs {
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["NET_RAW".into()],
            ulimits: vec!["nofile=10:20".into()],
            sysctls: vec!["net.core.somaxconn=64".into()],
            dns: vec!["10.0.0.53".into(), "10.0.0.54".into()],
            init: Some(true),
            ..Default::default()
        };
        apply_container_args(&mut spec, &add).unwrap();
        // --cap-add of a dropped capability takes it off the dropped list, and back.
        let undo = ContainerArgs {
            cap_add: vec!["NET_RAW".into()],
            cap_drop: vec!["NET_ADMIN".into()],
            init: Some(false),
            ..Default::default()
        };
        apply_container_args(&mut spec, &undo).unwrap();
        assert_eq!(
            (spec.container.cap_add.as_slice(), spec.container.cap_drop.as_slice()),
            (&["CAP_NET_RAW".to_string()][..], &["CAP_NET_ADMIN".to_string()][..])
        );
        assert!(!spec.container.init);
        let rm = ContainerRmArgs {
            args: Some("-c 'sleep 1'".into()),
            ulimit_rm: vec!["nofile".into()],
            sysctl_rm: vec!["net.core.somaxconn".into()],
            dns_rm: vec!["10.0.0.53".into()],
        };
        apply_container_rm(&mut spec, &rm).unwrap();
        assert!(spec.container.ulimits.is_empty() && spec.container.sysctls.is_empty());
        assert_eq!(spec.container.dns, ["10.0.0.54".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(spec.args, ["-c", "sleep 1"]);
        let e = apply_container_rm(
            &mut spec,
            &ContainerRmArgs {
                ulimit_rm: vec!["nofile".into()],
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "--ulimit-rm: the service has no ulimit nofile");
    }
}
