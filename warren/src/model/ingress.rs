//! Ingress routes, TLS certificates and the ACME state as they live in the
//! replicated state, plus the parsing and validation of their user-facing spellings
//! (`--host`, `--path`, `--service api:8080`, `--rewrite FROM=TO`, `--allow CIDR`,
//! ...). Every error names the flag it is about. The proxy that serves these is
//! `crate::ingress`; nothing here does I/O or parses certificates.

use super::{validate_name, Labels, RateLimit, ValidationError};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The certificate name a route gives to ask for a certificate through ACME
/// (`--tls acme`); no uploaded certificate may take it.
pub const ACME: &str = "acme";
/// Certificates obtained through ACME are named `acme-<host>`; the prefix is
/// reserved as well.
pub const ACME_PREFIX: &str = "acme-";
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Renew ACME certificates this long before they expire, unless configured.
pub const DEFAULT_RENEW_BEFORE_MS: u64 = 30 * 24 * 3600 * 1000;

/// Headers the proxy itself manages: a route may neither add nor remove them.
const MANAGED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "te",
    "trailer",
];

/// Which certificate answers for a route's host on HTTPS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteTls {
    /// No certificate is named: HTTPS works only if an uploaded certificate covers
    /// the host anyway.
    #[default]
    None,
    /// A certificate obtained and renewed through ACME (HTTP-01).
    Acme,
    /// An uploaded certificate, by name.
    Certificate(String),
}

impl RouteTls {
    /// `--tls acme|CERT_NAME|none`.
    pub fn parse(field: &str, input: &str) -> Result<RouteTls, ValidationError> {
        match input.trim() {
            "" | "none" => Ok(RouteTls::None),
            ACME => Ok(RouteTls::Acme),
            name => {
                validate_name(field, name)?;
                Ok(RouteTls::Certificate(name.to_string()))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RouteTls::None => "none",
            RouteTls::Acme => ACME,
            RouteTls::Certificate(n) => n,
        }
    }

    pub fn is_none(&self) -> bool {
        *self == RouteTls::None
    }
}

/// `--rewrite FROM=TO`: a request path that starts with `from` has that prefix
/// replaced by `to` before it goes to the backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    pub from: String,
    pub to: String,
}

impl Rewrite {
    pub fn parse(field: &str, input: &str) -> Result<Rewrite, ValidationError> {
        let bad = |why: &str| ValidationError::new(field, format!("invalid rewrite {input:?}: {why}"));
        let (from, to) = input
            .split_once('=')
            .ok_or_else(|| bad("expected FROM=TO, e.g. /old=/new"))?;
        let r = Rewrite {
            from: from.trim().to_string(),
            to: to.trim().to_string(),
        };
        r.validate(field)?;
        Ok(r)
    }

    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        for (what, p) in [("FROM", &self.from), ("TO", &self.to)] {
            if let Err(why) = path_problem(p) {
                return Err(ValidationError::new(
                    field,
                    format!("invalid rewrite {}={}: {what} {why}", self.from, self.to),
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.from, self.to)
    }
}

/// A request header the route sets before the request goes to the backend
/// (`--header-add K=V`); an existing header of that name is replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderAdd {
    /// Lowercase.
    pub name: String,
    pub value: String,
}

impl HeaderAdd {
    pub fn parse(field: &str, input: &str) -> Result<HeaderAdd, ValidationError> {
        let (name, value) = input
            .split_once('=')
            .ok_or_else(|| ValidationError::new(field, format!("invalid header {input:?}: expected NAME=VALUE")))?;
        let h = HeaderAdd {
            name: name.trim().to_ascii_lowercase(),
            value: value.trim().to_string(),
        };
        h.validate(field)?;
        Ok(h)
    }

    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        validate_header_name(field, &self.name)?;
        if let Some(c) = self.value.chars().find(|c| !(*c == '\t' || (' '..='~').contains(c))) {
            return Err(ValidationError::new(
                field,
                format!("the value of {} contains {c:?}: use printable ASCII", self.name),
            ));
        }
        Ok(())
    }
}

