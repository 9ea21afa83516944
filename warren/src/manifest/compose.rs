//! Compose files (the compose-spec) to a manifest part: the top-level `services`,
//! `secrets`, `configs`, `volumes` and `networks`, with references between them
//! checked as compose checks them; and the merge of several files (`-c a -c b`):
//! mappings merge key by key, lists of ports, volumes, secrets, ... add up,
//! `environment`/`labels`/`sysctls` merge by variable, anything else is replaced.

use super::service::{self, Decls};
use super::walk::{join, Cx, R};
use super::yaml::{Key, Node, Value};
use super::{record, Part, Vars};
use crate::model::{self, ManifestConfig, ManifestNetwork, ManifestSecret, ManifestVolume};

const TOP: &[&str] = &[
    "services", "secrets", "configs", "volumes", "networks", "version", "name",
];

pub(crate) fn convert(cx: &mut Cx, doc: &Node, vars: &Vars) -> R<Part> {
    let f = cx.fields(doc, "", TOP, &[], true)?;
    if let Some(i) = doc.key_line("include") {
        return Err(cx.err_at(doc.file, i, "include", "is not supported: give each file with -c"));
    }
    let mut part = Part::default();
    let mut decls = Decls::default();
    let m = &mut part.manifest;

    if let Some((s, p)) = f.get("secrets") {
        for (k, v) in cx.map(s, &p)? {
            let kp = join(&p, &k.name);
            let (name, external, data, labels) = object(cx, k, v, &kp, true, vars)?;
            decls.secrets.insert(k.name.clone(), name.clone());
            m.secrets.push(ManifestSecret {
                name,
                external,
                data,
                labels,
            });
        }
    }
    if let Some((s, p)) = f.get("configs") {
        for (k, v) in cx.map(s, &p)? {
            let kp = join(&p, &k.name);
            let (name, external, data, labels) = object(cx, k, v, &kp, false, vars)?;
            decls.configs.insert(k.name.clone(), name.clone());
            m.configs.push(ManifestConfig {
                name,
                external,
                data,
                labels,
            });
        }
    }
    if let Some((s, p)) = f.get("volumes") {
        for (k, v) in cx.map(s, &p)? {
            let kp = join(&p, &k.name);
            let vf = cx.fields(
                v,
                &kp,
                &["driver", "driver_opts", "external", "labels", "name"],
                &[],
                true,
            )?;
            let mut vol = ManifestVolume {
                name: k.name.clone(),
                ..Default::default()
            };
            if let Some((n, np)) = vf.get("name") {
                vol.name = cx.str(n, &np)?;
            }
            if let Some((e, ep)) = vf.get("external") {
                vol.external = cx.bool(e, &ep)?;
            }
            if let Some((d, dp)) = vf.get("driver") {
                vol.driver = cx.str(d, &dp)?;
                if vol.driver == "local" {
                    vol.driver.clear();
                }
            }
            if let Some((o, op)) = vf.get("driver_opts") {
                for (ok, ov, node) in cx.key_values(o, &op)? {
                    vol.options.insert(
                        ok.clone(),
                        ov.ok_or_else(|| cx.err(&node, &join(&op, &ok), "needs a value"))?,
                    );
                }
            }
            labels_into(cx, vf.get("labels"), &mut vol.labels)?;
            model::validate_name(&kp, &vol.name).map_err(|e| cx.err(v, &kp, e.message))?;
            decls.volumes.insert(k.name.clone(), vol.name.clone());
            m.volumes.push(vol);
        }
    }
    if let Some((s, p)) = f.get("networks") {
        for (k, v) in cx.map(s, &p)? {
            let kp = join(&p, &k.name);
            let nf = cx.fields(
                v,
                &kp,
                &["driver", "external", "labels", "name"],
                &[
                    "driver_opts",
                    "attachable",
                    "internal",
                    "ipam",
                    "enable_ipv4",
                    "enable_ipv6",
                    "subnet",
                ],
                true,
            )?;
            let mut net = ManifestNetwork {
                name: k.name.clone(),
                ..Default::default()
            };
            if let Some((n, np)) = nf.get("name") {
                net.name = cx.str(n, &np)?;
            }
            if let Some((e, ep)) = nf.get("external") {
                net.external = cx.bool(e, &ep)?;
            }
            if let Some((d, dp)) = nf.get("driver") {
                net.driver = cx.str(d, &dp)?;
                if !matches!(net.driver.as_str(), "overlay" | "bridge" | "wireguard") {
                    cx.ignore(dp);
                }
            }
            labels_into(cx, nf.get("labels"), &mut net.labels)?;
            model::validate_name(&kp, &net.name).map_err(|e| cx.err(v, &kp, e.message))?;
            decls.networks.push(k.name.clone());
            m.networks.push(net);
        }
    }
    let Some((services, sp)) = f.get("services") else {
        return Err(cx.err(doc, "services", "a compose file needs a services mapping"));
    };
    let entries = cx.map(services, &sp)?;
    decls.services = entries.iter().map(|(k, _)| k.name.clone()).collect();
    for (k, v) in entries {
        let kp = join(&sp, &k.name);
        let svc = service::convert(cx, &k.name, k.line, v, &kp, vars, Some(&decls))?;
        part.manifest.services.push(svc);
    }
    record(cx, &mut part.origins, doc, "");
    for (k, v) in entries {
        aliases(cx, &mut part.origins, v, &join(&sp, &k.name));
    }
    // Objects renamed with `name:` are also found under their name.
    for (kind, map) in [
        ("secrets", &decls.secrets),
        ("configs", &decls.configs),
        ("volumes", &decls.volumes),
    ] {
        for (key, name) in map {
            if key != name {
                if let Some(o) = part.origins.find(&format!("{kind}.{key}")).cloned() {
                    part.origins.insert(format!("{kind}.{name}"), o);
                }
            }
        }
    }
    Ok(part)
}

