//! One service mapping (a compose `services.<name>` entry, or a Warren YAML
//! Service's `spec`, which takes the same keys plus the tech spec's shortcuts) to a
//! `ManifestService`, through the model's own parsers so that the CLI's flags and
//! the files agree; then the spec is validated and a failure is shown at the line
//! of the key it concerns.

use super::interp;
use super::walk::{index, join, Cx, Fields, R};
use super::yaml::{Node, Value};
use super::Vars;
use crate::model::{
    self, ConfigRef, Constraint, EndpointMode, FailureAction, HealthCheck, HealthTest, ManifestService, Mount,
    MountKind, PortConfig, Protocol, PublishMode, RateLimit, RestartCondition, SecretRef, ServiceMode, ServiceSpec,
    Ulimit, UpdateConfig, UpdateOrder, ValidationError,
};
use std::collections::BTreeMap;

/// What the file around the service declares, for reference checks. `None` (Warren
/// YAML): references may name objects that already exist in the cluster.
#[derive(Default)]
pub(crate) struct Decls {
    /// Key in the file to the object's name (compose `name:` overrides).
    pub secrets: BTreeMap<String, String>,
    pub configs: BTreeMap<String, String>,
    pub volumes: BTreeMap<String, String>,
    pub networks: Vec<String>,
    pub services: Vec<String>,
}

pub(crate) const KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "secrets",
    "configs",
    "volumes",
    "tmpfs",
    "healthcheck",
    "deploy",
    "restart",
    "user",
    "working_dir",
    "hostname",
    "labels",
    "cap_add",
    "cap_drop",
    "read_only",
    "init",
    "stop_signal",
    "stop_grace_period",
    "ulimits",
    "sysctls",
    "networks",
    "depends_on",
    "dns",
    "pids_limit",
    "x-warren",
    // The tech spec's Warren YAML shortcuts.
    "replicas",
    "resources",
    "health_check",
    "strategy",
    "canary_weight",
    "canary_steps",
    "rate_limit",
    "rate_burst",
    "endpoint_locality",
];

/// Compose keys a Swarm service cannot honour: accepted and listed as ignored.
pub(crate) const IGNORED: &[&str] = &[
    "build",
    "container_name",
    "links",
    "external_links",
    "network_mode",
    "extra_hosts",
    "devices",
    "privileged",
    "security_opt",
    "logging",
    "pid",
    "ipc",
    "profiles",
    "tty",
    "stdin_open",
    "shm_size",
    "mem_limit",
    "mem_reservation",
    "memswap_limit",
    "mem_swappiness",
    "cpus",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_count",
    "cpu_percent",
    "cpu_rt_runtime",
    "cpu_rt_period",
    "cpuset",
    "domainname",
    "mac_address",
    "platform",
    "pull_policy",
    "extends",
    "cgroup",
    "cgroup_parent",
    "userns_mode",
    "volumes_from",
    "dns_search",
    "dns_opt",
    "group_add",
    "isolation",
    "oom_score_adj",
    "oom_kill_disable",
    "runtime",
    "scale",
    "storage_opt",
    "uts",
    "credential_spec",
    "device_cgroup_rules",
    "blkio_config",
    "annotations",
    "attach",
    "develop",
    "post_start",
    "pre_stop",
    "gpus",
    "label_file",
    "use_api_socket",
    "provider",
    "models",
];

const X_WARREN: &[&str] = &[
    "strategy",
    "canary_weight",
    "canary_steps",
    "rate_limit",
    "rate_burst",
    "endpoint_locality",
];

pub(crate) fn convert(
    cx: &mut Cx,
    name: &str,
    name_line: u32,
    n: &Node,
    path: &str,
    vars: &Vars,
    decls: Option<&Decls>,
) -> R<ManifestService> {
    model::validate_name(path, name).map_err(|e| cx.err(n, path, e.message))?;
    let f = cx.fields(n, path, KEYS, IGNORED, true)?;
    let mut spec = ServiceSpec::default();
    let mut out = ManifestService {
        name: name.to_string(),
        ..Default::default()
    };
    match f.get("image") {
        Some((i, p)) => spec.image = cx.str(i, &p)?,
        None => {
            return Err(cx.err_at(
                n.file,
                name_line,
                &join(path, "image"),
                "a service needs an image (Warren does not build images)",
            ))
        }
    }
    if let Some((c, p)) = f.get("command") {
        spec.args = words(cx, c, &p)?;
    }
    if let Some((c, p)) = f.get("entrypoint") {
        spec.command = words(cx, c, &p)?;
    }
    environment(cx, &f, vars, &mut spec)?;
    if let Some((ports, p)) = f.get("ports") {
        for (i, it) in cx.seq(ports, &p)?.iter().enumerate() {
            spec.ports.extend(port(cx, it, &index(&p, i))?);
        }
    }
    if let Some((e, p)) = f.get("expose") {
        // Tasks reach each other on every port over the overlay: expose only needs
        // to be well formed.
        for (i, it) in cx.seq(e, &p)?.iter().enumerate() {
            let ip = index(&p, i);
            let s = cx.str(it, &ip)?;
            let ports = s.split('/').next().unwrap_or("");
            let ok = ports.split('-').all(|x| x.trim().parse::<u16>().is_ok_and(|x| x > 0));
            if !ok {
                return Err(cx.err(it, &ip, format!("invalid port {s:?}")));
            }
        }
    }
    secrets(cx, &f, decls, &mut spec)?;
    out.configs = configs(cx, &f, decls)?;
    volumes(cx, &f, vars, decls, &mut spec)?;
    health(cx, &f, &mut spec)?;
    labels(cx, f.get("labels"), &mut spec.labels)?;
    deploy(cx, &f, &mut spec, &mut out)?;
    container(cx, &f, &mut spec)?;
    if let Some((nets, p)) = f.get("networks") {
        out.networks = match &nets.value {
            Value::Map(m) => {
                for (k, v) in m {
                    let kp = join(&p, &k.name);
                    cx.fields(
                        v,
                        &kp,
                        &[],
                        &[
                            "aliases",
                            "ipv4_address",
                            "ipv6_address",
                            "link_local_ips",
                            "mac_address",
                            "driver_opts",
                            "priority",
                            "gw_priority",
                            "interface_name",
                        ],
                        false,
                    )?;
                }
                m.iter().map(|(k, _)| k.name.clone()).collect()
            }
            _ => cx.strs(nets, &p)?,
        };
        if let Some(d) = decls {
            for (i, net) in out.networks.iter().enumerate() {
                if net != "default" && !d.networks.contains(net) {
                    let at = nets.get(net).unwrap_or(nets);
                    let line = nets.key_line(net).unwrap_or(at.line);
                    return Err(cx.err_at(
                        at.file,
                        line,
                        &index(&p, i),
                        format!("network {net:?} is not declared under the top-level networks"),
                    ));
                }
            }
        }
    }
    if let Some((deps, p)) = f.get("depends_on") {
        let names: Vec<(String, &Node, u32)> = match &deps.value {
            Value::Map(m) => m.iter().map(|(k, v)| (k.name.clone(), v, k.line)).collect(),
            _ => cx
                .seq(deps, &p)?
                .iter()
                .enumerate()
                .map(|(i, it)| Ok((cx.str(it, &index(&p, i))?, it, it.line)))
                .collect::<R<_>>()?,
        };
        if let Some(d) = decls {
            for (i, (dep, node, line)) in names.iter().enumerate() {
                if !d.services.contains(dep) {
                    return Err(cx.err_at(
                        node.file,
                        *line,
                        &index(&p, i),
                        format!("depends on {dep:?}, which is not a service of this file"),
                    ));
                }
            }
        }
        // Swarm starts services in any order: accepted, listed as ignored.
        cx.ignore(p);
    }
    x_warren(cx, &f, f.get("x-warren"), &mut spec, &mut out)?;
    // Ports left for the manager to pick are checked there, once they have a number.
    let mut probe = spec.clone();
    probe.ports.retain(|p| p.published != PICK_PUBLISHED);
    probe.validate().map_err(|e| validation_error(cx, &f, &e))?;
    out.spec = spec;
    Ok(out)
}

