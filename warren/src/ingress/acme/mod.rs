//! ACME (RFC 8555) for the ingress. Two halves that run in different places:
//!
//! - every ingress node answers HTTP-01 challenges on its HTTP listener from a
//!   [`ChallengeTokens`] view (fed from the replicated state, so whichever node
//!   the CA reaches answers);
//! - one manager orders and renews certificates ([`AcmeManager`]): it plans from
//!   the routes that ask for `--tls acme`, the certificates held and the orders in
//!   progress ([`renew`]), talks to the CA through the [`AcmeClient`] seam
//!   ([`InstantAcme`] with instant-acme; [`FakeAcme`] in unit tests) and writes
//!   what it obtains through the [`AcmeStore`] seam (the Raft state, or
//!   [`MemoryAcmeStore`]).
//!
//! Certificates get ECDSA P-256 keys and are renewed `renew_before` ahead of
//! expiry (30 days unless configured); failures are retried with exponential
//! backoff.

mod client;
mod fake;
mod manager;
pub mod renew;

use std::{collections::HashMap, sync::RwLock};

use async_trait::async_trait;

use crate::model::ingress::AcmeChallenge;

pub use client::InstantAcme;
pub use fake::FakeAcme;
pub use manager::{wanted_from_routes, AcmeInputs, AcmeManager, AcmeStore, Issued, ManagerConfig, MemoryAcmeStore};
pub use renew::{Held, Policy, Wanted};

/// What the HTTP listener answers at `/.well-known/acme-challenge/<token>`.
pub trait ChallengeTokens: Send + Sync + 'static {
    /// The key authorization for `token`, while an order is open for it.
    fn key_authorization(&self, token: &str) -> Option<String>;
}

/// Challenge answers held in memory: what a node keeps from the replicated state
/// (phase 2 replaces them whole on every change), and what tests use.
#[derive(Default)]
pub struct MemoryChallenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl MemoryChallenges {
    pub fn replace(&self, challenges: &[AcmeChallenge]) {
        let map = challenges
            .iter()
            .map(|c| (c.token.clone(), c.key_authorization.clone()))
            .collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.tokens.write().unwrap_or_else(|p| p.into_inner()).remove(token);
    }

    pub fn len(&self) -> usize {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ChallengeTokens for MemoryChallenges {
    fn key_authorization(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }
}

/// One HTTP-01 challenge of an order, to be published before the CA is told to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http01Challenge {
    pub host: String,
    pub token: String,
    pub key_authorization: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("acme: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("acme-ca-file: {0}")]
    CaFile(String),
    #[error("the CA offers no http-01 challenge for {0}")]
    NoHttp01(String),
    #[error("the CA did not validate {host}: {detail}")]
    Invalid { host: String, detail: String },
    #[error("acme account credentials: {0}")]
    Credentials(#[from] serde_json::Error),
    #[error("building the certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the issued certificate: {0}")]
    Issued(#[from] super::TlsError),
    #[error("storing acme state: {0}")]
    Store(#[source] BoxError),
    /// The fake's scripted failure.
    #[error("{0}")]
    Fake(&'static str),
}

/// The CA, as the manager uses it. Orders are named by URL so that a manager that
/// takes over can resume one it did not place.
#[async_trait]
pub trait AcmeClient: Send + Sync {
    /// Places an order for `hosts`; returns its URL.
    async fn new_order(&self, hosts: &[String]) -> Result<String, AcmeError>;
    /// The HTTP-01 challenges still pending on the order.
    async fn challenges(&self, order_url: &str) -> Result<Vec<Http01Challenge>, AcmeError>;
    /// Tells the CA the challenges are published, waits for validation, finalizes
    /// with `csr_der` and returns the certificate chain (PEM).
    async fn complete(&self, order_url: &str, csr_der: &[u8]) -> Result<String, AcmeError>;
}

/// Opens an account at the CA the settings name: the stored one when
/// `credentials` are given, else a new one whose credentials are returned to be
/// stored.
#[async_trait]
pub trait AcmeConnector: Send + Sync {
    async fn connect(
        &self,
        settings: &crate::model::ingress::AcmeSettings,
        credentials: Option<&str>,
    ) -> Result<(std::sync::Arc<dyn AcmeClient>, Option<String>), AcmeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_answered_until_replaced() {
        let c = MemoryChallenges::default();
        c.insert("t1", "t1.thumb");
        assert_eq!(c.key_authorization("t1").as_deref(), Some("t1.thumb"));
        c.replace(&[AcmeChallenge {
            token: "t2".into(),
            key_authorization: "t2.thumb".into(),
            host: "a.com".into(),
            created_ms: 0,
        }]);
        assert_eq!(c.key_authorization("t1"), None);
        assert_eq!(c.key_authorization("t2").as_deref(), Some("t2.thumb"));
        c.remove("t2");
        assert!(c.is_empty());
    }
}
