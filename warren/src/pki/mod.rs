//! Cluster identity: the CA created at `cluster init`, node certificates issued from
//! a joining node's CSR, join tokens in Swarm's spelling, the TLS settings every
//! connection uses, and reading a peer's identity from its certificate. The CA key
//! is only ever held in memory or sealed (see `secrets`); nothing here touches the
//! network except `fetch_ca`, the join-time probe.

pub mod live;
pub mod renew;
mod token;

pub use live::{LiveIdentity, NodeConnector};
pub use token::{new_token_secret, JoinToken, TokenError};

use crate::model::NodeRole;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

/// Every manager's certificate carries this DNS name; clients verify it.
pub const MANAGER_SERVER_NAME: &str = "warren-manager";
const OU_MANAGER: &str = "warren-manager";
const OU_WORKER: &str = "warren-worker";
/// How far before issuance a node certificate's validity starts, for clocks a
/// little behind: a tenth of the lifetime, at most a minute (renewal counts from
/// there, so short test lifetimes stay short).
const MAX_BACKDATE: Duration = Duration::from_secs(60);
const CA_CERT_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    #[error("invalid PEM certificate: {0}")]
    BadPem(String),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "the manager at {addr} presented CA {actual}, but the join token expects CA {expected}: \
         wrong cluster, or someone is intercepting the connection"
    )]
    CaMismatch {
        addr: String,
        expected: String,
        actual: String,
    },
    #[error("invalid node credentials: {0}")]
    BadCredentials(String),
    #[error("the manager at {addr} presented a certificate not signed by its own CA: {reason}")]
    BadServerCert { addr: String, reason: String },
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

/// The cluster CA, able to sign node certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl CertificateAuthority {
    pub fn generate(cluster_id: &str) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "warren-root-ca");
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - days(1);
        params.not_after = now + days(CA_CERT_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Rebuilds the CA from its certificate and its PKCS#8 key.
    pub fn from_parts(cert_pem: &str, key_pkcs8_der: &[u8]) -> Result<CertificateAuthority, PkiError> {
        let cert_der = pem_to_der(cert_pem)?;
        let key = KeyPair::try_from(key_pkcs8_der)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    pub fn digest(&self) -> String {
        digest_der(&self.cert_der)
    }

    /// Signs a node certificate for the public key in `csr_der`, valid for
    /// `lifetime` (the cluster's `--cert-expiry`). Everything in the certificate
    /// but the key comes from the CA's side: the node ID as common name, the role
    /// as organizational unit, and the SANs.
    pub fn sign_node(
        &self,
        csr_der: &[u8],
        cluster_id: &str,
        node_id: &str,
        role: NodeRole,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(
            DnType::OrganizationalUnitName,
            match role {
                NodeRole::Manager => OU_MANAGER,
                NodeRole::Worker => OU_WORKER,
            },
        );
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(
                match role {
                    NodeRole::Manager => MANAGER_SERVER_NAME,
                    NodeRole::Worker => "warren-worker",
                }
                .try_into()?,
            ),
            SanType::DnsName(node_id.try_into()?),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        let backdate = (lifetime / 10).min(MAX_BACKDATE);
        params.not_before = now - time::Duration::try_from(backdate).unwrap_or(time::Duration::ZERO);
        params.not_after = now + time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(90));
        // A fresh serial each time (rcgen's default is derived from the key, which
        // renewal keeps); positive, as X.509 wants.
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let cert = params.signed_by(&csr.public_key, &issuer)?;
        Ok(cert.pem())
    }
}

/// A fresh node key pair and a CSR for it; the key never leaves the node.
pub fn new_node_key(node_name: &str) -> Result<(KeyPair, Vec<u8>), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// SHA-256 of a certificate's DER, lowercase hex: what join tokens carry.
pub fn digest_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

pub fn ca_digest(ca_pem: &str) -> Result<String, PkiError> {
    Ok(digest_der(&pem_to_der(ca_pem)?))
}

pub(crate) fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::BadPem(e.to_string()))
}

/// What a node certificate says about its validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
}

impl Validity {
    pub fn of_pem(cert_pem: &str) -> Result<Validity, PkiError> {
        let der = pem_to_der(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::BadPem(e.to_string()))?;
        let v = cert.validity();
        Ok(Validity {
            not_before_ms: v.not_before.timestamp() * 1000,
            not_after_ms: v.not_after.timestamp() * 1000,
            serial: cert.raw_serial_as_string().replace(':', ""),
        })
    }

