//! `warren apply -f` and `warren stack ...`: load the files (`crate::manifest`: parse,
//! interpolate, merge), send the manifest to the manager, print the diff it answers
//! with; a manager error's field path is shown at the file and line it came from.
//! The stack views (`ls`, `services`, `ps`) are services and tasks filtered by the
//! stack label.

use super::args::{ApplyArgs, ApplyOpts, Format, StackCmd};
use super::client::{call, status_error, Client};
use super::render::services::{ServiceView, TaskView};
use super::render::{self, emit, json, line, table};
use crate::manifest::{self, Env, Loaded};
use crate::model::{Manifest, Origins, STACK_LABEL};
use crate::wire::convert;
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use warren_proto::v1 as pb;

pub async fn apply(c: &mut Client, a: ApplyArgs) -> Result<()> {
    let loaded = manifest::load_apply(&a.files, &Env::from_process()).map_err(|e| anyhow!("{e}"))?;
    send(c, loaded, &a.opts).await
}

pub async fn stack(c: &mut Client, cmd: StackCmd) -> Result<()> {
    match cmd {
        StackCmd::Deploy { files, name, opts } => {
            crate::model::validate_name("stack", &name).map_err(|e| anyhow!("{e}"))?;
            let mut loaded = manifest::load_stack(&files, &name, &Env::from_process()).map_err(|e| anyhow!("{e}"))?;
            loaded.manifest.stack = Some(name);
            send(c, loaded, &opts).await
        }
        StackCmd::Ls { format } => {
            // (services, other objects): a stack whose services are gone but whose
            // secrets, configs or routes remain is still listed (`stack rm` removes
            // it); volumes outlive their stack and do not count.
            let mut stacks: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for s in services(c).await? {
                if let Some(st) = s.service.spec.labels.get(STACK_LABEL) {
                    stacks.entry(st.clone()).or_default().0 += 1;
                }
            }
            let mut others: Vec<std::collections::HashMap<String, String>> = Vec::new();
            others.extend(
                call(c.list_secrets(pb::ListSecretsRequest {}))
                    .await?
                    .secrets
                    .into_iter()
                    .map(|s| s.labels),
            );
            others.extend(
                call(c.list_configs(pb::ListConfigsRequest {}))
                    .await?
                    .configs
                    .into_iter()
                    .map(|s| s.labels),
            );
            for r in call(c.list_ingress_routes(pb::ListIngressRoutesRequest {}))
                .await?
                .routes
            {
                if let Ok(spec) = convert::spec_from_json(&r.spec_json) {
                    others.push(spec.labels.into_iter().collect());
                }
            }
            for labels in others {
                if let Some(st) = labels.get(STACK_LABEL) {
                    stacks.entry(st.clone()).or_default().1 += 1;
                }
            }
            if format == Format::Json {
                #[derive(Serialize)]
                struct StackView<'a> {
                    name: &'a str,
                    services: usize,
                    /// Secrets, configs and ingress routes of the stack.
                    objects: usize,
                }
                let views: Vec<StackView> = stacks
                    .iter()
                    .map(|(name, (n, o))| StackView {
                        name,
                        services: *n,
                        objects: *o,
                    })
                    .collect();
                emit(&json(&views)?)
            } else {
                emit(&table(
                    &["NAME", "SERVICES", "OBJECTS"],
                    stacks
                        .iter()
                        .map(|(n, (c, o))| vec![n.clone(), c.to_string(), o.to_string()])
                        .collect(),
                ))
            }
        }
        StackCmd::Services { name, format, quiet } => {
            let views = stack_services(c, &name).await?;
            if quiet {
                for s in &views {
                    line(&s.service.id)?;
                }
                Ok(())
            } else if format == Format::Json {
                emit(&json(&views)?)
            } else {
                emit(&render::services::services_table(&views))
            }
        }
        StackCmd::Ps { name, format } => {
            let views = stack_services(c, &name).await?;
            let names = super::node::names(c).await?;
            let mut tasks = Vec::new();
            for s in &views {
                let list = call(c.list_tasks(pb::ListTasksRequest {
                    service: s.service.id.clone(),
                    node: String::new(),
                }))
                .await?;
                for t in list.tasks {
                    tasks.push(TaskView::from_pb(t, &names)?);
                }
            }
            if format == Format::Json {
                emit(&json(&tasks)?)
            } else {
                emit(&render::services::tasks_table(&tasks))
            }
        }
        StackCmd::Rm { names } => {
            for name in names {
                let m = Manifest {
                    stack: Some(name.clone()),
                    ..Default::default()
                };
                let reply = call(c.apply_manifest(convert::manifest_to_pb(&m, false, true))).await?;
                if reply.changes.is_empty() {
                    return Err(anyhow!("nothing found in stack {name}"));
                }
                for ch in &reply.changes {
                    line(&format!("Removing {} {}", ch.kind, ch.name))?;
                }
            }
            Ok(())
        }
    }
}