/// The model's validation field names (`publish`, `limit-memory`, ...) of a service
/// as origins, for errors the manager returns with them.
pub(crate) fn aliases(cx: &Cx, origins: &mut model::Origins, service_node: &Node, prefix: &str) {
    for field in service::VALIDATION_FIELDS {
        if let Some((n, line, _)) = service::field_node(service_node, field) {
            origins.insert(join(prefix, field), super::origin(cx, n.file, line));
        }
    }
}

fn labels_into(cx: &Cx, n: Option<(&Node, String)>, out: &mut model::Labels) -> R<()> {
    let Some((n, p)) = n else { return Ok(()) };
    for (k, v, _) in cx.key_values(n, &p)? {
        out.insert(k, v.unwrap_or_default());
    }
    Ok(())
}

/// A top-level secret or config: `file`, `environment`, (configs) `content`, or
/// `external`; returns its name, externality, data and labels.
fn object(
    cx: &mut Cx,
    k: &Key,
    v: &Node,
    path: &str,
    secret: bool,
    vars: &Vars,
) -> R<(String, bool, Vec<u8>, model::Labels)> {
    let known: &[&str] = if secret {
        &["file", "environment", "external", "name", "labels"]
    } else {
        &["file", "environment", "content", "external", "name", "labels"]
    };
    let f = cx.fields(v, path, known, &["driver", "driver_opts", "template_driver"], true)?;
    let mut name = k.name.clone();
    if let Some((n, np)) = f.get("name") {
        name = cx.str(n, &np)?;
    }
    let mut external = false;
    if let Some((e, ep)) = f.get("external") {
        external = match &e.value {
            // The old form `external: {name: x}`.
            Value::Map(_) => {
                let ef = cx.fields(e, &ep, &["name"], &[], false)?;
                if let Some((n, np)) = ef.get("name") {
                    name = cx.str(n, &np)?;
                }
                true
            }
            _ => cx.bool(e, &ep)?,
        };
    }
    let mut labels = model::Labels::new();
    labels_into(cx, f.get("labels"), &mut labels)?;
    let what = if secret { "secret" } else { "config" };
    let sources: Vec<&str> = ["file", "environment", "content"]
        .into_iter()
        .filter(|s| f.has(s))
        .collect();
    let data = match (external, sources.as_slice()) {
        (true, []) => vec![],
        (true, [s, ..]) => {
            let (n, np) = f.get(s).expect("present");
            return Err(cx.err(n, &np, format!("an external {what} takes no {s}")));
        }
        (false, []) => {
            return Err(cx.err_at(
                v.file,
                k.line,
                path,
                format!(
                    "a {what} needs file, environment{} or external: true",
                    if secret { "" } else { ", content" }
                ),
            ))
        }
        (false, [_, second, ..]) => {
            let (n, np) = f.get(second).expect("present");
            return Err(cx.err(n, &np, format!("a {what} takes one of file, environment, content")));
        }
        (false, ["file"]) => {
            let (n, np) = f.get("file").expect("present");
            let file = cx.str(n, &np)?;
            let full = cx.dir(n).join(&file);
            std::fs::read(&full).map_err(|e| cx.err(n, &np, format!("cannot read {}: {e}", full.display())))?
        }
        (false, ["environment"]) => {
            // The variable's value, from the environment the file was loaded in.
            let (n, np) = f.get("environment").expect("present");
            let var = cx.str(n, &np)?;
            vars.get(&var)
                .ok_or_else(|| cx.err(n, &np, format!("the variable {var} is not set")))?
                .into_bytes()
        }
        (false, _) => {
            let (n, np) = f.get("content").expect("present");
            cx.str(n, &np)?.into_bytes()
        }
    };
    model::validate_name(path, &name).map_err(|e| cx.err_at(v.file, k.line, path, e.message))?;
    Ok((name, external, data, labels))
}

