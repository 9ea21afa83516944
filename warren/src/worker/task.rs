//! One task's life on the node: prepare (image, network, /etc files, secrets,
//! volumes), run its container, watch its exit, its health and the stop signal,
//! report each state; when it is to stop, drain its connections (`drain`), then
//! signal it; and clean up everything but the log. An adopted container
//! skips the preparation and is watched from where it is.

use super::drain::{self, Outcome};
use super::health::{self, Tracker, Verdict};
use super::{mounts, status, Inner};
use crate::model::{signal_number, MountKind, Task, TaskState};
use crate::network::{write_etc_files, DnsConfig, NetworkManager};
use crate::runtime::{ContainerSpec, ContainerStatus, ExitStatus, MountSpec, NetworkMode, Resources};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why the supervision ended, for the final report.
enum End {
    Exited(ExitStatus),
    Stopped(Option<ExitStatus>),
    Unhealthy(String),
}

/// The content a task's container gets as files: its secrets (on a tmpfs) and its
/// config objects, by name.
#[derive(Default)]
pub(super) struct Files {
    pub secrets: Vec<(String, Vec<u8>)>,
    pub configs: Vec<(String, Vec<u8>)>,
}

pub(super) async fn supervise(
    inner: Arc<Inner>,
    network: Arc<dyn NetworkManager>,
    task: Task,
    files: Files,
    adopted: Option<ContainerStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let id = task.id.clone();
    let rt = inner.runtime.clone();

    let (addr, netns, image_health, stop_signal) = match &adopted {
        Some(c) => {
            let net = network.setup_task(&id).await.ok();
            let netns = net.as_ref().map(|n| n.netns_path.clone());
            let addr = net.map(|n| n.address);
            let image = rt.image(&task.spec.image).await.ok().flatten();
            let exited = c.task.as_ref().and_then(|t| t.exit).filter(|_| {
                c.task
                    .as_ref()
                    .is_none_or(|t| t.state != crate::runtime::TaskState::Running)
            });
            if let Some(exit) = exited {
                // It ended while the daemon was away.
                cleanup(&inner, network.as_ref(), &id, &c.id).await;
                report_end(&inner, &task, End::Exited(exit), addr);
                return;
            }
            if c.task.is_none() {
                let mut st = status(
                    TaskState::Failed,
                    "the container had no running process after a restart",
                );
                st.err = "container found without a task".into();
                cleanup(&inner, network.as_ref(), &id, &c.id).await;
                inner.report(&id, st);
                return;
            }
            let mut st = status(TaskState::Running, "adopted after a restart of the node's daemon");
            st.container_id = c.id.clone();
            st.addr = addr.map(|a| a.to_string()).unwrap_or_default();
            // The health it had before the restart stands until the next probe: a
            // "starting" here would take every backend out of the balancing tables.
            st.health = task.status.health.clone();
            inner.report(&id, st);
            let sig = image.as_ref().and_then(|i| i.config.stop_signal.clone());
            (addr, netns, image.and_then(|i| i.config.healthcheck), sig)
        }
        None => match prepare_and_start(&inner, network.as_ref(), &task, &files, &mut stop).await {
            Some(v) => v,
            None => return,
        },
    };

    let signal = if !task.spec.stop_signal.is_empty() {
        signal_number(&task.spec.stop_signal)
    } else {
        stop_signal
            .and_then(|s| crate::model::parse_signal("stop-signal", &s).ok())
            .map(|s| signal_number(&s))
            .unwrap_or(libc::SIGTERM)
    };
    let grace = Duration::from_millis(task.spec.stop_grace_ms);
    let plan = health::plan(task.spec.health.as_ref(), image_health.as_ref());
    let started = Instant::now();
    let mut tracker = Tracker::default();
    let mut last_health = String::new();
    if adopted.is_some() && !task.status.health.is_empty() {
        last_health = task.status.health.clone();
        tracker.healthy_once = last_health == "healthy";
    }
    let wait = rt.wait(&id);
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(plan.as_ref().map(|p| p.interval).unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    if plan.is_some() && last_health.is_empty() {
        last_health = "starting".into();
        report_running(&inner, &task, addr, &last_health);
    }

    // Either how the task ended, or None: it is to stop (drain, then signal).
    let end = loop {
        if *stop.borrow() {
            break None;
        }
        tokio::select! {
            exit = &mut wait => match exit {
                Ok(e) => break Some(End::Exited(e)),
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "lost track of the container; checking its status");
                    match rt.status(&id).await {
                        Ok(ContainerStatus { task: Some(t), .. }) if t.exit.is_some() => break Some(End::Exited(t.exit.unwrap_or(ExitStatus { code: 255, exited_at: None }))),
                        Ok(ContainerStatus { task: Some(_), .. }) => {
                            wait.set(rt.wait(&id));
                            continue;
                        }
                        _ => break Some(End::Exited(ExitStatus { code: 255, exited_at: None })),
                    }
                }
            },
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break None;
                }
            }
            _ = tick.tick(), if plan.is_some() => {
                let Some(plan) = plan.as_ref() else { continue };
                let Some(a) = addr else { continue };
                let result = health::probe(rt.as_ref(), &id, a, plan).await;
                let in_start = started.elapsed() < plan.start_period;
                let verdict = tracker.record(result.is_ok(), in_start, plan.retries);
                let health = match &verdict {
                    Verdict::Starting => "starting",
                    Verdict::Healthy => "healthy",
                    Verdict::Failing(_) => if tracker.healthy_once { "healthy" } else { "starting" },
                    Verdict::Unhealthy => "unhealthy",
                };
                if verdict == Verdict::Unhealthy {
                    let why = result.err().map(|e| e.to_string()).unwrap_or_default();
                    tracing::info!(task = %id, reason = %why, "task is unhealthy: stopping it");
                    // Reported first, so that every node takes the task out of its
                    // balancing tables during the stop grace period, not after it.
                    report_running(&inner, &task, addr, "unhealthy");
                    let _ = rt.stop(&id, signal, grace).await;
                    break Some(End::Unhealthy(why));
                }
                if health != last_health {
                    last_health = health.to_string();
                    report_running(&inner, &task, addr, health);
                }
            }
        }
    };
    let end = match end {
        Some(end) => end,
        None => {
            let drain_timeout = Duration::from_millis(task.spec.drain_timeout_ms);
            let exited = match netns.as_deref().filter(|_| !drain_timeout.is_zero()) {
                None => None,
                Some(ns) => {
                    let mut st = status(TaskState::Running, "draining: no new connections");
                    st.container_id = task.id.clone();
                    st.addr = addr.map(|a| a.to_string()).unwrap_or_default();
                    st.health = last_health.clone();
                    inner.report(&task.id, st);
                    tokio::select! {
                        outcome = drain::run(inner.traffic.as_ref(), &id, ns, drain_timeout) => {
                            match &outcome {
                                Outcome::Drained => tracing::info!(task = %id, "drained: no connections left"),
                                Outcome::TimedOut { open } => tracing::info!(task = %id, open = ?open, timeout_ms = task.spec.drain_timeout_ms, "drain timeout: stopping with connections open"),
                                Outcome::Uncountable(e) => tracing::warn!(task = %id, error = %e, "cannot count the task's connections: stopping it without draining"),
                            }
                            None
                        }
                        exit = &mut wait => exit.ok(),
                    }
                }
            };
            match exited {
                // It ended on its own while draining.
                Some(e) => End::Exited(e),
                None => End::Stopped(rt.stop(&id, signal, grace).await.unwrap_or(None)),
            }
        }
    };
    // Everything is released before the final state is reported: a task the
    // managers see finished holds nothing on the node any more. Only then does the
    // task leave its service's endpoints, and every node's data plane destroys the
    // client sockets still connected to it.
    cleanup(&inner, network.as_ref(), &id, &id).await;
    report_end(&inner, &task, end, addr);
}

