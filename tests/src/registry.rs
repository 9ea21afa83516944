//! A local OCI registry for one test: Debian's `docker-registry` on
//! 127.0.0.1:<free port> with its own config and storage, optionally behind Bearer
//! token auth served by a small token server of ours (ES256 JWTs with an `x5c` chain,
//! as distribution verifies them), and pushing test images to it with `skopeo`.
//! Killed and removed on drop. Not building images (images.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::containerd::{require, HarnessError};

const SERVICE: &str = "warren-test-registry";
const ISSUER: &str = "warren-test-token-issuer";

/// Who may do what behind token auth.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub username: String,
    pub password: String,
    /// Whether a client without credentials gets a pull token (like Docker Hub).
    pub anonymous_pull: bool,
}

/// A running registry.
pub struct LocalRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    token: Option<TokenServer>,
    auth: Option<TokenAuth>,
}

fn io(context: impl Into<String>, source: std::io::Error) -> HarnessError {
    HarnessError::Io {
        context: context.into(),
        source,
    }
}

impl LocalRegistry {
    /// A registry allowing anonymous push and pull.
    pub fn start() -> Result<LocalRegistry, HarnessError> {
        Self::start_inner(None)
    }

    /// A registry behind Bearer token auth.
    pub fn start_with_token_auth(auth: TokenAuth) -> Result<LocalRegistry, HarnessError> {
        Self::start_inner(Some(auth))
    }

    fn start_inner(auth: Option<TokenAuth>) -> Result<LocalRegistry, HarnessError> {
        let bin = require("docker-registry", "docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("warren-rt-reg-")
            .tempdir()
            .map_err(|e| io("create registry temp dir", e))?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| io("create registry storage", e))?;
        let port = crate::cluster::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            storage.display()
        );
        let token = match &auth {
            None => None,
            Some(a) => {
                let server = TokenServer::start(a.clone())?;
                let cert = dir.path().join("token-cert.pem");
                std::fs::write(&cert, &server.cert_pem).map_err(|e| io("write token cert", e))?;
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    server.addr,
                    cert.display()
                ));
                Some(server)
            }
        };
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| io("write registry config", e))?;
        let log = std::fs::File::create(dir.path().join("registry.log")).map_err(|e| io("create registry log", e))?;
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| io("dup log", e))?)
            .stderr(log)
            .spawn()
            .map_err(|e| io(format!("run {}", bin.display()), e))?;
        let mut me = LocalRegistry {
            child: Some(child),
            dir,
            addr,
            token,
            auth,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(addr, "/v2/").is_ok() {
                return Ok(me);
            }
            if let Some(Ok(Some(status))) = me.child.as_mut().map(|c| c.try_wait()) {
                return Err(HarnessError::Command {
                    command: "docker-registry serve".into(),
                    status: status.to_string(),
                    output: me.log(),
                });
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!(
                    "registry on {addr} did not come up: {}",
                    me.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, as used in image references and `--insecure-registry`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `skopeo copy [--all] oci:LAYOUT:REF docker://HOST/DEST` (DEST = `repo:tag`).
    pub fn push(&self, layout: &Path, layout_ref: &str, dest: &str, all: bool) -> Result<(), HarnessError> {
        let skopeo = require("skopeo", "skopeo")?;
        let mut cmd = Command::new(&skopeo);
        cmd.arg("--insecure-policy").arg("copy").arg("--dest-tls-verify=false");
        if all {
            cmd.arg("--all");
        }
        if let Some(a) = &self.auth {
            cmd.arg("--dest-creds").arg(format!("{}:{}", a.username, a.password));
        }
        // Keep skopeo's auth and cache files out of the user's home.
        cmd.env("HOME", self.dir.path()).env("XDG_RUNTIME_DIR", self.dir.path());
        cmd.arg(format!("oci:{}:{layout_ref}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.host()));
        let out = cmd.output().map_err(|e| io(format!("run {}", skopeo.display()), e))?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                command: format!("{cmd:?}"),
                status: out.status.to_string(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.token.take();
    }
}

/// Minimal HTTP/1.0 GET, for readiness checks.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

/// Issues registry tokens on `GET /token?service=..&scope=..` (Basic auth optional).
struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Signer {
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

impl TokenServer {
    fn start(auth: TokenAuth) -> Result<TokenServer, HarnessError> {
        let key = rcgen::KeyPair::generate().map_err(|e| io("generate token key", std::io::Error::other(e)))?;
        let params = rcgen::CertificateParams::new(vec!["warren-test-token".to_string()])
            .map_err(|e| io("token cert params", std::io::Error::other(e)))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| io("self-sign token cert", std::io::Error::other(e)))?;
        let rng = ring::rand::SystemRandom::new();
        let signer = Signer {
            key: ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &rng,
            )
            .map_err(|e| io("load token key", std::io::Error::other(e.to_string())))?,
            cert_der: cert.der().to_vec(),
            rng,
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| io("bind token server", e))?;
        let addr = listener.local_addr().map_err(|e| io("token server addr", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("token server nonblocking", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = serve_token(s, &auth, &signer);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(TokenServer {
            addr,
            cert_pem: cert.pem(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn decode_query(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_token(stream: TcpStream, auth: &TokenAuth, signer: &Signer) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut scopes = vec![];
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if k == "scope" {
                scopes.push(decode_query(v));
            }
        }
    }
    let authenticated = match authorization.as_deref().and_then(|a| a.strip_prefix("Basic ")) {
        Some(b) => {
            let want = format!("{}:{}", auth.username, auth.password);
            let got = base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default();
            if got != want.as_bytes() {
                return respond(stream, 401, r#"{"details":"bad credentials"}"#);
            }
            true
        }
        None => false,
    };
    if !authenticated && !auth.anonymous_pull {
        return respond(stream, 401, r#"{"details":"credentials required"}"#);
    }
    let mut access = vec![];
    for scope in scopes {
        // repository:<name>:<actions>
        let mut parts = scope.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let granted: Vec<&str> = actions.split(',').filter(|a| authenticated || *a == "pull").collect();
        access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&signer.cert_der)]
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": if authenticated { auth.username.as_str() } else { "" },
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": access
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header).expect("json")),
        b64url(&serde_json::to_vec(&claims).expect("json"))
    );
    let sig = signer
        .key
        .sign(&signer.rng, signing_input.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = format!("{signing_input}.{}", b64url(sig.as_ref()));
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    respond(stream, 200, &body)
}

fn respond(mut stream: TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    // Drain whatever the client still sends so that close does not reset.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
    let _ = stream.read(&mut [0u8; 64]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(decode_query("repository%3Aa%2Fb%3Apull"), "repository:a/b:pull");
        assert_eq!(decode_query("a+b"), "a b");
    }
}
