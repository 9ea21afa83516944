//! Warren YAML documents (`apiVersion: warren/v1`, `kind`, `metadata`, `spec`) to a
//! manifest part. Kinds: Service (the compose service keys plus the tech spec's
//! shortcuts), Secret and Config (a file or a literal, or external), Volume, Ingress
//! (the `warren ingress create` flags as keys) and Certificate (PEM files).

use super::service;
use super::walk::{index, join, Cx, Fields, R};
use super::yaml::{Node, Value};
use super::{origin, record, Part, Vars};
use crate::model::ingress::{self, HeaderAdd, IngressSpec, Rewrite, RouteTls};
use crate::model::{
    self, ManifestCertificate, ManifestConfig, ManifestIngress, ManifestSecret, ManifestVolume, RateLimit,
};

pub const API_VERSION: &str = "warren/v1";
const KINDS: &[&str] = &["Service", "Secret", "Config", "Volume", "Ingress", "Certificate"];

pub(crate) fn convert(cx: &mut Cx, doc: &Node, vars: &Vars) -> R<Part> {
    let f = cx.fields(doc, "", &["apiVersion", "kind", "metadata", "spec"], &[], false)?;
    let (v, vp) = f
        .get("apiVersion")
        .ok_or_else(|| cx.err(doc, "apiVersion", format!("is required ({API_VERSION})")))?;
    let version = cx.str(v, &vp)?;
    if version != API_VERSION {
        return Err(cx.err(v, &vp, format!("unknown version {version:?}: expected {API_VERSION}")));
    }
    let (k, kp) = f
        .get("kind")
        .ok_or_else(|| cx.err(doc, "kind", format!("is required ({})", KINDS.join(", "))))?;
    let kind = cx.str(k, &kp)?;
    let (meta, mp) = f
        .get("metadata")
        .ok_or_else(|| cx.err(doc, "metadata", "is required (metadata.name)"))?;
    let mf = cx.fields(meta, &mp, &["name", "labels"], &[], false)?;
    let (n, np) = mf
        .get("name")
        .ok_or_else(|| cx.err(meta, "metadata.name", "is required"))?;
    let name = cx.str(n, &np)?;
    let mut labels = model::Labels::new();
    if let Some((l, lp)) = mf.get("labels") {
        for (lk, lv, _) in cx.key_values(l, &lp)? {
            labels.insert(lk, lv.unwrap_or_default());
        }
    }
    let empty = Node {
        value: Value::Map(vec![]),
        file: doc.file,
        line: doc.line,
    };
    let spec = f.get("spec").map(|(s, _)| s).unwrap_or(&empty);
    let section = match kind.as_str() {
        "Service" => "services",
        "Secret" => "secrets",
        "Config" => "configs",
        "Volume" => "volumes",
        "Ingress" => "ingresses",
        "Certificate" => "certificates",
        other => {
            return Err(cx.err(
                k,
                &kp,
                format!("unknown kind {other:?}: expected one of {}", KINDS.join(", ")),
            ));
        }
    };
    let path = format!("{section}.{name}");
    let mut part = Part::default();
    part.origins.insert(path.clone(), origin(cx, n.file, n.line));
    record(cx, &mut part.origins, spec, &path);
    let m = &mut part.manifest;
    match kind.as_str() {
        "Service" => {
            let mut svc = service::convert(cx, &name, n.line, spec, &path, vars, None)?;
            for (k, v) in labels {
                svc.spec.labels.entry(k).or_insert(v);
            }
            super::compose::aliases(cx, &mut part.origins, spec, &path);
            m.services.push(svc);
        }
        "Secret" | "Config" => {
            model::validate_name(&np, &name).map_err(|e| cx.err(n, &np, e.message))?;
            let (external, data) = data(cx, spec, &path, kind == "Secret")?;
            if kind == "Secret" {
                m.secrets.push(ManifestSecret {
                    name,
                    external,
                    data,
                    labels,
                });
            } else {
                m.configs.push(ManifestConfig {
                    name,
                    external,
                    data,
                    labels,
                });
            }
        }
        "Volume" => {
            model::validate_name(&np, &name).map_err(|e| cx.err(n, &np, e.message))?;
            let vf = cx.fields(spec, &path, &["driver", "options", "external"], &[], false)?;
            let mut vol = ManifestVolume {
                name,
                labels,
                ..Default::default()
            };
            if let Some((d, dp)) = vf.get("driver") {
                vol.driver = cx.str(d, &dp)?;
                if vol.driver == "local" {
                    vol.driver.clear();
                }
            }
            if let Some((o, op)) = vf.get("options") {
                for (ok, ov, node) in cx.key_values(o, &op)? {
                    let v = ov.ok_or_else(|| cx.err(&node, &join(&op, &ok), "needs a value"))?;
                    vol.options.insert(ok, v);
                }
            }
            if let Some((e, ep)) = vf.get("external") {
                vol.external = cx.bool(e, &ep)?;
            }
            m.volumes.push(vol);
        }
        "Ingress" => {
            model::validate_name(&np, &name).map_err(|e| cx.err(n, &np, e.message))?;
            let mut spec = ingress_spec(cx, spec, &path)?;
            for (k, v) in labels {
                spec.labels.entry(k).or_insert(v);
            }
            m.ingresses.push(ManifestIngress { name, spec });
        }
        _ => {
            ingress::validate_certificate_name(&np, &name).map_err(|e| cx.err(n, &np, e.message))?;
            let cf = cx.fields(spec, &path, &["cert_file", "key_file", "cert", "key"], &[], false)?;
            let cert_pem = pem(cx, &cf, spec, &path, "cert_file", "cert", "CERTIFICATE")?;
            let key_pem = pem(cx, &cf, spec, &path, "key_file", "key", "PRIVATE KEY")?;
            m.certificates.push(ManifestCertificate {
                name,
                cert_pem,
                key_pem,
            });
        }
    }
    Ok(part)
}

