//! The `warren` (and `wrn`) command line: parses arguments, sets up logging for the
//! daemon commands, and runs either the daemon or one client command, found by its
//! noun (`service`, `node`, ... one file each; `render` prints). Errors are printed
//! here, once, as one line, `error: ...`, with a non-zero exit; a closed standard
//! output (`| head`) ends a command quietly with status 0.

mod apply;
pub mod args;
mod client;
mod cluster;
mod config;
mod dataplane;
mod events;
mod image;
mod ingress;
pub mod ingress_args;
mod node;
mod render;
mod rollout;
mod secret;
mod service;
mod task;
mod volume;

use crate::daemon::{self, DaemonOptions, Ready};
use crate::manager::ManagerSettings;
use crate::model::{parse_cpus, parse_size, NodeRole, Resources};
use anyhow::{anyhow, Result};
use args::*;
use clap::{CommandFactory, Parser};
use std::time::Duration;

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            render::error_line(&format!("error: cannot start the async runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    if client::stale() {
        render::error_line(render::STALE_NOTE);
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Whoever read the output has what they wanted (`| head -1`).
        Err(e) if e.is::<render::StdoutClosed>() => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<render::Reported>() => std::process::ExitCode::FAILURE,
        Err(e) => {
            render::error_line(&format!("error: {}", one_line(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, without repeating a cause already quoted.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WARREN_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn,hickory_server=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

fn options(node: &NodeArgs) -> Result<DaemonOptions> {
    let mut capacity = None;
    if node.capacity_cpus.is_some() || node.capacity_memory.is_some() {
        let detected = crate::agent::detect_resources();
        capacity = Some(Resources {
            nano_cpus: match &node.capacity_cpus {
                Some(c) => parse_cpus("--capacity-cpus", c).map_err(|e| anyhow!("{e}"))?,
                None => detected.nano_cpus,
            },
            memory_bytes: match &node.capacity_memory {
                Some(m) => parse_size("--capacity-memory", m).map_err(|e| anyhow!("{e}"))?,
                None => detected.memory_bytes,
            },
        });
    }
    let t = &node.tuning;
    if t.heartbeat_grace <= t.heartbeat_period {
        return Err(anyhow!("--heartbeat-grace must be longer than --heartbeat-period"));
    }
    let ingress = node.ingress.ingress.then_some(crate::model::ingress::NodeIngress {
        http_port: node.ingress.ingress_http_port,
        https_port: node.ingress.ingress_https_port,
    });
    if let Some(i) = &ingress {
        i.validate().map_err(|e| anyhow!("--{}: {}", e.field, e.message))?;
    }
    Ok(DaemonOptions {
        ingress,
        data_dir: node.data_dir.clone(),
        listen_addr: node.listen_addr,
        advertise_addr: node.advertise_addr,
        socket: node.socket.clone(),
        metrics_addr: node.metrics_addr,
        node_name: node.node_name.clone(),
        capacity,
        raft: crate::raft::node::RaftTuning {
            snapshot_every: t.raft_snapshot_every.max(10),
            ..Default::default()
        },
        runtime: crate::daemon::RuntimeOverrides {
            containerd: node.runtime.runtime.map(|k| k == RuntimeKind::Containerd),
            containerd_socket: node.runtime.containerd_socket.clone(),
            containerd_namespace: node.runtime.containerd_namespace.clone(),
            cgroup_parent: node.runtime.cgroup_parent.clone(),
            bridge: node.runtime.bridge.clone(),
            insecure_registries: node.runtime.insecure_registries.clone(),
            dataplane: node.runtime.dataplane.map(|k| k == DataplaneKind::Ebpf),
            bpffs: node.runtime.bpffs.clone(),
            cgroup_root: node.runtime.cgroup_root.clone(),
            dataplane_ifaces: node.runtime.dataplane_ifaces.clone(),
            mesh_interface: node.runtime.mesh_interface.clone(),
            mesh_port: node.runtime.mesh_port,
            mesh_run_dir: node.runtime.mesh_run_dir.clone(),
            wireguard_go: node.runtime.wireguard_go.clone(),
        },
        overlay: None,
        cert_expiry: None,
        manager: ManagerSettings {
            heartbeat_period: t.heartbeat_period,
            heartbeat_grace: t.heartbeat_grace,
            ..Default::default()
        },
    })
}

fn print_ready(r: &Ready) {
    let mut text = format!(
        "Node {} ({}) is up as a {} of cluster {}.\n",
        r.node_name,
        r.node_id,
        r.role.as_str(),
        r.cluster_id
    );
    if let Some((worker, manager)) = &r.tokens {
        text.push_str(&format!(
            "\nTo add a worker to this cluster, run:\n\n    warren cluster join --token {worker} {}\n\n",
            r.advertise_addr
        ));
        text.push_str(&format!(
            "To add a manager to this cluster, run:\n\n    warren cluster join --token {manager} {}\n\n",
            r.advertise_addr
        ));
    }
    if r.role == NodeRole::Manager {
        text.push_str(&format!("The local API is on unix://{}\n", r.socket.display()));
    }
    // The daemon keeps running when nobody reads its standard output any more.
    let _ = render::emit(&text);
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Cluster(ClusterCmd::Init {
            node,
            pod_cidr,
            service_cidr,
            overlay,
            cert_expiry,
        }) => {
            init_logging(cli.log_format);
            let mut opts = options(&node)?;
            if let Some(d) = cert_expiry {
                crate::model::validate_cert_expiry("cert-expiry", d)
                    .map_err(|e| anyhow::anyhow!("--{}: {}", e.field, e.message))?;
            }
            opts.cert_expiry = cert_expiry;
            opts.overlay = Some(match overlay {
                OverlayArg::Wireguard => crate::model::Overlay::Wireguard,
                OverlayArg::Native => crate::model::Overlay::Native,
            });
            daemon::init(opts, &pod_cidr, &service_cidr, print_ready).await?;
        }
        Command::Cluster(ClusterCmd::Join {
            token,
            node,
            manager_addr,
        }) => {
            init_logging(cli.log_format);
            let opts = options(&node)?;
            daemon::join(opts, &token, &manager_addr, print_ready).await?;
        }
        Command::Cluster(ClusterCmd::Restore { file, passphrase, node }) => {
            let passphrase = cluster::passphrase(&passphrase)?;
            let bytes = std::fs::read(&file).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            init_logging(cli.log_format);
            let opts = options(&node)?;
            daemon::restore(opts, &bytes, &passphrase, print_ready).await?;
        }
        Command::Daemon(DaemonArgs { node }) => {
            init_logging(cli.log_format);
            let opts = options(&node)?;
            daemon::resume(opts, print_ready).await?;
        }
        Command::Cluster(ClusterCmd::Leave { data_dir, force }) => {
            init_logging(cli.log_format);
            let r = crate::leave::leave(&data_dir, force).await?;
            let mut text = String::new();
            if let Some(pid) = r.stopped_pid {
                text.push_str(&format!("Stopped the daemon (pid {pid}).\n"));
            }
            text.push_str(&format!("Removed {} container(s).\n", r.containers));
            if r.network {
                text.push_str("Removed the node network (task namespaces, bridge, nft table).\n");
            }
            if r.mesh {
                text.push_str("Removed the WireGuard mesh (interface, routes, wireguard-go).\n");
            }
            if let Some(dir) = &r.dataplane {
                text.push_str(&format!(
                    "Removed the eBPF data plane (programs detached, {} unpinned).\n",
                    dir.display()
                ));
            }
            match &r.kept_volumes {
                Some(v) => text.push_str(&format!(
                    "Removed {} except local volumes holding data, kept in {}.\n",
                    data_dir.display(),
                    v.display()
                )),
                None => text.push_str(&format!("Removed {}.\n", data_dir.display())),
            }
            text.push_str(&format!(
                "Node {} left the cluster; on a manager, `warren node rm {}` removes it from the node list.\n",
                r.node_name, r.node_name
            ));
            render::emit(&text)?;
        }
        Command::Dataplane(d) => dataplane::run(d)?,
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "warren", &mut script);
            clap_complete::generate(shell, &mut cmd, "wrn", &mut script);
            render::emit(&String::from_utf8_lossy(&script))?;
        }
        cmd => {
            let limit = if streams(&cmd) {
                Duration::MAX
            } else {
                Duration::from_secs(60)
            };
            let mut c = client::connect(&cli.host, &cli.tls_dir).await?;
            tokio::time::timeout(limit, client_command(&mut c, cmd))
                .await
                .map_err(|_| anyhow!("no answer from {} within 60s", cli.host))??;
        }
    }
    Ok(())
}

/// Commands that follow a stream (or upload one, or a rolling update) for as long as
/// it lasts, rather than waiting for one answer.
fn streams(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Events { .. } | Command::Image(_) | Command::Task(TaskCmd::Logs { .. })
    ) || matches!(cmd, Command::Service(s) if matches!(
        **s,
        ServiceCmd::Logs { .. }
            | ServiceCmd::Update { detach: false, .. }
            | ServiceCmd::Rollback { detach: false, .. }
    ))
}

/// One client command, by its noun.
async fn client_command(c: &mut client::Client, cmd: Command) -> Result<()> {
    match cmd {
        Command::Cluster(ClusterCmd::JoinToken {
            role,
            rotate,
            expire,
            quiet,
        }) => cluster::join_token(c, role, rotate, expire, quiet).await,
        Command::Cluster(ClusterCmd::Info { format }) => cluster::info(c, format).await,
        Command::Cluster(ClusterCmd::Backup { file, passphrase }) => cluster::backup(c, &file, &passphrase).await,
        Command::Service(s) => service::run(c, *s).await,
        Command::Node(n) => node::run(c, n).await,
        Command::Task(t) => task::run(c, t).await,
        Command::Image(i) => image::run(c, i).await,
        Command::Secret(s) => secret::run(c, s).await,
        Command::Volume(v) => volume::run(c, v).await,
        Command::Config(x) => config::run(c, x).await,
        Command::Apply(a) => apply::apply(c, a).await,
        Command::Stack(s) => apply::stack(c, s).await,
        Command::Ingress(i) => ingress::run(c, i).await,
        Command::Certificate(x) => ingress::certificates(c, x).await,
        Command::Cluster(ClusterCmd::Update(a)) => ingress::cluster_update(c, a).await,
        Command::Events { kinds, format } => events::run(c, kinds, format).await,
        Command::Cluster(
            ClusterCmd::Init { .. } | ClusterCmd::Join { .. } | ClusterCmd::Leave { .. } | ClusterCmd::Restore { .. },
        )
        | Command::Daemon(_)
        | Command::Dataplane(_)
        | Command::Completion { .. } => Err(anyhow!("not a client command: the daemon runs it")),
    }
}