    /// When the certificate is due for renewal: two thirds into its validity.
    pub fn renew_at_ms(&self) -> i64 {
        self.not_before_ms + (self.not_after_ms - self.not_before_ms) * 2 / 3
    }
}

/// A CSR for an existing key: renewal keeps the node's key, so that the
/// certificate is the only file that changes (one atomic rename).
pub fn csr_for_key(key_pem: &str, node_name: &str) -> Result<Vec<u8>, PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    Ok(params.serialize_request(&key)?.der().to_vec())
}

/// Who is calling, from the certificate it presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: NodeRole,
}

/// Reads the node ID and role from a verified client certificate chain.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<PeerIdentity> {
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let subject = cert.subject();
    let node_id = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let ou = subject.iter_organizational_unit().next()?.as_str().ok()?.to_string();
    let role = match ou.as_str() {
        OU_MANAGER => NodeRole::Manager,
        OU_WORKER => NodeRole::Worker,
        _ => return None,
    };
    Some(PeerIdentity { node_id, role })
}

/// A node's own credentials, as stored in `<data-dir>/certs`.
#[derive(Clone)]
pub struct NodeCredentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeCredentials {
    pub const CA_FILE: &'static str = "ca.pem";
    pub const CERT_FILE: &'static str = "node.pem";
    pub const KEY_FILE: &'static str = "node-key.pem";

