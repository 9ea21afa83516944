//! The component that obtains and renews ACME certificates; it runs on one
//! manager (phase 2: the Raft leader). Each pass plans from its inputs
//! ([`renew::plan`]) and carries out what is due, one order at a time, in
//! numbered steps that a manager taking over can resume from the stored order:
//!
//! 1. place the order and record it ([`AcmeStore::begin_order`]);
//! 2. publish the HTTP-01 answers where every ingress node serves them;
//! 3. have the CA validate, finalize with a fresh ECDSA P-256 key, fetch the chain;
//! 4. store the certificate and drop the order and its answers in one write.
//!
//! A failure drops the order and backs off; the expiry of every certificate and
//! the time of its next renewal are metrics, the outcome of each order a counter
//! and a log record.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use tokio::sync::watch;

use super::{
    renew::{self, Action, Failures, Held, Policy, Wanted},
    AcmeClient, AcmeConnector, AcmeError, MemoryChallenges,
};
use crate::{
    ingress::{tls, CertificatePem},
    model::{
        ingress::{acme_certificate_name, AcmeChallenge, AcmeOrder, AcmeSettings, Ingress, RouteTls},
        now_ms,
    },
};

/// A certificate the CA issued, with its key.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub name: String,
    pub hosts: Vec<String>,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub obtained_ms: i64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("not_after_ms", &self.not_after_ms)
            .finish_non_exhaustive()
    }
}

impl Issued {
    pub fn held(&self) -> Held {
        Held {
            name: self.name.clone(),
            hosts: self.hosts.clone(),
            not_before_ms: self.not_before_ms,
            not_after_ms: self.not_after_ms,
            obtained_ms: self.obtained_ms,
        }
    }