/// `--header-rm NAME`: lowercased and checked.
pub fn parse_header_name(field: &str, input: &str) -> Result<String, ValidationError> {
    let name = input.trim().to_ascii_lowercase();
    validate_header_name(field, &name)?;
    Ok(name)
}

fn validate_header_name(field: &str, name: &str) -> Result<(), ValidationError> {
    // RFC 9110 token characters.
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(tchar) {
        return Err(ValidationError::new(
            field,
            format!("invalid header name {name:?}: use letters, digits and -"),
        ));
    }
    if MANAGED_HEADERS.contains(&name) {
        return Err(ValidationError::new(
            field,
            format!("the proxy manages the {name} header; a route cannot change it"),
        ));
    }
    Ok(())
}

/// `--allow`/`--deny`: a CIDR, or one address (a /32 or /128).
pub fn parse_cidr(field: &str, input: &str) -> Result<IpNet, ValidationError> {
    let s = input.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        ValidationError::new(
            field,
            format!("invalid address range {input:?}: expected a CIDR such as 10.0.0.0/8 or one address"),
        )
    })
}

/// `--host`: an exact name (`shop.example.com`) or a wildcard of one label
/// (`*.example.com`), lowercased. No port, no scheme.
pub fn parse_host(field: &str, input: &str) -> Result<String, ValidationError> {
    let host = input.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| ValidationError::new(field, format!("invalid host {input:?}: {why}"));
    if host.is_empty() {
        return Err(bad("a host name is required"));
    }
    if host.contains("://") || host.contains('/') {
        return Err(bad("give the host name only, without scheme or path"));
    }
    if host.contains(':') {
        return Err(bad("give the host name without a port"));
    }
    if host.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    let (wildcard, rest) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    if rest.contains('*') {
        return Err(bad("a wildcard must be the whole first label, as in *.example.com"));
    }
    if wildcard && !rest.contains('.') {
        return Err(bad(
            "a wildcard needs at least two labels after it, as in *.example.com",
        ));
    }
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad(&format!(
                "label {label:?} must be 1-63 letters, digits or '-', not starting or ending with '-'"
            )));
        }
    }
    Ok(host)
}

/// `--path`: an absolute path prefix, matched segment by segment (`/api` matches
/// `/api` and `/api/v1`, not `/apis`). A trailing slash is dropped.
pub fn parse_path(field: &str, input: &str) -> Result<String, ValidationError> {
    let p = input.trim();
    path_problem(p).map_err(|why| ValidationError::new(field, format!("invalid path {input:?}: {why}")))?;
    Ok(normalize_path(p))
}

fn normalize_path(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

fn path_problem(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must start with /");
    }
    if p.contains(['?', '#']) {
        return Err("must not contain a query (?) or fragment (#)");
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace");
    }
    if p.contains("//") {
        return Err("must not contain //");
    }
    Ok(())
}

/// `--service NAME[:PORT]`: the port is the port the service's tasks listen on.
pub fn parse_service_target(field: &str, input: &str) -> Result<(String, Option<u16>), ValidationError> {
    let s = input.trim();
    let (name, port) = match s.rsplit_once(':') {
        Some((name, port)) => {
            let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                ValidationError::new(
                    field,
                    format!("invalid port in {input:?}: expected NAME:PORT with a port between 1 and 65535"),
                )
            })?;
            (name, Some(port))
        }
        None => (s, None),
    };
    validate_name(field, name)?;
    Ok((name.to_string(), port))
}

/// A route, as the user wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressSpec {
    /// Exact (`shop.example.com`) or wildcard (`*.example.com`), lowercase; empty
    /// only for a default backend.
    pub host: String,
    /// Path prefix; `/` matches everything.
    #[serde(default = "root_path")]
    pub path: String,
    pub service: String,
    /// The port the tasks listen on; None: the service's only target port, or 80.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: RouteTls,
    /// Remove the matched path prefix before the request goes to the backend.
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub header_add: Vec<HeaderAdd>,
    /// Lowercase request header names to remove.
    #[serde(default)]
    pub header_rm: Vec<String>,
    /// Answer plain-HTTP requests with a permanent redirect to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// Requests per second per client address, with a burst; beyond it: 429.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// When not empty, only clients in these ranges get through (else 403).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Clients in these ranges get 403 (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<IpNet>,
    /// Keep a client on one task with a cookie.
    #[serde(default)]
    pub sticky: bool,
    /// Also answer requests that no other route matches.
    #[serde(default)]
    pub default_backend: bool,
    #[serde(default)]
    pub labels: Labels,
}

