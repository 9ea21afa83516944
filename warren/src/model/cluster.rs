//! Cluster-wide metadata held in the replicated state: identity, the CA, join-token
//! secrets and address ranges. The CA private key is stored sealed with the
//! managers' secrets key (see `pki` and `secrets`), never in the clear.

use serde::{Deserialize, Serialize};
use sha2::Digest;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub cluster_id: String,
    pub created_ms: i64,
    /// The cluster CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA's private key (PKCS#8 DER), sealed with the secrets key.
    pub ca_key_sealed: Vec<u8>,
    pub worker_token_secret: String,
    pub manager_token_secret: String,
    /// The cluster CIDR from which every node gets a /24 (`--pod-cidr`).
    pub pod_cidr: String,
    /// Where services' virtual IPs come from (`--service-cidr`).
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
    /// When each join token stops working (Unix ms); 0: never
    /// (`cluster join-token ROLE --expire D`).
    #[serde(default)]
    pub worker_token_expires_ms: i64,
    #[serde(default)]
    pub manager_token_expires_ms: i64,
    /// Nodes removed with `node rm`: their certificates are refused on every
    /// manager's port from then on (a revocation list, replicated).
    #[serde(default)]
    pub removed_nodes: Vec<String>,
    /// How task traffic travels between nodes. A cluster whose state predates the
    /// mesh has none in its meta and stays `native`: an upgrade changes nothing.
    #[serde(default)]
    pub overlay: Overlay,
    /// How long node certificates issued from now on last (ms), `--cert-expiry`;
    /// 0: the default (state from before the setting).
    #[serde(default)]
    pub cert_expiry_ms: i64,
}

impl ClusterMeta {
    /// The lifetime of the node certificates this cluster issues.
    pub fn cert_expiry(&self) -> std::time::Duration {
        match self.cert_expiry_ms {
            ms if ms > 0 => std::time::Duration::from_millis(ms as u64),
            _ => DEFAULT_CERT_EXPIRY,
        }
    }
}

/// Node certificates last 90 days unless `--cert-expiry` says otherwise (as Swarm).
pub const DEFAULT_CERT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);
/// The shortest `--cert-expiry`: short enough for a test to watch renewals, which
/// start at two thirds of the lifetime. Anything under an hour is for testing.
pub const MIN_CERT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest: the CA's own lifetime is ten years.
pub const MAX_CERT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(5 * 365 * 24 * 3600);

/// Checks a `--cert-expiry` value; the error names the flag.
pub fn validate_cert_expiry(field: &str, d: std::time::Duration) -> Result<(), super::ValidationError> {
    if d < MIN_CERT_EXPIRY || d > MAX_CERT_EXPIRY {
        return Err(super::ValidationError::new(
            field,
            format!(
                "certificate lifetime {} is out of range: between {} and {}",
                humantime::format_duration(d),
                humantime::format_duration(MIN_CERT_EXPIRY),
                humantime::format_duration(MAX_CERT_EXPIRY)
            ),
        ));
    }
    Ok(())
}

/// The two overlay modes (`warren cluster init --overlay`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlay {
    /// A route per peer subnet via the peer node's address: one trusted segment.
    #[default]
    Native,
    /// An encrypted WireGuard mesh between every pair of nodes.
    Wireguard,
}

impl Overlay {
    /// What `cluster init` picks when `--overlay` is not given.
    pub const FOR_NEW_CLUSTERS: Overlay = Overlay::Wireguard;

    pub fn as_str(self) -> &'static str {
        match self {
            Overlay::Native => "native",
            Overlay::Wireguard => "wireguard",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Overlay, super::ValidationError> {
        match s {
            "native" => Ok(Overlay::Native),
            "wireguard" => Ok(Overlay::Wireguard),
            _ => Err(super::ValidationError::new(
                field,
                format!("invalid overlay {s:?}: expected wireguard or native"),
            )),
        }
    }
}

pub fn default_service_cidr() -> String {
    "10.96.0.0/16".to_string()
}

/// A secret as stored: the value is sealed with AES-256-GCM under the managers'
/// secrets key; the plaintext never enters the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub id: String,
    pub name: String,
    pub labels: super::Labels,
    pub sealed: Vec<u8>,
    /// SHA-256 of the plaintext, hex.
    pub digest: String,
    pub created_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// Local volumes live on one node, fixed at the first task that uses them.
    pub node_id: Option<String>,
    pub labels: super::Labels,
    pub options: super::Labels,
    pub created_ms: i64,
}

/// A config (as Docker's): a small file kept in the replicated state in the clear,
/// mounted read-only into the tasks that name it. Named `ConfigObject` so as not to
/// be taken for the daemon's own configuration (`crate::config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigObject {
    pub id: String,
    pub name: String,
    pub labels: super::Labels,
    pub data: Vec<u8>,
    /// SHA-256 of `data`, hex.
    pub digest: String,
    pub created_ms: i64,
}

/// SHA-256 of a secret's or config's plaintext, hex: how a re-applied file's value is
/// compared with the stored one without unsealing it.
pub fn digest_of(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}
