//! `warren dataplane services|ct|ratelimit|stats`: this node's eBPF maps read
//! directly from their pins (`crate::dataplane::inspect`), so they work with the
//! daemon stopped; human tables or `--format json`. Needs root (bpffs).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{args::Format, render};
use crate::dataplane::inspect;

/// Which node's pins to read.
#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// The node's bpffs directory [default: the only one under /sys/fs/bpf/warren].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// The node's name, for /sys/fs/bpf/warren/<node>.
    #[arg(long, conflicts_with = "bpffs")]
    pub node: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum DataplaneCmd {
    /// Service addresses with their backends, table shares and rate limits.
    Services(PinArgs),
    /// Connection-tracking entries of the tc path (published ports from the wire).
    Ct(PinArgs),
    /// Token buckets per service and client.
    Ratelimit(PinArgs),
    /// Connection, packet and drop counters per service and backend.
    Stats(PinArgs),
}

fn dir(a: &PinArgs) -> Result<PathBuf> {
    match &a.bpffs {
        Some(d) => Ok(d.clone()),
        None => Ok(inspect::pin_dir(a.node.as_deref())?),
    }
}

pub fn run(cmd: DataplaneCmd) -> Result<()> {
    match cmd {
        DataplaneCmd::Services(a) => {
            let d = dir(&a)?;
            let v = inspect::services(&d).with_context(|| format!("reading {}", d.display()))?;
            if a.format == Format::Json {
                return render::emit(&render::json(&v)?);
            }
            let mut rows = Vec::new();
            for s in &v {
                let backends = s
                    .backends
                    .iter()
                    .map(|b| {
                        format!(
                            "{}{}{} ({} slots)",
                            b.addr,
                            if b.local { "" } else { " remote" },
                            if b.canary { " canary" } else { "" },
                            b.slots
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                for (i, f) in s.frontends.iter().enumerate() {
                    let first = i == 0;
                    rows.push(vec![
                        if first { s.id.to_string() } else { String::new() },
                        format!("{}{}", f.address, if f.refusing { " (removed)" } else { "" }),
                        if f.target_port == 0 {
                            "=".into()
                        } else {
                            f.target_port.to_string()
                        },
                        if first { backends.clone() } else { String::new() },
                        if first && s.canary_share > 0.0 {
                            format!("{:.1}%", s.canary_share)
                        } else {
                            String::new()
                        },
                        if first && s.rate_per_sec > 0 {
                            format!("{}/s burst {}", s.rate_per_sec, s.rate_burst)
                        } else {
                            String::new()
                        },
                    ]);
                }
            }
            render::emit(&render::table(
                &["ID", "FRONTEND", "TARGET", "BACKENDS", "CANARY", "RATE LIMIT"],
                rows,
            ))?;
        }
        DataplaneCmd::Ct(a) => {
            let d = dir(&a)?;
            let v = inspect::flows(&d).with_context(|| format!("reading {}", d.display()))?;
            if a.format == Format::Json {
                return render::emit(&render::json(&v)?);
            }
            let rows = v
                .iter()
                .map(|f| {
                    vec![
                        f.service_id.to_string(),
                        f.proto.to_string(),
                        f.direction.to_string(),
                        f.from.clone(),
                        f.to.clone(),
                        if f.snat { "snat".into() } else { String::new() },
                        f.state.to_string(),
                        format!("{}ms", f.idle_ms),
                    ]
                })
                .collect();
            render::emit(&render::table(
                &[
                    "SERVICE",
                    "PROTO",
                    "DIR",
                    "PACKET",
                    "REWRITTEN TO",
                    "NAT",
                    "STATE",
                    "IDLE",
                ],
                rows,
            ))?;
        }
        DataplaneCmd::Ratelimit(a) => {
            let d = dir(&a)?;
            let v = inspect::buckets(&d).with_context(|| format!("reading {}", d.display()))?;
            if a.format == Format::Json {
                return render::emit(&render::json(&v)?);
            }
            let rows = v
                .iter()
                .map(|b| {
                    vec![
                        b.service_id.to_string(),
                        b.client.clone(),
                        format!("{:.3}", b.tokens),
                        format!("{}ms", b.idle_ms),
                    ]
                })
                .collect();
            render::emit(&render::table(&["SERVICE", "CLIENT", "TOKENS", "SINCE REFILL"], rows))?;
        }
        DataplaneCmd::Stats(a) => {
            let d = dir(&a)?;
            let v = inspect::counters(&d).with_context(|| format!("reading {}", d.display()))?;
            if a.format == Format::Json {
                return render::emit(&render::json(&v)?);
            }
            let mut rows = Vec::new();
            for s in &v {
                let drops = s
                    .drops
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, n)| format!("{r}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                rows.push(vec![
                    s.service_id.to_string(),
                    "*".into(),
                    s.connections.to_string(),
                    s.packets.to_string(),
                    s.bytes.to_string(),
                    drops,
                ]);
                for b in &s.backends {
                    rows.push(vec![
                        String::new(),
                        b.addr.to_string(),
                        b.connections.to_string(),
                        b.packets.to_string(),
                        b.bytes.to_string(),
                        String::new(),
                    ]);
                }
            }
            render::emit(&render::table(
                &["SERVICE", "BACKEND", "CONNECTIONS", "PACKETS", "BYTES", "DROPS"],
                rows,
            ))?;
        }
    }
    Ok(())
}
