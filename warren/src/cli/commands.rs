//! The client commands: build requests from flags (validating them first, so bad
//! input fails before anything is sent), call the API, print tables or JSON.

use super::args::*;
use super::client::Client;
use super::output::{ago, json, or_dash, short_id, table};
use crate::model::{
    self, format_cpus, format_size, parse_cpus, parse_key_value, parse_publish, parse_size, Constraint, NodeRole,
    PortConfig, Resources, Service, ServiceMode, ServiceSpec, Task,
};
use crate::wire::convert;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use warren_proto::v1 as pb;

/// Turns a gRPC error into the one line the user should see.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let msg = s.message();
    if s.code() == tonic::Code::Unavailable && (msg.contains("transport") || msg.is_empty()) {
        return anyhow!("the manager is unreachable: {msg}");
    }
    anyhow!("{msg}")
}

macro_rules! call {
    ($e:expr) => {
        $e.await.map_err(status_error)?.into_inner()
    };
}

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
    // Same checks as the server, with the CLI's flag names, before anything is sent.
    spec.validate().map_err(|e| anyhow!("--{e}"))?;
    Ok(())
}

pub async fn service(c: &mut Client, cmd: ServiceCmd) -> Result<()> {
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
            let svc = call!(c.create_service(pb::CreateServiceRequest {
                name,
                spec: Some(convert::spec_to_pb(&spec)),
            }));
            // Docker prints the ID either way; -q is accepted for scripts that pass it.
            let _ = quiet;
            println!("{}", svc.id);
        }
        ServiceCmd::Ls { format, quiet } => {
            let list = call!(c.list_services(pb::ListServicesRequest {}));
            let views = list
                .services
                .into_iter()
                .map(ServiceView::from_pb)
                .collect::<Result<Vec<_>>>()?;
            if quiet {
                for s in views {
                    println!("{}", s.service.id);
                }
            } else if format == Format::Json {
                json(&views)?;
            } else {
                table(
                    &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
                    views
                        .iter()
                        .map(|s| {
                            vec![
                                short_id(&s.service.id),
                                s.service.name.clone(),
                                mode_str(&s.service.spec),
                                s.replicas_str(),
                                s.service.spec.image.clone(),
                                ports_str(&s.service.spec.ports),
                            ]
                        })
                        .collect(),
                );
            }
        }
        ServiceCmd::Inspect { service, format } => {
            let s = ServiceView::from_pb(call!(c.get_service(pb::GetServiceRequest { service })))?;
            if format == Format::Json {
                json(&s)?;
            } else {
                print_service(&s);
            }
        }
        ServiceCmd::Ps { service, format } => {
            let svc = call!(c.get_service(pb::GetServiceRequest {
                service: service.clone()
            }));
            let tasks = call!(c.list_tasks(pb::ListTasksRequest {
                service: svc.id.clone(),
                node: String::new(),
            }));
            let names = node_names(c).await?;
            let views = tasks
                .tasks
                .into_iter()
                .map(|t| TaskView::from_pb(t, &names))
                .collect::<Result<Vec<_>>>()?;
            if format == Format::Json {
                json(&views)?;
            } else {
                print_tasks(&views);
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
            for (name, n) in parsed {
                call!(c.scale_service(pb::ScaleServiceRequest {
                    service: name.clone(),
                    replicas: n,
                }));
                println!("{name} scaled to {n}");
            }
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
        } => {
            if canary_weight.is_some_and(|w| w > 100) {
                bail!(
                    "--canary-weight: {} is not between 0 and 100",
                    canary_weight.unwrap_or(0)
                );
            }
            let current = call!(c.get_service(pb::GetServiceRequest {
                service: service.clone()
            }));
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
            call!(c.update_service(pb::UpdateServiceRequest {
                service: current.id,
                version,
                spec: Some(convert::spec_to_pb(&spec)),
                canary_weight,
            }));
            println!("{service}");
        }
        ServiceCmd::Promote { service } => {
            call!(c.promote_service(pb::PromoteServiceRequest {
                service: service.clone()
            }));
            println!("{service}: the canary is now the stable version");
        }
        ServiceCmd::Rollback { service } => {
            call!(c.rollback_service(pb::RollbackServiceRequest {
                service: service.clone()
            }));
            println!("{service}: rolled back");
        }
        ServiceCmd::Logs { service, opts } => {
            let stream = call!(c.service_logs(pb::ServiceLogsRequest {
                service,
                follow: opts.follow,
                tail: opts.tail.unwrap_or(0),
            }));
            print_logs(stream, true).await?;
        }
        ServiceCmd::Rm { services } => {
            let mut failed = None;
            for s in services {
                match c.remove_service(pb::RemoveServiceRequest { service: s.clone() }).await {
                    Ok(_) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {}", e.message());
                        failed = Some(e);
                    }
                }
            }
            if failed.is_some() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

fn mode_str(spec: &ServiceSpec) -> String {
    match spec.mode {
        ServiceMode::Replicated { .. } => "replicated".into(),
        ServiceMode::Global => "global".into(),
    }
}

fn ports_str(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .map(|p| format!("*:{}->{}/{}", p.published, p.target, p.protocol.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Serialize)]
struct ServiceView {
    #[serde(flatten)]
    service: Service,
    replicas: convert::Counts,
}

impl ServiceView {
    fn from_pb(s: pb::Service) -> Result<ServiceView> {
        let (service, replicas) = convert::service_from_pb(s).map_err(v)?;
        Ok(ServiceView { service, replicas })
    }

    fn replicas_str(&self) -> String {
        let r = &self.replicas;
        match &self.service.canary {
            Some(c) => format!(
                "{}/{} (+{}/{} canary {}%)",
                r.running, r.desired, r.canary_running, r.canary_desired, c.weight
            ),
            None => format!("{}/{}", r.running, r.desired),
        }
    }
}

fn print_service(s: &ServiceView) {
    let spec = &s.service.spec;
    println!("ID:          {}", s.service.id);
    println!("Name:        {}", s.service.name);
    println!("Image:       {}", spec.image);
    println!("Mode:        {}", mode_str(spec));
    println!("Replicas:    {} running", s.replicas_str());
    match s.service.vip {
        Some(vip) => println!("Endpoint:    vip {vip}"),
        None => println!("Endpoint:    {}", spec.endpoint_mode.as_str()),
    }
    if let Some(r) = spec.rate_limit {
        println!("Rate limit:  {}/s per client, burst {}", r.per_sec, r.burst);
    }
    if let Some(c) = &s.service.canary {
        println!(
            "Canary:      {} (spec {}), {}% of new connections, {}/{} running",
            c.spec.image, c.spec_version, c.weight, s.replicas.canary_running, s.replicas.canary_desired
        );
    }
    println!("Version:     {} (spec {})", s.service.version, s.service.spec_version);
    println!("Created:     {}", ago(s.service.created_ms));
    println!("Updated:     {}", ago(s.service.updated_ms));
    if !spec.command.is_empty() {
        println!("Command:     {}", spec.command.join(" "));
    }
    if !spec.env.is_empty() {
        println!("Env:");
        for e in &spec.env {
            println!("  {e}");
        }
    }
    if !spec.constraints.is_empty() {
        println!("Constraints:");
        for c in &spec.constraints {
            println!("  {c}");
        }
    }
    let res = |r: Resources| {
        let mut parts = vec![];
        if r.nano_cpus > 0 {
            parts.push(format!("cpu {}", format_cpus(r.nano_cpus)));
        }
        if r.memory_bytes > 0 {
            parts.push(format!("memory {}", format_size(r.memory_bytes)));
        }
        parts.join(", ")
    };
    if !spec.reservations.is_zero() {
        println!("Reservations: {}", res(spec.reservations));
    }
    if !spec.limits.is_zero() {
        println!("Limits:      {}", res(spec.limits));
    }
    if !spec.ports.is_empty() {
        println!("Ports:");
        for p in &spec.ports {
            println!("  {p}");
        }
    }
    if !spec.labels.is_empty() {
        println!("Labels:");
        for (k, val) in &spec.labels {
            println!("  {k}={val}");
        }
    }
    if !spec.mounts.is_empty() {
        println!("Mounts:");
        for m in &spec.mounts {
            let kind = match m.kind {
                model::MountKind::Volume => "volume",
                model::MountKind::Bind => "bind",
                model::MountKind::Tmpfs => "tmpfs",
            };
            let ro = if m.readonly { " (read-only)" } else { "" };
            println!("  {kind} {} -> {}{ro}", or_dash(&m.source), m.target);
        }
    }
    if !spec.secrets.is_empty() {
        println!("Secrets:");
        for r in &spec.secrets {
            println!("  {} -> {}", r.name, r.target);
        }
    }
    if let Some(h) = &spec.health {
        let test = match &h.test {
            model::HealthTest::Cmd(c) => format!("cmd {c:?}"),
            model::HealthTest::Http { port, path } => format!("http {port}{path}"),
            model::HealthTest::Tcp { port } => format!("tcp {port}"),
            model::HealthTest::Disabled => "disabled".into(),
        };
        println!(
            "Health:      {test}, every {}ms, timeout {}ms, {} retries, start period {}ms",
            h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms
        );
    }
    let r = &spec.restart;
    println!(
        "Restart:     {}, delay {}ms{}",
        r.condition.as_str(),
        r.delay_ms,
        if r.max_attempts > 0 {
            format!(", at most {} times", r.max_attempts)
        } else {
            String::new()
        }
    );
    if !spec.stop_signal.is_empty() || spec.stop_grace_ms != 10_000 {
        println!(
            "Stop:        {} then kill after {}ms",
            or_dash(&spec.stop_signal),
            spec.stop_grace_ms
        );
    }
}

#[derive(Serialize)]
struct TaskView {
    #[serde(flatten)]
    task: Task,
    name: String,
    node_name: Option<String>,
}

impl TaskView {
    fn from_pb(t: pb::Task, names: &HashMap<String, String>) -> Result<TaskView> {
        let task = convert::task_from_pb(t).map_err(v)?;
        let node_name = task.node_id.as_ref().and_then(|n| names.get(n).cloned());
        Ok(TaskView {
            name: task.name(),
            node_name,
            task,
        })
    }
}

fn print_tasks(views: &[TaskView]) {
    table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "ADDRESS",
            "DESIRED STATE",
            "CURRENT STATE",
            "MESSAGE",
        ],
        views
            .iter()
            .map(|t| {
                let st = &t.task.status;
                let mut message = if st.err.is_empty() {
                    st.message.clone()
                } else {
                    st.err.clone()
                };
                if let Some(code) = st.exit_code {
                    message = format!("{message} (exit code {code})").trim().to_string();
                }
                vec![
                    short_id(&t.task.id),
                    t.name.clone(),
                    t.task.spec.image.clone(),
                    t.node_name.clone().unwrap_or_else(|| "-".into()),
                    or_dash(&st.addr),
                    t.task.desired_state.to_string(),
                    if st.health.is_empty() {
                        format!("{} {}", capitalize(st.state.as_str()), ago(st.timestamp_ms))
                    } else {
                        format!(
                            "{} ({}) {}",
                            capitalize(st.state.as_str()),
                            st.health,
                            ago(st.timestamp_ms)
                        )
                    },
                    or_dash(&message),
                ]
            })
            .collect(),
    );
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

async fn node_names(c: &mut Client) -> Result<HashMap<String, String>> {
    let nodes = call!(c.list_nodes(pb::ListNodesRequest {}));
    Ok(nodes.nodes.into_iter().map(|n| (n.id, n.name)).collect())
}

#[derive(Serialize)]
struct NodeView {
    #[serde(flatten)]
    node: model::Node,
    reserved: Resources,
    leader: bool,
    manager_reachability: Option<String>,
    /// The node answering this request.
    #[serde(rename = "self")]
    is_self: bool,
}

fn node_view(n: pb::Node, self_id: &str) -> NodeView {
    let (node, reserved, manager) = convert::node_from_pb(n);
    NodeView {
        is_self: node.id == self_id,
        leader: manager.as_ref().is_some_and(|m| m.leader),
        manager_reachability: manager.map(|m| m.reachability),
        node,
        reserved,
    }
}

fn dataplane_json(dp: &std::result::Result<pb::NodeDataplane, String>) -> serde_json::Value {
    match dp {
        Err(e) => serde_json::json!({ "error": e }),
        Ok(d) => serde_json::json!({
            "enabled": d.enabled,
            "programs": d.programs.iter().map(|p| serde_json::json!({
                "program": p.program, "target": p.target, "adopted": p.adopted,
            })).collect::<Vec<_>>(),
            "maps": d.maps.iter().map(|m| serde_json::json!({
                "name": m.name, "entries": m.entries, "capacity": m.capacity,
            })).collect::<Vec<_>>(),
            "sock_destroy": d.sock_destroy,
            "services": d.services,
            "backends": d.backends,
            "connections": d.connections,
            "drops": d.drops,
            "errors": d.errors,
        }),
    }
}

fn print_dataplane(dp: &std::result::Result<pb::NodeDataplane, String>) {
    let d = match dp {
        Err(e) => {
            println!("Data plane:   unknown ({e})");
            return;
        }
        Ok(d) if !d.enabled => {
            println!("Data plane:   none (--dataplane none: no service load balancing)");
            return;
        }
        Ok(d) => d,
    };
    println!(
        "Data plane:   eBPF, {} services, {} backends, {} connections, {} drops, socket destroy {}",
        d.services,
        d.backends,
        d.connections,
        d.drops,
        if d.sock_destroy { "on" } else { "unsupported" }
    );
    println!("  Programs:");
    for p in &d.programs {
        println!(
            "    {:<16} {}{}",
            p.program,
            p.target,
            if p.adopted { " (adopted)" } else { "" }
        );
    }
    println!("  Maps:");
    for m in &d.maps {
        let pct = if m.capacity > 0 {
            m.entries as f64 * 100.0 / m.capacity as f64
        } else {
            0.0
        };
        println!("    {:<16} {:>8} / {:<8} {pct:5.1}%", m.name, m.entries, m.capacity);
    }
    for e in &d.errors {
        println!("  Error: {e}");
    }
}

pub async fn node(c: &mut Client, cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Ls { format, quiet } => {
            let self_id = call!(c.get_cluster_info(pb::ClusterInfoRequest {})).node_id;
            let nodes = call!(c.list_nodes(pb::ListNodesRequest {}));
            let views: Vec<NodeView> = nodes.nodes.into_iter().map(|n| node_view(n, &self_id)).collect();
            if quiet {
                for n in views {
                    println!("{}", n.node.id);
                }
            } else if format == Format::Json {
                json(&views)?;
            } else {
                table(
                    &[
                        "ID",
                        "HOSTNAME",
                        "STATUS",
                        "AVAILABILITY",
                        "MANAGER STATUS",
                        "ADDRESS",
                        "VERSION",
                    ],
                    views
                        .iter()
                        .map(|n| {
                            let mut id = short_id(&n.node.id);
                            if n.is_self {
                                id.push_str(" *");
                            }
                            let mgr = match (n.node.role, n.leader, &n.manager_reachability) {
                                (NodeRole::Worker, _, _) => String::new(),
                                (_, true, _) => "Leader".into(),
                                (_, false, Some(r)) => capitalize(r),
                                _ => String::new(),
                            };
                            vec![
                                id,
                                n.node.name.clone(),
                                capitalize(n.node.state.as_str()),
                                capitalize(n.node.availability.as_str()),
                                mgr,
                                n.node.addr.clone(),
                                n.node.warren_version.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        NodeCmd::Inspect { node, format } => {
            let self_id = call!(c.get_cluster_info(pb::ClusterInfoRequest {})).node_id;
            // `self`, as in Swarm: the node this CLI talks to.
            let node = if node == "self" { self_id.clone() } else { node };
            let n = node_view(call!(c.get_node(pb::GetNodeRequest { node: node.clone() })), &self_id);
            // The data plane is asked of the node itself; a node that cannot answer
            // (down, unreachable) still gets the rest of its inspect.
            let dp = c
                .get_node_dataplane(pb::GetNodeRequest { node })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string());
            if format == Format::Json {
                let mut v = serde_json::to_value(&n)?;
                v["dataplane"] = dataplane_json(&dp);
                json(&v)?;
            } else {
                println!("ID:           {}", n.node.id);
                println!("Hostname:     {}", n.node.name);
                println!("Role:         {}", n.node.role.as_str());
                println!(
                    "Status:       {}{}",
                    n.node.state.as_str(),
                    if n.node.message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", n.node.message)
                    }
                );
                println!("Availability: {}", n.node.availability.as_str());
                println!("Address:      {}", n.node.addr);
                println!("Platform:     {}/{}", n.node.platform.os, n.node.platform.arch);
                println!(
                    "Resources:    cpu {} (reserved {}), memory {} (reserved {})",
                    format_cpus(n.node.resources.nano_cpus),
                    format_cpus(n.reserved.nano_cpus),
                    format_size(n.node.resources.memory_bytes),
                    format_size(n.reserved.memory_bytes)
                );
                if n.node.role == NodeRole::Manager {
                    println!(
                        "Manager:      {}{}",
                        n.manager_reachability.clone().unwrap_or_default(),
                        if n.leader { ", leader" } else { "" }
                    );
                }
                println!("Version:      {}", n.node.warren_version);
                if !n.node.labels.is_empty() {
                    println!("Labels:");
                    for (k, val) in &n.node.labels {
                        println!("  {k}={val}");
                    }
                }
                print_dataplane(&dp);
            }
        }
        NodeCmd::Update {
            node,
            availability,
            label_add,
            label_rm,
        } => {
            let availability = availability
                .map(|a| model::Availability::parse("--availability", &a).map_err(v))
                .transpose()?
                .map(|a| convert::availability_to_pb(a) as i32);
            let mut add = HashMap::new();
            for l in &label_add {
                let (k, val) = parse_key_value("--label-add", l).map_err(v)?;
                add.insert(k, val);
            }
            if availability.is_none() && add.is_empty() && label_rm.is_empty() {
                bail!("nothing to update: pass --availability, --label-add or --label-rm");
            }
            call!(c.update_node(pb::UpdateNodeRequest {
                node: node.clone(),
                availability,
                label_add: add,
                label_rm,
            }));
            println!("{node}");
        }
        NodeCmd::Rm { nodes, force } => {
            for n in nodes {
                call!(c.remove_node(pb::RemoveNodeRequest { node: n.clone(), force }));
                println!("{n}");
            }
        }
    }
    Ok(())
}

pub async fn secret(c: &mut Client, cmd: SecretCmd) -> Result<()> {
    match cmd {
        SecretCmd::Create { name, file, labels } => {
            model::validate_name("name", &name).map_err(v)?;
            let mut l = HashMap::new();
            for x in &labels {
                let (k, val) = parse_key_value("--label", x).map_err(v)?;
                l.insert(k, val);
            }
            let data = if file == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .context("reading the secret from standard input")?;
                buf
            } else {
                std::fs::read(&file).with_context(|| format!("reading the secret from {file}"))?
            };
            let s = call!(c.create_secret(pb::CreateSecretRequest { name, data, labels: l }));
            println!("{}", s.id);
        }
        SecretCmd::Ls { format, quiet } => {
            let list = call!(c.list_secrets(pb::ListSecretsRequest {}));
            #[derive(Serialize)]
            struct SecretView {
                id: String,
                name: String,
                labels: std::collections::BTreeMap<String, String>,
                created_ms: i64,
                digest: String,
            }
            let views: Vec<SecretView> = list
                .secrets
                .into_iter()
                .map(|s| SecretView {
                    id: s.id,
                    name: s.name,
                    labels: s.labels.into_iter().collect(),
                    created_ms: s.created_ms,
                    digest: s.digest,
                })
                .collect();
            if quiet {
                views.iter().for_each(|s| println!("{}", s.id));
            } else if format == Format::Json {
                json(&views)?;
            } else {
                table(
                    &["ID", "NAME", "CREATED"],
                    views
                        .iter()
                        .map(|s| vec![short_id(&s.id), s.name.clone(), ago(s.created_ms)])
                        .collect(),
                );
            }
        }
        SecretCmd::Rm { secrets } => {
            for s in secrets {
                call!(c.remove_secret(pb::RemoveSecretRequest { secret: s.clone() }));
                println!("{s}");
            }
        }
    }
    Ok(())
}

pub async fn volume(c: &mut Client, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create {
            name,
            driver,
            labels,
            options,
        } => {
            model::validate_name("name", &name).map_err(v)?;
            let kv = |flag: &str, xs: &[String]| -> Result<HashMap<String, String>> {
                xs.iter().map(|x| parse_key_value(flag, x).map_err(v)).collect()
            };
            let vol = call!(c.create_volume(pb::CreateVolumeRequest {
                name,
                driver,
                labels: kv("--label", &labels)?,
                options: kv("--opt", &options)?,
            }));
            println!("{}", vol.name);
        }
        VolumeCmd::Ls { format, quiet } => {
            let list = call!(c.list_volumes(pb::ListVolumesRequest {}));
            #[derive(Serialize)]
            struct VolumeView {
                id: String,
                name: String,
                driver: String,
                node_id: Option<String>,
                labels: std::collections::BTreeMap<String, String>,
                options: std::collections::BTreeMap<String, String>,
                created_ms: i64,
            }
            let views: Vec<VolumeView> = list
                .volumes
                .into_iter()
                .map(|x| VolumeView {
                    id: x.id,
                    name: x.name,
                    driver: x.driver,
                    node_id: (!x.node_id.is_empty()).then_some(x.node_id),
                    labels: x.labels.into_iter().collect(),
                    options: x.options.into_iter().collect(),
                    created_ms: x.created_ms,
                })
                .collect();
            if quiet {
                views.iter().for_each(|x| println!("{}", x.name));
            } else if format == Format::Json {
                json(&views)?;
            } else {
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
                );
            }
        }
        VolumeCmd::Rm { volumes } => {
            for x in volumes {
                call!(c.remove_volume(pb::RemoveVolumeRequest { volume: x.clone() }));
                println!("{x}");
            }
        }
    }
    Ok(())
}

async fn print_logs(mut stream: tonic::Streaming<pb::LogLine>, prefix: bool) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(l) = stream.message().await.map_err(status_error)? {
        if prefix {
            writeln!(out, "{}@{} | {}", l.task_name, l.node_name, l.line)?;
        } else {
            writeln!(out, "{}", l.line)?;
        }
        out.flush()?;
    }
    Ok(())
}

