//! Warren's domain types: nodes, services, tasks, secrets, volumes and cluster
//! metadata as they live in the replicated state, plus the parsing and validation of
//! their user-facing spellings (sizes, constraints, ports). No I/O and no protobuf
//! here: the API converts at its boundary (`wire::convert`).

mod assignment;
mod cluster;
mod container;
mod endpoints;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod ingress;
mod manifest;
mod node;
mod parse;
mod service;
mod task;
mod update;
mod workload;

pub use assignment::*;
pub use cluster::*;
pub use container::*;
pub use endpoints::*;
pub use manifest::*;
pub use node::*;
pub use parse::*;
pub use service::*;
pub use task::*;
pub use update::*;
pub use workload::*;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Labels on nodes, services, secrets and volumes.
pub type Labels = BTreeMap<String, String>;

/// The label that makes a service, secret, config or volume part of a stack
/// (`warren stack deploy`), as Docker's.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";
/// The label on what `warren apply -f` created: its `--prune` removes only such objects.
pub const APPLY_LABEL: &str = "warren.apply";

/// CPU and memory, as reservations, limits or node capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Billionths of a CPU core.
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

impl Resources {
    pub fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0
    }

    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            nano_cpus: self.nano_cpus.saturating_add(other.nano_cpus),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

/// Milliseconds since the Unix epoch. The state machine never reads the clock: every
/// timestamp travels inside the command that sets it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new random object ID: 25 characters of `[0-9a-z]`, as Swarm spells them, so that
/// any unique prefix can name the object.
pub fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..25)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Names of services, secrets and volumes: what DNS and the CLI accept.
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "invalid name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        ))
    }
}

/// Bad input, with the field it is about. Every API and CLI path reports these as
/// one line: `<field>: <message>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_base36_chars_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 25);
        assert!(a.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn names_are_validated_with_the_field() {
        assert!(validate_name("name", "web-1").is_ok());
        let err = validate_name("name", "-bad").unwrap_err();
        assert_eq!(err.field, "name");
        assert!(err.to_string().starts_with("name: invalid name \"-bad\""));
        assert!(validate_name("name", "").is_err());
        assert!(validate_name("name", "a b").is_err());
        assert!(validate_name("name", &"a".repeat(64)).is_err());
    }
}