    pub fn pem(&self) -> CertificatePem {
        CertificatePem {
            name: self.name.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

/// What the manager plans from (phase 2: derived from the replicated state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcmeInputs {
    /// None: ACME is not configured and nothing is ordered.
    pub settings: Option<AcmeSettings>,
    pub wanted: Vec<Wanted>,
    pub held: Vec<Held>,
    pub orders: Vec<AcmeOrder>,
}

/// The certificates that routes with `--tls acme` need: one per host.
pub fn wanted_from_routes(routes: &[Ingress]) -> Vec<Wanted> {
    let mut by_name = BTreeMap::new();
    for r in routes
        .iter()
        .filter(|r| r.spec.tls == RouteTls::Acme && !r.spec.host.is_empty())
    {
        let name = acme_certificate_name(&r.spec.host);
        by_name.entry(name.clone()).or_insert_with(|| Wanted {
            name,
            hosts: vec![r.spec.host.clone()],
        });
    }
    by_name.into_values().collect()
}

/// Where the manager keeps what it does (phase 2: Raft commands through the
/// proposer; the account credentials and keys sealed like secrets).
#[async_trait]
pub trait AcmeStore: Send + Sync {
    /// The credentials of the account at `directory_url`, if one was stored.
    async fn account(&self, directory_url: &str) -> Result<Option<String>, AcmeError>;
    async fn save_account(&self, directory_url: &str, credentials: &str) -> Result<(), AcmeError>;
    /// Records an order before its challenges are published.
    async fn begin_order(&self, order: &AcmeOrder) -> Result<(), AcmeError>;
    /// Publishes challenge answers; returns once every ingress node serves them.
    async fn publish_challenges(&self, challenges: &[AcmeChallenge]) -> Result<(), AcmeError>;
    /// Stores the certificate and drops the order and its answers, in one write.
    async fn finish_order(&self, order: &AcmeOrder, issued: &Issued) -> Result<(), AcmeError>;
    /// Drops an order and its answers.
    async fn drop_order(&self, order: &AcmeOrder) -> Result<(), AcmeError>;
}

/// The manager's own timing; the renewal window comes from the settings.
#[derive(Clone, Copy, Debug)]
pub struct ManagerConfig {
    /// See [`Policy::min_age`].
    pub min_age: Option<Duration>,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        let p = Policy::default();
        ManagerConfig {
            min_age: p.min_age,
            retry_base: p.retry_base,
            retry_max: p.retry_max,
        }
    }
}

struct AcmeMetrics {
    orders: IntCounterVec,
    expiry: GaugeVec,
    renewal: GaugeVec,
}

impl AcmeMetrics {
    fn register(registry: &Registry) -> Result<AcmeMetrics, prometheus::Error> {
        let m = AcmeMetrics {
            orders: IntCounterVec::new(
                Opts::new(
                    "ingress_acme_orders_total",
                    "ACME orders finished, by result (issued, failed).",
                ),
                &["result"],
            )?,
            expiry: GaugeVec::new(
                Opts::new(
                    "ingress_acme_certificate_expiry_timestamp_seconds",
                    "When each ACME certificate expires (Unix time).",
                ),
                &["certificate"],
            )?,
            renewal: GaugeVec::new(
                Opts::new(
                    "ingress_acme_renewal_timestamp_seconds",
                    "When each ACME certificate is due for renewal (Unix time).",
                ),
                &["certificate"],
            )?,
        };
        registry.register(Box::new(m.orders.clone()))?;
        registry.register(Box::new(m.expiry.clone()))?;
        registry.register(Box::new(m.renewal.clone()))?;
        Ok(m)
    }
}

type ClientKey = (String, Option<String>);

pub struct AcmeManager {
    store: Arc<dyn AcmeStore>,
    connector: Arc<dyn AcmeConnector>,
    inputs: watch::Receiver<AcmeInputs>,
    config: ManagerConfig,
    metrics: AcmeMetrics,
    failures: HashMap<String, Failures>,
    /// Issued here and perhaps not yet in the inputs (the store applies later).
    recent: HashMap<String, Held>,
    client: Option<(ClientKey, Arc<dyn AcmeClient>)>,
    connect_failures: Failures,
}

impl AcmeManager {
    pub fn new(
        store: Arc<dyn AcmeStore>,
        connector: Arc<dyn AcmeConnector>,
        inputs: watch::Receiver<AcmeInputs>,
        config: ManagerConfig,
        registry: &Registry,
    ) -> Result<AcmeManager, prometheus::Error> {
        Ok(AcmeManager {
            store,
            connector,
            inputs,
            config,
            metrics: AcmeMetrics::register(registry)?,
            failures: HashMap::new(),
            recent: HashMap::new(),
            client: None,
            connect_failures: Failures::default(),
        })
    }

