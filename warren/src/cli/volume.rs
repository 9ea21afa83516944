//! `warren volume ...`: create, list, remove.

use super::args::{Format, VolumeCmd};
use super::client::{call, Client};
use super::render::secrets_volumes::VolumeView;
use super::render::{self, emit, json, line};
use crate::model::{self, parse_key_value};
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use warren_proto::v1 as pb;

pub async fn run(c: &mut Client, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create {
            name,
            driver,
            labels,
            options,
        } => {
            model::validate_name("name", &name).map_err(|e| anyhow!("{e}"))?;
            let kv = |flag: &str, xs: &[String]| -> Result<HashMap<String, String>> {
                xs.iter()
                    .map(|x| parse_key_value(flag, x).map_err(|e| anyhow!("{e}")))
                    .collect()
            };
            let vol = call(c.create_volume(pb::CreateVolumeRequest {
                name,
                driver,
                labels: kv("--label", &labels)?,
                options: kv("--opt", &options)?,
            }))
            .await?;
            line(&vol.name)?;
        }
        VolumeCmd::Ls { format, quiet } => {
            let list = call(c.list_volumes(pb::ListVolumesRequest {})).await?;
            let views: Vec<VolumeView> = list.volumes.into_iter().map(VolumeView::from_pb).collect();
            if quiet {
                for x in &views {
                    line(&x.name)?;
                }
            } else if format == Format::Json {
                emit(&json(&views)?)?;
            } else {
                emit(&render::secrets_volumes::volumes_table(&views))?;
            }
        }
        VolumeCmd::Rm { volumes } => {
            let mut printed = Ok(());
            for x in volumes {
                call(c.remove_volume(pb::RemoveVolumeRequest { volume: x.clone() })).await?;
                printed = printed.and(line(&x));
            }
            printed?;
        }
    }
    Ok(())
}
