//! Image documents (OCI and Docker schema 2: descriptors, manifests, indexes, config
//! files), platform matching, chain IDs, and the [`ImageConfig`] a container is built
//! from. Pure data: no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Media types sent in `Accept` when resolving a reference.
pub const MANIFEST_ACCEPT: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];

pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An OS/architecture pair (with variant), as in image indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary was built for (linux/amd64 here).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "x86" => "386",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next().filter(|s| !s.is_empty())?.to_string();
        let architecture = it.next().filter(|s| !s.is_empty())?.to_string();
        let variant = it.next().map(str::to_string);
        if it.next().is_some() {
            return None;
        }
        Some(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// Whether an image built for `other` runs here. Variants are compared only
    /// when both sides name one (arm64 images rarely set `v8`).
    pub fn matches(&self, other: &Platform) -> bool {
        let norm = |a: &str| match a {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            a => a.to_string(),
        };
        self.os == other.os
            && norm(&self.architecture) == norm(&other.architecture)
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// The first manifest for `platform`, as containerd's platform matcher picks it.
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| is_manifest(&d.media_type) && d.platform.as_ref().is_some_and(|p| platform.matches(p)))
    }

    /// `os/arch` of every entry, for error messages.
    pub fn platforms(&self) -> String {
        let v: Vec<String> = self
            .manifests
            .iter()
            .map(|d| d.platform.as_ref().map_or("unknown".into(), |p| p.to_string()))
            .collect();
        v.join(", ")
    }
}

/// The image configuration file (`application/vnd.oci.image.config.v1+json`), with
/// the Docker extensions Warren reads (`Healthcheck`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RawConfig,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// The `config` object inside the image config file, field names as on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<RawHealthcheck>,
}

/// Docker's `Healthcheck`: durations in nanoseconds.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RawHealthcheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// Transport protocol of an exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// The image's health check, as the agent's prober needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `HEALTHCHECK NONE`: disables a check inherited from a base image.
    None,
    /// `["CMD", args...]`: exec these args.
    Exec(Vec<String>),
    /// `["CMD-SHELL", cmd]`: `/bin/sh -c cmd`.
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: HealthTest,
    /// Docker's defaults when zero/absent: 30 s interval, 30 s timeout, 0 start period, 3 retries.
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

/// What a container is built from: the image's runtime defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<(u16, Protocol)>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<Healthcheck>,
    pub labels: BTreeMap<String, String>,
}

impl ImageConfig {
    /// Extracts the runtime defaults from a config file; bad port keys are skipped
    /// (Docker ignores them too) rather than making the image unusable.
    pub fn from_config_file(file: &ConfigFile) -> ImageConfig {
        let c = &file.config;
        let mut exposed_ports: Vec<(u16, Protocol)> = c
            .exposed_ports
            .iter()
            .flatten()
            .filter_map(|(k, _)| parse_port(k))
            .collect();
        exposed_ports.sort();
        let ns = |v: Option<u64>, default: Duration| match v {
            Some(n) if n > 0 => Duration::from_nanos(n),
            _ => default,
        };
        let healthcheck = c.healthcheck.as_ref().and_then(|h| {
            let test = h.test.as_ref()?;
            let test = match test.first().map(String::as_str) {
                Some("NONE") => HealthTest::None,
                Some("CMD") => HealthTest::Exec(test[1..].to_vec()),
                Some("CMD-SHELL") => HealthTest::Shell(test[1..].join(" ")),
                // An empty test inherits the base image's, which the config already resolved.
                _ => return None,
            };
            Some(Healthcheck {
                test,
                interval: ns(h.interval, Duration::from_secs(30)),
                timeout: ns(h.timeout, Duration::from_secs(30)),
                start_period: ns(h.start_period, Duration::ZERO),
                retries: h.retries.filter(|r| *r > 0).unwrap_or(3),
            })
        });
        ImageConfig {
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            env: c.env.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            user: c.user.clone().filter(|u| !u.is_empty()),
            exposed_ports,
            stop_signal: c.stop_signal.clone().filter(|s| !s.is_empty()),
            healthcheck,
            labels: c.labels.clone().unwrap_or_default(),
        }
    }
}

fn parse_port(key: &str) -> Option<(u16, Protocol)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    Some((port.parse().ok()?, proto))
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The chain IDs of a layer stack: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])` (OCI image spec).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Parses a signal name or number as used by `STOPSIGNAL` (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = sha256_digest(b"a");
        let b = sha256_digest(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn reads_docker_config_with_healthcheck() {
        let json = r#"{
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/bin/serve"], "Cmd": ["--port", "80"],
                "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/srv", "User": "1000:1000",
                "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "bogus": {}},
                "StopSignal": "SIGQUIT",
                "Healthcheck": {"Test": ["CMD", "wget", "-q", "localhost/healthz"],
                                "Interval": 5000000000, "Retries": 2}
            },
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let f: ConfigFile = serde_json::from_str(json).unwrap();
        let c = ImageConfig::from_config_file(&f);
        assert_eq!(c.entrypoint, vec!["/bin/serve"]);
        assert_eq!(c.cmd, vec!["--port", "80"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.exposed_ports, vec![(53, Protocol::Udp), (80, Protocol::Tcp)]);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        let h = c.healthcheck.unwrap();
        assert_eq!(
            h.test,
            HealthTest::Exec(vec!["wget".into(), "-q".into(), "localhost/healthz".into()])
        );
        assert_eq!(h.interval, Duration::from_secs(5));
        assert_eq!(h.timeout, Duration::from_secs(30));
        assert_eq!(h.retries, 2);
    }

    #[test]
    fn healthcheck_none_and_shell() {
        let mut f = ConfigFile::default();
        f.config.healthcheck = Some(RawHealthcheck {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        });
        assert_eq!(
            ImageConfig::from_config_file(&f).healthcheck.unwrap().test,
            HealthTest::None
        );
        f.config.healthcheck = Some(RawHealthcheck {
            test: Some(vec!["CMD-SHELL".into(), "curl -f localhost".into()]),
            ..Default::default()
        });
        assert_eq!(
            ImageConfig::from_config_file(&f).healthcheck.unwrap().test,
            HealthTest::Shell("curl -f localhost".into())
        );
    }

    #[test]
    fn platform_selection() {
        let idx = Index {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.into()),
            manifests: vec![
                Descriptor {
                    media_type: MEDIA_OCI_MANIFEST.into(),
                    digest: "sha256:arm".into(),
                    platform: Platform::parse("linux/arm64/v8"),
                    ..Default::default()
                },
                Descriptor {
                    media_type: MEDIA_OCI_MANIFEST.into(),
                    digest: "sha256:amd".into(),
                    platform: Platform::parse("linux/amd64"),
                    ..Default::default()
                },
            ],
            annotations: Default::default(),
        };
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(idx.select(&amd).unwrap().digest, "sha256:amd");
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(idx.select(&arm).unwrap().digest, "sha256:arm");
        assert!(idx.select(&Platform::parse("linux/s390x").unwrap()).is_none());
        assert_eq!(idx.platforms(), "linux/arm64/v8, linux/amd64");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }
}