/// A shell-split string or a list of words.
fn words(cx: &Cx, n: &Node, path: &str) -> R<Vec<String>> {
    match &n.value {
        Value::Str { s, .. } => shlex::split(s).ok_or_else(|| cx.err(n, path, format!("unbalanced quotes in {s:?}"))),
        Value::Null => Ok(vec![]),
        _ => cx.strs(n, path),
    }
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
    env.push(format!("{key}={value}"));
}

/// `env_file` first, then `environment` over it, as compose does. A variable given
/// without a value takes the shell's, or is left out when the shell has none.
fn environment(cx: &Cx, f: &Fields, vars: &Vars, spec: &mut ServiceSpec) -> R<()> {
    if let Some((files, p)) = f.get("env_file") {
        let entries: Vec<(String, bool, &Node, String)> = match &files.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, it)| {
                    let ip = index(&p, i);
                    if let Value::Map(_) = it.value {
                        let mut cx2 = Cx::new(cx.files);
                        let ef = cx2.fields(it, &ip, &["path", "required"], &["format"], false)?;
                        let (pn, pp) = ef
                            .get("path")
                            .ok_or_else(|| cx.err(it, &join(&ip, "path"), "is required"))?;
                        let required = match ef.get("required") {
                            Some((r, rp)) => cx.bool(r, &rp)?,
                            None => true,
                        };
                        Ok((cx.str(pn, &pp)?, required, it, pp))
                    } else {
                        Ok((cx.str(it, &ip)?, true, it, ip))
                    }
                })
                .collect::<R<_>>()?,
            _ => vec![(cx.str(files, &p)?, true, files, p.clone())],
        };
        for (file, required, node, ip) in entries {
            let path = cx.dir(node).join(&file);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                Err(e) => return Err(cx.err(node, &ip, format!("cannot read {}: {e}", path.display()))),
            };
            let lookup = |k: &str| vars.get(k);
            let pairs = interp::parse_dotenv(&text, &lookup)
                .map_err(|(line, m)| cx.err(node, &ip, format!("{}:{line}: {m}", path.display())))?;
            for (k, v) in pairs {
                set_env(&mut spec.env, &k, &v);
            }
        }
    }
    if let Some((e, p)) = f.get("environment") {
        for (k, v, node) in cx.key_values(e, &p)? {
            if k.is_empty() || k.chars().any(char::is_whitespace) {
                return Err(cx.err(&node, &p, format!("invalid variable name {k:?}")));
            }
            match v.or_else(|| vars.get(&k)) {
                Some(v) => set_env(&mut spec.env, &k, &v),
                None => spec
                    .env
                    .retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k.as_str())),
            }
        }
    }
    Ok(())
}

/// The published port of a compose port given as a target only (`"80"`, or a long
/// syntax without `published`): the manager picks one from 30000-32767.
pub(crate) const PICK_PUBLISHED: u16 = 0;