pub async fn task(c: &mut Client, cmd: TaskCmd) -> Result<()> {
    match cmd {
        TaskCmd::Inspect { task, format } => {
            let t = call!(c.get_task(pb::GetTaskRequest { task }));
            let names = node_names(c).await?;
            let view = TaskView::from_pb(t, &names)?;
            if format == Format::Json {
                json(&view)?;
            } else {
                print_tasks(std::slice::from_ref(&view));
            }
        }
        TaskCmd::Logs { task, opts } => {
            let stream = call!(c.task_logs(pb::TaskLogsRequest {
                task,
                follow: opts.follow,
                tail: opts.tail.unwrap_or(0),
            }));
            print_logs(stream, false).await?;
        }
    }
    Ok(())
}

pub async fn image(c: &mut Client, cmd: ImageCmd) -> Result<()> {
    let ImageCmd::Load { file, nodes } = cmd;
    let mut reader: Box<dyn std::io::Read + Send> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&file).with_context(|| format!("opening {file}"))?)
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::LoadImageChunk {
        part: Some(pb::load_image_chunk::Part::Header(pb::LoadImageHeader { nodes })),
    })
    .await
    .map_err(|_| anyhow!("the upload stopped"))?;
    let reading = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf).with_context(|| format!("reading {file}"))?;
            if n == 0 {
                return Ok(());
            }
            let chunk = pb::LoadImageChunk {
                part: Some(pb::load_image_chunk::Part::Data(buf[..n].to_vec())),
            };
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    let reply = c
        .clone()
        .max_encoding_message_size(8 << 20)
        .load_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reading.await.map_err(|e| anyhow!("{e}"))??;
    let reply = reply.map_err(status_error)?.into_inner();
    let mut failed = 0;
    for r in &reply.results {
        if r.error.is_empty() {
            println!("{}: loaded {}", r.node, r.images.join(", "));
        } else {
            failed += 1;
            eprintln!("{}: {}", r.node, r.error);
        }
    }
    if failed > 0 {
        bail!(
            "the image could not be loaded on {failed} of {} nodes",
            reply.results.len()
        );
    }
    Ok(())
}