fn root_path() -> String {
    "/".to_string()
}

impl IngressSpec {
    /// Checks a route the way every entry point must; the first problem found is
    /// reported with the flag it concerns. Values are expected in the canonical
    /// form the parsers above produce.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.host.is_empty() {
            if !self.default_backend {
                return Err(ValidationError::new(
                    "host",
                    "a host is required (or --default for a route that answers every host)",
                ));
            }
        } else if parse_host("host", &self.host)? != self.host {
            return Err(ValidationError::new(
                "host",
                format!("{:?} must be lowercase, without a trailing dot", self.host),
            ));
        }
        if parse_path("path", &self.path)? != self.path {
            return Err(ValidationError::new(
                "path",
                format!("{:?} must not end with /", self.path),
            ));
        }
        validate_name("service", &self.service)?;
        if self.port == Some(0) {
            return Err(ValidationError::new("service", "the port must be between 1 and 65535"));
        }
        match &self.tls {
            RouteTls::None => {}
            RouteTls::Acme => {
                if self.host.is_empty() || self.host.starts_with("*.") {
                    return Err(ValidationError::new(
                        "tls",
                        "acme needs an exact host: HTTP-01 cannot prove a wildcard or a default route",
                    ));
                }
            }
            RouteTls::Certificate(name) => validate_name("tls", name)?,
        }
        if let Some(r) = &self.rewrite {
            r.validate("rewrite")?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for h in &self.header_add {
            h.validate("header-add")?;
            if !seen.insert(h.name.as_str()) {
                return Err(ValidationError::new("header-add", format!("{} is added twice", h.name)));
            }
        }
        for h in &self.header_rm {
            validate_header_name("header-rm", h)?;
            if seen.contains(h.as_str()) {
                return Err(ValidationError::new(
                    "header-rm",
                    format!("{h} is both added and removed"),
                ));
            }
        }
        if let Some(r) = &self.rate_limit {
            if r.per_sec == 0 {
                return Err(ValidationError::new("rate-limit", "must be at least 1/s"));
            }
            if r.burst == 0 {
                return Err(ValidationError::new("rate-burst", "must be at least 1"));
            }
        }
        for (field, nets) in [("allow", &self.allow), ("deny", &self.deny)] {
            if let Some(n) = nets.iter().find(|n| n.trunc() != **n) {
                return Err(ValidationError::new(
                    field,
                    format!("{n} has host bits set; did you mean {}?", n.trunc()),
                ));
            }
        }
        Ok(())
    }

    /// The name of the certificate this route needs, if any.
    pub fn certificate_name(&self) -> Option<String> {
        match &self.tls {
            RouteTls::None => None,
            RouteTls::Acme => Some(acme_certificate_name(&self.host)),
            RouteTls::Certificate(n) => Some(n.clone()),
        }
    }
}

/// A route as stored in the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingress {
    pub id: String,
    pub name: String,
    pub spec: IngressSpec,
    /// Bumped by every change; optimistic concurrency for updates.
    pub version: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// The name under which the certificate that ACME obtains for `host` is stored.
pub fn acme_certificate_name(host: &str) -> String {
    format!("{ACME_PREFIX}{host}")
}

