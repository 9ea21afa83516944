//! Renewing the node's certificate before it expires: at two thirds of its life
//! the node asks a manager (`Dispatcher.RenewCertificate`, authenticated by the
//! certificate it is replacing) to sign a new one for its key, writes it to
//! `certs/node.pem` (one atomic rename: the key does not change) and swaps it into
//! the node's `LiveIdentity`, which every new handshake uses from then on. Not the
//! signing (the dispatcher) nor the TLS settings (`live`).

use super::{csr_for_key, LiveIdentity, NodeCredentials, PkiError, Validity};
use crate::wire::channel::{self, Dial};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use warren_proto::v1 as pb;

/// The longest wait between two failed attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What renewing needs: the identity it swaps, where the certificate lives, and
/// whom to ask (read again at each renewal: the managers change).
pub struct Renewal {
    pub identity: Arc<LiveIdentity>,
    pub certs_dir: PathBuf,
    pub node_name: String,
    pub managers: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("no manager to ask")]
    NoManager,
    #[error("{addr}: {reason}")]
    Refused { addr: String, reason: String },
    #[error("the manager returned a certificate for node {got}, not this node ({want})")]
    WrongNode { want: String, got: String },
}

/// Renews the certificate whenever it is due, until `stop` turns true.
pub async fn run(r: Renewal, mut stop: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        let v = r.identity.validity();
        let wait = match failures {
            0 => Duration::from_millis(u64::try_from(v.renew_at_ms() - crate::model::now_ms()).unwrap_or(0)),
            // A tenth of what is left, between a second and `MAX_RETRY`.
            _ => Duration::from_millis(u64::try_from((v.not_after_ms - crate::model::now_ms()) / 10).unwrap_or(0))
                .clamp(Duration::from_secs(1), MAX_RETRY),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match renew_once(&r).await {
            Ok(new) => {
                failures = 0;
                tracing::info!(
                    serial = %new.serial,
                    previous = %v.serial,
                    expires_ms = new.not_after_ms,
                    renew_at_ms = new.renew_at_ms(),
                    "node certificate renewed"
                );
            }
            Err(e) => {
                failures += 1;
                let left_s = (v.not_after_ms - crate::model::now_ms()) / 1000;
                tracing::warn!(error = %e, attempt = failures, expires_in_s = left_s, "node certificate renewal failed");
            }
        }
    }
}

/// Asks the managers in turn; the first certificate that is for this node and
/// makes a working identity with its key is saved and swapped in.
async fn renew_once(r: &Renewal) -> Result<Validity, RenewError> {
    let current = r.identity.credentials();
    let me = current.identity().map(|i| i.node_id).unwrap_or_default();
    let csr = csr_for_key(&current.key_pem, &r.node_name)?;
    let mut last = RenewError::NoManager;
    for addr in (r.managers)() {
        let refused = |reason: String| RenewError::Refused {
            addr: addr.clone(),
            reason,
        };
        let channel = match channel::connect(&addr, r.identity.to_managers(), Dial::new(Duration::from_secs(2))).await {
            Ok(c) => c,
            Err(e) => {
                last = refused(e.to_string());
                continue;
            }
        };
        let answer = pb::dispatcher_client::DispatcherClient::new(channel)
            .renew_certificate(pb::RenewCertificateRequest { csr_der: csr.clone() })
            .await;
        let resp = match answer {
            Ok(a) => a.into_inner(),
            Err(s) => {
                last = refused(s.message().to_string());
                continue;
            }
        };
        let renewed = NodeCredentials {
            ca_pem: if resp.ca_pem.is_empty() {
                current.ca_pem.clone()
            } else {
                resp.ca_pem
            },
            cert_pem: resp.cert_pem,
            key_pem: current.key_pem.clone(),
        };
        let got = renewed.identity().map(|i| i.node_id).unwrap_or_default();
        if got != me {
            return Err(RenewError::WrongNode { want: me, got });
        }
        // Swapped first: credentials that do not work are refused before they
        // replace the files a restart would read.
        r.identity.swap(renewed.clone())?;
        renewed.save(&r.certs_dir)?;
        return Ok(r.identity.validity());
    }
    Err(last)
}