/// A Secret's or Config's value: `file` (relative to the YAML file), `data` (a
/// literal), or `external: true`.
fn data(cx: &mut Cx, spec: &Node, path: &str, secret: bool) -> R<(bool, Vec<u8>)> {
    let f = cx.fields(spec, path, &["file", "data", "external"], &[], false)?;
    let external = match f.get("external") {
        Some((e, ep)) => cx.bool(e, &ep)?,
        None => false,
    };
    let what = if secret { "a secret" } else { "a config" };
    match (external, f.get("file"), f.get("data")) {
        (true, None, None) => Ok((true, vec![])),
        (true, Some((n, p)), _) | (true, None, Some((n, p))) => {
            Err(cx.err(n, &p, format!("an external {} has no value here", &what[2..])))
        }
        (false, Some(_), Some((n, p))) => Err(cx.err(n, &p, "give file or data, not both")),
        (false, Some((n, p)), None) => {
            let file = cx.str(n, &p)?;
            let full = cx.dir(n).join(&file);
            let bytes =
                std::fs::read(&full).map_err(|e| cx.err(n, &p, format!("cannot read {}: {e}", full.display())))?;
            Ok((false, bytes))
        }
        (false, None, Some((n, p))) => Ok((false, cx.str(n, &p)?.into_bytes())),
        (false, None, None) => Err(cx.err(
            spec,
            path,
            format!("{what} needs spec.file, spec.data or spec.external: true"),
        )),
    }
}

fn pem(cx: &Cx, f: &Fields, spec: &Node, path: &str, file_key: &str, inline_key: &str, label: &str) -> R<String> {
    let (text, n, p) = match (f.get(file_key), f.get(inline_key)) {
        (Some(_), Some((n, p))) => return Err(cx.err(n, &p, format!("give {file_key} or {inline_key}, not both"))),
        (Some((n, p)), None) => {
            let file = cx.str(n, &p)?;
            let full = cx.dir(n).join(&file);
            let t = std::fs::read_to_string(&full)
                .map_err(|e| cx.err(n, &p, format!("cannot read {}: {e}", full.display())))?;
            (t, n, p)
        }
        (None, Some((n, p))) => (cx.str(n, &p)?, n, p),
        (None, None) => return Err(cx.err(spec, &join(path, file_key), "is required")),
    };
    if !text.contains("-----BEGIN ") || !text.contains(label) {
        return Err(cx.err(n, &p, format!("is not PEM (expected a {label} block)")));
    }
    Ok(text)
}

const INGRESS_KEYS: &[&str] = &[
    "host",
    "path",
    "service",
    "port",
    "tls",
    "strip_prefix",
    "rewrite",
    "header_add",
    "header_rm",
    "redirect_https",
    "rate_limit",
    "rate_burst",
    "allow",
    "deny",
    "sticky",
    "default",
];