/// Names of uploaded certificates: a plain name, and neither `acme` nor `acme-*`.
pub fn validate_certificate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    validate_name(field, name)?;
    if name == ACME || name.starts_with(ACME_PREFIX) {
        return Err(ValidationError::new(
            field,
            format!("{name:?} is reserved for certificates obtained through ACME"),
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CertificateSource {
    #[default]
    Uploaded,
    Acme,
}

/// A certificate as stored: the chain in the clear, the private key sealed with
/// the managers' secrets key (as secrets are), so that the key never enters the
/// Raft log in plaintext. `hosts` and the validity are read from the certificate
/// when it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub id: String,
    pub name: String,
    /// PEM, the end-entity certificate first.
    pub cert_pem: String,
    /// The private key's PEM, sealed.
    pub key_sealed: Vec<u8>,
    /// The DNS names the certificate covers (its subject alternative names).
    pub hosts: Vec<String>,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub source: CertificateSource,
    pub version: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Cluster-wide ACME settings (`warren cluster update --acme-email ...`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeSettings {
    /// The account's contact address.
    pub email: String,
    /// The CA's directory URL; Let's Encrypt production unless set.
    pub directory_url: String,
    /// PEM of a CA that signs the ACME server's own HTTPS certificate (private CAs
    /// and testing); None: the system's roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    #[serde(default = "default_renew_before")]
    pub renew_before_ms: u64,
}

fn default_renew_before() -> u64 {
    DEFAULT_RENEW_BEFORE_MS
}

impl AcmeSettings {
    pub fn new(email: impl Into<String>) -> AcmeSettings {
        AcmeSettings {
            email: email.into(),
            directory_url: LETS_ENCRYPT_PRODUCTION.to_string(),
            ca_pem: None,
            renew_before_ms: DEFAULT_RENEW_BEFORE_MS,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        let e = self.email.trim();
        let ok = e
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
            && !e.chars().any(|c| c.is_whitespace() || c == ',');
        if !ok {
            return Err(ValidationError::new(
                "acme-email",
                format!("invalid email address {:?}", self.email),
            ));
        }
        let url = self.directory_url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.parse::<http::Uri>().is_err() {
            return Err(ValidationError::new(
                "acme-directory",
                format!("invalid directory URL {:?}: expected https://...", self.directory_url),
            ));
        }
        if let Some(pem) = &self.ca_pem {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ValidationError::new("acme-ca-file", "expected a PEM certificate"));
            }
        }
        if self.renew_before_ms == 0 {
            return Err(ValidationError::new("acme-renew-before", "must be longer than 0"));
        }
        Ok(())
    }
}

/// An HTTP-01 challenge response that every ingress node serves at
/// `/.well-known/acme-challenge/<token>` while an order is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeChallenge {
    pub token: String,
    pub key_authorization: String,
    pub host: String,
    pub created_ms: i64,
}

/// An order in progress, recorded before the challenges are published so that
/// a manager that takes over resumes it instead of placing a second one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeOrder {
    /// The certificate it will become (`acme-<host>`).
    pub certificate: String,
    pub hosts: Vec<String>,
    /// The order's URL at the CA.
    pub url: String,
    pub started_ms: i64,
}

/// The ingress of one node, as the replicated state records it: the ports it
/// listens on (so that apply can refuse a service that publishes one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIngress {
    pub http_port: u16,
    pub https_port: u16,
}

impl Default for NodeIngress {
    fn default() -> Self {
        NodeIngress {
            http_port: 80,
            https_port: 443,
        }
    }
}

impl NodeIngress {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.http_port == 0 {
            return Err(ValidationError::new("ingress-http-port", "must be between 1 and 65535"));
        }
        if self.https_port == 0 {
            return Err(ValidationError::new(
                "ingress-https-port",
                "must be between 1 and 65535",
            ));
        }
        if self.http_port == self.https_port {
            return Err(ValidationError::new(
                "ingress-https-port",
                format!("{} is also the HTTP port", self.https_port),
            ));
        }
        Ok(())
    }

    /// (port, the flag that sets it).
    pub fn ports(&self) -> [(u16, &'static str); 2] {
        [
            (self.http_port, "ingress-http-port"),
            (self.https_port, "ingress-https-port"),
        ]
    }
}

/// The ACME state of the cluster in the replicated state: the settings, the
/// account credentials (sealed), the orders in progress and their challenge
/// answers. The certificates obtained are ordinary [`Certificate`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeState {
    #[serde(default)]
    pub settings: Option<AcmeSettings>,
    /// Sealed account credentials, by directory URL.
    #[serde(default)]
    pub accounts: std::collections::BTreeMap<String, Vec<u8>>,
    #[serde(default)]
    pub orders: Vec<AcmeOrder>,
    #[serde(default)]
    pub challenges: Vec<AcmeChallenge>,
}

