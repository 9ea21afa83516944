//! `warren config ...`: create from a file or standard input, list, remove.

use super::args::{ConfigCmd, Format};
use super::client::{call, Client};
use super::render::{ago, emit, json, line, short_id, table};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use warren_proto::v1 as pb;

#[derive(Serialize)]
struct ConfigView {
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
    digest: String,
    size: u64,
    created_ms: i64,
}

pub async fn run(c: &mut Client, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Create { name, file, labels } => {
            let (labels, data) = super::secret::create_input("config", &name, &file, &labels)?;
            let x = call(c.create_config(pb::CreateConfigRequest { name, data, labels })).await?;
            line(&x.id)?;
        }
        ConfigCmd::Ls { format, quiet } => {
            let list = call(c.list_configs(pb::ListConfigsRequest {})).await?;
            let views: Vec<ConfigView> = list
                .configs
                .into_iter()
                .map(|x| ConfigView {
                    id: x.id,
                    name: x.name,
                    labels: x.labels.into_iter().collect(),
                    digest: x.digest,
                    size: x.size,
                    created_ms: x.created_ms,
                })
                .collect();
            if quiet {
                for x in &views {
                    line(&x.id)?;
                }
            } else if format == Format::Json {
                emit(&json(&views)?)?;
            } else {
                emit(&table(
                    &["ID", "NAME", "SIZE", "CREATED"],
                    views
                        .iter()
                        .map(|x| vec![short_id(&x.id), x.name.clone(), x.size.to_string(), ago(x.created_ms)])
                        .collect(),
                ))?;
            }
        }
        ConfigCmd::Rm { configs } => {
            let mut printed = Ok(());
            for x in configs {
                call(c.remove_config(pb::RemoveConfigRequest { config: x.clone() })).await?;
                printed = printed.and(line(&x));
            }
            printed?;
        }
    }
    Ok(())
}