/// A compose port: `80` (published port picked), `8080:80`, `8080:80/udp`, `127.0.0.1:8080:80`, ranges
/// `8000-8001:9000-9001`, or the long syntax.
fn port(cx: &mut Cx, n: &Node, path: &str) -> R<Vec<PortConfig>> {
    let bad = |cx: &Cx, why: String| cx.err(n, path, why);
    if let Value::Map(_) = n.value {
        let f = cx.fields(
            n,
            path,
            &["target", "published", "protocol", "mode"],
            &["host_ip", "name", "app_protocol"],
            true,
        )?;
        let num = |cx: &Cx, key: &str| -> R<Option<u16>> {
            match f.get(key) {
                None => Ok(None),
                Some((v, p)) => {
                    let x = cx.u64(v, &p)?;
                    u16::try_from(x)
                        .ok()
                        .filter(|x| *x > 0)
                        .map(Some)
                        .ok_or_else(|| cx.err(v, &p, format!("port {x} is not between 1 and 65535")))
                }
            }
        };
        let target = num(cx, "target")?.ok_or_else(|| cx.err(n, &join(path, "target"), "is required"))?;
        // None: the manager picks one (PICK_PUBLISHED), as Swarm does.
        let published = num(cx, "published")?.unwrap_or(PICK_PUBLISHED);
        let protocol = match f.get("protocol") {
            None => Protocol::Tcp,
            Some((v, p)) => match cx.str(v, &p)?.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => return Err(cx.err(v, &p, format!("protocol {other:?} is not tcp or udp"))),
            },
        };
        let mode = match f.get("mode") {
            None => PublishMode::Ingress,
            Some((v, p)) => match cx.str(v, &p)?.as_str() {
                "ingress" => PublishMode::Ingress,
                "host" => PublishMode::Host,
                other => return Err(cx.err(v, &p, format!("mode {other:?} is not ingress or host"))),
            },
        };
        return Ok(vec![PortConfig {
            published,
            target,
            protocol,
            mode,
        }]);
    }
    let s = cx.str(n, path)?;
    let (ports, proto) = match s.rsplit_once('/') {
        Some((p, proto)) => (p, Some(proto)),
        None => (s.as_str(), None),
    };
    let protocol = match proto.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some(p) => return Err(bad(cx, format!("invalid port {s:?}: protocol {p:?} is not tcp or udp"))),
    };
    let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
    let (target, published) = match parts.as_slice() {
        // `"80"`: a target only; the manager picks the published port.
        [t] if !t.contains('-') => {
            let target = t.trim().parse::<u16>().ok().filter(|t| *t > 0).ok_or_else(|| {
                bad(
                    cx,
                    format!("invalid port {s:?}: expected [PUBLISHED:]TARGET with ports 1-65535"),
                )
            })?;
            return Ok(vec![PortConfig {
                published: PICK_PUBLISHED,
                target,
                protocol,
                mode: PublishMode::Ingress,
            }]);
        }
        [t, p] => (*t, *p),
        [t, p, _ip] => {
            cx.ignore(format!("{path}.host_ip"));
            (*t, *p)
        }
        _ => {
            return Err(bad(
                cx,
                format!("invalid port {s:?}: expected [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]"),
            ))
        }
    };
    let range = |r: &str| -> Option<(u16, u16)> {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
        (a > 0 && a <= b).then_some((a, b))
    };
    let (Some(t), Some(p)) = (range(target), range(published)) else {
        return Err(bad(
            cx,
            format!("invalid port {s:?}: expected PUBLISHED:TARGET with ports 1-65535"),
        ));
    };
    if t.1 - t.0 != p.1 - p.0 {
        return Err(bad(cx, format!("invalid port {s:?}: the two ranges differ in length")));
    }
    Ok((0..=(t.1 - t.0))
        .map(|i| PortConfig {
            published: p.0 + i,
            target: t.0 + i,
            protocol,
            mode: PublishMode::Ingress,
        })
        .collect())
}

fn secrets(cx: &mut Cx, f: &Fields, decls: Option<&Decls>, spec: &mut ServiceSpec) -> R<()> {
    let Some((list, p)) = f.get("secrets") else {
        return Ok(());
    };
    for (i, it) in cx.seq(list, &p)?.iter().enumerate() {
        let ip = index(&p, i);
        let (source, target, at) = if let Value::Map(_) = it.value {
            let sf = cx.fields(it, &ip, &["source", "target"], &["uid", "gid", "mode"], true)?;
            let (s, sp) = sf
                .get("source")
                .ok_or_else(|| cx.err(it, &join(&ip, "source"), "is required"))?;
            let t = match sf.get("target") {
                Some((t, tp)) => Some(cx.str(t, &tp)?),
                None => None,
            };
            (cx.str(s, &sp)?, t, (s, sp))
        } else {
            (cx.str(it, &ip)?, None, (it, ip.clone()))
        };
        let name = match decls {
            Some(d) => d.secrets.get(&source).cloned().ok_or_else(|| {
                cx.err(
                    at.0,
                    &at.1,
                    format!("secret {source:?} is not declared under the top-level secrets"),
                )
            })?,
            None => source.clone(),
        };
        let target = match target {
            Some(t) if t.starts_with('/') => t,
            Some(t) => format!("/run/secrets/{t}"),
            None => format!("/run/secrets/{source}"),
        };
        let r = SecretRef { name, target };
        model::validate_name(&at.1, &r.name).map_err(|e| cx.err(at.0, &at.1, e.message))?;
        spec.secrets.retain(|x| x.target != r.target);
        spec.secrets.push(r);
    }
    Ok(())
}

fn configs(cx: &mut Cx, f: &Fields, decls: Option<&Decls>) -> R<Vec<ConfigRef>> {
    let mut out: Vec<ConfigRef> = Vec::new();
    let Some((list, p)) = f.get("configs") else {
        return Ok(out);
    };
    for (i, it) in cx.seq(list, &p)?.iter().enumerate() {
        let ip = index(&p, i);
        let mut r = ConfigRef {
            mode: 0o444,
            ..Default::default()
        };
        let (source, at) = if let Value::Map(_) = it.value {
            let cf = cx.fields(it, &ip, &["source", "target", "mode"], &["uid", "gid"], true)?;
            let (s, sp) = cf
                .get("source")
                .ok_or_else(|| cx.err(it, &join(&ip, "source"), "is required"))?;
            if let Some((t, tp)) = cf.get("target") {
                r.target = cx.str(t, &tp)?;
            }
            if let Some((m, mp)) = cf.get("mode") {
                r.mode = file_mode(cx, m, &mp)?;
            }
            (cx.str(s, &sp)?, (s, sp))
        } else {
            (cx.str(it, &ip)?, (it, ip.clone()))
        };
        r.name = match decls {
            Some(d) => d.configs.get(&source).cloned().ok_or_else(|| {
                cx.err(
                    at.0,
                    &at.1,
                    format!("config {source:?} is not declared under the top-level configs"),
                )
            })?,
            None => source.clone(),
        };
        if r.target.is_empty() {
            r.target = format!("/{source}");
        }
        if !r.target.starts_with('/') {
            return Err(cx.err(at.0, &ip, format!("target {:?} must be an absolute path", r.target)));
        }
        out.retain(|x| x.target != r.target);
        out.push(r);
    }
    Ok(out)
}

