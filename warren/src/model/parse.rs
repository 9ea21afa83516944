//! Parsing of the user-facing spellings that both the CLI and the API accept: sizes
//! (`512m`, `1.5GiB`), CPU counts (`0.5`), `KEY=VALUE` pairs, placement constraints
//! (`node.labels.zone==edge`) and published ports (`mode=host,8080:80/udp`). Each
//! parser reports a `ValidationError` naming the field it was given.

use super::{PortConfig, Protocol, PublishMode, ValidationError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Parses a memory size. Units are binary, as Docker's `--memory` reads them:
/// `b`, `k`/`kb`/`kib`, `m`/`mb`/`mib`, `g`/`gb`/`gib`, `t`/`tb`/`tib`; no unit means bytes.
pub fn parse_size(field: &str, input: &str) -> Result<i64, ValidationError> {
    let s = input.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || {
        ValidationError::new(
            field,
            format!("invalid size {input:?}: expected a number with an optional unit (b, k, m, g, t), e.g. 512m"),
        )
    };
    if num.is_empty() {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as i64)
}

/// Formats a byte count the way `parse_size` reads it back, for tables.
pub fn format_size(bytes: i64) -> String {
    const UNITS: [(&str, i64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if (v - v.round()).abs() < 0.005 {
                format!("{}{unit}", v.round() as i64)
            } else {
                format!("{v:.2}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

/// Parses a CPU count (`0.5`, `2`) into nano-CPUs.
pub fn parse_cpus(field: &str, input: &str) -> Result<i64, ValidationError> {
    let v: f64 = input.trim().parse().map_err(|_| {
        ValidationError::new(
            field,
            format!("invalid CPU count {input:?}: expected a number of cores, e.g. 0.5"),
        )
    })?;
    if !v.is_finite() || !(0.0..=1.0e9).contains(&v) {
        return Err(ValidationError::new(
            field,
            format!("invalid CPU count {input:?}: must be between 0 and 1e9"),
        ));
    }
    Ok((v * 1e9).round() as i64)
}

pub fn format_cpus(nano: i64) -> String {
    let v = nano as f64 / 1e9;
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Splits `KEY=VALUE`; the key must not be empty. `VALUE` may contain `=`.
pub fn parse_key_value(field: &str, input: &str) -> Result<(String, String), ValidationError> {
    match input.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(ValidationError::new(
            field,
            format!("invalid {input:?}: expected KEY=VALUE"),
        )),
    }
}

/// What a placement constraint compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintKey {
    Id,
    Hostname,
    Role,
    Label(String),
    PlatformOs,
    PlatformArch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOp {
    Eq,
    Ne,
}

/// A placement constraint, e.g. `node.labels.zone==edge` or `node.role!=manager`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub key: ConstraintKey,
    pub op: ConstraintOp,
    pub value: String,
}

impl Constraint {
    pub fn parse(field: &str, input: &str) -> Result<Constraint, ValidationError> {
        let (lhs, op, rhs) = if let Some((l, r)) = input.split_once("==") {
            (l, ConstraintOp::Eq, r)
        } else if let Some((l, r)) = input.split_once("!=") {
            (l, ConstraintOp::Ne, r)
        } else {
            return Err(ValidationError::new(
                field,
                format!("invalid constraint {input:?}: expected KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==edge"),
            ));
        };
        let lhs = lhs.trim();
        let value = rhs.trim().to_string();
        if value.is_empty() {
            return Err(ValidationError::new(
                field,
                format!("invalid constraint {input:?}: empty value"),
            ));
        }
        let key = match lhs {
            "node.id" => ConstraintKey::Id,
            "node.hostname" | "node.name" => ConstraintKey::Hostname,
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(ValidationError::new(
                        field,
                        format!("invalid constraint {input:?}: node.role is manager or worker"),
                    ));
                }
                ConstraintKey::Role
            }
            "node.platform.os" => ConstraintKey::PlatformOs,
            "node.platform.arch" => ConstraintKey::PlatformArch,
            _ => match lhs.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => ConstraintKey::Label(label.to_string()),
                _ => {
                    return Err(ValidationError::new(
                        field,
                        format!(
                            "invalid constraint {input:?}: unknown key {lhs:?} (use node.id, node.hostname, \
                             node.role, node.platform.os, node.platform.arch or node.labels.<name>)"
                        ),
                    ))
                }
            },
        };
        Ok(Constraint { key, op, value })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            ConstraintKey::Id => "node.id".to_string(),
            ConstraintKey::Hostname => "node.hostname".to_string(),
            ConstraintKey::Role => "node.role".to_string(),
            ConstraintKey::Label(l) => format!("node.labels.{l}"),
            ConstraintKey::PlatformOs => "node.platform.os".to_string(),
            ConstraintKey::PlatformArch => "node.platform.arch".to_string(),
        };
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{key}{op}{}", self.value)
    }
}

/// Parses `--publish`: `[mode=host,]PUBLISHED:TARGET[/udp|/tcp]`, or the long form
/// `published=8080,target=80,protocol=udp,mode=host`.
pub fn parse_publish(field: &str, input: &str) -> Result<PortConfig, ValidationError> {
    let bad = |why: &str| {
        ValidationError::new(
            field,
            format!(
                "invalid port {input:?}: {why} (expected [mode=host,]PUBLISHED:TARGET[/udp] or \
                 published=PORT,target=PORT[,mode=host][,protocol=udp])"
            ),
        )
    };
    let mut mode = PublishMode::Ingress;
    let mut protocol = Protocol::Tcp;
    let mut published = None;
    let mut target = None;
    for part in input.split(',') {
        let part = part.trim();
        if let Some((k, v)) = part.split_once('=') {
            match k {
                "mode" => {
                    mode = match v {
                        "host" => PublishMode::Host,
                        "ingress" => PublishMode::Ingress,
                        _ => return Err(bad("mode is host or ingress")),
                    }
                }
                "published" => published = Some(parse_port(v).ok_or_else(|| bad("bad published port"))?),
                "target" => target = Some(parse_port(v).ok_or_else(|| bad("bad target port"))?),
                "protocol" => protocol = parse_protocol(v).ok_or_else(|| bad("protocol is tcp or udp"))?,
                _ => return Err(bad(&format!("unknown option {k:?}"))),
            }
        } else {
            let (ports, proto) = match part.split_once('/') {
                Some((p, proto)) => (p, Some(proto)),
                None => (part, None),
            };
            if let Some(proto) = proto {
                protocol = parse_protocol(proto).ok_or_else(|| bad("protocol is tcp or udp"))?;
            }
            let (p, t) = ports
                .split_once(':')
                .ok_or_else(|| bad("missing ':' between published and target port"))?;
            published = Some(parse_port(p).ok_or_else(|| bad("bad published port"))?);
            target = Some(parse_port(t).ok_or_else(|| bad("bad target port"))?);
        }
    }
    let target = target.ok_or_else(|| bad("missing target port"))?;
    let published = published.ok_or_else(|| bad("missing published port"))?;
    Ok(PortConfig {
        published,
        target,
        protocol,
        mode,
    })
}

fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

fn parse_protocol(s: &str) -> Option<Protocol> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("m", "512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("m", "1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("m", "1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("m", "100").unwrap(), 100);
        assert_eq!(parse_size("m", "64MB").unwrap(), 64 << 20);
        let e = parse_size("--reserve-memory", "lots").unwrap_err();
        assert_eq!(e.field, "--reserve-memory");
        assert!(parse_size("m", "12x").is_err());
        assert!(parse_size("m", "-1g").is_err());
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(3 << 29), "1.50GiB");
        assert_eq!(format_size(12), "12B");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("c", "0.5").unwrap(), 500_000_000);
        assert_eq!(parse_cpus("c", "2").unwrap(), 2_000_000_000);
        assert!(parse_cpus("c", "two").is_err());
        assert!(parse_cpus("c", "-1").is_err());
        assert_eq!(format_cpus(500_000_000), "0.5");
        assert_eq!(format_cpus(2_000_000_000), "2");
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("env", "A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert!(parse_key_value("env", "novalue").is_err());
        assert!(parse_key_value("env", "=x").is_err());
    }

    #[test]
    fn constraints() {
        let c = Constraint::parse("c", "node.labels.zone==edge").unwrap();
        assert_eq!(c.key, ConstraintKey::Label("zone".into()));
        assert_eq!(c.op, ConstraintOp::Eq);
        assert_eq!(c.to_string(), "node.labels.zone==edge");
        let c = Constraint::parse("c", "node.role != manager").unwrap();
        assert_eq!(c.key, ConstraintKey::Role);
        assert_eq!(c.op, ConstraintOp::Ne);
        assert!(Constraint::parse("c", "node.role==boss").is_err());
        assert!(Constraint::parse("c", "node.colour==red").is_err());
        assert!(Constraint::parse("c", "zone=edge").is_err());
        assert!(Constraint::parse("c", "node.hostname==").is_err());
    }

    #[test]
    fn ports() {
        let p = parse_publish("p", "8080:80").unwrap();
        assert_eq!((p.published, p.target), (8080, 80));
        assert_eq!(p.protocol, Protocol::Tcp);
        assert_eq!(p.mode, PublishMode::Ingress);
        let p = parse_publish("p", "mode=host,53:5353/udp").unwrap();
        assert_eq!((p.published, p.target), (53, 5353));
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.mode, PublishMode::Host);
        let p = parse_publish("p", "published=9000,target=90,protocol=udp").unwrap();
        assert_eq!((p.published, p.target, p.protocol), (9000, 90, Protocol::Udp));
        assert!(parse_publish("p", "8080").is_err());
        assert!(parse_publish("p", "0:80").is_err());
        assert!(parse_publish("p", "80:80/sctp").is_err());
        assert!(parse_publish("p", "mode=bridge,80:80").is_err());
        let p = parse_publish("p", "published=8080,target=80,mode=host").unwrap();
        assert_eq!((p.published, p.target, p.mode), (8080, 80, PublishMode::Host));
        let e = parse_publish("--publish", "published=8080,targt=80").unwrap_err();
        assert_eq!(e.field, "--publish");
        assert!(e.message.contains("unknown option \"targt\""), "{e}");
        assert!(parse_publish("p", "published=8080")
            .unwrap_err()
            .message
            .contains("missing target port"));
    }
}
