//! TLS for the HTTPS listener: certificates from PEM (chain and key; ECDSA P-256,
//! P-384, Ed25519 and RSA keys in PKCS#8, PKCS#1 or SEC1), what they cover and
//! until when ([`inspect`], also what the API checks an upload with), and a
//! certificate store that rustls asks on every handshake ([`CertResolver`]): the
//! SNI name picks the certificate a route names for that host, else one whose
//! names cover it, else the default route's. The store is swapped whole, so a new
//! certificate applies to the next handshake and open connections keep theirs.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{
    server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// A certificate with its private key in the clear, as the node hands it to the
/// ingress (the stored key is sealed; the manager opens it for ingress nodes).
#[derive(Clone, PartialEq, Eq)]
pub struct CertificatePem {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertificatePem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificatePem")
            .field("name", &self.name)
            .field("key_pem", &"(hidden)")
            .finish()
    }
}

/// What a certificate covers and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names (subject alternative names; the common name when there are none),
    /// lowercase; wildcards as `*.example.com`.
    pub hosts: Vec<String>,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// The serial number, `aa:bb:...`.
    pub serial: String,
}

impl CertInfo {
    /// The record of an operator's certificate (`certificate create`, or a manifest's
    /// `kind: Certificate`) that this information describes.
    pub fn uploaded(
        self,
        id: String,
        name: String,
        cert_pem: String,
        key_sealed: Vec<u8>,
        now_ms: i64,
    ) -> crate::model::ingress::Certificate {
        crate::model::ingress::Certificate {
            id,
            name,
            cert_pem,
            key_sealed,
            hosts: self.hosts,
            not_before_ms: self.not_before_ms,
            not_after_ms: self.not_after_ms,
            source: crate::model::ingress::CertificateSource::Uploaded,
            version: 1,
            created_ms: now_ms,
            updated_ms: now_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cert: no PEM certificate found")]
    NoCertificate,
    #[error("cert: {0}")]
    CertPem(String),
    #[error("cert: cannot parse the certificate: {0}")]
    Parse(String),
    #[error("cert: the certificate names no DNS host")]
    NoHosts,
    #[error("key: no PEM private key found ({0})")]
    NoKey(String),
    #[error("key: unsupported private key: {0}")]
    Key(rustls::Error),
    #[error("key: the private key does not belong to the certificate")]
    Mismatch,
    #[error("building the TLS configuration: {0}")]
    Config(rustls::Error),
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_chain(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertPem(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(chain)
}

fn info(leaf: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| TlsError::Parse(e.to_string()))?;
    let mut hosts: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(TlsError::Parse(e.to_string())),
    };
    if hosts.is_empty() {
        hosts = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    if hosts.is_empty() {
        return Err(TlsError::NoHosts);
    }
    hosts.dedup();
    let v = cert.validity();
    Ok(CertInfo {
        hosts,
        not_before_ms: v.not_before.timestamp() * 1000,
        not_after_ms: v.not_after.timestamp() * 1000,
        serial: cert.raw_serial_as_string(),
    })
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<(CertifiedKey, CertInfo), TlsError> {
    let chain = parse_chain(cert_pem)?;
    let info = info(&chain[0])?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::NoKey(e.to_string()))?;
    let key = provider().key_provider.load_private_key(key).map_err(TlsError::Key)?;
    let ck = CertifiedKey::new(chain, key);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => return Err(TlsError::Mismatch),
        Err(e) => return Err(TlsError::Parse(e.to_string())),
    }
    Ok((ck, info))
}

/// Checks a certificate and key the way the ingress will load them and says
/// what they cover. Errors start with the field (`cert:`, `key:`).
pub fn inspect(cert_pem: &str, key_pem: &str) -> Result<CertInfo, TlsError> {
    certified_key(cert_pem, key_pem).map(|(_, info)| info)
}

/// Only the certificate side of [`inspect`], for chains without their key.
pub fn inspect_chain(cert_pem: &str) -> Result<CertInfo, TlsError> {
    info(&parse_chain(cert_pem)?[0])
}

/// A certificate ready to serve.
pub(crate) struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// Of the PEM inputs: an unchanged certificate is not parsed again.
    digest: [u8; 32],
}

fn digest(c: &CertificatePem) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(c.cert_pem.as_bytes());
    h.update([0]);
    h.update(c.key_pem.as_bytes());
    h.finalize().into()
}