    /// Runs passes until `stop` turns true or the inputs go away.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let now = now_ms();
            let next = self.step(now).await;
            let wait = next.map_or(Duration::from_secs(3600), |t| {
                Duration::from_millis(u64::try_from(t - now).unwrap_or(0)).max(Duration::from_millis(50))
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = self.inputs.changed() => if r.is_err() { return },
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    }

    fn policy(&self, settings: &AcmeSettings) -> Policy {
        Policy {
            renew_before: Duration::from_millis(settings.renew_before_ms),
            min_age: self.config.min_age,
            retry_base: self.config.retry_base,
            retry_max: self.config.retry_max,
        }
    }

    /// Held certificates: the inputs', and what this manager obtained since.
    fn held(&mut self, inputs: &AcmeInputs) -> Vec<Held> {
        let mut by_name: BTreeMap<String, Held> = inputs.held.iter().map(|h| (h.name.clone(), h.clone())).collect();
        self.recent.retain(|name, r| match by_name.get(name) {
            Some(h) if h.obtained_ms >= r.obtained_ms => false,
            _ => {
                by_name.insert(name.clone(), r.clone());
                true
            }
        });
        by_name.into_values().collect()
    }

    async fn client(&mut self, settings: &AcmeSettings) -> Result<Arc<dyn AcmeClient>, AcmeError> {
        let key = (settings.directory_url.clone(), settings.ca_pem.clone());
        if let Some((k, c)) = &self.client {
            if *k == key {
                return Ok(c.clone());
            }
        }
        let stored = self.store.account(&settings.directory_url).await?;
        let (client, created) = self.connector.connect(settings, stored.as_deref()).await?;
        if let Some(creds) = created {
            self.store.save_account(&settings.directory_url, &creds).await?;
        }
        self.client = Some((key, client.clone()));
        Ok(client)
    }

    /// One pass at `now_ms`: carries out what is due and returns when to look again.
    pub async fn step(&mut self, now_ms: i64) -> Option<i64> {
        let inputs = self.inputs.borrow().clone();
        let settings = inputs.settings.clone()?;
        let policy = self.policy(&settings);
        let held = self.held(&inputs);
        for h in held.iter().filter(|h| inputs.wanted.iter().any(|w| w.name == h.name)) {
            self.metrics
                .expiry
                .with_label_values(&[&h.name])
                .set(h.not_after_ms as f64 / 1000.0);
            self.metrics
                .renewal
                .with_label_values(&[&h.name])
                .set(renew::renew_at_ms(h, &policy) as f64 / 1000.0);
        }
        let schedule = renew::plan(&inputs.wanted, &held, &inputs.orders, &self.failures, now_ms, &policy);
        if schedule.actions.is_empty() {
            return schedule.next_ms;
        }
        let retry = renew::retry_at_ms(&self.connect_failures, &policy);
        if retry > now_ms {
            return Some(retry);
        }
        let client = match self.client(&settings).await {
            Ok(c) => {
                self.connect_failures = Failures::default();
                c
            }
            Err(e) => {
                self.connect_failures.count += 1;
                self.connect_failures.last_ms = now_ms;
                tracing::warn!(directory = %settings.directory_url, error = %e, "cannot reach the ACME CA");
                return Some(renew::retry_at_ms(&self.connect_failures, &policy));
            }
        };
        for action in schedule.actions {
            match action {
                Action::Order(w) => self.order(client.as_ref(), w, &policy).await,
                Action::Resume(o) => {
                    tracing::info!(certificate = %o.certificate, order = %o.url, "resuming an acme order");
                    self.resume(client.as_ref(), o, &policy).await
                }
                Action::Abandon(o) => {
                    tracing::info!(certificate = %o.certificate, "dropping an acme order no route needs");
                    if let Err(e) = self.store.drop_order(&o).await {
                        tracing::warn!(certificate = %o.certificate, error = %e, "dropping the acme order failed");
                    }
                }
            }
        }
        // Plan again soon: the store may apply what was just written a little later.
        Some(now_ms + 100)
    }

    async fn order(&mut self, client: &dyn AcmeClient, w: Wanted, policy: &Policy) {
        tracing::info!(certificate = %w.name, hosts = ?w.hosts, "ordering a certificate");
        let placed = async {
            let url = client.new_order(&w.hosts).await?;
            let order = AcmeOrder {
                certificate: w.name.clone(),
                hosts: w.hosts.clone(),
                url,
                started_ms: now_ms(),
            };
            self.store.begin_order(&order).await?;
            Ok::<_, AcmeError>(order)
        }
        .await;
        match placed {
            Ok(order) => self.resume(client, order, policy).await,
            Err(e) => self.failed(&w.name, e, policy),
        }
    }

    async fn resume(&mut self, client: &dyn AcmeClient, order: AcmeOrder, policy: &Policy) {
        let result = async {
            let challenges: Vec<AcmeChallenge> = client
                .challenges(&order.url)
                .await?
                .into_iter()
                .map(|c| AcmeChallenge {
                    token: c.token,
                    key_authorization: c.key_authorization,
                    host: c.host,
                    created_ms: now_ms(),
                })
                .collect();
            if !challenges.is_empty() {
                self.store.publish_challenges(&challenges).await?;
            }
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(order.hosts.clone())?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            let csr = params.serialize_request(&key)?;
            let chain = client.complete(&order.url, csr.der()).await?;
            let key_pem = key.serialize_pem();
            let info = tls::inspect(&chain, &key_pem)?;
            let issued = Issued {
                name: order.certificate.clone(),
                hosts: order.hosts.clone(),
                cert_pem: chain,
                key_pem,
                not_before_ms: info.not_before_ms,
                not_after_ms: info.not_after_ms,
                obtained_ms: now_ms(),
            };
            self.store.finish_order(&order, &issued).await?;
            Ok::<_, AcmeError>((issued, info.serial))
        }
        .await;
        match result {
            Ok((issued, serial)) => {
                tracing::info!(
                    certificate = %issued.name,
                    hosts = ?issued.hosts,
                    serial = %serial,
                    not_after_ms = issued.not_after_ms,
                    "certificate issued"
                );
                self.metrics.orders.with_label_values(&["issued"]).inc();
                self.failures.remove(&issued.name);
                self.recent.insert(issued.name.clone(), issued.held());
            }
            Err(e) => {
                if let Err(d) = self.store.drop_order(&order).await {
                    tracing::warn!(certificate = %order.certificate, error = %d, "dropping the failed acme order failed");
                }
                self.failed(&order.certificate, e, policy);
            }
        }
    }

    fn failed(&mut self, name: &str, e: AcmeError, policy: &Policy) {
        self.metrics.orders.with_label_values(&["failed"]).inc();
        let f = self.failures.entry(name.to_string()).or_default();
        f.count += 1;
        f.last_ms = now_ms();
        let retry_in_ms = renew::retry_at_ms(f, policy) - f.last_ms;
        tracing::warn!(certificate = %name, error = %e, attempt = f.count, retry_in_ms, "acme order failed");
    }
}

/// An [`AcmeStore`] in memory: the inputs it feeds the manager follow what is
/// written, answers go to a [`MemoryChallenges`] at once, and certificate changes
/// bump a version others can watch (to hand them to an ingress).
pub struct MemoryAcmeStore {
    state: Mutex<MemState>,
    inputs: watch::Sender<AcmeInputs>,
    certificates_version: watch::Sender<u64>,
    challenges: Arc<MemoryChallenges>,
}

#[derive(Default)]
struct MemState {
    accounts: HashMap<String, String>,
    certificates: BTreeMap<String, Issued>,
    orders: Vec<AcmeOrder>,
    challenges: Vec<AcmeChallenge>,
}

impl MemoryAcmeStore {
    pub fn new(challenges: Arc<MemoryChallenges>) -> Arc<MemoryAcmeStore> {
        Arc::new(MemoryAcmeStore {
            state: Mutex::new(MemState::default()),
            inputs: watch::channel(AcmeInputs::default()).0,
            certificates_version: watch::channel(0).0,
            challenges,
        })
    }

