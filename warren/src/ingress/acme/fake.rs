//! An in-process CA behind the ACME seams, for unit tests of the manager: it
//! hands out orders and tokens, refuses to complete an order whose challenges are
//! not answered by the [`ChallengeTokens`] it checks (as a real CA would fetch
//! them), signs the CSR with its own root, and fails on request.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use rcgen::{CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, IsCa, KeyPair};

use super::{AcmeClient, AcmeConnector, AcmeError, ChallengeTokens, Http01Challenge};
use crate::model::ingress::AcmeSettings;

struct FakeOrder {
    hosts: Vec<String>,
    tokens: Vec<String>,
}

#[derive(Default)]
struct FakeState {
    orders: HashMap<String, FakeOrder>,
    next: u64,
    failures: VecDeque<&'static str>,
    accounts_created: u32,
    connects: u32,
    issued: u32,
}

#[derive(Clone)]
pub struct FakeAcme {
    ca: Arc<CertifiedIssuer<'static, KeyPair>>,
    state: Arc<Mutex<FakeState>>,
    validation: Option<Arc<dyn ChallengeTokens>>,
    /// Lifetime of the certificates it issues.
    pub validity: Duration,
}

impl FakeAcme {
    pub fn new() -> FakeAcme {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake acme root");
        let key = KeyPair::generate().expect("CA key");
        FakeAcme {
            ca: Arc::new(CertifiedIssuer::self_signed(params, key).expect("CA certificate")),
            state: Arc::new(Mutex::new(FakeState::default())),
            validation: None,
            validity: Duration::from_secs(90 * 86400),
        }
    }

    /// Completing an order then needs its key authorizations answered here.
    pub fn validating(mut self, tokens: Arc<dyn ChallengeTokens>) -> FakeAcme {
        self.validation = Some(tokens);
        self
    }

    /// The next `complete` fails with `why`.
    pub fn fail_next(&self, why: &'static str) {
        self.state.lock().unwrap().failures.push_back(why);
    }

    pub fn root_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn accounts_created(&self) -> u32 {
        self.state.lock().unwrap().accounts_created
    }

    pub fn orders_placed(&self) -> u64 {
        self.state.lock().unwrap().next
    }

    pub fn issued(&self) -> u32 {
        self.state.lock().unwrap().issued
    }

    pub fn connects(&self) -> u32 {
        self.state.lock().unwrap().connects
    }
}

impl Default for FakeAcme {
    fn default() -> Self {
        FakeAcme::new()
    }
}

#[async_trait]
impl AcmeConnector for FakeAcme {
    async fn connect(
        &self,
        _settings: &AcmeSettings,
        credentials: Option<&str>,
    ) -> Result<(Arc<dyn AcmeClient>, Option<String>), AcmeError> {
        let mut st = self.state.lock().unwrap();
        st.connects += 1;
        let created = match credentials {
            Some(_) => None,
            None => {
                st.accounts_created += 1;
                Some(format!("{{\"fake-account\":{}}}", st.accounts_created))
            }
        };
        Ok((Arc::new(self.clone()), created))
    }
}

fn key_authorization(token: &str) -> String {
    format!("{token}.fake-thumbprint")
}

#[async_trait]
impl AcmeClient for FakeAcme {
    async fn new_order(&self, hosts: &[String]) -> Result<String, AcmeError> {
        let mut st = self.state.lock().unwrap();
        st.next += 1;
        let url = format!("https://fake-ca/order/{}", st.next);
        let tokens = (0..hosts.len()).map(|i| format!("token-{}-{i}", st.next)).collect();
        st.orders.insert(
            url.clone(),
            FakeOrder {
                hosts: hosts.to_vec(),
                tokens,
            },
        );
        Ok(url)
    }

    async fn challenges(&self, order_url: &str) -> Result<Vec<Http01Challenge>, AcmeError> {
        let st = self.state.lock().unwrap();
        let o = st.orders.get(order_url).ok_or(AcmeError::Fake("no such order"))?;
        Ok(o.hosts
            .iter()
            .zip(&o.tokens)
            .map(|(h, t)| Http01Challenge {
                host: h.clone(),
                token: t.clone(),
                key_authorization: key_authorization(t),
            })
            .collect())
    }

    async fn complete(&self, order_url: &str, csr_der: &[u8]) -> Result<String, AcmeError> {
        let (hosts, tokens) = {
            let mut st = self.state.lock().unwrap();
            if let Some(why) = st.failures.pop_front() {
                return Err(AcmeError::Fake(why));
            }
            let o = st.orders.get(order_url).ok_or(AcmeError::Fake("no such order"))?;
            (o.hosts.clone(), o.tokens.clone())
        };
        if let Some(v) = &self.validation {
            for (h, t) in hosts.iter().zip(&tokens) {
                if v.key_authorization(t) != Some(key_authorization(t)) {
                    return Err(AcmeError::Invalid {
                        host: h.clone(),
                        detail: format!("token {t} is not served"),
                    });
                }
            }
        }
        let mut csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(1);
        csr.params.not_after = now + self.validity;
        let cert = csr.signed_by(&self.ca)?;
        let mut st = self.state.lock().unwrap();
        st.issued += 1;
        st.orders.remove(order_url);
        Ok(format!("{}{}", cert.pem(), self.ca.pem()))
    }
}