/// Merges a later compose file over an earlier one, as compose does.
pub(crate) fn merge(base: Node, over: Node, path: &str) -> Node {
    let last = path.rsplit('.').next().unwrap_or("");
    let in_service = path.starts_with("services.") && path.matches('.').count() >= 2;
    let by_key = in_service
        && matches!(
            last,
            "environment" | "labels" | "sysctls" | "extra_hosts" | "annotations"
        );
    let (base, over) = if by_key {
        (as_map(base), as_map(over))
    } else {
        (base, over)
    };
    match (base.value, over.value) {
        (Value::Map(mut b), Value::Map(o)) => {
            for (k, v) in o {
                let p = join(path, &k.name);
                match b.iter().position(|(bk, _)| bk.name == k.name) {
                    Some(i) => {
                        let old = b.remove(i).1;
                        b.insert(i, (k, merge(old, v, &p)));
                    }
                    None => b.push((k, v)),
                }
            }
            Node {
                value: Value::Map(b),
                file: over.file,
                line: over.line,
            }
        }
        (Value::Seq(mut b), Value::Seq(o)) if !matches!(last, "command" | "entrypoint" | "test") => {
            for item in o {
                b.retain(|x| !same(x, &item));
                b.push(item);
            }
            Node {
                value: Value::Seq(b),
                file: over.file,
                line: over.line,
            }
        }
        (_, value) => Node {
            value,
            file: over.file,
            line: over.line,
        },
    }
}

/// `["A=1", "B"]` as `{A: "1", B: null}`, so that lists and mappings merge alike.
fn as_map(n: Node) -> Node {
    match n.value {
        Value::Seq(items) => {
            let mut m: Vec<(Key, Node)> = Vec::new();
            for it in items {
                let Value::Str { s, .. } = &it.value else { continue };
                let (k, v) = match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Node::str(v, it.file, it.line)),
                    None => (
                        s.clone(),
                        Node {
                            value: Value::Null,
                            file: it.file,
                            line: it.line,
                        },
                    ),
                };
                m.retain(|(x, _)| x.name != k);
                m.push((Key { name: k, line: it.line }, v));
            }
            Node {
                value: Value::Map(m),
                file: n.file,
                line: n.line,
            }
        }
        value => Node { value, ..n },
    }
}

/// Equal values, wherever they were written.
fn same(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Null, Value::Null) => true,
        (Value::Str { s: x, .. }, Value::Str { s: y, .. }) => x == y,
        (Value::Seq(x), Value::Seq(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka.name == kb.name && same(va, vb))
        }
        _ => false,
    }
}
