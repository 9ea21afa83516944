//! `warren ingress ...`, `warren certificate ...` and `warren cluster update
//! --acme-*`: the client side of the ingress nouns. Flags become an `IngressSpec`
//! here (each parsed with the model's parser, so an error names its flag); what
//! must hold across the cluster is checked by the managers.

use super::args::Format;
use super::client::{call, Client};
use super::ingress_args::{CertificateCmd, ClusterUpdateArgs, IngressCmd, RouteArgs};
use super::render::{ago, emit, json, line, or_dash, short_id, table};
use crate::model::ingress::{
    parse_cidr, parse_header_name, parse_host, parse_path, parse_service_target, HeaderAdd, IngressSpec, Rewrite,
    RouteTls,
};
use crate::model::{parse_duration, parse_rate, validate_name, RateLimit};
use crate::wire::convert;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use warren_proto::v1 as pb;

fn flag(e: crate::model::ValidationError) -> anyhow::Error {
    anyhow!("--{}: {}", e.field, e.message)
}

/// Applies the flags that were given to `spec`.
fn apply_flags(spec: &mut IngressSpec, a: RouteArgs, creating: bool) -> Result<()> {
    if let Some(h) = &a.hostname {
        spec.host = if h.is_empty() {
            String::new()
        } else {
            parse_host("hostname", h).map_err(flag)?
        };
    }
    if let Some(p) = &a.path {
        spec.path = parse_path("path", p).map_err(flag)?;
    }
    if let Some(s) = &a.service {
        let (name, port) = parse_service_target("service", s).map_err(flag)?;
        spec.service = name;
        spec.port = port;
    }
    if let Some(t) = &a.tls {
        spec.tls = RouteTls::parse("tls", t).map_err(flag)?;
    }
    if let Some(v) = a.strip_prefix {
        spec.strip_prefix = v;
    }
    if let Some(r) = &a.rewrite {
        spec.rewrite = if r.is_empty() {
            None
        } else {
            Some(Rewrite::parse("rewrite", r).map_err(flag)?)
        };
    }
    if !a.header_add.is_empty() {
        spec.header_add = a
            .header_add
            .iter()
            .map(|h| HeaderAdd::parse("header-add", h))
            .collect::<Result<_, _>>()
            .map_err(flag)?;
    }
    if !a.header_rm.is_empty() {
        spec.header_rm = a
            .header_rm
            .iter()
            .map(|h| parse_header_name("header-rm", h))
            .collect::<Result<_, _>>()
            .map_err(flag)?;
    }
    if let Some(v) = a.redirect_https {
        spec.redirect_https = v;
    }
    match (&a.rate_limit, a.rate_burst) {
        (Some(r), _) if r.trim() == "0" && !creating => spec.rate_limit = None,
        (Some(r), burst) => {
            let per_sec = parse_rate("rate-limit", r).map_err(flag)?;
            let burst = match burst {
                Some(b) => u32::try_from(b).map_err(|_| anyhow!("--rate-burst: {b} is too large"))?,
                None => per_sec,
            };
            spec.rate_limit = Some(RateLimit { per_sec, burst });
        }
        (None, Some(b)) => {
            let Some(r) = &mut spec.rate_limit else {
                bail!("--rate-burst: give --rate-limit too");
            };
            r.burst = u32::try_from(b).map_err(|_| anyhow!("--rate-burst: {b} is too large"))?;
        }
        (None, None) => {}
    }
    if !a.allow.is_empty() {
        spec.allow = a
            .allow
            .iter()
            .map(|c| parse_cidr("allow", c))
            .collect::<Result<_, _>>()
            .map_err(flag)?;
    }
    if !a.deny.is_empty() {
        spec.deny = a
            .deny
            .iter()
            .map(|c| parse_cidr("deny", c))
            .collect::<Result<_, _>>()
            .map_err(flag)?;
    }
    if let Some(v) = a.sticky {
        spec.sticky = v;
    }
    if let Some(v) = a.default_backend {
        spec.default_backend = v;
    }
    spec.validate().map_err(flag)
}

