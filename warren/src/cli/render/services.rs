//! What `service ls|inspect|ps` and `task inspect` show: the service and task views,
//! as JSON (field names are a contract, see docs/cli.md) and as text.

use super::{ago, capitalize, invalid, or_dash, short_id, table, Text};
use crate::model::{self, format_cpus, format_size, PortConfig, Resources, Service, ServiceMode, ServiceSpec, Task};
use crate::wire::convert;
use serde::Serialize;
use std::collections::HashMap;
use warren_proto::v1 as pb;

#[derive(Serialize)]
pub struct ServiceView {
    #[serde(flatten)]
    pub service: Service,
    pub replicas: convert::Counts,
}

impl ServiceView {
    pub fn from_pb(s: pb::Service) -> anyhow::Result<ServiceView> {
        let (service, replicas) = convert::service_from_pb(s).map_err(invalid)?;
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

/// `service ls`.
pub fn services_table(views: &[ServiceView]) -> String {
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
    )
}

/// `service inspect`.
/// Swarm's container flags (issue 10, item 5): arguments, hostname, init,
/// read-only root, capabilities, ulimits, sysctls, pids limit, DNS.
fn container_text(t: &mut Text, spec: &model::ServiceSpec) {
    let o = &spec.container;
    if !spec.args.is_empty() {
        t.line(format_args!("Args:        {}", spec.args.join(" ")));
    }
    if !o.hostname.is_empty() {
        t.line(format_args!("Hostname:    {}", o.hostname));
    }
    if o.init {
        t.line("Init:        yes");
    }
    if o.read_only {
        t.line("Read-only:   yes");
    }
    if !o.cap_add.is_empty() {
        t.line(format_args!("Cap add:     {}", o.cap_add.join(", ")));
    }
    if !o.cap_drop.is_empty() {
        t.line(format_args!("Cap drop:    {}", o.cap_drop.join(", ")));
    }
    if !o.ulimits.is_empty() {
        let u: Vec<String> = o.ulimits.iter().map(|u| u.to_string()).collect();
        t.line(format_args!("Ulimits:     {}", u.join(", ")));
    }
    if !o.sysctls.is_empty() {
        t.line("Sysctls:");
        for (k, val) in &o.sysctls {
            t.line(format_args!("  {k}={val}"));
        }
    }
    if o.pids_limit > 0 {
        t.line(format_args!("Pids limit:  {}", o.pids_limit));
    }
    if !o.dns.is_empty() {
        let d: Vec<String> = o.dns.iter().map(|a| a.to_string()).collect();
        t.line(format_args!("DNS:         {}", d.join(", ")));
    }
}

pub fn service_text(s: &ServiceView) -> String {
    let mut t = Text::default();
    let spec = &s.service.spec;
    t.line(format_args!("ID:          {}", s.service.id));
    t.line(format_args!("Name:        {}", s.service.name));
    t.line(format_args!("Image:       {}", spec.image));
    t.line(format_args!("Mode:        {}", mode_str(spec)));
    t.line(format_args!("Replicas:    {} running", s.replicas_str()));
    match s.service.vip {
        Some(vip) => t.line(format_args!("Endpoint:    vip {vip}")),
        None => t.line(format_args!("Endpoint:    {}", spec.endpoint_mode.as_str())),
    }
    if let Some(r) = spec.rate_limit {
        t.line(format_args!(
            "Rate limit:  {}/s per client, burst {}",
            r.per_sec, r.burst
        ));
    }
    if let Some(c) = &s.service.canary {
        t.line(format_args!(
            "Canary:      {} (spec {}), {}% of new connections, {}/{} running",
            c.spec.image, c.spec_version, c.weight, s.replicas.canary_running, s.replicas.canary_desired
        ));
        if let Some(r) = &c.release {
            let at = match r.strategy {
                crate::model::UpdateStrategy::BlueGreen if r.switched() => "switched, holding the old version".into(),
                crate::model::UpdateStrategy::BlueGreen => "starting the new version".into(),
                _ => format!("{} of {}", r.step_name(), r.config.canary_steps),
            };
            t.line(format_args!("  Release:   {} ({at})", r.strategy.as_str()));
        }
    }
    t.line(format_args!(
        "Version:     {} (spec {})",
        s.service.version, s.service.spec_version
    ));
    if let Some(u) = &s.service.update_status {
        t.line(format_args!("Update:      {}, {}", u.state.as_str(), u.progress()));
        if !u.message.is_empty() {
            t.line(format_args!("  Message:   {}", u.message));
        }
        if u.failures > 0 {
            t.line(format_args!("  Failures:  {}", u.failures));
        }
    }
    let rollout = |c: &crate::model::UpdateConfig| {
        format!(
            "parallelism {}, delay {}ms, on failure {}, monitor {}ms, max failure ratio {}, {}",
            c.parallelism,
            c.delay_ms,
            c.failure_action.as_str(),
            c.monitor_ms,
            c.max_failure_ratio,
            c.order_for(spec).as_str()
        )
    };
    let u = &spec.update;
    let strategy = match u.strategy {
        crate::model::UpdateStrategy::Rolling => String::new(),
        crate::model::UpdateStrategy::BlueGreen => format!(
            "blue-green, hold {}; ",
            crate::model::human_duration(u.blue_green_hold_ms)
        ),
        crate::model::UpdateStrategy::Canary => format!(
            "canary steps {}, interval {}, max failure ratio {}; ",
            u.canary_steps,
            crate::model::human_duration(u.canary_interval_ms),
            u.canary_max_failure_ratio
        ),
    };
    t.line(format_args!("UpdateConfig: {strategy}{}", rollout(&spec.update)));
    t.line(format_args!("RollbackConfig: {}", rollout(&spec.rollback)));
    t.line(format_args!("Created:     {}", ago(s.service.created_ms)));
    t.line(format_args!("Updated:     {}", ago(s.service.updated_ms)));
    if !spec.command.is_empty() {
        t.line(format_args!("Command:     {}", spec.command.join(" ")));
    }
    container_text(&mut t, spec);
    if !spec.env.is_empty() {
        t.line("Env:");
        for e in &spec.env {
            t.line(format_args!("  {e}"));
        }
    }
    if !spec.constraints.is_empty() {
        t.line("Constraints:");
        for c in &spec.constraints {
            t.line(format_args!("  {c}"));
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
        t.line(format_args!("Reservations: {}", res(spec.reservations)));
    }
    if !spec.limits.is_zero() {
        t.line(format_args!("Limits:      {}", res(spec.limits)));
    }
    if !spec.ports.is_empty() {
        t.line("Ports:");
        for p in &spec.ports {
            t.line(format_args!("  {p}"));
        }
    }
    if !spec.labels.is_empty() {
        t.line("Labels:");
        for (k, val) in &spec.labels {
            t.line(format_args!("  {k}={val}"));
        }
    }
    if !spec.mounts.is_empty() {
        t.line("Mounts:");
        for m in &spec.mounts {
            let kind = match m.kind {
                model::MountKind::Volume if m.is_anonymous() => "anonymous volume",
                model::MountKind::Volume => "volume",
                model::MountKind::Bind => "bind",
                model::MountKind::Tmpfs => "tmpfs",
            };
            let ro = if m.readonly { " (read-only)" } else { "" };
            t.line(format_args!("  {kind} {} -> {}{ro}", or_dash(&m.source), m.target));
        }
    }
    if !spec.secrets.is_empty() {
        t.line("Secrets:");
        for r in &spec.secrets {
            t.line(format_args!("  {} -> {}", r.name, r.target));
        }
    }
    if let Some(h) = &spec.health {
        let test = match &h.test {
            model::HealthTest::Cmd(c) => format!("cmd {c:?}"),
            model::HealthTest::Http { port, path } => format!("http {port}{path}"),
            model::HealthTest::Tcp { port } => format!("tcp {port}"),
            model::HealthTest::Disabled => "disabled".into(),
        };
        t.line(format_args!(
            "Health:      {test}, every {}ms, timeout {}ms, {} retries, start period {}ms",
            h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms
        ));
    }
    let r = &spec.restart;
    t.line(format_args!(
        "Restart:     {}, delay {}ms{}",
        r.condition.as_str(),
        r.delay_ms,
        if r.max_attempts > 0 {
            format!(", at most {} times", r.max_attempts)
        } else {
            String::new()
        }
    ));
    if !spec.stop_signal.is_empty() || spec.stop_grace_ms != 10_000 {
        t.line(format_args!(
            "Stop:        {} then kill after {}ms",
            or_dash(&spec.stop_signal),
            spec.stop_grace_ms
        ));
    }
    t.line(format_args!(
        "Drain:       {}",
        if spec.drain_timeout_ms == 0 {
            "off (the stop signal is sent at once)".to_string()
        } else {
            format!("up to {}ms for established connections", spec.drain_timeout_ms)
        }
    ));
    t.0
}

#[derive(Serialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    pub name: String,
    pub node_name: Option<String>,
}

impl TaskView {
    pub fn from_pb(t: pb::Task, names: &HashMap<String, String>) -> anyhow::Result<TaskView> {
        let task = convert::task_from_pb(t).map_err(invalid)?;
        let node_name = task.node_id.as_ref().and_then(|n| names.get(n).cloned());
        Ok(TaskView {
            name: task.name(),
            node_name,
            task,
        })
    }
}

/// `service ps` and `task inspect`.
pub fn tasks_table(views: &[TaskView]) -> String {
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
    )
}