async fn services(c: &mut Client) -> Result<Vec<ServiceView>> {
    call(c.list_services(pb::ListServicesRequest {}))
        .await?
        .services
        .into_iter()
        .map(ServiceView::from_pb)
        .collect()
}

async fn stack_services(c: &mut Client, name: &str) -> Result<Vec<ServiceView>> {
    let views: Vec<ServiceView> = services(c)
        .await?
        .into_iter()
        .filter(|s| s.service.spec.labels.get(STACK_LABEL).map(String::as_str) == Some(name))
        .collect();
    if views.is_empty() {
        return Err(anyhow!("nothing found in stack {name}"));
    }
    Ok(views)
}

#[derive(Serialize)]
struct DiffView {
    kind: String,
    name: String,
    action: String,
    field: String,
    changed: Vec<String>,
}

#[derive(Serialize)]
struct ApplyView {
    dry_run: bool,
    applied: bool,
    changes: Vec<DiffView>,
}

async fn send(c: &mut Client, loaded: Loaded, opts: &ApplyOpts) -> Result<()> {
    let Loaded {
        manifest,
        origins,
        warnings,
        ..
    } = loaded;
    for w in &warnings {
        render::error_line(&format!("warning: {w}"));
    }
    if !manifest.ignored.is_empty() {
        render::error_line(&format!(
            "ignoring keys Warren does not support: {}",
            manifest.ignored.join(", ")
        ));
    }
    for s in &manifest.services {
        if let Some(c) = s.canary.as_ref().filter(|c| !c.steps.is_empty()) {
            render::error_line(&format!(
                "warning: services.{}: canary steps {:?} are not advanced automatically: the canary starts at {}%; raise it with `warren service update --canary-weight N` and `warren service promote`",
                s.name, c.steps, c.weight
            ));
        }
    }
    let req = convert::manifest_to_pb(&manifest, opts.dry_run, opts.prune);
    let reply = c
        .apply_manifest(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| located(&origins, s))?;
    let view = ApplyView {
        dry_run: opts.dry_run,
        applied: reply.applied,
        changes: reply
            .changes
            .into_iter()
            .map(|c| DiffView {
                kind: c.kind,
                name: c.name,
                action: c.action,
                field: c.field,
                changed: c.changed,
            })
            .collect(),
    };
    if opts.format == Format::Json {
        return emit(&json(&view)?);
    }
    emit(&diff_text(&view))
}

/// A manager error about a manifest field, at the line the field came from.
fn located(origins: &Origins, s: tonic::Status) -> anyhow::Error {
    if let Some(field) = crate::wire::status::field_of(&s) {
        if let Some(why) = s.message().strip_prefix(&format!("{field}: ")) {
            return anyhow!("{}", manifest::locate(origins, field, why));
        }
    }
    status_error(s)
}

fn diff_text(v: &ApplyView) -> String {
    let rows = v
        .changes
        .iter()
        .map(|c| {
            vec![
                c.action.clone(),
                c.kind.clone(),
                c.name.clone(),
                if c.changed.is_empty() {
                    "-".into()
                } else {
                    c.changed.join(",")
                },
            ]
        })
        .collect();
    let mut out = table(&["ACTION", "KIND", "NAME", "CHANGED"], rows);
    let count = |a: &str| v.changes.iter().filter(|c| c.action == a).count();
    out.push_str(&format!(
        "{} to create, {} to update, {} unchanged, {} to remove",
        count("create"),
        count("update"),
        count("unchanged"),
        count("remove")
    ));
    out.push_str(if v.dry_run {
        " (dry run: nothing changed)\n"
    } else if v.applied {
        ": applied\n"
    } else {
        ": nothing to do\n"
    });
    out
}