    pub fn load(dir: &Path) -> Result<NodeCredentials, PkiError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(NodeCredentials {
            ca_pem: read(Self::CA_FILE)?,
            cert_pem: read(Self::CERT_FILE)?,
            key_pem: read(Self::KEY_FILE)?,
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let werr = |path: &Path, source| PkiError::Write {
            path: path.display().to_string(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| werr(dir, e))?;
        for (name, content, mode) in [
            (Self::CA_FILE, &self.ca_pem, 0o644),
            (Self::CERT_FILE, &self.cert_pem, 0o644),
            (Self::KEY_FILE, &self.key_pem, 0o600),
        ] {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)
                .map_err(|e| werr(&tmp, e))?;
            std::io::Write::write_all(&mut f, content.as_bytes()).map_err(|e| werr(&tmp, e))?;
            f.sync_all().map_err(|e| werr(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| werr(&path, e))?;
        }
        Ok(())
    }

    /// The identity of this node as its certificate states it.
    pub fn identity(&self) -> Option<PeerIdentity> {
        let der = pem_to_der(&self.cert_pem).ok()?;
        peer_identity(&[der])
    }
}

/// Client TLS that trusts the cluster CA but presents no certificate (joining).
pub fn anonymous_client_tls(ca_pem: &str) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name(MANAGER_SERVER_NAME)
}

/// The join-time probe: connects to a manager without trusting anything yet, takes
/// the CA from the end of the chain it presents, and accepts it only if its digest
/// is the one in the token and it signed the manager's certificate. Everything after
/// this uses normal verification against the returned CA.
pub async fn fetch_ca(addr: &str, expected_digest: &str, timeout: Duration) -> Result<String, PkiError> {
    use rustls::pki_types::ServerName;
    let unreachable = |reason: String| PkiError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(probe::AcceptAnyOnce(provider.clone())))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let name = ServerName::try_from(MANAGER_SERVER_NAME).expect("static name");
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS handshake failed: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        Ok::<_, PkiError>(chain)
    };
    let chain = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
    let (leaf, ca) = match (chain.first(), chain.last()) {
        (Some(l), Some(c)) if chain.len() >= 2 => (l.clone(), c.clone()),
        _ => {
            return Err(PkiError::BadServerCert {
                addr: addr.to_string(),
                reason: "the chain does not include a CA certificate".into(),
            })
        }
    };
    let actual = digest_der(&ca);
    if actual != expected_digest {
        return Err(PkiError::CaMismatch {
            addr: addr.to_string(),
            expected: expected_digest.to_string(),
            actual,
        });
    }
    // The CA matches the token; make sure it really issued the manager's certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| PkiError::BadServerCert {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
        .build()
        .map_err(|e| PkiError::BadServerCert {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &leaf,
        &[],
        &ServerName::try_from(MANAGER_SERVER_NAME).expect("static name"),
        &[],
        rustls::pki_types::UnixTime::now(),
    )
    .map_err(|e| PkiError::BadServerCert {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    Ok(der_to_pem(&ca))
}

fn der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

mod probe {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, Error, SignatureScheme};
    use std::sync::Arc;

    /// Accepts whatever chain the server presents; `fetch_ca` checks it afterwards
    /// against the token. The handshake signatures are still verified, so the peer
    /// must hold the key of the certificate it shows.
    #[derive(Debug)]
    pub struct AcceptAnyOnce(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyOnce {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn a_certificate_lasts_its_lifetime_and_is_renewed_at_two_thirds() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let (key, csr) = new_node_key("n").unwrap();
        let a = ca
            .sign_node(&csr, "c", "id", NodeRole::Worker, Duration::from_secs(9))
            .unwrap();
        let v = Validity::of_pem(&a).unwrap();
        // 9 s, backdated by a tenth (0.9 s, truncated to whole seconds in X.509).
        let life = v.not_after_ms - v.not_before_ms;
        assert!((9_000..=10_000).contains(&life), "{life}");
        assert_eq!(v.renew_at_ms(), v.not_before_ms + life * 2 / 3);
        let long = Validity::of_pem(&ca.sign_node(&csr, "c", "id", NodeRole::Worker, DAY * 90).unwrap()).unwrap();
        assert_eq!(long.not_after_ms - long.not_before_ms, (90 * 86400 + 60) * 1000);
        // Renewal keeps the key and changes the serial.
        let csr2 = csr_for_key(&key.serialize_pem(), "n").unwrap();
        let b = ca.sign_node(&csr2, "c", "id", NodeRole::Worker, DAY).unwrap();
        assert_ne!(Validity::of_pem(&b).unwrap().serial, v.serial);
        let pk = |pem: &str| {
            let der = pem_to_der(pem).unwrap();
            let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
            c.public_key().raw.to_vec()
        };
        assert_eq!(pk(&a), pk(&b));
    }

    #[test]
    fn a_signed_node_certificate_carries_id_and_role() {
        let ca = CertificateAuthority::generate("cluster1").unwrap();
        let (key, csr) = new_node_key("edge-1").unwrap();
        let pem = ca
            .sign_node(&csr, "cluster1", "node123", NodeRole::Manager, DAY)
            .unwrap();
        let creds = NodeCredentials {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: pem,
            key_pem: key.serialize_pem(),
        };
        assert_eq!(
            creds.identity(),
            Some(PeerIdentity {
                node_id: "node123".into(),
                role: NodeRole::Manager
            })
        );
        let (_, csr) = new_node_key("edge-2").unwrap();
        let pem = ca
            .sign_node(&csr, "cluster1", "node456", NodeRole::Worker, DAY)
            .unwrap();
        let der = pem_to_der(&pem).unwrap();
        assert_eq!(peer_identity(&[der]).unwrap().role, NodeRole::Worker);
    }

    #[test]
    fn the_ca_survives_a_round_trip_through_its_parts() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let again = CertificateAuthority::from_parts(ca.cert_pem(), &ca.key_pkcs8_der()).unwrap();
        assert_eq!(ca.digest(), again.digest());
        assert_eq!(ca_digest(ca.cert_pem()).unwrap(), ca.digest());
        let (_, csr) = new_node_key("n").unwrap();
        again.sign_node(&csr, "c", "id", NodeRole::Worker, DAY).unwrap();
    }

    #[test]
    fn a_garbage_csr_is_refused() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let err = ca
            .sign_node(b"not a csr", "c", "id", NodeRole::Worker, DAY)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid certificate signing request"),
            "{err}"
        );
    }

    #[test]
    fn pem_round_trip() {
        let ca = CertificateAuthority::generate("c").unwrap();
        let der = pem_to_der(ca.cert_pem()).unwrap();
        assert_eq!(pem_to_der(&der_to_pem(&der)).unwrap(), der);
    }

    #[test]
    fn credentials_are_saved_with_a_private_key_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("c").unwrap();
        let (key, csr) = new_node_key("n").unwrap();
        let creds = NodeCredentials {
            ca_pem: ca.cert_pem().into(),
            cert_pem: ca.sign_node(&csr, "c", "id", NodeRole::Worker, DAY).unwrap(),
            key_pem: key.serialize_pem(),
        };
        let certs = dir.path().join("certs");
        creds.save(&certs).unwrap();
        let mode = std::fs::metadata(certs.join(NodeCredentials::KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = NodeCredentials::load(&certs).unwrap();
        assert_eq!(back.cert_pem, creds.cert_pem);
    }
}
