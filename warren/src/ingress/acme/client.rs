//! [`AcmeClient`] and [`AcmeConnector`] over instant-acme (on ring, as the rest of
//! Warren's TLS): accounts restored from stored credentials or created with the
//! contact address, orders by URL, HTTP-01 only. A private CA for the ACME
//! server's own HTTPS certificate (`--acme-ca-file`) replaces the system roots.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use hyper_util::{client::legacy::Client as HyperClient, rt::TokioExecutor};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use rustls_pki_types::{pem::PemObject, CertificateDer};

use super::{AcmeClient, AcmeConnector, AcmeError, Http01Challenge};
use crate::model::ingress::AcmeSettings;

/// Connects to the CA of the settings.
#[derive(Clone, Debug)]
pub struct InstantAcme {
    /// How long to wait for the CA to validate and to issue.
    pub poll_timeout: Duration,
}

impl Default for InstantAcme {
    fn default() -> Self {
        InstantAcme {
            poll_timeout: Duration::from_secs(120),
        }
    }
}

fn http_client(ca_pem: &str) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| AcmeError::CaFile(e.to_string()))?;
        roots.add(cert).map_err(|e| AcmeError::CaFile(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(AcmeError::CaFile("no PEM certificate found".into()));
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::ingress::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::CaFile(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: HyperClient<_, BodyWrapper<Bytes>> = HyperClient::builder(TokioExecutor::new()).build(https);
    Ok(Box::new(client))
}

#[async_trait]
impl AcmeConnector for InstantAcme {
    async fn connect(
        &self,
        settings: &AcmeSettings,
        credentials: Option<&str>,
    ) -> Result<(Arc<dyn AcmeClient>, Option<String>), AcmeError> {
        let builder = || -> Result<instant_acme::AccountBuilder, AcmeError> {
            match &settings.ca_pem {
                Some(pem) => Ok(Account::builder_with_http(http_client(pem)?)),
                None => Ok(Account::builder()?),
            }
        };
        let poll = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.poll_timeout);
        if let Some(creds) = credentials {
            let creds: AccountCredentials = serde_json::from_str(creds)?;
            let account = builder()?.from_credentials(creds).await?;
            return Ok((Arc::new(Client { account, poll }), None));
        }
        let contact = format!("mailto:{}", settings.email.trim());
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                settings.directory_url.clone(),
                None,
            )
            .await?;
        tracing::info!(directory = %settings.directory_url, account = %account.id(), "acme account created");
        let creds = serde_json::to_string(&creds)?;
        Ok((Arc::new(Client { account, poll }), Some(creds)))
    }
}

struct Client {
    account: Account,
    poll: RetryPolicy,
}

#[async_trait]
impl AcmeClient for Client {
    async fn new_order(&self, hosts: &[String]) -> Result<String, AcmeError> {
        let ids: Vec<Identifier> = hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
        let order = self.account.new_order(&NewOrder::new(&ids)).await?;
        Ok(order.url().to_string())
    }

    async fn challenges(&self, order_url: &str) -> Result<Vec<Http01Challenge>, AcmeError> {
        let mut order = self.account.order(order_url.to_string()).await?;
        let mut out = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a?;
            if a.status != AuthorizationStatus::Pending {
                continue;
            }
            let host = a.identifier().to_string();
            let challenge = a
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| AcmeError::NoHttp01(host.clone()))?;
            out.push(Http01Challenge {
                token: challenge.token.clone(),
                key_authorization: challenge.key_authorization().as_str().to_string(),
                host,
            });
        }
        Ok(out)
    }

    async fn complete(&self, order_url: &str, csr_der: &[u8]) -> Result<String, AcmeError> {
        let mut order = self.account.order(order_url.to_string()).await?;
        {
            let mut authorizations = order.authorizations();
            while let Some(a) = authorizations.next().await {
                let mut a = a?;
                let host = a.identifier().to_string();
                match a.status {
                    AuthorizationStatus::Valid => {}
                    AuthorizationStatus::Pending => {
                        let mut challenge = a
                            .challenge(ChallengeType::Http01)
                            .ok_or_else(|| AcmeError::NoHttp01(host.clone()))?;
                        challenge.set_ready().await?;
                    }
                    other => {
                        return Err(AcmeError::Invalid {
                            host,
                            detail: format!("the authorization is {other:?}"),
                        })
                    }
                }
            }
        }
        let status = order.poll_ready(&self.poll).await?;
        if status != OrderStatus::Ready {
            // The reason is on the failed challenge.
            let mut detail = format!("the order is {status:?}");
            let mut host = String::new();
            let mut authorizations = order.authorizations();
            while let Some(a) = authorizations.next().await {
                let a = a?;
                if let Some(problem) = a.challenges.iter().find_map(|c| c.error.as_ref()) {
                    host = a.identifier().to_string();
                    detail = problem.detail.clone().unwrap_or_else(|| format!("{problem:?}"));
                }
            }
            return Err(AcmeError::Invalid { host, detail });
        }
        order.finalize_csr(csr_der).await?;
        Ok(order.poll_certificate(&self.poll).await?)
    }
}