/// A file mode: a number, octal when written with a leading 0 (`0440`) as compose
/// reads it.
fn file_mode(cx: &Cx, n: &Node, path: &str) -> R<u32> {
    let s = cx.str(n, path)?;
    let s = s.trim();
    let v = if let Some(o) = s
        .strip_prefix("0o")
        .or_else(|| s.strip_prefix('0').filter(|o| !o.is_empty()))
    {
        u32::from_str_radix(o, 8).ok()
    } else {
        s.parse::<u32>().ok()
    };
    v.filter(|m| *m <= 0o777)
        .ok_or_else(|| cx.err(n, path, format!("invalid file mode {s:?}: expected e.g. 0440")))
}

fn volumes(cx: &mut Cx, f: &Fields, vars: &Vars, decls: Option<&Decls>, spec: &mut ServiceSpec) -> R<()> {
    if let Some((list, p)) = f.get("volumes") {
        for (i, it) in cx.seq(list, &p)?.iter().enumerate() {
            let ip = index(&p, i);
            let m = volume(cx, it, &ip, vars, decls)?;
            spec.mounts.retain(|x| x.target != m.target);
            spec.mounts.push(m);
        }
    }
    if let Some((t, p)) = f.get("tmpfs") {
        for (i, s) in cx.str_list(t, &p)?.into_iter().enumerate() {
            let target = s.split(':').next().unwrap_or("").to_string();
            let m = Mount {
                kind: MountKind::Tmpfs,
                source: String::new(),
                target,
                readonly: false,
            };
            m.validate("tmpfs").map_err(|e| cx.err(t, &index(&p, i), e.message))?;
            spec.mounts.retain(|x| x.target != m.target);
            spec.mounts.push(m);
        }
    }
    Ok(())
}

fn volume(cx: &mut Cx, n: &Node, path: &str, vars: &Vars, decls: Option<&Decls>) -> R<Mount> {
    let mut m = Mount::default();
    if let Value::Map(_) = n.value {
        let f = cx.fields(
            n,
            path,
            &["type", "source", "target", "read_only", "bind", "volume", "tmpfs"],
            &["consistency", "image"],
            true,
        )?;
        let (t, tp) = f
            .get("type")
            .ok_or_else(|| cx.err(n, &join(path, "type"), "is required (volume, bind or tmpfs)"))?;
        m.kind = match cx.str(t, &tp)?.as_str() {
            "volume" => MountKind::Volume,
            "bind" => MountKind::Bind,
            "tmpfs" => MountKind::Tmpfs,
            other => return Err(cx.err(t, &tp, format!("type {other:?} is not volume, bind or tmpfs"))),
        };
        if let Some((s, sp)) = f.get("source") {
            m.source = cx.str(s, &sp)?;
        }
        let (t, tp) = f
            .get("target")
            .ok_or_else(|| cx.err(n, &join(path, "target"), "is required"))?;
        m.target = cx.str(t, &tp)?;
        if let Some((r, rp)) = f.get("read_only") {
            m.readonly = cx.bool(r, &rp)?;
        }
        for (key, known) in [
            ("bind", &["propagation", "create_host_path", "selinux"][..]),
            ("volume", &["nocopy", "subpath"][..]),
            ("tmpfs", &["size", "mode"][..]),
        ] {
            if let Some((o, op)) = f.get(key) {
                cx.fields(o, &op, &[], known, true)?;
            }
        }
    } else {
        let s = cx.str(n, path)?;
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            // An anonymous volume, as compose has it: each task gets its own.
            [dst] => ("", *dst, ""),
            [src, dst] => (*src, *dst, ""),
            [src, dst, opts] => (*src, *dst, *opts),
            _ => return Err(cx.err(n, path, format!("invalid volume {s:?}: expected SOURCE:TARGET[:ro]"))),
        };
        m.source = src.to_string();
        m.target = dst.to_string();
        m.kind = if !src.is_empty() && src.starts_with(['/', '.', '~']) {
            MountKind::Bind
        } else {
            MountKind::Volume
        };
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => m.readonly = true,
                "rw" => m.readonly = false,
                "z" | "Z" | "nocopy" | "cached" | "delegated" | "consistent" | "rprivate" | "private" | "rshared"
                | "shared" | "rslave" | "slave" => {}
                _ => return Err(cx.err(n, path, format!("invalid volume option {o:?} in {s:?}"))),
            }
        }
    }
    match m.kind {
        MountKind::Bind => {
            let raw = m.source.clone();
            if let Some(rest) = raw.strip_prefix('~') {
                let home = vars
                    .get("HOME")
                    .ok_or_else(|| cx.err(n, path, "~ in a bind source needs HOME"))?;
                m.source = format!("{home}{rest}");
            }
            if !m.source.starts_with('/') {
                // Relative to the compose file, which then must be on this machine
                // with the directory: the node has no other copy of it.
                let abs = cx.dir(n).join(&m.source);
                let canon = abs.canonicalize().map_err(|_| {
                    cx.err(
                        n,
                        path,
                        format!("bind source {raw:?} ({}) does not exist", abs.display()),
                    )
                })?;
                m.source = canon.display().to_string();
            }
        }
        MountKind::Volume if m.source.is_empty() => {}
        MountKind::Volume => {
            if let Some(d) = decls {
                let name = d.volumes.get(&m.source).cloned().ok_or_else(|| {
                    cx.err(
                        n,
                        path,
                        format!("volume {:?} is not declared under the top-level volumes", m.source),
                    )
                })?;
                m.source = name;
            }
        }
        MountKind::Tmpfs => {}
    }
    m.validate(path).map_err(|e| cx.err(n, path, e.message))?;
    Ok(m)
}

