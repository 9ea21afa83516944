//! The `warren` (and `wrn`) command line: parses arguments, sets up logging for the
//! daemon commands, and runs either the daemon or one client command. Errors are
//! printed as one line, `error: ...`, with a non-zero exit.

pub mod args;
mod client;
mod commands;
mod dataplane;
mod output;

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
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
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
    Ok(DaemonOptions {
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
        },
        manager: ManagerSettings {
            heartbeat_period: t.heartbeat_period,
            heartbeat_grace: t.heartbeat_grace,
            ..Default::default()
        },
    })
}

fn print_ready(r: &Ready) {
    println!(
        "Node {} ({}) is up as a {} of cluster {}.",
        r.node_name,
        r.node_id,
        r.role.as_str(),
        r.cluster_id
    );
    if let Some((worker, manager)) = &r.tokens {
        println!(
            "\nTo add a worker to this cluster, run:\n\n    warren cluster join --token {worker} {}\n",
            r.advertise_addr
        );
        println!(
            "To add a manager to this cluster, run:\n\n    warren cluster join --token {manager} {}\n",
            r.advertise_addr
        );
    }
    if r.role == NodeRole::Manager {
        println!("The local API is on unix://{}", r.socket.display());
    }
}

enum CmdKind {
    Call,
    Stream,
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Cluster(ClusterCmd::Init {
            node,
            pod_cidr,
            service_cidr,
        }) => {
            init_logging(cli.log_format);
            let opts = options(&node)?;
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
        Command::Daemon(DaemonArgs { node }) => {
            init_logging(cli.log_format);
            let opts = options(&node)?;
            daemon::resume(opts, print_ready).await?;
        }
        Command::Cluster(ClusterCmd::Leave { data_dir, force }) => {
            init_logging(cli.log_format);
            let r = crate::leave::leave(&data_dir, force).await?;
            if let Some(pid) = r.stopped_pid {
                println!("Stopped the daemon (pid {pid}).");
            }
            println!("Removed {} container(s).", r.containers);
            if r.network {
                println!("Removed the node network (task namespaces, bridge, nft table).");
            }
            if let Some(dir) = &r.dataplane {
                println!(
                    "Removed the eBPF data plane (programs detached, {} unpinned).",
                    dir.display()
                );
            }
            match &r.kept_volumes {
                Some(v) => println!(
                    "Removed {} except local volumes holding data, kept in {}.",
                    data_dir.display(),
                    v.display()
                ),
                None => println!("Removed {}.", data_dir.display()),
            }
            println!(
                "Node {} left the cluster; on a manager, `warren node rm {}` removes it from the node list.",
                r.node_name, r.node_name
            );
        }
        Command::Dataplane(d) => dataplane::run(d)?,
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "warren", &mut std::io::stdout());
            clap_complete::generate(shell, &mut cmd, "wrn", &mut std::io::stdout());
        }
        cmd => {
            let streaming = matches!(
                cmd,
                Command::Events { .. } | Command::Image(_) | Command::Task(TaskCmd::Logs { .. })
            ) || matches!(&cmd, Command::Service(s) if matches!(**s, ServiceCmd::Logs { .. }));
            let cmd_kind = if streaming { CmdKind::Stream } else { CmdKind::Call };
            let mut c = client::connect(&cli.host, &cli.tls_dir).await?;
            let fut = async {
                match cmd {
                    Command::Cluster(ClusterCmd::JoinToken { role, rotate, quiet }) => {
                        commands::join_token(&mut c, role, rotate, quiet).await
                    }
                    Command::Cluster(ClusterCmd::Info { format }) => commands::cluster_info(&mut c, format).await,
                    Command::Service(s) => commands::service(&mut c, *s).await,
                    Command::Node(n) => commands::node(&mut c, n).await,
                    Command::Task(t) => return commands::task(&mut c, t).await,
                    Command::Image(i) => commands::image(&mut c, i).await,
                    Command::Secret(s) => commands::secret(&mut c, s).await,
                    Command::Volume(v) => commands::volume(&mut c, v).await,
                    Command::Events { kinds, format } => return commands::events(&mut c, kinds, format).await,
                    _ => unreachable!("daemon commands are handled above"),
                }
            };
            let limit = if matches!(cmd_kind, CmdKind::Stream) {
                Duration::MAX
            } else {
                Duration::from_secs(60)
            };
            tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| anyhow!("no answer from {} within 60s", cli.host))??;
        }
    }
    Ok(())
}
