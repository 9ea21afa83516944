//! The OCI distribution protocol client side: resolving manifests and fetching blobs
//! from a registry over HTTPS (or plain HTTP for registries listed as insecure), with
//! anonymous, Basic and Bearer-token authentication. Not the content store: callers
//! decide where the bytes go.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::error::PullError;
use super::image::{sha256_digest, MANIFEST_ACCEPT};
use super::reference::ImageRef;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for response headers, and then for each chunk of a body.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_MANIFEST: usize = 4 << 20;
const MAX_REDIRECTS: usize = 5;

/// Registry access settings of a node.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `HOST[:PORT]` of registries that may be reached over plain HTTP
    /// (`--insecure-registry`); every other registry is HTTPS only.
    pub insecure: Vec<String>,
    /// Credentials per registry host (as in the image reference, e.g. `docker.io`).
    pub credentials: BTreeMap<String, Credentials>,
}

/// A registry user name and password (or identity token as password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A manifest or index as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: String,
    pub bytes: Bytes,
}

pub(crate) struct Registry {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    config: RegistryConfig,
    /// `Authorization` header values by (registry host, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Registry {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system CA certificates; HTTPS registries will fail verification");
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
        };
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        Registry {
            client: Client::builder(TokioExecutor::new()).build(connector),
            config,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn scheme(&self, host: &str) -> &'static str {
        if self.config.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        }
    }

    fn credentials<'a>(&'a self, r: &ImageRef, explicit: Option<&'a Credentials>) -> Option<&'a Credentials> {
        explicit.or_else(|| self.config.credentials.get(&r.domain))
    }

    /// GETs a manifest or index by tag or digest and checks it against the digest.
    pub async fn manifest(
        &self,
        r: &ImageRef,
        object: &str,
        creds: Option<&Credentials>,
    ) -> Result<FetchedManifest, PullError> {
        let host = r.registry_host();
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme(host),
            host,
            r.repository,
            object
        );
        let resp = self.send(&url, MANIFEST_ACCEPT, r, creds).await?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let bytes = read_limited(resp.into_body(), MAX_MANIFEST, &url).await?;
        let digest = sha256_digest(&bytes);
        if object.starts_with("sha256:") && object != digest {
            return Err(PullError::Invalid(format!(
                "manifest {object} from {url} has digest {digest}"
            )));
        }
        // Registries may send a generic content type; the document's own mediaType wins.
        let media_type = match serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str().map(str::to_string)))
        {
            Some(m) => m,
            None => media_type,
        };
        Ok(FetchedManifest {
            media_type,
            digest,
            bytes,
        })
    }

    /// Starts a blob download; the caller reads (and verifies) the body.
    pub async fn blob(&self, r: &ImageRef, digest: &str, creds: Option<&Credentials>) -> Result<Incoming, PullError> {
        let host = r.registry_host();
        let url = format!("{}://{}/v2/{}/blobs/{}", self.scheme(host), host, r.repository, digest);
        let resp = self.send(&url, &["*/*"], r, creds).await?;
        Ok(resp.into_body())
    }

    /// Sends a GET with cached authorization, answering one 401 challenge and
    /// following redirects; returns the first successful response.
    async fn send(
        &self,
        url: &str,
        accept: &[&str],
        r: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<Response<Incoming>, PullError> {
        let host = r.registry_host().to_string();
        let scope = format!("repository:{}:pull", r.repository);
        let key = (host.clone(), scope.clone());
        let creds = self.credentials(r, creds);
        let mut url = url.to_string();
        let mut authorized_host = true;
        let mut challenged = false;
        let mut redirects = 0;
        loop {
            let auth = if authorized_host {
                self.tokens.lock().unwrap().get(&key).cloned()
            } else {
                None
            };
            let resp = self.get(&url, accept, auth.as_deref()).await?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status.is_redirection() {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(PullError::Transport(format!("too many redirects from {url}")));
                }
                let location = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| PullError::Transport(format!("redirect without location from {url}")))?;
                let next = resolve_location(&url, location);
                // Blob storage behind a redirect has its own (signed URL) auth.
                authorized_host = uri_authority(&next).as_deref() == Some(host.as_str());
                url = next;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !challenged && authorized_host {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = read_limited(resp.into_body(), 64 << 10, &url).await.unwrap_or_default();
                let Some(challenge) = challenge else {
                    return Err(error_from_body(status, &body));
                };
                let value = self
                    .authorize(&challenge, &scope, creds, &error_from_body(status, &body))
                    .await?;
                self.tokens.lock().unwrap().insert(key.clone(), value);
                continue;
            }
            let body = read_limited(resp.into_body(), 64 << 10, &url).await.unwrap_or_default();
            return Err(error_from_body(status, &body));
        }
    }

    async fn get(&self, url: &str, accept: &[&str], auth: Option<&str>) -> Result<Response<Incoming>, PullError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::USER_AGENT, concat!("warren/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, accept.join(", "));
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| PullError::Transport(format!("bad request URL {url}: {e}")))?;
        match tokio::time::timeout(IO_TIMEOUT, self.client.request(req)).await {
            Err(_) => Err(PullError::Transport(format!("GET {url}: no answer in {IO_TIMEOUT:?}"))),
            Ok(Err(e)) => Err(PullError::Transport(format!("GET {url}: {}", error_chain(&e)))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Answers a `WWW-Authenticate` challenge with an `Authorization` header value.
    async fn authorize(
        &self,
        challenge: &str,
        scope: &str,
        creds: Option<&Credentials>,
        refused: &PullError,
    ) -> Result<String, PullError> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => match creds {
                Some(c) => Ok(basic(c)),
                None => Err(PullError::Unauthorized(format!(
                    "{} (the registry wants a user name and password)",
                    refused_message(refused)
                ))),
            },
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| PullError::Unauthorized(format!("bearer challenge without realm: {challenge}")))?;
                let mut query = vec![];
                if let Some(service) = params.get("service") {
                    query.push(format!("service={}", encode(service)));
                }
                query.push(format!("scope={}", encode(scope)));
                if let Some(c) = creds {
                    query.push(format!("account={}", encode(&c.username)));
                }
                let sep = if realm.contains('?') { '&' } else { '?' };
                let url = format!("{realm}{sep}{}", query.join("&"));
                let auth = creds.map(basic);
                let resp = self.get(&url, &["application/json"], auth.as_deref()).await?;
                let status = resp.status();
                let body = read_limited(resp.into_body(), 1 << 20, &url).await?;
                if !status.is_success() {
                    return Err(PullError::Unauthorized(format!(
                        "token server {realm} answered {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body)
                    .map_err(|e| PullError::Unauthorized(format!("token server {realm}: bad answer: {e}")))?;
                let token = t
                    .token
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| PullError::Unauthorized(format!("token server {realm} sent no token")))?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(PullError::Unauthorized(format!("unsupported auth scheme {other:?}"))),
        }
    }
}

fn refused_message(e: &PullError) -> String {
    match e {
        PullError::Unauthorized(m) => m.clone(),
        other => other.to_string(),
    }
}

fn basic(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(body: Incoming, limit: usize, url: &str) -> Result<Bytes, PullError> {
    let mut body = body;
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(IO_TIMEOUT, body.frame()).await {
            Err(_) => return Err(PullError::Transport(format!("GET {url}: body stalled"))),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(PullError::Transport(format!("GET {url}: {}", error_chain(&e)))),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
            if out.len() > limit {
                return Err(PullError::Invalid(format!("{url}: answer larger than {limit} bytes")));
            }
        }
    }
    Ok(Bytes::from(out))
}

/// Reads the next data chunk of a blob body (None at the end).
pub(crate) async fn next_chunk(body: &mut Incoming, what: &str) -> Result<Option<Bytes>, PullError> {
    loop {
        match tokio::time::timeout(IO_TIMEOUT, body.frame()).await {
            Err(_) => return Err(PullError::Transport(format!("{what}: download stalled"))),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(PullError::Transport(format!("{what}: {}", error_chain(&e)))),
            Ok(Some(Ok(f))) => {
                if let Ok(data) = f.into_data() {
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// Turns a registry error answer into a [`PullError`], using the distribution
/// error body (`{"errors":[{"code":..,"message":..}]}`) when there is one.
fn error_from_body(status: StatusCode, body: &[u8]) -> PullError {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let message = serde_json::from_slice::<Errors>(body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| {
            if e.message.is_empty() {
                e.code.to_lowercase()
            } else {
                e.message
            }
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            if text.is_empty() || text.len() > 200 {
                status.canonical_reason().unwrap_or("error").to_lowercase()
            } else {
                text
            }
        });
    match status {
        StatusCode::NOT_FOUND => PullError::NotFound(message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PullError::Unauthorized(message),
        s => PullError::Registry {
            status: s.as_u16(),
            message,
        },
    }
}

/// `scheme` and `key="value"` parameters of a `WWW-Authenticate` header.
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_string(), params)
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn uri_authority(url: &str) -> Option<String> {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
}

fn resolve_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let uri: http::Uri = match base.parse() {
        Ok(u) => u,
        Err(_) => return location.to_string(),
    };
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = uri.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{authority}{dir}{location}")
    }
}

/// `error: cause: cause` — hyper's top-level errors alone say little.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas_in_scope() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn distribution_errors_become_typed() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"1"}}]}"#;
        let e = error_from_body(StatusCode::NOT_FOUND, body);
        assert!(matches!(&e, PullError::NotFound(m) if m == "manifest unknown"), "{e}");
        let e = error_from_body(StatusCode::UNAUTHORIZED, b"");
        assert_eq!(e.to_string(), "unauthorized: unauthorized");
        let e = error_from_body(StatusCode::INTERNAL_SERVER_ERROR, b"boom");
        assert_eq!(e.to_string(), "registry answered 500: boom");
    }

    #[test]
    fn encodes_scope() {
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[test]
    fn resolves_redirect_locations() {
        assert_eq!(
            resolve_location("http://h:5000/v2/a/blobs/x", "/other/y"),
            "http://h:5000/other/y"
        );
        assert_eq!(resolve_location("http://h/v2/a/b", "https://s3/x"), "https://s3/x");
        assert_eq!(resolve_location("http://h/v2/a/b", "c"), "http://h/v2/a/c");
    }

    #[test]
    fn insecure_hosts_use_http() {
        let r = Registry::new(RegistryConfig {
            insecure: vec!["127.0.0.1:5000".into()],
            ..Default::default()
        });
        assert_eq!(r.scheme("127.0.0.1:5000"), "http");
        assert_eq!(r.scheme("127.0.0.1:5001"), "https");
    }

    #[test]
    fn credentials_debug_hides_password() {
        let c = Credentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