/// Certificates ready to serve, by name.
pub(crate) type LoadedCerts = BTreeMap<String, Arc<LoadedCert>>;

/// Parses `certs`, reusing what `previous` already parsed; certificates that
/// fail are reported by name and left out.
pub(crate) fn load_all(certs: &[CertificatePem], previous: &LoadedCerts) -> (LoadedCerts, Vec<(String, TlsError)>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for c in certs {
        let d = digest(c);
        if let Some(p) = previous.get(&c.name).filter(|p| p.digest == d) {
            out.insert(c.name.clone(), p.clone());
            continue;
        }
        match certified_key(&c.cert_pem, &c.key_pem) {
            Ok((key, info)) => {
                out.insert(
                    c.name.clone(),
                    Arc::new(LoadedCert {
                        key: Arc::new(key),
                        info,
                        digest: d,
                    }),
                );
            }
            Err(e) => errors.push((c.name.clone(), e)),
        }
    }
    (out, errors)
}

/// Which certificate answers which SNI name.
#[derive(Default)]
pub(crate) struct CertIndex {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertIndex {
    /// Route choices first (`route_hosts`: host → certificate name), then every
    /// certificate's own names (of two covering a name, the one valid longer),
    /// then `default` for anything else.
    pub fn build(
        certs: &BTreeMap<String, Arc<LoadedCert>>,
        route_hosts: &[(&str, String)],
        default: Option<&str>,
    ) -> CertIndex {
        let mut idx = CertIndex::default();
        let mut by_expiry: Vec<&Arc<LoadedCert>> = certs.values().collect();
        by_expiry.sort_by_key(|c| std::cmp::Reverse(c.info.not_after_ms));
        for c in by_expiry {
            for h in &c.info.hosts {
                let map = match h.strip_prefix("*.") {
                    Some(parent) => idx.wildcard.entry(parent.to_string()),
                    None => idx.exact.entry(h.clone()),
                };
                map.or_insert_with(|| c.key.clone());
            }
        }
        for (host, name) in route_hosts {
            let Some(c) = certs.get(name) else { continue };
            match host.strip_prefix("*.") {
                Some(parent) => idx.wildcard.insert(parent.to_string(), c.key.clone()),
                None => idx.exact.insert(host.to_string(), c.key.clone()),
            };
        }
        idx.default = default.and_then(|n| certs.get(n)).map(|c| c.key.clone());
        idx
    }

    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.trim_end_matches('.');
        self.exact
            .get(name)
            .or_else(|| name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// The swappable certificate store rustls resolves from.
#[derive(Default)]
pub(crate) struct CertStore {
    index: ArcSwap<CertIndex>,
}

impl CertStore {
    pub fn set(&self, idx: CertIndex) {
        self.index.store(Arc::new(idx));
    }
}

#[derive(Clone)]
pub(crate) struct CertResolver(pub Arc<CertStore>);

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.index.load().lookup(hello.server_name())
    }
}

/// The HTTPS listener's configuration: HTTP/2 and HTTP/1.1 by ALPN; session
/// resumption (tickets and a session cache) unless `resumption` is off.
pub(crate) fn server_config(store: Arc<CertStore>, resumption: bool) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertResolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if resumption {
        cfg.session_storage = ServerSessionMemoryCache::new(4096);
        cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
    } else {
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(cfg)
}

#[cfg(test)]
pub(crate) mod test_certs {
    use super::CertificatePem;