fn ingress_spec(cx: &mut Cx, spec: &Node, path: &str) -> R<IngressSpec> {
    let f = cx.fields(spec, path, INGRESS_KEYS, &[], false)?;
    let mut s = IngressSpec {
        path: "/".into(),
        ..Default::default()
    };
    macro_rules! parsed {
        ($key:literal, $parse:expr) => {
            match f.get($key) {
                Some((n, p)) => {
                    let raw = cx.str(n, &p)?;
                    #[allow(clippy::redundant_closure_call)]
                    Some(
                        ($parse)(p.as_str(), raw.as_str())
                            .map_err(|e: model::ValidationError| cx.err(n, &p, e.message))?,
                    )
                }
                None => None,
            }
        };
    }
    if let Some(h) = parsed!("host", ingress::parse_host) {
        s.host = h;
    }
    if let Some(p) = parsed!("path", ingress::parse_path) {
        s.path = p;
    }
    if let Some((svc, port)) = parsed!("service", ingress::parse_service_target) {
        s.service = svc;
        s.port = port;
    } else {
        return Err(cx.err(spec, &join(path, "service"), "is required"));
    }
    if let Some((n, p)) = f.get("port") {
        let v = cx.u64(n, &p)?;
        s.port = Some(
            u16::try_from(v)
                .ok()
                .filter(|x| *x > 0)
                .ok_or_else(|| cx.err(n, &p, "is not a port"))?,
        );
    }
    if let Some(t) = parsed!("tls", RouteTls::parse) {
        s.tls = t;
    }
    if let Some(r) = parsed!("rewrite", Rewrite::parse) {
        s.rewrite = Some(r);
    }
    if let Some((n, p)) = f.get("header_add") {
        for (k, v, node) in cx.key_values(n, &p)? {
            let kp = join(&p, &k);
            let h = HeaderAdd::parse(&kp, &format!("{k}={}", v.unwrap_or_default()))
                .map_err(|e| cx.err(&node, &kp, e.message))?;
            s.header_add.push(h);
        }
    }
    if let Some((n, p)) = f.get("header_rm") {
        for (i, h) in cx.str_list(n, &p)?.into_iter().enumerate() {
            let ip = index(&p, i);
            s.header_rm
                .push(ingress::parse_header_name(&ip, &h).map_err(|e| cx.err(n, &ip, e.message))?);
        }
    }
    for (key, field) in [("allow", 0), ("deny", 1)] {
        let Some((n, p)) = f.get(key) else { continue };
        for (i, c) in cx.str_list(n, &p)?.into_iter().enumerate() {
            let ip = index(&p, i);
            let net = ingress::parse_cidr(&ip, &c).map_err(|e| cx.err(n, &ip, e.message))?;
            if field == 0 {
                s.allow.push(net);
            } else {
                s.deny.push(net);
            }
        }
    }
    for (key, slot) in [
        ("strip_prefix", &mut s.strip_prefix),
        ("redirect_https", &mut s.redirect_https),
        ("sticky", &mut s.sticky),
        ("default", &mut s.default_backend),
    ] {
        if let Some((n, p)) = f.get(key) {
            *slot = cx.bool(n, &p)?;
        }
    }
    let burst = match f.get("rate_burst") {
        Some((n, p)) => Some(cx.u32(n, &p)?),
        None => None,
    };
    if let Some(per_sec) = parsed!("rate_limit", model::parse_rate) {
        s.rate_limit = Some(RateLimit {
            per_sec,
            burst: burst.unwrap_or(per_sec),
        });
    } else if let Some((n, p)) = f.get("rate_burst") {
        return Err(cx.err(n, &p, "needs rate_limit"));
    }
    s.validate().map_err(|e| {
        let key = match e.field.as_str() {
            "header-add" => "header_add",
            "header-rm" => "header_rm",
            "rate-limit" | "rate-burst" => "rate_limit",
            other => other,
        };
        match (spec.key_line(key), spec.get(key)) {
            (Some(line), Some(n)) => cx.err_at(n.file, line, &join(path, key), e.message),
            _ => cx.err(spec, path, format!("{}: {}", e.field, e.message)),
        }
    })?;
    Ok(s)
}