fn report_running(inner: &Inner, task: &Task, addr: Option<std::net::Ipv4Addr>, health: &str) {
    let mut st = status(TaskState::Running, "running");
    st.container_id = task.id.clone();
    st.addr = addr.map(|a| a.to_string()).unwrap_or_default();
    st.health = health.to_string();
    inner.report(&task.id, st);
}

fn report_end(inner: &Inner, task: &Task, end: End, addr: Option<std::net::Ipv4Addr>) {
    let mut st = match end {
        End::Exited(e) if e.code == 0 => {
            let mut s = status(TaskState::Complete, "exited with code 0");
            s.exit_code = Some(0);
            s
        }
        End::Exited(e) => {
            let mut s = status(TaskState::Failed, format!("exited with code {}", e.code));
            s.err = format!("task: non-zero exit ({})", e.code);
            s.exit_code = Some(e.code as i32);
            s
        }
        End::Stopped(e) => {
            let mut s = status(TaskState::Shutdown, "stopped");
            s.exit_code = e.map(|e| e.code as i32);
            s
        }
        End::Unhealthy(why) => {
            let mut s = status(TaskState::Failed, "unhealthy");
            s.err = format!("task: unhealthy: {why}");
            s.health = "unhealthy".into();
            s
        }
    };
    st.container_id = task.id.clone();
    st.addr = addr.map(|a| a.to_string()).unwrap_or_default();
    inner.report(&task.id, st);
}