    /// A self-signed certificate for `hosts` with a key of `alg`.
    pub fn self_signed(name: &str, hosts: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> CertificatePem {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        CertificatePem {
            name: name.into(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_certs::self_signed;
    use super::*;

    fn loaded(certs: &[CertificatePem]) -> BTreeMap<String, Arc<LoadedCert>> {
        let (m, errors) = load_all(certs, &BTreeMap::new());
        assert!(errors.is_empty(), "{errors:?}");
        m
    }

    fn rsa_pem() -> CertificatePem {
        // ring cannot generate RSA keys; this one was made with
        // `openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=rsa.example.com
        //  -addext subjectAltName=DNS:rsa.example.com -days 36500`.
        CertificatePem {
            name: "rsa".into(),
            cert_pem: include_str!("testdata/rsa.crt").into(),
            key_pem: include_str!("testdata/rsa.key").into(),
        }
    }

    #[test]
    fn ecdsa_and_rsa_certificates_load_and_say_what_they_cover() {
        let ec = self_signed(
            "ec",
            &["shop.example.com", "*.shop.example.com"],
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        let info = inspect(&ec.cert_pem, &ec.key_pem).unwrap();
        assert_eq!(info.hosts, ["shop.example.com", "*.shop.example.com"]);
        assert!(info.not_after_ms > info.not_before_ms);
        let rsa = rsa_pem();
        let info = inspect(&rsa.cert_pem, &rsa.key_pem).unwrap();
        assert_eq!(info.hosts, ["rsa.example.com"]);
        // That key is PKCS#1; rcgen's above are PKCS#8.
        assert!(rsa.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert!(ec.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn bad_uploads_say_which_part_is_wrong() {
        let a = self_signed("a", &["a.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let b = self_signed("b", &["b.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(matches!(inspect("junk", &a.key_pem), Err(TlsError::NoCertificate)));
        assert!(matches!(inspect(&a.cert_pem, "junk"), Err(TlsError::NoKey(_))));
        let e = inspect(&a.cert_pem, &b.key_pem).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch), "{e}");
        assert!(e.to_string().starts_with("key: "), "{e}");
        assert_eq!(inspect_chain(&a.cert_pem).unwrap().hosts, ["a.com"]);
    }

    #[test]
    fn sni_picks_the_route_certificate_then_a_covering_one_then_the_default() {
        let wild = self_signed("wild", &["*.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let shop = self_signed("shop", &["shop.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let other = self_signed("other", &["other.org"], &rcgen::PKCS_ECDSA_P384_SHA384);
        let certs = loaded(&[wild, shop, other]);
        let key = |n: &str| certs[n].key.clone();
        let idx = CertIndex::build(&certs, &[("blog.example.com", "shop".to_string())], Some("other"));
        let is = |got: Option<Arc<CertifiedKey>>, want: &str| {
            assert!(Arc::ptr_eq(&got.expect("a certificate"), &key(want)), "expected {want}");
        };
        is(idx.lookup(Some("shop.example.com")), "shop");
        is(idx.lookup(Some("Shop.Example.com.")), "shop");
        is(idx.lookup(Some("www.example.com")), "wild");
        // The route's choice beats the wildcard that covers the name too.
        is(idx.lookup(Some("blog.example.com")), "shop");
        is(idx.lookup(Some("unknown.net")), "other");
        is(idx.lookup(None), "other");
        let no_default = CertIndex::build(&certs, &[], None);
        assert!(no_default.lookup(Some("unknown.net")).is_none());
        assert!(no_default.lookup(None).is_none());
    }

    #[test]
    fn unchanged_certificates_are_not_parsed_again_and_bad_ones_are_reported() {
        let a = self_signed("a", &["a.com"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let first = loaded(std::slice::from_ref(&a));
        let bad = CertificatePem {
            name: "bad".into(),
            cert_pem: a.cert_pem.clone(),
            key_pem: "nope".into(),
        };
        let (second, errors) = load_all(&[a, bad], &first);
        assert!(Arc::ptr_eq(&first["a"], &second["a"]));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "bad");
        assert!(!second.contains_key("bad"));
    }

    #[test]
    fn resumption_can_be_turned_off() {
        let store = Arc::new(CertStore::default());
        let on = server_config(store.clone(), true).unwrap();
        let off = server_config(store, false).unwrap();
        assert_eq!(off.send_tls13_tickets, 0);
        assert!(!off.ticketer.enabled());
        assert!(on.ticketer.enabled());
        assert_eq!(on.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