fn health(cx: &mut Cx, f: &Fields, spec: &mut ServiceSpec) -> R<()> {
    if let Some((h, p)) = f.get("healthcheck") {
        let hf = cx.fields(
            h,
            &p,
            &["test", "interval", "timeout", "retries", "start_period", "disable"],
            &["start_interval"],
            true,
        )?;
        if let Some((d, dp)) = hf.get("disable") {
            if cx.bool(d, &dp)? {
                spec.health = Some(HealthCheck::new(HealthTest::Disabled));
                return Ok(());
            }
        }
        let (t, tp) = hf.get("test").ok_or_else(|| {
            cx.err(
                h,
                &join(&p, "test"),
                "is required (Warren cannot retune the image's own health check)",
            )
        })?;
        let test = match &t.value {
            Value::Str { s, .. } => HealthTest::Cmd(s.clone()),
            _ => {
                let words = cx.strs(t, &tp)?;
                match words.split_first() {
                    Some((k, [])) if k == "NONE" => HealthTest::Disabled,
                    Some((k, rest)) if k == "CMD" && !rest.is_empty() => HealthTest::Cmd(
                        shlex::try_join(rest.iter().map(String::as_str))
                            .map_err(|_| cx.err(t, &tp, "a word holds a NUL byte"))?,
                    ),
                    Some((k, [cmd])) if k == "CMD-SHELL" => HealthTest::Cmd(cmd.clone()),
                    _ => {
                        return Err(cx.err(
                            t,
                            &tp,
                            "expected [\"CMD\", ...], [\"CMD-SHELL\", \"command\"], [\"NONE\"] or a command string",
                        ))
                    }
                }
            }
        };
        let mut hc = HealthCheck::new(test);
        tuning(cx, &hf, &mut hc)?;
        spec.health = Some(hc);
    }
    if let Some((h, p)) = f.get("health_check") {
        // The tech spec's form: type http|tcp|cmd.
        let hf = cx.fields(
            h,
            &p,
            &[
                "type",
                "endpoint",
                "path",
                "port",
                "command",
                "interval",
                "timeout",
                "retries",
                "start_period",
            ],
            &[],
            true,
        )?;
        let (t, tp) = hf
            .get("type")
            .ok_or_else(|| cx.err(h, &join(&p, "type"), "is required (http, tcp, cmd or none)"))?;
        let port = match hf.get("port") {
            Some((v, vp)) => Some(u16::try_from(cx.u64(v, &vp)?).map_err(|_| cx.err(v, &vp, "is not a port"))?),
            None => None,
        };
        let test = match cx.str(t, &tp)?.as_str() {
            "http" => {
                let path = match hf.get("endpoint").or_else(|| hf.get("path")) {
                    Some((v, vp)) => cx.str(v, &vp)?,
                    None => "/".into(),
                };
                HealthTest::Http {
                    port: port.unwrap_or(80),
                    path,
                }
            }
            "tcp" => HealthTest::Tcp {
                port: port.ok_or_else(|| cx.err(h, &join(&p, "port"), "is required for a tcp check"))?,
            },
            "cmd" => {
                let (c, cp) = hf
                    .get("command")
                    .ok_or_else(|| cx.err(h, &join(&p, "command"), "is required for a cmd check"))?;
                HealthTest::Cmd(cx.str(c, &cp)?)
            }
            "none" => HealthTest::Disabled,
            other => return Err(cx.err(t, &tp, format!("type {other:?} is not http, tcp, cmd or none"))),
        };
        let mut hc = HealthCheck::new(test);
        tuning(cx, &hf, &mut hc)?;
        spec.health = Some(hc);
    }
    Ok(())
}

fn tuning(cx: &Cx, hf: &Fields, hc: &mut HealthCheck) -> R<()> {
    if let Some((v, p)) = hf.get("interval") {
        hc.interval_ms = cx.duration_ms(v, &p)?;
    }
    if let Some((v, p)) = hf.get("timeout") {
        hc.timeout_ms = cx.duration_ms(v, &p)?;
    }
    if let Some((v, p)) = hf.get("retries") {
        hc.retries = cx.u32(v, &p)?;
    }
    if let Some((v, p)) = hf.get("start_period") {
        hc.start_period_ms = cx.duration_ms(v, &p)?;
    }
    Ok(())
}

fn labels(cx: &Cx, n: Option<(&Node, String)>, out: &mut model::Labels) -> R<()> {
    let Some((n, p)) = n else { return Ok(()) };
    for (k, v, node) in cx.key_values(n, &p)? {
        if k.trim().is_empty() {
            return Err(cx.err(&node, &p, "a label needs a name"));
        }
        out.insert(k, v.unwrap_or_default());
    }
    Ok(())
}

