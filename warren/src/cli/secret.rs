//! `warren secret ...`: create from a file or standard input, list (never the
//! values), remove.

use super::args::{Format, SecretCmd};
use super::client::{call, Client};
use super::render::secrets_volumes::SecretView;
use super::render::{self, emit, json, line};
use crate::model::{self, parse_key_value};
use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;
use warren_proto::v1 as pb;

pub async fn run(c: &mut Client, cmd: SecretCmd) -> Result<()> {
    match cmd {
        SecretCmd::Create { name, file, labels } => {
            let (labels, data) = create_input("secret", &name, &file, &labels)?;
            let s = call(c.create_secret(pb::CreateSecretRequest { name, data, labels })).await?;
            line(&s.id)?;
        }
        SecretCmd::Ls { format, quiet } => {
            let list = call(c.list_secrets(pb::ListSecretsRequest {})).await?;
            let views: Vec<SecretView> = list.secrets.into_iter().map(SecretView::from_pb).collect();
            if quiet {
                for s in &views {
                    line(&s.id)?;
                }
            } else if format == Format::Json {
                emit(&json(&views)?)?;
            } else {
                emit(&render::secrets_volumes::secrets_table(&views))?;
            }
        }
        SecretCmd::Rm { secrets } => {
            let mut printed = Ok(());
            for s in secrets {
                call(c.remove_secret(pb::RemoveSecretRequest { secret: s.clone() })).await?;
                printed = printed.and(line(&s));
            }
            printed?;
        }
    }
    Ok(())
}

/// What `secret create` and `config create` send: the checked name's labels and the
/// data read from `file` (`-` for standard input).
pub(super) fn create_input(
    kind: &str,
    name: &str,
    file: &str,
    labels: &[String],
) -> Result<(HashMap<String, String>, Vec<u8>)> {
    model::validate_name("name", name).map_err(|e| anyhow!("{e}"))?;
    let mut l = HashMap::new();
    for x in labels {
        let (k, val) = parse_key_value("--label", x).map_err(|e| anyhow!("{e}"))?;
        l.insert(k, val);
    }
    let data = if file == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .with_context(|| format!("reading the {kind} from standard input"))?;
        buf
    } else {
        std::fs::read(file).with_context(|| format!("reading the {kind} from {file}"))?
    };
    Ok((l, data))
}