type Started = (
    Option<std::net::Ipv4Addr>,
    Option<std::path::PathBuf>,
    Option<crate::runtime::Healthcheck>,
    Option<String>,
);

/// Everything before the container runs. Returns None when the task ended here
/// (rejected, failed, or stopped before it started), having reported why.
async fn prepare_and_start(
    inner: &Arc<Inner>,
    network: &dyn NetworkManager,
    task: &Task,
    files: &Files,
    stop: &mut watch::Receiver<bool>,
) -> Option<Started> {
    let secrets = &files.secrets;
    let id = &task.id;
    let rt = inner.runtime.clone();
    let spec = &task.spec;
    let reject = |st_err: String| {
        let mut st = status(TaskState::Rejected, "rejected");
        st.err = st_err;
        inner.report(id, st);
    };
    inner.report(
        id,
        status(TaskState::Preparing, format!("preparing: pulling {}", spec.image)),
    );
    let image = match rt.ensure_image(&spec.image, None).await {
        Ok(i) => i,
        Err(e) => {
            reject(e.to_string());
            return None;
        }
    };
    if *stop.borrow() {
        inner.report(id, status(TaskState::Shutdown, "stopped before it started"));
        return None;
    }
    let net = match network.setup_task(id).await {
        Ok(n) => n,
        Err(e) => {
            let _ = network.teardown_task(id).await;
            reject(format!("network: {e}"));
            return None;
        }
    };
    let fail = |inner: &Inner, err: String| {
        let mut st = status(TaskState::Rejected, "rejected");
        st.err = err;
        inner.report(id, st);
    };
    let dir = inner.task_dir(id);
    let opts = &spec.container;
    let hostname: String = if opts.hostname.is_empty() {
        id.chars().take(12).collect()
    } else {
        opts.hostname.clone()
    };
    let nameservers = if opts.dns.is_empty() {
        // Warren's resolver first (service names), then the node's upstreams.
        let mut ns = vec![std::net::IpAddr::V4(net.gateway)];
        ns.extend(
            inner
                .cfg
                .upstream_dns
                .iter()
                .copied()
                .filter(|a| !a.is_loopback())
                .take(2),
        );
        ns
    } else {
        opts.dns.clone()
    };
    let dns = task_dns(nameservers, &inner.cfg.search_domains, spec);
    let etc = match write_etc_files(&dir, &hostname, net.address, &dns) {
        Ok(e) => e,
        Err(e) => {
            cleanup(inner, network, id, id).await;
            fail(inner, format!("/etc files: {e}"));
            return None;
        }
    };
    let mut mount_specs = Vec::new();
    if !secrets.is_empty() {
        let owner = mounts::numeric_owner(&spec.user);
        match mounts::write_secrets(id, &inner.secrets_dir(id), secrets, owner) {
            Ok(paths) => {
                for r in &spec.secrets {
                    if let Some(p) = paths.get(&r.name) {
                        mount_specs.push(MountSpec::Bind {
                            source: p.clone(),
                            target: r.target.clone(),
                            read_only: true,
                        });
                    }
                }
            }
            Err(e) => {
                cleanup(inner, network, id, id).await;
                fail(inner, e.to_string());
                return None;
            }
        }
    }
    if !files.configs.is_empty() {
        let owner = mounts::numeric_owner(&spec.user);
        let wanted: Vec<(String, Vec<u8>, u32)> = spec
            .configs
            .iter()
            .filter_map(|r| {
                let data = files.configs.iter().find(|(n, _)| n == &r.name)?;
                Some((r.name.clone(), data.1.clone(), r.mode))
            })
            .collect();
        match mounts::write_configs(id, &dir.join("configs"), &wanted, owner) {
            Ok(paths) => {
                for (r, p) in spec.configs.iter().zip(paths) {
                    mount_specs.push(MountSpec::Bind {
                        source: p,
                        target: r.target.clone(),
                        read_only: true,
                    });
                }
            }
            Err(e) => {
                cleanup(inner, network, id, id).await;
                fail(inner, e.to_string());
                return None;
            }
        }
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        let ms = match m.kind {
            // In the task's own directory, so that it goes with the task (`cleanup`).
            MountKind::Volume if m.is_anonymous() => match mounts::anonymous_volume_dir(&inner.task_dir(id), i) {
                Ok(dir) => MountSpec::Bind {
                    source: dir,
                    target: m.target.clone(),
                    read_only: m.readonly,
                },
                Err(e) => {
                    cleanup(inner, network, id, id).await;
                    fail(inner, e.to_string());
                    return None;
                }
            },
            MountKind::Volume => match mounts::volume_dir(&inner.volumes_dir(), &m.source) {
                Ok(dir) => MountSpec::Bind {
                    source: dir,
                    target: m.target.clone(),
                    read_only: m.readonly,
                },
                Err(e) => {
                    cleanup(inner, network, id, id).await;
                    fail(inner, e.to_string());
                    return None;
                }
            },
            MountKind::Bind => MountSpec::Bind {
                source: m.source.clone().into(),
                target: m.target.clone(),
                read_only: m.readonly,
            },
            MountKind::Tmpfs => MountSpec::Tmpfs {
                target: m.target.clone(),
                size_bytes: None,
                mode: None,
            },
        };
        mount_specs.push(ms);
    }
    let labels = BTreeMap::from([
        (crate::runtime::LABEL_NODE.to_string(), inner.cfg.node_id.clone()),
        (crate::runtime::LABEL_TASK_ID.to_string(), id.clone()),
        (crate::runtime::LABEL_SERVICE.to_string(), task.service_name.clone()),
        ("warren.slot".to_string(), task.slot.to_string()),
    ]);
    let cspec = ContainerSpec {
        id: id.clone(),
        image: spec.image.clone(),
        labels,
        command: (!spec.command.is_empty()).then(|| spec.command.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: spec
            .env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect(),
        workdir: (!spec.workdir.is_empty()).then(|| spec.workdir.clone()),
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        hostname: Some(hostname),
        network: NetworkMode::Join(net.netns_path.clone()),
        mounts: mount_specs,
        resources: Resources {
            cpus: (spec.limits.nano_cpus > 0).then(|| spec.limits.nano_cpus as f64 / 1e9),
            memory_bytes: (spec.limits.memory_bytes > 0).then_some(spec.limits.memory_bytes as u64),
            pids_limit: (opts.pids_limit > 0).then_some(opts.pids_limit as i64),
        },
        hosts_file: Some(etc.hosts),
        resolv_conf: Some(etc.resolv_conf),
        read_only_rootfs: opts.read_only,
        cap_add: opts.cap_add.clone(),
        cap_drop: opts.cap_drop.clone(),
        rlimits: opts
            .ulimits
            .iter()
            .map(|u| crate::runtime::Rlimit {
                kind: format!("RLIMIT_{}", u.name.to_ascii_uppercase()),
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        sysctls: opts.sysctls.clone(),
        init: opts.init,
    };
    if *stop.borrow() {
        cleanup(inner, network, id, id).await;
        inner.report(id, status(TaskState::Shutdown, "stopped before it started"));
        return None;
    }
    inner.report(id, status(TaskState::Starting, "starting"));
    if let Err(e) = rt.run(&cspec).await {
        let mut st = status(TaskState::Failed, "the container did not start");
        st.err = e.to_string();
        cleanup(inner, network, id, id).await;
        inner.report(id, st);
        return None;
    }
    let mut st = status(TaskState::Running, "running");
    st.container_id = id.clone();
    st.addr = net.address.to_string();
    // A task with a health check is "starting" from its first running report: it
    // becomes a backend only once a check passed, and never flaps in and out.
    if health::plan(spec.health.as_ref(), image.config.healthcheck.as_ref()).is_some() {
        st.health = "starting".into();
    }
    inner.report(id, st);
    Some((
        Some(net.address),
        Some(net.netns_path.clone()),
        image.config.healthcheck.clone(),
        image.config.stop_signal.clone(),
    ))
}

/// Removes the container (not its log), the task's network, secrets and files.
async fn cleanup(inner: &Inner, network: &dyn NetworkManager, task_id: &str, container_id: &str) {
    if let Err(e) = inner.runtime.delete(container_id).await {
        tracing::warn!(task = task_id, error = %e, "removing the container");
    }
    if let Err(e) = network.teardown_task(task_id).await {
        tracing::warn!(task = task_id, error = %e, "removing the task's network");
    }
    mounts::remove_secrets(&inner.secrets_dir(task_id));
    let _ = std::fs::remove_dir_all(inner.task_dir(task_id));
}

/// A container from before a restart that no assignment wants any more.
pub(super) async fn remove_leftover(inner: &Inner, network: &dyn NetworkManager, task_id: &str, container_id: &str) {
    let _ = inner
        .runtime
        .stop(container_id, libc::SIGTERM, Duration::from_secs(10))
        .await;
    cleanup(inner, network, task_id, container_id).await;
}

/// The task's resolver settings. A task of a stack also searches `<stack>.<domain>`
/// first (with `ndots:1`, so that a bare name tries it before anything else): the
/// node's DNS answers `db.<stack>` for the stack's service `<stack>_db`, so `db`
/// works inside the stack as in compose.
fn task_dns(nameservers: Vec<std::net::IpAddr>, domains: &[String], spec: &crate::model::ServiceSpec) -> DnsConfig {
    match spec.labels.get(crate::model::STACK_LABEL) {
        Some(stack) if !stack.is_empty() => {
            let stack = stack.to_ascii_lowercase();
            let mut search: Vec<String> = domains.iter().map(|d| format!("{stack}.{d}")).collect();
            search.extend(domains.iter().cloned());
            DnsConfig {
                nameservers,
                search,
                ndots: 1,
            }
        }
        _ => DnsConfig {
            nameservers,
            search: domains.to_vec(),
            ndots: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stack_task_searches_its_stack_first() {
        let mut spec = crate::model::ServiceSpec::default();
        let ns = vec![std::net::IpAddr::from([10, 88, 0, 1])];
        let plain = super::task_dns(ns.clone(), &["warren".into()], &spec);
        assert_eq!((plain.search, plain.ndots), (vec!["warren".to_string()], 0));
        spec.labels.insert(crate::model::STACK_LABEL.into(), "Shop".into());
        let stacked = super::task_dns(ns, &["warren".into()], &spec);
        assert_eq!(stacked.search, ["shop.warren", "warren"]);
        assert_eq!(stacked.ndots, 1);
    }

    #[test]
    fn the_model_and_the_runtime_know_the_same_capabilities() {
        assert_eq!(crate::model::CAPABILITIES, crate::runtime::spec::ALL_CAPS);
    }
}