fn deploy(cx: &mut Cx, f: &Fields, spec: &mut ServiceSpec, out: &mut ManifestService) -> R<()> {
    let mut replicas = None;
    if let Some((r, p)) = f.get("replicas") {
        replicas = Some(cx.u64(r, &p)?);
    }
    if let Some((res, p)) = f.get("resources") {
        resources(cx, res, &p, spec)?;
    }
    let mut global = false;
    if let Some((d, p)) = f.get("deploy") {
        let df = cx.fields(
            d,
            &p,
            &[
                "mode",
                "replicas",
                "placement",
                "resources",
                "update_config",
                "rollback_config",
                "restart_policy",
                "labels",
                "endpoint_mode",
                "strategy",
            ],
            &[],
            true,
        )?;
        if let Some((m, mp)) = df.get("mode") {
            match cx.str(m, &mp)?.as_str() {
                "replicated" => {}
                "global" => global = true,
                other => {
                    return Err(cx.err(
                        m,
                        &mp,
                        format!("mode {other:?} is not supported: expected replicated or global"),
                    ))
                }
            }
        }
        if let Some((r, rp)) = df.get("replicas") {
            if global {
                return Err(cx.err(
                    r,
                    &rp,
                    "a global service runs one task per node: replicas cannot be set",
                ));
            }
            replicas = Some(cx.u64(r, &rp)?);
        }
        if let Some((pl, pp)) = df.get("placement") {
            let pf = cx.fields(
                pl,
                &pp,
                &["constraints"],
                &["preferences", "max_replicas_per_node"],
                true,
            )?;
            if let Some((c, cp)) = pf.get("constraints") {
                for (i, it) in cx.seq(c, &cp)?.iter().enumerate() {
                    let ip = index(&cp, i);
                    let s = cx.str(it, &ip)?;
                    let c = Constraint::parse(&ip, &s).map_err(|e| cx.err(it, &ip, e.message))?;
                    if !spec.constraints.contains(&c) {
                        spec.constraints.push(c);
                    }
                }
            }
        }
        if let Some((r, rp)) = df.get("resources") {
            resources(cx, r, &rp, spec)?;
        }
        if let Some((u, up)) = df.get("update_config") {
            spec.update = update_config(cx, u, &up, Some(out))?;
        }
        if let Some((u, up)) = df.get("rollback_config") {
            spec.rollback = update_config(cx, u, &up, None)?;
        }
        if let Some((r, rp)) = df.get("restart_policy") {
            let rf = cx.fields(r, &rp, &["condition", "delay", "max_attempts"], &["window"], true)?;
            if let Some((c, cp)) = rf.get("condition") {
                let s = cx.str(c, &cp)?;
                spec.restart.condition = RestartCondition::parse(&cp, &s).map_err(|e| cx.err(c, &cp, e.message))?;
            }
            if let Some((v, vp)) = rf.get("delay") {
                spec.restart.delay_ms = cx.duration_ms(v, &vp)?;
            }
            if let Some((v, vp)) = rf.get("max_attempts") {
                spec.restart.max_attempts = cx.u64(v, &vp)?;
            }
        }
        if let Some((e, ep)) = df.get("endpoint_mode") {
            let s = cx.str(e, &ep)?;
            spec.endpoint_mode = EndpointMode::parse(&ep, &s).map_err(|er| cx.err(e, &ep, er.message))?;
        }
        // Swarm's service labels; they win over the container labels above.
        labels(cx, df.get("labels"), &mut spec.labels)?;
        if let Some((s, sp)) = df.get("strategy") {
            strategy(cx, s, &sp, out)?;
        }
    }
    if let (Some((r, rp)), false) = (
        f.get("restart"),
        f.get("deploy").is_some_and(|(d, _)| d.get("restart_policy").is_some()),
    ) {
        // Compose's restart, when deploy.restart_policy does not say otherwise.
        let s = cx.str(r, &rp)?;
        let (cond, max) = match s.as_str() {
            "no" => (RestartCondition::None, None),
            "always" | "unless-stopped" => (RestartCondition::Any, None),
            "on-failure" => (RestartCondition::OnFailure, None),
            other => match other.strip_prefix("on-failure:").and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => (RestartCondition::OnFailure, Some(n)),
                None => {
                    return Err(cx.err(
                        r,
                        &rp,
                        format!("invalid restart {s:?}: expected no, always, unless-stopped or on-failure[:N]"),
                    ))
                }
            },
        };
        spec.restart.condition = cond;
        if let Some(n) = max {
            spec.restart.max_attempts = n;
        }
    }
    spec.mode = if global {
        ServiceMode::Global
    } else {
        ServiceMode::Replicated {
            replicas: replicas.unwrap_or(1),
        }
    };
    Ok(())
}

fn resources(cx: &mut Cx, n: &Node, path: &str, spec: &mut ServiceSpec) -> R<()> {
    let f = cx.fields(n, path, &["limits", "reservations"], &[], true)?;
    for (key, ignored) in [
        ("limits", &["devices", "generic_resources"][..]),
        ("reservations", &["devices", "generic_resources", "pids"][..]),
    ] {
        let Some((r, rp)) = f.get(key) else { continue };
        let known: &[&str] = if key == "limits" {
            &["cpus", "memory", "pids"]
        } else {
            &["cpus", "memory"]
        };
        let rf = cx.fields(r, &rp, known, ignored, true)?;
        let target = if key == "limits" {
            &mut spec.limits
        } else {
            &mut spec.reservations
        };
        if let Some((c, cp)) = rf.get("cpus") {
            let s = cx.scalar(c, &cp)?;
            target.nano_cpus = model::parse_cpus(&cp, &s).map_err(|e| cx.err(c, &cp, e.message))?;
        }
        if let Some((m, mp)) = rf.get("memory") {
            let s = cx.scalar(m, &mp)?;
            target.memory_bytes = model::parse_size(&mp, &s).map_err(|e| cx.err(m, &mp, e.message))?;
        }
        if let Some((pl, pp)) = rf.get("pids") {
            spec.container.pids_limit = cx.u64(pl, &pp)?;
        }
    }
    Ok(())
}

fn update_config(cx: &mut Cx, n: &Node, path: &str, out: Option<&mut ManifestService>) -> R<UpdateConfig> {
    let f = cx.fields(
        n,
        path,
        &[
            "parallelism",
            "delay",
            "failure_action",
            "monitor",
            "max_failure_ratio",
            "order",
            "canary_weight",
        ],
        &[],
        true,
    )?;
    let mut u = UpdateConfig::default();
    if let Some((v, p)) = f.get("parallelism") {
        u.parallelism = cx.u64(v, &p)?;
    }
    if let Some((v, p)) = f.get("delay") {
        u.delay_ms = cx.duration_ms(v, &p)?;
    }
    if let Some((v, p)) = f.get("failure_action") {
        let s = cx.str(v, &p)?;
        u.failure_action = FailureAction::parse(&p, &s).map_err(|e| cx.err(v, &p, e.message))?;
        if out.is_none() && u.failure_action == FailureAction::Rollback {
            return Err(cx.err(v, &p, "a rollback cannot roll back: expected pause or continue"));
        }
    }
    if let Some((v, p)) = f.get("monitor") {
        u.monitor_ms = cx.duration_ms(v, &p)?;
    }
    if let Some((v, p)) = f.get("max_failure_ratio") {
        u.max_failure_ratio = cx.f64(v, &p)?;
        if !(0.0..=1.0).contains(&u.max_failure_ratio) {
            return Err(cx.err(v, &p, format!("{} is not between 0 and 1", u.max_failure_ratio)));
        }
    }
    if let Some((v, p)) = f.get("order") {
        let s = cx.str(v, &p)?;
        u.order = Some(UpdateOrder::parse(&p, &s).map_err(|e| cx.err(v, &p, e.message))?);
    }
    if let Some((v, p)) = f.get("canary_weight") {
        let w = weight(cx, v, &p)?;
        match out {
            Some(out) => out.canary.get_or_insert_with(Default::default).weight = w,
            None => return Err(cx.err(v, &p, "a rollback has no canary")),
        }
    }
    Ok(u)
}