/// What the leader tells a node that runs an ingress: its ports, every route,
/// the certificates the routes may use (IDs, unsealed just before they go on
/// the wire) and the open HTTP-01 answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressAssignment {
    pub ports: NodeIngress,
    pub routes: Vec<Ingress>,
    /// (certificate name, certificate ID, its version).
    pub certificates: Vec<(String, String, u64)>,
    pub challenges: Vec<AcmeChallenge>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IngressSpec {
        IngressSpec {
            host: "shop.example.com".into(),
            path: "/".into(),
            service: "web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_minimal_route_is_valid() {
        spec().validate().unwrap();
    }

    #[test]
    fn hosts_are_exact_or_one_wildcard_label() {
        assert_eq!(parse_host("host", "Shop.Example.COM.").unwrap(), "shop.example.com");
        assert_eq!(parse_host("host", "*.example.com").unwrap(), "*.example.com");
        for bad in [
            "",
            "*.com",
            "a.*.example.com",
            "http://x.com",
            "x.com:443",
            "-a.com",
            "a..com",
            "x.com/path",
        ] {
            let e = parse_host("host", bad).unwrap_err();
            assert_eq!(e.field, "host", "{bad}");
        }
        assert!(parse_host("host", &format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn paths_are_absolute_prefixes_without_trailing_slash() {
        assert_eq!(parse_path("path", "/api/").unwrap(), "/api");
        assert_eq!(parse_path("path", "/").unwrap(), "/");
        assert_eq!(parse_path("path", "//").unwrap_err().field, "path");
        for bad in ["api", "/a?b", "/a#b", "/a b", "/a//b"] {
            assert_eq!(parse_path("path", bad).unwrap_err().field, "path", "{bad}");
        }
    }

    #[test]
    fn service_targets_take_an_optional_port() {
        assert_eq!(parse_service_target("service", "api").unwrap(), ("api".into(), None));
        assert_eq!(
            parse_service_target("service", "api:8080").unwrap(),
            ("api".into(), Some(8080))
        );
        for bad in ["api:0", "api:x", "api:70000", ":80", "-api"] {
            assert_eq!(
                parse_service_target("service", bad).unwrap_err().field,
                "service",
                "{bad}"
            );
        }
    }

    #[test]
    fn rewrites_headers_and_cidrs_parse_with_their_field() {
        let r = Rewrite::parse("rewrite", "/old=/new").unwrap();
        assert_eq!((r.from.as_str(), r.to.as_str()), ("/old", "/new"));
        assert_eq!(r.to_string(), "/old=/new");
        let e = Rewrite::parse("rewrite", "/old").unwrap_err();
        assert_eq!(e.field, "rewrite");
        assert!(e.message.contains("FROM=TO"), "{e}");
        assert!(Rewrite::parse("rewrite", "old=/new")
            .unwrap_err()
            .message
            .contains("FROM must start with /"));

        let h = HeaderAdd::parse("header-add", "X-Env = prod=1").unwrap();
        assert_eq!((h.name.as_str(), h.value.as_str()), ("x-env", "prod=1"));
        assert_eq!(HeaderAdd::parse("header-add", "X-Env").unwrap_err().field, "header-add");
        assert!(HeaderAdd::parse("header-add", "Host=evil")
            .unwrap_err()
            .message
            .contains("manages"));
        assert!(HeaderAdd::parse("header-add", "X=a\u{7f}").is_err());
        assert_eq!(parse_header_name("header-rm", "X-Debug").unwrap(), "x-debug");
        assert_eq!(
            parse_header_name("header-rm", "bad name").unwrap_err().field,
            "header-rm"
        );

        assert_eq!(parse_cidr("allow", "10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("deny", "192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_cidr("deny", "2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_cidr("allow", "10.0.0.0/33").unwrap_err().field, "allow");
    }

    #[test]
    fn tls_names_acme_a_certificate_or_nothing() {
        assert_eq!(RouteTls::parse("tls", "acme").unwrap(), RouteTls::Acme);
        assert_eq!(RouteTls::parse("tls", "none").unwrap(), RouteTls::None);
        assert_eq!(
            RouteTls::parse("tls", "shop-cert").unwrap(),
            RouteTls::Certificate("shop-cert".into())
        );
        assert_eq!(RouteTls::parse("tls", "bad name").unwrap_err().field, "tls");
        assert_eq!(validate_certificate_name("name", "acme").unwrap_err().field, "name");
        assert!(validate_certificate_name("name", "acme-x.com").is_err());
        validate_certificate_name("name", "shop").unwrap();
    }

    #[test]
    fn bad_routes_name_their_field() {
        let field = |f: fn(&mut IngressSpec)| {
            let mut s = spec();
            f(&mut s);
            s.validate().unwrap_err().field
        };
        assert_eq!(field(|s| s.host = String::new()), "host");
        assert_eq!(field(|s| s.host = "Shop.example.com".into()), "host");
        assert_eq!(field(|s| s.path = "/api/".into()), "path");
        assert_eq!(field(|s| s.service = String::new()), "service");
        assert_eq!(field(|s| s.port = Some(0)), "service");
        assert_eq!(
            field(|s| {
                s.host = "*.example.com".into();
                s.tls = RouteTls::Acme;
            }),
            "tls"
        );
        assert_eq!(
            field(|s| {
                s.rewrite = Some(Rewrite {
                    from: "x".into(),
                    to: "/".into(),
                })
            }),
            "rewrite"
        );
        assert_eq!(
            field(|s| {
                let h = HeaderAdd {
                    name: "x-a".into(),
                    value: "1".into(),
                };
                s.header_add = vec![h.clone(), h];
            }),
            "header-add"
        );
        assert_eq!(
            field(|s| {
                s.header_add = vec![HeaderAdd {
                    name: "x-a".into(),
                    value: "1".into(),
                }];
                s.header_rm = vec!["x-a".into()];
            }),
            "header-rm"
        );
        assert_eq!(
            field(|s| s.rate_limit = Some(RateLimit { per_sec: 0, burst: 1 })),
            "rate-limit"
        );
        assert_eq!(
            field(|s| s.rate_limit = Some(RateLimit { per_sec: 1, burst: 0 })),
            "rate-burst"
        );
        assert_eq!(field(|s| s.allow = vec!["10.1.0.0/8".parse().unwrap()]), "allow");
        // A default route may leave the host out.
        let mut s = spec();
        s.host = String::new();
        s.default_backend = true;
        s.validate().unwrap();
    }

    #[test]
    fn routes_name_the_certificate_they_need() {
        let mut s = spec();
        assert_eq!(s.certificate_name(), None);
        s.tls = RouteTls::Acme;
        assert_eq!(s.certificate_name().as_deref(), Some("acme-shop.example.com"));
        s.tls = RouteTls::Certificate("shop".into());
        assert_eq!(s.certificate_name().as_deref(), Some("shop"));
    }

    #[test]
    fn specs_round_trip_through_json_and_old_records_get_defaults() {
        let mut s = spec();
        s.allow = vec!["10.0.0.0/8".parse().unwrap()];
        s.tls = RouteTls::Certificate("c".into());
        let back: IngressSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let minimal: IngressSpec = serde_json::from_str(r#"{"host":"a.com","service":"web"}"#).unwrap();
        assert_eq!(minimal.path, "/");
        minimal.validate().unwrap();
    }

    #[test]
    fn acme_settings_are_validated() {
        let mut a = AcmeSettings::new("ops@example.com");
        a.validate().unwrap();
        assert_eq!(a.directory_url, LETS_ENCRYPT_PRODUCTION);
        a.email = "nobody".into();
        assert_eq!(a.validate().unwrap_err().field, "acme-email");
        a.email = "ops@example.com".into();
        a.directory_url = "ftp://x".into();
        assert_eq!(a.validate().unwrap_err().field, "acme-directory");
        a.directory_url = LETS_ENCRYPT_STAGING.into();
        a.ca_pem = Some("junk".into());
        assert_eq!(a.validate().unwrap_err().field, "acme-ca-file");
    }
}