pub async fn events(c: &mut Client, kinds: Vec<KindArg>, format: Format) -> Result<()> {
    let kinds = kinds
        .into_iter()
        .map(|k| {
            let kind = match k {
                KindArg::Service => pb::ObjectKind::Service,
                KindArg::Task => pb::ObjectKind::Task,
                KindArg::Node => pb::ObjectKind::Node,
                KindArg::Secret => pb::ObjectKind::Secret,
                KindArg::Volume => pb::ObjectKind::Volume,
                KindArg::Cluster => pb::ObjectKind::Cluster,
            };
            kind as i32
        })
        .collect();
    let mut stream = call!(c.watch_events(pb::WatchEventsRequest { kinds }));
    use std::io::Write;
    while let Some(ev) = stream.message().await.map_err(status_error)? {
        let kind = pb::ObjectKind::try_from(ev.kind)
            .map(|k| k.as_str_name().trim_start_matches("OBJECT_KIND_").to_ascii_lowercase())
            .unwrap_or_default();
        let action = pb::EventAction::try_from(ev.action)
            .map(|a| a.as_str_name().trim_start_matches("EVENT_ACTION_").to_ascii_lowercase())
            .unwrap_or_default();
        if format == Format::Json {
            #[derive(Serialize)]
            struct EventView<'a> {
                index: u64,
                kind: &'a str,
                action: &'a str,
                id: &'a str,
                name: &'a str,
                timestamp_ms: i64,
            }
            println!(
                "{}",
                serde_json::to_string(&EventView {
                    index: ev.index,
                    kind: &kind,
                    action: &action,
                    id: &ev.id,
                    name: &ev.name,
                    timestamp_ms: ev.timestamp_ms,
                })?
            );
        } else {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ev.timestamp_ms.max(0) as u64);
            let name = if ev.name.is_empty() {
                String::new()
            } else {
                format!(" {}", ev.name)
            };
            println!(
                "{} {kind} {action}{name} ({}) index={}",
                humantime::format_rfc3339_millis(at),
                short_id(&ev.id),
                ev.index
            );
        }
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