fn weight(cx: &Cx, n: &Node, path: &str) -> R<u8> {
    let w = cx.u64(n, path)?;
    if !(1..=100).contains(&w) {
        return Err(cx.err(n, path, format!("{w} is not a percentage between 1 and 100")));
    }
    Ok(w as u8)
}

fn strategy(cx: &Cx, n: &Node, path: &str, out: &mut ManifestService) -> R<()> {
    match cx.str(n, path)?.as_str() {
        "rolling" => {
            if out.canary.is_some() {
                return Err(cx.err(n, path, "canary settings are given: the strategy is canary"));
            }
        }
        "canary" => {
            out.canary.get_or_insert_with(Default::default);
        }
        other => return Err(cx.err(n, path, format!("strategy {other:?} is not rolling or canary"))),
    }
    Ok(())
}

/// The canary and rate limit settings: under `x-warren` in a compose file, or as
/// keys of their own in a Warren YAML spec.
fn x_warren(
    cx: &mut Cx,
    f: &Fields,
    ext: Option<(&Node, String)>,
    spec: &mut ServiceSpec,
    out: &mut ManifestService,
) -> R<()> {
    let ext_fields = match &ext {
        Some((x, p)) => Some(cx.fields(x, p, X_WARREN, &[], false)?),
        None => None,
    };
    let get = |key: &str| ext_fields.as_ref().and_then(|e| e.get(key)).or_else(|| f.get(key));
    if let Some((l, lp)) = get("endpoint_locality") {
        let s = cx.str(l, &lp)?;
        spec.endpoint_locality = model::EndpointLocality::parse(&lp, &s).map_err(|e| cx.err(l, &lp, e.message))?;
    }
    if let Some((s, sp)) = get("strategy") {
        if cx.str(s, &sp)? == "canary" {
            out.canary.get_or_insert_with(Default::default);
        }
    }
    if let Some((w, wp)) = get("canary_weight") {
        out.canary.get_or_insert_with(Default::default).weight = weight(cx, w, &wp)?;
    }
    if let Some((s, sp)) = get("canary_steps") {
        let mut steps = Vec::new();
        for (i, it) in cx.seq(s, &sp)?.iter().enumerate() {
            let ip = index(&sp, i);
            let w = weight(cx, it, &ip)?;
            if steps.last().is_some_and(|l| *l >= w) {
                return Err(cx.err(it, &ip, format!("{w} does not rise above the step before it")));
            }
            steps.push(w);
        }
        out.canary.get_or_insert_with(Default::default).steps = steps;
    }
    if let Some((s, sp)) = get("strategy") {
        strategy(cx, s, &sp, out)?;
    }
    if let Some(c) = &mut out.canary {
        if c.weight == 0 {
            c.weight = c.steps.first().copied().unwrap_or(10);
        }
        if c.steps.first().is_some_and(|s| *s <= c.weight) {
            c.steps.retain(|s| *s > c.weight);
        }
    }
    let burst = match get("rate_burst") {
        Some((b, bp)) => {
            let b = cx.u32(b, &bp)?;
            Some(b)
        }
        None => None,
    };
    match get("rate_limit") {
        Some((r, rp)) => {
            let s = cx.str(r, &rp)?;
            let per_sec = model::parse_rate(&rp, &s).map_err(|e| cx.err(r, &rp, e.message))?;
            spec.rate_limit = Some(RateLimit {
                per_sec,
                burst: burst.unwrap_or(per_sec),
            });
        }
        None => {
            if let Some((b, bp)) = get("rate_burst") {
                return Err(cx.err(b, &bp, "needs rate_limit"));
            }
        }
    }
    Ok(())
}

fn container(cx: &mut Cx, f: &Fields, spec: &mut ServiceSpec) -> R<()> {
    if let Some((v, p)) = f.get("user") {
        spec.user = cx.str(v, &p)?;
    }
    if let Some((v, p)) = f.get("working_dir") {
        spec.workdir = cx.str(v, &p)?;
    }
    if let Some((v, p)) = f.get("stop_signal") {
        let s = cx.str(v, &p)?;
        spec.stop_signal = model::parse_signal(&p, &s).map_err(|e| cx.err(v, &p, e.message))?;
    }
    if let Some((v, p)) = f.get("stop_grace_period") {
        spec.stop_grace_ms = cx.duration_ms(v, &p)?;
    }
    let o = &mut spec.container;
    if let Some((v, p)) = f.get("hostname") {
        o.hostname = cx.str(v, &p)?;
    }
    if let Some((v, p)) = f.get("init") {
        o.init = cx.bool(v, &p)?;
    }
    if let Some((v, p)) = f.get("read_only") {
        o.read_only = cx.bool(v, &p)?;
    }
    for (key, add) in [("cap_add", true), ("cap_drop", false)] {
        let Some((v, p)) = f.get(key) else { continue };
        for (i, it) in cx.seq(v, &p)?.iter().enumerate() {
            let ip = index(&p, i);
            let s = cx.str(it, &ip)?;
            let c = model::parse_capability(&ip, &s).map_err(|e| cx.err(it, &ip, e.message))?;
            let list = if add { &mut o.cap_add } else { &mut o.cap_drop };
            if !list.contains(&c) {
                list.push(c);
            }
        }
    }
    if let Some((v, p)) = f.get("ulimits") {
        for (k, lim) in cx.map(v, &p)? {
            let kp = join(&p, &k.name);
            let (soft, hard) = match &lim.value {
                Value::Map(_) => {
                    let lf = cx.fields(lim, &kp, &["soft", "hard"], &[], false)?;
                    let get = |key: &str| -> R<u64> {
                        let (n, np) = lf.get(key).ok_or_else(|| cx.err(lim, &join(&kp, key), "is required"))?;
                        ulimit_value(cx, n, &np)
                    };
                    (get("soft")?, get("hard")?)
                }
                _ => {
                    let x = ulimit_value(cx, lim, &kp)?;
                    (x, x)
                }
            };
            let u = Ulimit {
                name: k.name.to_ascii_lowercase(),
                soft,
                hard,
            };
            u.validate(&kp)
                .map_err(|e| cx.err_at(lim.file, k.line, &kp, e.message))?;
            o.ulimits.retain(|x| x.name != u.name);
            o.ulimits.push(u);
        }
    }
    if let Some((v, p)) = f.get("sysctls") {
        for (k, val, node) in cx.key_values(v, &p)? {
            let kp = join(&p, &k);
            let val = val.unwrap_or_default();
            let k = k.trim().replace('/', ".");
            model::validate_sysctl(&kp, &k, &val).map_err(|e| cx.err(&node, &kp, e.message))?;
            o.sysctls.insert(k, val);
        }
    }
    if let Some((v, p)) = f.get("dns") {
        for (i, s) in cx.str_list(v, &p)?.into_iter().enumerate() {
            let ip = index(&p, i);
            let d = model::parse_dns(&ip, &s).map_err(|e| cx.err(v, &ip, e.message))?;
            if !o.dns.contains(&d) {
                o.dns.push(d);
            }
        }
    }
    if let Some((v, p)) = f.get("pids_limit") {
        o.pids_limit = cx.u64(v, &p)?;
    }
    Ok(())
}

