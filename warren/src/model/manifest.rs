//! A manifest: the set of objects a declarative file names (`warren apply -f`,
//! `warren stack deploy -c`), after the CLI has parsed and interpolated it, in the
//! model's own types, plus where in the files each object and field came from so
//! that an error the manager returns (a field path) can be shown as `file:line`.
//! Parsing lives in `crate::manifest` (CLI side); diffing and committing it lives in
//! the manager and the store. No I/O here.

use super::ingress::IngressSpec;
use super::{Labels, ServiceSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything one `apply` or `stack deploy` names. Names are as written in the
/// file: for a stack the manager prefixes them (`STACK_<name>`), not the loader.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `Some` for `stack deploy NAME`; `None` for `apply -f`.
    pub stack: Option<String>,
    pub services: Vec<ManifestService>,
    pub secrets: Vec<ManifestSecret>,
    pub configs: Vec<ManifestConfig>,
    pub volumes: Vec<ManifestVolume>,
    pub ingresses: Vec<ManifestIngress>,
    pub certificates: Vec<ManifestCertificate>,
    /// Networks a compose file declares (`networks:`); stack scoping is the
    /// manager's.
    #[serde(default)]
    pub networks: Vec<ManifestNetwork>,
    /// Keys the loader accepted but cannot honour (`build`, `container_name`, ...),
    /// as `services.web.build`: printed once as ignored, as Swarm does.
    #[serde(default)]
    pub ignored: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestService {
    pub name: String,
    pub spec: ServiceSpec,
    /// Config objects mounted read-only into the tasks.
    #[serde(default)]
    pub configs: Vec<ConfigRef>,
    /// The networks the service joins, as named in the file (compose `networks:`).
    #[serde(default)]
    pub networks: Vec<String>,
    /// `strategy: canary` (x-warren): an update runs as a canary first.
    #[serde(default)]
    pub canary: Option<ManifestCanary>,
}

/// How an update of the service is rolled out as a canary (x-warren `canary_weight`,
/// `canary_steps`): the new version first takes `weight`% of new connections, then
/// each of `steps` in turn (ascending, 1-100), then it is promoted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestCanary {
    pub weight: u8,
    #[serde(default)]
    pub steps: Vec<u8>,
}

/// A network named by a compose file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestNetwork {
    pub name: String,
    /// `external: true`: must already exist; not created or removed with the stack.
    pub external: bool,
    /// As written (`overlay` if empty); Warren's networks are its own overlay.
    pub driver: String,
    #[serde(default)]
    pub labels: Labels,
}

/// A secret's value travels only inside the apply request, never back out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSecret {
    pub name: String,
    /// `external: true`: must already exist; `data` is empty.
    pub external: bool,
    pub data: Vec<u8>,
    #[serde(default)]
    pub labels: Labels,
}

/// A config (as Docker's): a small file stored in the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestConfig {
    pub name: String,
    pub external: bool,
    pub data: Vec<u8>,
    #[serde(default)]
    pub labels: Labels,
}

/// A config given to a task: a read-only file at `target`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRef {
    pub name: String,
    /// Absolute path in the container; default `/<name>` as Docker's.
    pub target: String,
    /// File mode, default 0o444.
    pub mode: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestVolume {
    pub name: String,
    pub external: bool,
    /// Empty: `local`.
    pub driver: String,
    #[serde(default)]
    pub options: Labels,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestIngress {
    pub name: String,
    pub spec: IngressSpec,
}

/// An uploaded certificate (PEM chain and key), or an ACME one named by host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestCertificate {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where a field came from: `stack.yaml:14`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: String,
    pub line: u32,
}

/// Field path (`services.web.deploy.replicas`, `secrets.db_password`) to its
/// origin. A path without its own entry maps to its longest recorded prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origins(pub BTreeMap<String, Origin>);

impl Origins {
    pub fn insert(&mut self, path: impl Into<String>, origin: Origin) {
        self.0.insert(path.into(), origin);
    }

    /// The origin of `path` or of its longest recorded prefix (split at `.` and `[`).
    pub fn find(&self, path: &str) -> Option<&Origin> {
        let mut p = path;
        loop {
            if let Some(o) = self.0.get(p) {
                return Some(o);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_fall_back_to_the_longest_prefix() {
        let mut o = Origins::default();
        o.insert(
            "services.web",
            Origin {
                file: "a.yaml".into(),
                line: 3,
            },
        );
        o.insert(
            "services.web.ports",
            Origin {
                file: "a.yaml".into(),
                line: 7,
            },
        );
        assert_eq!(o.find("services.web.ports[1].published").unwrap().line, 7);
        assert_eq!(o.find("services.web.image").unwrap().line, 3);
        assert!(o.find("volumes.data").is_none());
    }
}