#[derive(Serialize)]
struct RouteView {
    id: String,
    name: String,
    spec: IngressSpec,
    version: u64,
    created_ms: i64,
    updated_ms: i64,
}

fn route_view(r: pb::IngressRoute) -> Result<RouteView> {
    let i = convert::route_from_pb(r).map_err(|e| anyhow!("{e}"))?;
    Ok(RouteView {
        id: i.id,
        name: i.name,
        spec: i.spec,
        version: i.version,
        created_ms: i.created_ms,
        updated_ms: i.updated_ms,
    })
}

fn target(s: &IngressSpec) -> String {
    match s.port {
        Some(p) => format!("{}:{p}", s.service),
        None => s.service.clone(),
    }
}

fn route_text(r: &RouteView) -> String {
    let s = &r.spec;
    let mut rules = Vec::new();
    if s.strip_prefix {
        rules.push("strip-prefix".to_string());
    }
    if let Some(rw) = &s.rewrite {
        rules.push(format!("rewrite {rw}"));
    }
    for h in &s.header_add {
        rules.push(format!("header-add {}={}", h.name, h.value));
    }
    for h in &s.header_rm {
        rules.push(format!("header-rm {h}"));
    }
    if s.redirect_https {
        rules.push("redirect-https".into());
    }
    if let Some(l) = &s.rate_limit {
        rules.push(format!("rate-limit {}/s burst {}", l.per_sec, l.burst));
    }
    for a in &s.allow {
        rules.push(format!("allow {a}"));
    }
    for d in &s.deny {
        rules.push(format!("deny {d}"));
    }
    if s.sticky {
        rules.push("sticky".into());
    }
    if s.default_backend {
        rules.push("default".into());
    }
    format!(
        "ID:       {}\nName:     {}\nHost:     {}\nPath:     {}\nService:  {}\nTLS:      {}\nRules:    {}\nVersion:  {}\nUpdated:  {}\n",
        r.id,
        r.name,
        or_dash(&s.host),
        s.path,
        target(s),
        s.tls.as_str(),
        if rules.is_empty() { "-".to_string() } else { rules.join(", ") },
        r.version,
        ago(r.updated_ms),
    )
}