    pub fn inputs(&self) -> watch::Receiver<AcmeInputs> {
        self.inputs.subscribe()
    }

    pub fn set_settings(&self, settings: Option<AcmeSettings>) {
        self.inputs.send_modify(|i| i.settings = settings);
    }

    pub fn set_wanted(&self, wanted: Vec<Wanted>) {
        self.inputs.send_modify(|i| i.wanted = wanted);
    }

    pub fn certificates(&self) -> Vec<Issued> {
        self.state.lock().unwrap().certificates.values().cloned().collect()
    }

    pub fn orders(&self) -> Vec<AcmeOrder> {
        self.state.lock().unwrap().orders.clone()
    }

    /// Bumped whenever a certificate is stored.
    pub fn watch_certificates(&self) -> watch::Receiver<u64> {
        self.certificates_version.subscribe()
    }

    fn publish(&self, st: &MemState) {
        self.challenges.replace(&st.challenges);
        let held = st.certificates.values().map(Issued::held).collect();
        let orders = st.orders.clone();
        self.inputs.send_modify(|i| {
            i.held = held;
            i.orders = orders;
        });
    }
}

#[async_trait]
impl AcmeStore for MemoryAcmeStore {
    async fn account(&self, directory_url: &str) -> Result<Option<String>, AcmeError> {
        Ok(self.state.lock().unwrap().accounts.get(directory_url).cloned())
    }

    async fn save_account(&self, directory_url: &str, credentials: &str) -> Result<(), AcmeError> {
        self.state
            .lock()
            .unwrap()
            .accounts
            .insert(directory_url.to_string(), credentials.to_string());
        Ok(())
    }