pub async fn join_token(c: &mut Client, role: RoleArg, rotate: bool, quiet: bool) -> Result<()> {
    let role = match role {
        RoleArg::Worker => NodeRole::Worker,
        RoleArg::Manager => NodeRole::Manager,
    };
    let t = call!(c.get_join_token(pb::GetJoinTokenRequest {
        role: convert::role_to_pb(role) as i32,
        rotate,
    }));
    if quiet {
        println!("{}", t.token);
        return Ok(());
    }
    if rotate {
        println!("Successfully rotated the {} join token.\n", role.as_str());
    }
    println!(
        "To add a {} to this cluster, run the following command:\n",
        role.as_str()
    );
    let manager = t.managers.first().cloned().unwrap_or_else(|| "MANAGER_IP:2377".into());
    println!("    warren cluster join --token {} {manager}\n", t.token);
    Ok(())
}

pub async fn cluster_info(c: &mut Client, format: Format) -> Result<()> {
    let i = call!(c.get_cluster_info(pb::ClusterInfoRequest {}));
    if format == Format::Json {
        #[derive(Serialize)]
        struct Member {
            raft_id: u64,
            node_id: String,
            addr: String,
            leader: bool,
            voter: bool,
            matched_index: u64,
        }
        #[derive(Serialize)]
        struct Info {
            cluster_id: String,
            created_ms: i64,
            leader_node_id: String,
            leader_addr: String,
            term: u64,
            last_log_index: u64,
            applied_index: u64,
            members: Vec<Member>,
            ca_digest: String,
            nodes: u64,
            services: u64,
            tasks: u64,
            pod_cidr: String,
            node_id: String,
            snapshot_index: u64,
            purged_index: u64,
        }
        return json(&Info {
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
                .map(|m| Member {
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
            node_id: i.node_id,
            snapshot_index: i.snapshot_index,
            purged_index: i.purged_index,
        });
    }
    println!("Cluster ID:   {}", i.cluster_id);
    println!("Created:      {}", ago(i.created_ms));
    println!("CA digest:    sha256:{}", i.ca_digest);
    println!("Pod CIDR:     {}", i.pod_cidr);
    println!(
        "Leader:       {} ({})",
        or_dash(&short_id(&i.leader_node_id)),
        or_dash(&i.leader_addr)
    );
    println!(
        "Raft:         term {}, last log index {}, applied {}, snapshot at {}, purged to {}",
        i.term, i.last_log_index, i.applied_index, i.snapshot_index, i.purged_index
    );
    println!(
        "Objects:      {} nodes, {} services, {} tasks",
        i.nodes, i.services, i.tasks
    );
    println!("Managers:");
    for m in i.members {
        println!(
            "  {:<14} {:<22} {}{}",
            or_dash(&short_id(&m.node_id)),
            m.addr,
            if m.voter { "voter" } else { "learner" },
            if m.leader { ", leader" } else { "" }
        );
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
