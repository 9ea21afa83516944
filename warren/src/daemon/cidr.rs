//! The checks `cluster init` makes of `--pod-cidr` and `--service-cidr`: well
//! formed, no host bits, sizes Warren can split, and no overlap between the two.

use std::net::Ipv4Addr;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{field}: invalid CIDR {value:?}: expected e.g. {example}")]
    Malformed {
        field: &'static str,
        value: String,
        example: &'static str,
    },
    #[error("{field}: {value} has host bits set")]
    HostBits { field: &'static str, value: String },
    #[error("pod-cidr: {0} is too small: every node gets a /24 from it, so use /24 or larger (e.g. /16)")]
    PodTooSmall(String),
    #[error("service-cidr: {0} must be between /8 and /28")]
    ServiceSize(String),
    #[error("service-cidr: {service} overlaps the pod CIDR {pod}")]
    Overlap { service: String, pod: String },
}

fn parse_net(s: &str) -> Option<(u32, u32)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((u32::from(ip), len))
}

fn host_bits(ip: u32, len: u32) -> bool {
    ip & !(u32::MAX.checked_shl(32 - len).unwrap_or(0)) != 0
}

fn pod_cidr(s: &str) -> Result<(), CidrError> {
    let (ip, len) = parse_net(s).ok_or_else(|| CidrError::Malformed {
        field: "pod-cidr",
        value: s.to_string(),
        example: "10.88.0.0/16",
    })?;
    if len > 24 {
        return Err(CidrError::PodTooSmall(s.to_string()));
    }
    if host_bits(ip, len) {
        return Err(CidrError::HostBits {
            field: "pod-cidr",
            value: s.to_string(),
        });
    }
    Ok(())
}

fn service_cidr(s: &str) -> Result<(), CidrError> {
    let (ip, len) = parse_net(s).ok_or_else(|| CidrError::Malformed {
        field: "service-cidr",
        value: s.to_string(),
        example: "10.96.0.0/16",
    })?;
    if !(8..=28).contains(&len) {
        return Err(CidrError::ServiceSize(s.to_string()));
    }
    if host_bits(ip, len) {
        return Err(CidrError::HostBits {
            field: "service-cidr",
            value: s.to_string(),
        });
    }
    Ok(())
}

fn overlap(a: &str, b: &str) -> bool {
    match (parse_net(a), parse_net(b)) {
        (Some((ia, la)), Some((ib, lb))) => {
            let mask = u32::MAX.checked_shl(32 - la.min(lb)).unwrap_or(0);
            ia & mask == ib & mask
        }
        _ => false,
    }
}

/// The pod and service CIDRs of a new cluster.
pub fn check(pod: &str, service: &str) -> Result<(), CidrError> {
    pod_cidr(pod)?;
    service_cidr(service)?;
    if overlap(pod, service) {
        return Err(CidrError::Overlap {
            service: service.to_string(),
            pod: pod.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_checked() {
        pod_cidr("10.88.0.0/16").unwrap();
        pod_cidr("10.88.0.0/24").unwrap();
        let e = pod_cidr("10.88.0.0/25").unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
        assert!(pod_cidr("10.88.1.0/16").unwrap_err().to_string().contains("host bits"));
        assert!(pod_cidr("banana")
            .unwrap_err()
            .to_string()
            .starts_with("pod-cidr: invalid CIDR"));
    }

    #[test]
    fn service_cidrs_are_checked() {
        service_cidr("10.96.0.0/16").unwrap();
        assert!(service_cidr("10.96.0.0/30")
            .unwrap_err()
            .to_string()
            .contains("between /8 and /28"));
        assert!(service_cidr("10.96.1.0/16")
            .unwrap_err()
            .to_string()
            .contains("host bits"));
        assert!(overlap("10.88.0.0/16", "10.88.128.0/17"));
        assert!(!overlap("10.88.0.0/16", "10.96.0.0/16"));
        assert_eq!(
            check("10.88.0.0/16", "10.88.128.0/17").unwrap_err().to_string(),
            "service-cidr: 10.88.128.0/17 overlaps the pod CIDR 10.88.0.0/16"
        );
    }
}
