//! What a task's container gets besides its image: mounts, secrets, health check,
//! restart policy and how it is stopped, with the parsing of their CLI spellings
//! (`--mount type=volume,source=v,target=/p`, `--secret source=s,target=/p`,
//! `--health-http 8080/healthz`, durations).

use super::ValidationError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A named volume (local driver: a directory under the node's data dir).
    #[default]
    Volume,
    /// A path of the node.
    Bind,
    /// An in-memory filesystem private to the task.
    Tmpfs,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Volume name or host path; empty for tmpfs, and for an anonymous volume
    /// (a fresh directory private to each task, removed with it, as Docker gives
    /// each container its own).
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    pub readonly: bool,
}

impl Mount {
    /// `type=volume|bind|tmpfs,source=S,target=/P[,readonly]` (`src`, `dst`,
    /// `destination`, `ro` accepted as in Docker).
    pub fn parse(field: &str, input: &str) -> Result<Mount, ValidationError> {
        let bad = |why: &str| ValidationError::new(field, format!("invalid mount {input:?}: {why}"));
        let mut m = Mount::default();
        let mut kind_set = false;
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (k, v),
                None => (part, "true"),
            };
            match k {
                "type" => {
                    m.kind = match v {
                        "volume" => MountKind::Volume,
                        "bind" => MountKind::Bind,
                        "tmpfs" => MountKind::Tmpfs,
                        _ => return Err(bad("type is volume, bind or tmpfs")),
                    };
                    kind_set = true;
                }
                "source" | "src" => m.source = v.to_string(),
                "target" | "dst" | "destination" => m.target = v.to_string(),
                "readonly" | "ro" => {
                    m.readonly = match v {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("readonly is true or false")),
                    }
                }
                _ => return Err(bad(&format!("unknown option {k:?}"))),
            }
        }
        if !kind_set {
            return Err(bad("missing type= (volume, bind or tmpfs)"));
        }
        m.validate(field)?;
        Ok(m)
    }

    /// A volume mount without a name: each task gets its own, empty at start.
    pub fn is_anonymous(&self) -> bool {
        self.kind == MountKind::Volume && self.source.is_empty()
    }

    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        let bad = |why: String| ValidationError::new(field, why);
        if !self.target.starts_with('/') {
            return Err(bad(format!("mount target {:?} must be an absolute path", self.target)));
        }
        match self.kind {
            MountKind::Volume if self.is_anonymous() => Ok(()),
            MountKind::Volume => super::validate_name(field, &self.source).map_err(|_| {
                bad(format!(
                    "volume mount needs a volume name as source, got {:?}",
                    self.source
                ))
            }),
            MountKind::Bind if !self.source.starts_with('/') => Err(bad(format!(
                "bind mount source {:?} must be an absolute path",
                self.source
            ))),
            MountKind::Tmpfs if !self.source.is_empty() => Err(bad("a tmpfs mount takes no source".into())),
            _ => Ok(()),
        }
    }
}

/// A secret given to a task, as a file (mode 0400) on a tmpfs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
    /// Absolute path in the container; default `/run/secrets/<name>`.
    pub target: String,
}