    async fn begin_order(&self, order: &AcmeOrder) -> Result<(), AcmeError> {
        let mut st = self.state.lock().unwrap();
        st.orders.retain(|o| o.certificate != order.certificate);
        st.orders.push(order.clone());
        self.publish(&st);
        Ok(())
    }

    async fn publish_challenges(&self, challenges: &[AcmeChallenge]) -> Result<(), AcmeError> {
        let mut st = self.state.lock().unwrap();
        st.challenges.retain(|c| !challenges.iter().any(|n| n.token == c.token));
        st.challenges.extend_from_slice(challenges);
        self.publish(&st);
        Ok(())
    }

    async fn finish_order(&self, order: &AcmeOrder, issued: &Issued) -> Result<(), AcmeError> {
        let mut st = self.state.lock().unwrap();
        st.certificates.insert(issued.name.clone(), issued.clone());
        st.orders.retain(|o| o.url != order.url);
        st.challenges.retain(|c| !order.hosts.contains(&c.host));
        self.publish(&st);
        drop(st);
        self.certificates_version.send_modify(|v| *v += 1);
        Ok(())
    }

    async fn drop_order(&self, order: &AcmeOrder) -> Result<(), AcmeError> {
        let mut st = self.state.lock().unwrap();
        st.orders.retain(|o| o.url != order.url);
        st.challenges.retain(|c| !order.hosts.contains(&c.host));
        self.publish(&st);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::FakeAcme;
    use super::*;
    use crate::ingress::ChallengeTokens;

    const DAY_MS: i64 = 86_400_000;

    struct Rig {
        fake: FakeAcme,
        store: Arc<MemoryAcmeStore>,
        challenges: Arc<MemoryChallenges>,
        manager: AcmeManager,
        registry: Registry,
    }

    fn rig() -> Rig {
        let challenges = Arc::new(MemoryChallenges::default());
        let fake = FakeAcme::new().validating(challenges.clone());
        let store = MemoryAcmeStore::new(challenges.clone());
        store.set_settings(Some(AcmeSettings::new("ops@example.com")));
        store.set_wanted(vec![Wanted {
            name: "acme-shop.example.com".into(),
            hosts: vec!["shop.example.com".into()],
        }]);
        let registry = Registry::new_custom(Some("warren".into()), None).unwrap();
        let manager = AcmeManager::new(
            store.clone(),
            Arc::new(fake.clone()),
            store.inputs(),
            ManagerConfig::default(),
            &registry,
        )
        .unwrap();
        Rig {
            fake,
            store,
            challenges,
            manager,
            registry,
        }
    }

    fn metrics_text(r: &Registry) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&r.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[tokio::test]
    async fn a_wanted_certificate_is_ordered_validated_and_stored() {
        let mut r = rig();
        let next = r.manager.step(now_ms()).await;
        assert!(next.is_some());
        let certs = r.store.certificates();
        assert_eq!(certs.len(), 1, "one certificate stored");
        assert_eq!(certs[0].hosts, ["shop.example.com"]);
        let info = tls::inspect(&certs[0].cert_pem, &certs[0].key_pem).unwrap();
        assert_eq!(info.hosts, ["shop.example.com"]);
        // The order and its answers are gone; the account was made once and stored.
        assert!(r.store.orders().is_empty());
        assert!(r.challenges.is_empty());
        assert_eq!(r.fake.accounts_created(), 1);
        assert!(r
            .store
            .account(crate::model::ingress::LETS_ENCRYPT_PRODUCTION)
            .await
            .unwrap()
            .is_some());
        // Nothing more to do until renewal: 30 days before the 90-day expiry.
        let next = r.manager.step(now_ms()).await.expect("a renewal time");
        assert!((next - (certs[0].not_after_ms - 30 * DAY_MS)).abs() < 1000, "{next}");
        assert_eq!(r.fake.orders_placed(), 1);
        let m = metrics_text(&r.registry);
        assert!(
            m.contains(r#"warren_ingress_acme_orders_total{result="issued"} 1"#),
            "{m}"
        );
        assert!(m.contains(
            "warren_ingress_acme_certificate_expiry_timestamp_seconds{certificate=\"acme-shop.example.com\"}"
        ));
    }

    #[tokio::test]
    async fn renewal_comes_when_due_and_replaces_the_certificate() {
        let mut r = rig();
        r.manager.step(now_ms()).await;
        let first = r.store.certificates()[0].clone();
        r.manager.step(first.not_after_ms - 31 * DAY_MS).await;
        assert_eq!(r.store.certificates()[0], first, "not due yet");
        r.manager.step(first.not_after_ms - 29 * DAY_MS).await;
        let second = r.store.certificates()[0].clone();
        assert_ne!(second.cert_pem, first.cert_pem, "renewed");
        assert_eq!(r.fake.orders_placed(), 2);
        assert_eq!(r.fake.accounts_created(), 1, "the account is reused");
    }

    #[tokio::test]
    async fn a_failure_drops_the_order_and_backs_off() {
        let mut r = rig();
        r.fake.fail_next("the CA is down");
        let t0 = now_ms();
        r.manager.step(t0).await;
        assert!(r.store.certificates().is_empty());
        assert!(r.store.orders().is_empty(), "the failed order is dropped");
        assert!(r.challenges.is_empty(), "its answers too");
        // Within the backoff nothing is tried; the next attempt time is returned.
        let next = r.manager.step(t0 + 1000).await.expect("a retry time");
        assert_eq!(r.fake.orders_placed(), 1);
        assert!(next >= t0 + 59_000, "{next}");
        r.manager.step(next + 1).await;
        assert_eq!(r.store.certificates().len(), 1);
        let m = metrics_text(&r.registry);
        assert!(
            m.contains(r#"warren_ingress_acme_orders_total{result="failed"} 1"#),
            "{m}"
        );
    }

    #[tokio::test]
    async fn an_order_left_by_another_manager_is_resumed_not_placed_again() {
        let r = rig();
        // Another manager placed the order and recorded it, then went away.
        let client: Arc<dyn AcmeClient> = Arc::new(r.fake.clone());
        let url = client.new_order(&["shop.example.com".to_string()]).await.unwrap();
        r.store
            .begin_order(&AcmeOrder {
                certificate: "acme-shop.example.com".into(),
                hosts: vec!["shop.example.com".into()],
                url,
                started_ms: now_ms(),
            })
            .await
            .unwrap();
        let mut manager = r.manager;
        manager.step(now_ms()).await;
        assert_eq!(r.fake.orders_placed(), 1, "no second order");
        assert_eq!(r.store.certificates().len(), 1);
        assert!(r.store.orders().is_empty());
    }

    #[tokio::test]
    async fn nothing_happens_without_settings_or_for_unwanted_orders() {
        let mut r = rig();
        r.store.set_settings(None);
        assert_eq!(r.manager.step(now_ms()).await, None);
        assert_eq!(r.fake.connects(), 0);
        r.store.set_settings(Some(AcmeSettings::new("ops@example.com")));
        r.store
            .begin_order(&AcmeOrder {
                certificate: "acme-gone.com".into(),
                hosts: vec!["gone.com".into()],
                url: "https://fake-ca/order/x".into(),
                started_ms: 0,
            })
            .await
            .unwrap();
        r.store.set_wanted(vec![]);
        r.manager.step(now_ms()).await;
        assert!(r.store.orders().is_empty(), "the unwanted order is dropped");
        assert!(r.store.certificates().is_empty());
        assert!(r.challenges.key_authorization("anything").is_none());
    }

    #[test]
    fn routes_with_tls_acme_want_one_certificate_per_host() {
        use crate::ingress::fixtures::route_with;
        let routes = vec![
            route_with("a", "shop.example.com", "/", "web", |s| s.tls = RouteTls::Acme),
            route_with("b", "shop.example.com", "/api", "api", |s| s.tls = RouteTls::Acme),
            route_with("c", "other.com", "/", "web", |_| {}),
        ];
        assert_eq!(
            wanted_from_routes(&routes),
            [Wanted {
                name: "acme-shop.example.com".into(),
                hosts: vec!["shop.example.com".into()]
            }]
        );
    }
}
