//! ACME on the managers: the `AcmeStore` seam over the Raft state (orders,
//! challenge answers, account credentials and the certificates obtained, keys
//! sealed like secrets), and the inputs the `AcmeManager` plans from. Every
//! manager runs one manager, but only the leader's inputs carry the settings, so
//! one manager orders at a time; the order in progress is in the Raft state, so a
//! new leader resumes it instead of placing another.

use super::ctx::ManagerCtx;
use crate::ingress::acme::{
    wanted_from_routes, AcmeError, AcmeInputs, AcmeManager, AcmeStore, Held, InstantAcme, Issued, ManagerConfig,
};
use crate::model::ingress::{AcmeChallenge, AcmeOrder, Certificate, CertificateSource};
use crate::model::{new_id, now_ms};
use crate::store::{Command, State};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// How long publishing answers waits for every ingress node to serve them.
const SERVED_WITHIN: Duration = Duration::from_secs(15);

/// What the ACME manager plans from; `leading` decides whether it orders at all.
pub fn inputs(s: &State, leading: bool) -> AcmeInputs {
    let routes: Vec<_> = s.ingresses.values().cloned().collect();
    AcmeInputs {
        settings: if leading { s.acme.settings.clone() } else { None },
        wanted: wanted_from_routes(&routes),
        held: s
            .certificates
            .values()
            .filter(|c| c.source == CertificateSource::Acme)
            .map(|c| Held {
                name: c.name.clone(),
                hosts: c.hosts.clone(),
                not_before_ms: c.not_before_ms,
                not_after_ms: c.not_after_ms,
                obtained_ms: c.updated_ms,
            })
            .collect(),
        orders: s.acme.orders.clone(),
    }
}

struct RaftAcmeStore {
    ctx: Arc<ManagerCtx>,
}

fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> AcmeError {
    AcmeError::Store(Box::new(e))
}

impl RaftAcmeStore {
    async fn write(&self, cmd: Command) -> Result<(), AcmeError> {
        self.ctx.raft.propose(cmd).await.map_err(store_err)
    }

    /// Asks every ingress node's HTTP listener for the answers until each serves
    /// them, so that the CA is told to check only once it would succeed anywhere.
    async fn wait_served(&self, challenges: &[AcmeChallenge]) -> Result<(), AcmeError> {
        let targets: Vec<(String, std::net::SocketAddr)> = self.ctx.store.read(|s| {
            s.nodes
                .values()
                .filter_map(|n| {
                    let ip = n.addr.parse::<std::net::SocketAddr>().ok()?.ip();
                    Some((n.name.clone(), std::net::SocketAddr::new(ip, n.ingress?.http_port)))
                })
                .collect()
        });
        let deadline = tokio::time::Instant::now() + SERVED_WITHIN;
        for (node, addr) in targets {
            for c in challenges {
                loop {
                    if serves(addr, c).await {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AcmeError::Store(
                            format!(
                                "the ingress of node {node} ({addr}) does not serve the answer for {} yet",
                                c.host
                            )
                            .into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(())
    }
}

/// Whether the ingress at `addr` answers the challenge with its key authorization.
async fn serves(addr: std::net::SocketAddr, c: &AcmeChallenge) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET {}{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            crate::ingress::ACME_CHALLENGE_PREFIX,
            c.token,
            c.host
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        Some(text.starts_with("HTTP/1.1 200") && text.contains(&c.key_authorization))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[async_trait]
impl AcmeStore for RaftAcmeStore {
    async fn account(&self, directory_url: &str) -> Result<Option<String>, AcmeError> {
        let sealed = self.ctx.store.read(|s| s.acme.accounts.get(directory_url).cloned());
        let Some(sealed) = sealed else { return Ok(None) };
        let plain = self.ctx.secrets_key.open(&sealed).map_err(store_err)?;
        Ok(Some(String::from_utf8(plain).map_err(store_err)?))
    }

    async fn save_account(&self, directory_url: &str, credentials: &str) -> Result<(), AcmeError> {
        self.write(Command::SaveAcmeAccount {
            directory_url: directory_url.to_string(),
            credentials_sealed: self.ctx.secrets_key.seal(credentials.as_bytes()),
        })
        .await
    }

    async fn begin_order(&self, order: &AcmeOrder) -> Result<(), AcmeError> {
        self.write(Command::BeginAcmeOrder { order: order.clone() }).await
    }

    async fn publish_challenges(&self, challenges: &[AcmeChallenge]) -> Result<(), AcmeError> {
        self.write(Command::PublishAcmeChallenges {
            challenges: challenges.to_vec(),
        })
        .await?;
        self.wait_served(challenges).await
    }

    async fn finish_order(&self, order: &AcmeOrder, issued: &Issued) -> Result<(), AcmeError> {
        let now = now_ms();
        let certificate = Certificate {
            id: new_id(),
            name: issued.name.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_sealed: self.ctx.secrets_key.seal(issued.key_pem.as_bytes()),
            hosts: issued.hosts.clone(),
            not_before_ms: issued.not_before_ms,
            not_after_ms: issued.not_after_ms,
            source: CertificateSource::Acme,
            version: 1,
            created_ms: now,
            updated_ms: issued.obtained_ms,
        };
        self.write(Command::FinishAcmeOrder {
            order_url: order.url.clone(),
            certificate,
        })
        .await
    }

    async fn drop_order(&self, order: &AcmeOrder) -> Result<(), AcmeError> {
        self.write(Command::DropAcmeOrder {
            order_url: order.url.clone(),
        })
        .await
    }
}

/// Runs this manager's ACME manager until `stop`; it orders only while this
/// manager leads.
pub async fn run(ctx: Arc<ManagerCtx>, stop: watch::Receiver<bool>) -> Result<(), prometheus::Error> {
    let leading = |ctx: &ManagerCtx| ctx.raft.is_leader();
    let (tx, rx) = watch::channel(ctx.store.read(|s| inputs(s, leading(&ctx))));
    let store = Arc::new(RaftAcmeStore { ctx: ctx.clone() });
    let manager = AcmeManager::new(
        store,
        Arc::new(InstantAcme::default()),
        rx,
        ManagerConfig::default(),
        &ctx.metrics.registry,
    )?;
    // Keeps the inputs current: every applied change and every change of leader.
    let follow = {
        let ctx = ctx.clone();
        let mut stop = stop.clone();
        async move {
            let mut events = ctx.store.subscribe();
            let mut leadership = ctx.raft.leadership();
            loop {
                tokio::select! {
                    ev = events.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev { return },
                    r = leadership.changed() => if r.is_err() { return },
                    _ = stop.wait_for(|v| *v) => return,
                }
                let next = ctx.store.read(|s| inputs(s, leading(&ctx)));
                tx.send_if_modified(|cur| {
                    let changed = *cur != next;
                    if changed {
                        *cur = next;
                    }
                    changed
                });
            }
        }
    };
    tokio::join!(follow, manager.run(stop));
    Ok(())
}