pub async fn run(c: &mut Client, cmd: IngressCmd) -> Result<()> {
    match cmd {
        IngressCmd::Create { name, route } => {
            validate_name("name", &name).map_err(flag)?;
            if route.service.is_none() {
                bail!("--service: a route needs a service (NAME[:PORT])");
            }
            let mut spec = IngressSpec {
                path: "/".into(),
                ..Default::default()
            };
            apply_flags(&mut spec, route, true)?;
            let r = call(c.create_ingress_route(pb::CreateIngressRouteRequest {
                name,
                spec_json: convert::spec_to_json(&spec),
            }))
            .await?;
            line(&r.id)?;
        }
        IngressCmd::Ls { format, quiet } => {
            let list = call(c.list_ingress_routes(pb::ListIngressRoutesRequest {})).await?;
            let views: Vec<RouteView> = list.routes.into_iter().map(route_view).collect::<Result<_>>()?;
            if quiet {
                for r in &views {
                    line(&r.id)?;
                }
            } else if format == Format::Json {
                emit(&json(&views)?)?;
            } else {
                emit(&table(
                    &["ID", "NAME", "HOST", "PATH", "SERVICE", "TLS"],
                    views
                        .iter()
                        .map(|r| {
                            vec![
                                short_id(&r.id),
                                r.name.clone(),
                                or_dash(&r.spec.host),
                                r.spec.path.clone(),
                                target(&r.spec),
                                r.spec.tls.as_str().to_string(),
                            ]
                        })
                        .collect(),
                ))?;
            }
        }
        IngressCmd::Inspect { name, format } => {
            let r = route_view(call(c.get_ingress_route(pb::GetIngressRouteRequest { ingress: name })).await?)?;
            if format == Format::Json {
                emit(&json(&r)?)?;
            } else {
                emit(&route_text(&r))?;
            }
        }
        IngressCmd::Update { name, route } => {
            let current = call(c.get_ingress_route(pb::GetIngressRouteRequest { ingress: name.clone() })).await?;
            let version = current.version;
            let mut spec = convert::spec_from_json(&current.spec_json).map_err(|e| anyhow!("{e}"))?;
            apply_flags(&mut spec, route, false)?;
            call(c.update_ingress_route(pb::UpdateIngressRouteRequest {
                ingress: name.clone(),
                spec_json: convert::spec_to_json(&spec),
                expected_version: version,
            }))
            .await?;
            line(&name)?;
        }
        IngressCmd::Rm { names } => {
            let mut printed = Ok(());
            for n in names {
                call(c.remove_ingress_route(pb::RemoveIngressRouteRequest { ingress: n.clone() })).await?;
                printed = printed.and(line(&n));
            }
            printed?;
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct CertificateView {
    id: String,
    name: String,
    hosts: Vec<String>,
    source: String,
    not_before_ms: i64,
    not_after_ms: i64,
    version: u64,
    created_ms: i64,
    updated_ms: i64,
    cert_pem: String,
}

impl CertificateView {
    fn from_pb(c: pb::IngressCertificate) -> CertificateView {
        CertificateView {
            id: c.id,
            name: c.name,
            hosts: c.hosts,
            source: c.source,
            not_before_ms: c.not_before_ms,
            not_after_ms: c.not_after_ms,
            version: c.version,
            created_ms: c.created_ms,
            updated_ms: c.updated_ms,
            cert_pem: c.cert_pem,
        }
    }
}

/// `2026-12-31 23:59 UTC`.
fn date(ms: i64) -> String {
    chrono_like(ms)
}

/// A UTC date from Unix milliseconds, without a calendar crate (civil-from-days).
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

pub async fn certificates(c: &mut Client, cmd: CertificateCmd) -> Result<()> {
    match cmd {
        CertificateCmd::Create { name, cert, key } => {
            let cert_pem =
                std::fs::read_to_string(&cert).with_context(|| format!("--cert: reading {}", cert.display()))?;
            let key_pem = std::fs::read_to_string(&key).with_context(|| format!("--key: reading {}", key.display()))?;
            let r = call(c.create_ingress_certificate(pb::CreateIngressCertificateRequest {
                name,
                cert_pem,
                key_pem,
            }))
            .await?;
            line(&r.id)?;
        }
        CertificateCmd::Ls { format, quiet } => {
            let list = call(c.list_ingress_certificates(pb::ListIngressCertificatesRequest {})).await?;
            let views: Vec<CertificateView> = list.certificates.into_iter().map(CertificateView::from_pb).collect();
            if quiet {
                for v in &views {
                    line(&v.id)?;
                }
            } else if format == Format::Json {
                emit(&json(&views)?)?;
            } else {
                emit(&table(
                    &["ID", "NAME", "HOSTS", "SOURCE", "EXPIRES"],
                    views
                        .iter()
                        .map(|v| {
                            vec![
                                short_id(&v.id),
                                v.name.clone(),
                                v.hosts.join(","),
                                v.source.clone(),
                                date(v.not_after_ms),
                            ]
                        })
                        .collect(),
                ))?;
            }
        }
        CertificateCmd::Inspect { name, format } => {
            let v = CertificateView::from_pb(
                call(c.get_ingress_certificate(pb::GetIngressCertificateRequest { certificate: name })).await?,
            );
            if format == Format::Json {
                emit(&json(&v)?)?;
            } else {
                emit(&format!(
                    "ID:         {}\nName:       {}\nHosts:      {}\nSource:     {}\nNot before: {}\nNot after:  {}\nVersion:    {}\n",
                    v.id,
                    v.name,
                    v.hosts.join(", "),
                    v.source,
                    date(v.not_before_ms),
                    date(v.not_after_ms),
                    v.version
                ))?;
            }
        }
        CertificateCmd::Rm { names } => {
            let mut printed = Ok(());
            for n in names {
                call(c.remove_ingress_certificate(pb::RemoveIngressCertificateRequest { certificate: n.clone() }))
                    .await?;
                printed = printed.and(line(&n));
            }
            printed?;
        }
    }
    Ok(())
}

pub async fn cluster_update(c: &mut Client, a: ClusterUpdateArgs) -> Result<()> {
    if let Some(d) = a.cert_expiry {
        crate::model::validate_cert_expiry("cert-expiry", d).map_err(flag)?;
        let r = call(c.update_cluster_certs(pb::UpdateClusterCertsRequest {
            cert_expiry_ms: d.as_millis() as i64,
        }))
        .await?;
        line(&format!(
            "Node certificates: {} (from each node's next renewal)",
            humantime::format_duration(std::time::Duration::from_millis(r.cert_expiry_ms as u64))
        ))?;
        if !(a.acme_disable
            || a.acme_email.is_some()
            || a.acme_directory.is_some()
            || a.acme_ca_file.is_some()
            || a.acme_renew_before.is_some())
        {
            return Ok(());
        }
    }
    let req = if a.acme_disable {
        pb::UpdateClusterAcmeRequest {
            disable: true,
            ..Default::default()
        }
    } else {
        if a.acme_email.is_none()
            && a.acme_directory.is_none()
            && a.acme_ca_file.is_none()
            && a.acme_renew_before.is_none()
        {
            bail!("nothing to update: pass --cert-expiry, --acme-email, --acme-directory, --acme-ca-file, --acme-renew-before or --acme-disable");
        }
        let ca_pem = match &a.acme_ca_file {
            Some(p) => {
                std::fs::read_to_string(p).with_context(|| format!("--acme-ca-file: reading {}", p.display()))?
            }
            None => String::new(),
        };
        let renew_before_ms = match &a.acme_renew_before {
            Some(d) => {
                u64::try_from(parse_duration("acme-renew-before", d).map_err(flag)?.as_millis()).unwrap_or(u64::MAX)
            }
            None => 0,
        };
        pb::UpdateClusterAcmeRequest {
            email: a.acme_email.unwrap_or_default(),
            directory_url: a.acme_directory.unwrap_or_default(),
            ca_pem,
            renew_before_ms,
            disable: false,
        }
    };
    let acme = call(c.update_cluster_acme(req)).await?;
    if acme.enabled {
        line(&format!("ACME: {} at {}", acme.email, acme.directory_url))
    } else {
        line("ACME: off")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(chrono_like(0), "1970-01-01 00:00 UTC");
        assert_eq!(chrono_like(1_798_761_540_000), "2026-12-31 23:59 UTC");
    }

    #[test]
    fn flags_make_a_spec_and_name_themselves_when_wrong() {
        let mut spec = IngressSpec {
            path: "/".into(),
            ..Default::default()
        };
        let a = RouteArgs {
            hostname: Some("Shop.Example.com".into()),
            path: Some("/api/".into()),
            service: Some("api:8080".into()),
            tls: Some("acme".into()),
            strip_prefix: Some(true),
            rate_limit: Some("10/s".into()),
            ..Default::default()
        };
        apply_flags(&mut spec, a, true).unwrap();
        assert_eq!(
            (spec.host.as_str(), spec.path.as_str(), spec.port),
            ("shop.example.com", "/api", Some(8080))
        );
        assert_eq!(spec.rate_limit, Some(RateLimit { per_sec: 10, burst: 10 }));
        let bad = RouteArgs {
            allow: vec!["10.0.0.0/33".into()],
            ..Default::default()
        };
        let e = apply_flags(&mut spec, bad, false).unwrap_err().to_string();
        assert!(e.starts_with("--allow: "), "{e}");
    }
}
