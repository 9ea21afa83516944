//! Connecting the CLI to a manager: `unix:///path` (the local root-only socket, no
//! certificates) or `tcp://IP:PORT` (mutual TLS with the certificates in --tls-dir);
//! and turning the manager's answers into results (`call`), with its errors as the
//! one line the user sees (`status_error`).

use crate::wire::channel::{self, Dial};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use warren_proto::v1::warren_api_client::WarrenApiClient;

pub type Client = WarrenApiClient<Channel>;

pub async fn connect(host: &str, tls_dir: &Path) -> Result<Client> {
    let channel = if let Some(path) = host.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!(
                "cannot connect to {host}: {} does not exist (is a warren manager running on this machine? use -H tcp://MANAGER:2377 for a remote one)",
                path.display()
            );
        }
        let p = path.clone();
        Endpoint::try_from("http://warren.local")?
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(p).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| format!("cannot connect to {host}"))?
    } else if let Some(addr) = host.strip_prefix("tcp://") {
        let ca = std::fs::read_to_string(tls_dir.join("ca.pem")).with_context(|| {
            format!(
                "a tcp:// host needs the cluster CA: cannot read {} (set --tls-dir)",
                tls_dir.join("ca.pem").display()
            )
        })?;
        let mut tls = crate::pki::anonymous_client_tls(&ca);
        let (cert, key) = (tls_dir.join("node.pem"), tls_dir.join("node-key.pem"));
        if cert.exists() && key.exists() {
            let cert = std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let key = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        channel::connect(addr, tls, Dial::new(Duration::from_secs(5))).await?
    } else {
        bail!("invalid host {host:?}: expected unix:///path.sock or tcp://IP:PORT");
    };
    Ok(WarrenApiClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Set once a manager answered a read from a state it could not confirm as
/// current (no quorum): the command's output says so (`render::json`, `stale_note`).
static STALE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether any answer this command printed may be stale.
pub fn stale() -> bool {
    STALE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Awaits one API call: its message, or its error as the user should see it.
pub async fn call<T>(
    answer: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    let resp = answer.await.map_err(status_error)?;
    if resp
        .metadata()
        .get(crate::api::reads::STALE_HEADER)
        .is_some_and(|v| v == "true")
    {
        STALE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(resp.into_inner())
}

/// Turns a gRPC error into the one line the user should see. An error about a spec
/// field names it as the flag that set it (`--publish: ...`), as the CLI's own
/// checks do.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let msg = s.message();
    if s.code() == tonic::Code::Unavailable && (msg.contains("transport") || msg.is_empty()) {
        return anyhow!("the manager is unreachable: {msg}");
    }
    if let Some(field) = crate::wire::status::field_of(&s) {
        if let Some(why) = msg.strip_prefix(&format!("{field}: ")) {
            return anyhow!("--{field}: {why}");
        }
    }
    anyhow!("{msg}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::store::ApplyError;
    use crate::wire::status::apply_status;

    #[test]
    fn errors_about_a_spec_field_name_the_flag() {
        let taken = apply_status(ApplyError::PortTaken {
            port: 8080,
            protocol: Protocol::Tcp,
            service: "web".into(),
        });
        assert_eq!(
            status_error(taken).to_string(),
            "--publish: port 8080/tcp is already published by service \"web\""
        );
        let plain = apply_status(ApplyError::Invalid("replicas: service \"x\" is global".into()));
        assert_eq!(status_error(plain).to_string(), "replicas: service \"x\" is global");
        // A write the manager cannot vouch for says so, as the manager put it.
        let unsure =
            crate::wire::status::write_status(crate::store::WriteError::Unconfirmed("the leader went away".into()));
        assert_eq!(
            status_error(unsure).to_string(),
            "the write may or may not have been applied (the leader went away): read the current state before retrying"
        );
        let down = tonic::Status::unavailable("transport error");
        assert_eq!(
            status_error(down).to_string(),
            "the manager is unreachable: transport error"
        );
    }
}