fn ulimit_value(cx: &Cx, n: &Node, path: &str) -> R<u64> {
    let s = cx.str(n, path)?;
    match s.trim() {
        "-1" | "unlimited" => Ok(u64::MAX),
        t => t
            .parse::<u64>()
            .map_err(|_| cx.err(n, path, format!("expected a number, got {s:?}"))),
    }
}

/// The key (relative to the service) a `ServiceSpec::validate` field is about.
fn validation_key(field: &str) -> &'static [&'static str] {
    match field {
        "image" => &["image"],
        "replicas" => &["deploy.replicas", "replicas"],
        "env" => &["environment", "env_file"],
        "reservations" | "reserve-memory" | "reserve-cpu" => {
            &["deploy.resources.reservations", "resources.reservations"]
        }
        "limits" | "limit-memory" | "limit-cpu" => &["deploy.resources.limits", "resources.limits"],
        "workdir" => &["working_dir"],
        "mount" => &["volumes", "tmpfs"],
        "secret" => &["secrets"],
        "publish" => &["ports"],
        "hostname" => &["hostname"],
        "cap-add" => &["cap_add"],
        "cap-drop" => &["cap_drop"],
        "ulimit" => &["ulimits"],
        "sysctl" => &["sysctls"],
        "limit-pids" => &["pids_limit", "deploy.resources.limits.pids"],
        "dns" => &["dns"],
        "rate-limit" | "rate-burst" => &["x-warren.rate_limit", "rate_limit", "x-warren.rate_burst", "rate_burst"],
        "endpoint-mode" => &["deploy.endpoint_mode"],
        "stop-signal" => &["stop_signal"],
        f if f.starts_with("health") => &["healthcheck", "health_check"],
        f if f.starts_with("update") => &["deploy.update_config"],
        f if f.starts_with("rollback") => &["deploy.rollback_config"],
        _ => &[],
    }
}

/// Names the model's validation fields as file paths, so that a manager error about
/// `services.web.publish` lands on the `ports` line too.
pub(crate) const VALIDATION_FIELDS: &[&str] = &[
    "image",
    "replicas",
    "env",
    "reservations",
    "reserve-memory",
    "reserve-cpu",
    "limits",
    "limit-memory",
    "limit-cpu",
    "workdir",
    "mount",
    "secret",
    "publish",
    "hostname",
    "cap-add",
    "cap-drop",
    "ulimit",
    "sysctl",
    "limit-pids",
    "dns",
    "rate-limit",
    "rate-burst",
    "endpoint-mode",
    "stop-signal",
    "health",
    "update",
    "rollback",
];

/// The node a model field name refers to in this service mapping, if written.
pub(crate) fn field_node<'n>(service: &'n Node, field: &str) -> Option<(&'n Node, u32, &'static str)> {
    for key in validation_key(field) {
        let mut n = service;
        let mut line = service.line;
        let mut found = true;
        for part in key.split('.') {
            match (n.key_line(part), n.get(part)) {
                (Some(l), Some(c)) => {
                    line = l;
                    n = c;
                }
                _ => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            return Some((n, line, key));
        }
    }
    None
}

fn validation_error(cx: &Cx, f: &Fields, e: &ValidationError) -> super::LoadError {
    match field_node(f.node, &e.field) {
        Some((n, line, key)) => cx.err_at(n.file, line, &join(&f.path, key), e.message.clone()),
        None => cx.err(f.node, &f.path, format!("{}: {}", e.field, e.message)),
    }
}

/// Across the whole manifest: a port published by two services.
pub(crate) fn check_references(cx: &Cx, m: &model::Manifest, origins: &model::Origins) -> R<()> {
    let mut seen: std::collections::HashMap<(u16, Protocol), (&str, PublishMode)> = Default::default();
    for s in &m.services {
        for p in s.spec.ports.iter().filter(|p| p.published != PICK_PUBLISHED) {
            let prev = seen.insert((p.published, p.protocol), (&s.name, p.mode));
            // Host-mode ports of two services may share a number on different nodes.
            if let Some((other, mode)) =
                prev.filter(|(_, mode)| !(*mode == PublishMode::Host && p.mode == PublishMode::Host))
            {
                let _ = mode;
                let path = format!("services.{}.ports", s.name);
                let o = origins.find(&path).cloned().unwrap_or_default();
                let _ = cx;
                return Err(super::LoadError {
                    file: o.file,
                    line: o.line,
                    field: path,
                    message: format!(
                        "port {}/{} is already published by services.{other}",
                        p.published,
                        p.protocol.as_str()
                    ),
                });
            }
        }
    }
    Ok(())
}