impl SecretRef {
    /// `NAME` or `source=NAME,target=PATH`.
    pub fn parse(field: &str, input: &str) -> Result<SecretRef, ValidationError> {
        let bad = |why: &str| ValidationError::new(field, format!("invalid secret {input:?}: {why}"));
        let mut r = SecretRef::default();
        if input.contains('=') {
            for part in input.split(',').map(str::trim) {
                let (k, v) = part.split_once('=').ok_or_else(|| bad("expected KEY=VALUE parts"))?;
                match k {
                    "source" | "src" => r.name = v.to_string(),
                    "target" | "dst" => r.target = v.to_string(),
                    _ => return Err(bad(&format!("unknown option {k:?}"))),
                }
            }
        } else {
            r.name = input.trim().to_string();
        }
        super::validate_name(field, &r.name).map_err(|_| bad("missing or invalid secret name"))?;
        if r.target.is_empty() {
            r.target = format!("/run/secrets/{}", r.name);
        }
        if !r.target.starts_with('/') {
            return Err(bad("target must be an absolute path"));
        }
        Ok(r)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthTest {
    /// Run a command in the container (`/bin/sh -c CMD`); exit 0 is healthy.
    Cmd(String),
    /// GET http://<task address>:PORT/PATH; 2xx and 3xx are healthy.
    Http { port: u16, path: String },
    /// A TCP connect to <task address>:PORT succeeds.
    Tcp { port: u16 },
    /// Explicitly no check, not even the image's HEALTHCHECK.
    Disabled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub test: HealthTest,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that make the task unhealthy.
    pub retries: u32,
    /// Failures during this time after start do not count.
    pub start_period_ms: u64,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_RETRIES: u32 = 3;

    pub fn new(test: HealthTest) -> HealthCheck {
        HealthCheck {
            test,
            interval_ms: Self::DEFAULT_INTERVAL_MS,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            retries: Self::DEFAULT_RETRIES,
            start_period_ms: 0,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.interval_ms == 0 {
            return Err(ValidationError::new("health-interval", "must be longer than 0"));
        }
        if self.timeout_ms == 0 {
            return Err(ValidationError::new("health-timeout", "must be longer than 0"));
        }
        if self.retries == 0 {
            return Err(ValidationError::new("health-retries", "must be at least 1"));
        }
        match &self.test {
            HealthTest::Cmd(c) if c.trim().is_empty() => Err(ValidationError::new("health-cmd", "empty command")),
            HealthTest::Http { port: 0, .. } | HealthTest::Tcp { port: 0 } => {
                Err(ValidationError::new("health", "the port must be between 1 and 65535"))
            }
            HealthTest::Http { path, .. } if !path.starts_with('/') => Err(ValidationError::new(
                "health-http",
                format!("path {path:?} must start with /"),
            )),
            _ => Ok(()),
        }
    }
}

/// `--health-http [PORT]/PATH` (port defaults to 80).
pub fn parse_health_http(field: &str, input: &str) -> Result<HealthTest, ValidationError> {
    let bad = || {
        ValidationError::new(
            field,
            format!("invalid {input:?}: expected [PORT]/PATH, e.g. 8080/healthz"),
        )
    };
    let slash = input.find('/').ok_or_else(bad)?;
    let (port, path) = input.split_at(slash);
    let port = if port.is_empty() {
        80
    } else {
        port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?
    };
    Ok(HealthTest::Http {
        port,
        path: path.to_string(),
    })
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

impl RestartCondition {
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        match s {
            "none" => Ok(RestartCondition::None),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "any" => Ok(RestartCondition::Any),
            _ => Err(ValidationError::new(
                field,
                format!("invalid condition {s:?}: expected none, on-failure or any"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: u64,
    /// 0 means unlimited.
    pub max_attempts: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
        }
    }
}

/// Durations as the CLI spells them: `30s`, `1m30s`, `500ms`.
/// `60s`, `1m 30s`: a duration in milliseconds as people write it.
pub fn human_duration(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

pub fn parse_duration(field: &str, input: &str) -> Result<Duration, ValidationError> {
    humantime::parse_duration(input.trim()).map_err(|_| {
        ValidationError::new(
            field,
            format!("invalid duration {input:?}: expected e.g. 10s, 1m30s, 500ms"),
        )
    })
}

/// `SIGTERM`, `TERM`, `15`; returns the canonical name.
pub fn parse_signal(field: &str, input: &str) -> Result<String, ValidationError> {
    const SIGNALS: &[(&str, i32)] = &[
        ("SIGHUP", 1),
        ("SIGINT", 2),
        ("SIGQUIT", 3),
        ("SIGKILL", 9),
        ("SIGUSR1", 10),
        ("SIGUSR2", 12),
        ("SIGTERM", 15),
        ("SIGWINCH", 28),
    ];
    let s = input.trim().to_ascii_uppercase();
    let found = if let Ok(n) = s.parse::<i32>() {
        SIGNALS.iter().find(|(_, num)| *num == n)
    } else {
        let name = if s.starts_with("SIG") {
            s.clone()
        } else {
            format!("SIG{s}")
        };
        SIGNALS.iter().find(|(n, _)| *n == name)
    };
    found.map(|(n, _)| n.to_string()).ok_or_else(|| {
        ValidationError::new(
            field,
            format!("unknown signal {input:?}: use e.g. SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1"),
        )
    })
}

/// The number of a canonical signal name from `parse_signal`.
pub fn signal_number(name: &str) -> i32 {
    match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        "SIGQUIT" => 3,
        "SIGKILL" => 9,
        "SIGUSR1" => 10,
        "SIGUSR2" => 12,
        "SIGWINCH" => 28,
        _ => 15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        let m = Mount::parse("mount", "type=volume,source=data,target=/data").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str(), m.readonly),
            (MountKind::Volume, "data", "/data", false)
        );
        let m = Mount::parse("mount", "type=bind,src=/srv,dst=/srv,ro").unwrap();
        assert_eq!((m.kind, m.readonly), (MountKind::Bind, true));
        assert!(Mount::parse("mount", "type=tmpfs,target=/tmp").is_ok());
        let anon = Mount::parse("mount", "type=volume,target=/cache").unwrap();
        assert!(anon.is_anonymous(), "a volume without a source is the task's own");
        assert!(Mount::parse("mount", "type=volume,source=Bad/Name,target=/x").is_err());
        assert!(Mount::parse("mount", "source=data,target=/data")
            .unwrap_err()
            .message
            .contains("missing type="));
        assert!(Mount::parse("mount", "type=bind,source=rel,target=/x").is_err());
        assert!(Mount::parse("mount", "type=volume,source=data,target=rel").is_err());
        assert!(Mount::parse("mount", "type=nfs,source=a,target=/b").is_err());
        assert_eq!(
            Mount::parse("--mount", "type=tmpfs,source=x,target=/t")
                .unwrap_err()
                .field,
            "--mount"
        );
    }

    #[test]
    fn secrets() {
        let s = SecretRef::parse("secret", "db").unwrap();
        assert_eq!((s.name.as_str(), s.target.as_str()), ("db", "/run/secrets/db"));
        let s = SecretRef::parse("secret", "source=db,target=/etc/db.pass").unwrap();
        assert_eq!(s.target, "/etc/db.pass");
        assert!(SecretRef::parse("secret", "source=db,target=rel").is_err());
        assert!(SecretRef::parse("secret", "target=/x").is_err());
    }

    #[test]
    fn health() {
        assert_eq!(
            parse_health_http("h", "8080/healthz").unwrap(),
            HealthTest::Http {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!(
            parse_health_http("h", "/").unwrap(),
            HealthTest::Http {
                port: 80,
                path: "/".into()
            }
        );
        assert!(parse_health_http("h", "8080").is_err());
        assert!(parse_health_http("h", "0/x").is_err());
        let mut h = HealthCheck::new(HealthTest::Tcp { port: 80 });
        h.validate().unwrap();
        h.retries = 0;
        assert_eq!(h.validate().unwrap_err().field, "health-retries");
    }

    #[test]
    fn durations_and_signals() {
        assert_eq!(parse_duration("d", "1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("d", "500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("--stop-grace-period", "soon").unwrap_err().field,
            "--stop-grace-period"
        );
        assert_eq!(parse_signal("s", "term").unwrap(), "SIGTERM");
        assert_eq!(parse_signal("s", "SIGQUIT").unwrap(), "SIGQUIT");
        assert_eq!(parse_signal("s", "2").unwrap(), "SIGINT");
        assert!(parse_signal("s", "SIGFOO").is_err());
        assert_eq!(signal_number("SIGQUIT"), 3);
        assert_eq!(
            RestartCondition::parse("r", "on-failure").unwrap(),
            RestartCondition::OnFailure
        );
        assert!(RestartCondition::parse("r", "always").is_err());
    }
}
