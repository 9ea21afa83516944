//! Per-node service DNS: the resolver containers use, listening on the node's bridge
//! address (UDP and TCP port 53). Owns answering Warren names (`NAME`, `tasks.NAME`,
//! `NAME.SLOT`, with the search domains) from a [`DnsTable`] and forwarding every
//! other name to the node's upstream resolvers. It does not read the cluster state:
//! its owner (the node agent) builds a [`DnsTable`] from plain data and hands it over
//! with [`DnsServer::update`] whenever the state changes.
//!
//! See docs/dns.md for what each name resolves to, TTLs and debugging with `dig`.

mod forward;
mod server;
mod table;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

pub use forward::ExchangeError;
pub use server::{DnsMetrics, DnsServer, DnsUpdater};
pub use table::{DnsTable, DnsTableBuilder, NameKind, Resolution};

/// The port DNS listens on and upstreams are asked on, unless they say otherwise.
pub const DNS_PORT: u16 = 53;
/// The TTL of VIP answers unless configured: short, so that a recreated service is
/// picked up quickly.
pub const DEFAULT_TTL: u32 = 5;
/// The search domain containers get unless configured (`web.warren` = `web`).
pub const DEFAULT_SEARCH_DOMAIN: &str = "warren";
/// How long one upstream may take to answer before the next is tried.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The host's resolver configuration, where [`host_upstreams`] reads nameservers.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where systemd-resolved keeps the real upstreams when /etc/resolv.conf only names
/// its loopback stub (127.0.0.53).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// Errors of the service DNS.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns: cannot bind udp {addr}: {source}")]
    BindUdp { addr: SocketAddr, source: io::Error },
    #[error("dns: cannot bind tcp {addr}: {source}")]
    BindTcp { addr: SocketAddr, source: io::Error },
    #[error("dns service {name:?}: {reason}")]
    InvalidServiceName { name: String, reason: String },
    #[error("dns service {name:?}: already in the table (names are case-insensitive)")]
    DuplicateService { name: String },
    #[error("dns config {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("dns: no upstream resolver configured to forward {name:?} to")]
    NoUpstream { name: String },
    #[error("dns upstream {addr}: {source}")]
    Upstream { addr: SocketAddr, source: ExchangeError },
    #[error("dns metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("dns: server task failed: {0}")]
    Server(String),
}

/// How a node's DNS server runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where to listen, UDP and TCP (the node's bridge address, port 53). Port 0 picks
    /// a free port, the same for both; [`DnsServer::local_addr`] tells which.
    pub bind: SocketAddr,
    /// Where names that are not Warren's are forwarded, tried in order. Empty: such
    /// names get SERVFAIL.
    pub upstreams: Vec<SocketAddr>,
    /// Domains that may follow a Warren name (`web.warren`), without leading or
    /// trailing dot.
    pub search_domains: Vec<String>,
    /// TTL of VIP answers in seconds. Answers listing task addresses always have TTL
    /// 0, since tasks come and go and dnsrr rotation needs clients to ask again.
    pub ttl: u32,
    /// How long one upstream may take before the next one is tried.
    pub upstream_timeout: Duration,
}

impl DnsConfig {
    /// A config listening on `bind` with the defaults: the host's upstreams, search
    /// domain `warren`, TTL 5 s, 2 s upstream timeout.
    pub fn new(bind: SocketAddr) -> DnsConfig {
        DnsConfig {
            bind,
            upstreams: host_upstreams(),
            search_domains: vec![DEFAULT_SEARCH_DOMAIN.to_string()],
            ttl: DEFAULT_TTL,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }

    /// Checks the config and returns it with search domains lowercased and stripped of
    /// surrounding dots.
    pub(crate) fn normalized(&self) -> Result<DnsConfig, DnsError> {
        let mut out = self.clone();
        out.search_domains = self
            .search_domains
            .iter()
            .map(|d| {
                let trimmed = d.trim_start_matches('.');
                table::normalize_name(trimmed).map_err(|reason| DnsError::InvalidConfig {
                    field: "search_domains",
                    reason: format!("{d:?}: {reason}"),
                })
            })
            .collect::<Result<_, _>>()?;
        for up in &self.upstreams {
            if up.port() == 0 {
                return Err(DnsError::InvalidConfig {
                    field: "upstreams",
                    reason: format!("{up} has port 0"),
                });
            }
            if up.ip().is_unspecified() {
                return Err(DnsError::InvalidConfig {
                    field: "upstreams",
                    reason: format!("{up} is the unspecified address"),
                });
            }
            if *up == self.bind {
                return Err(DnsError::InvalidConfig {
                    field: "upstreams",
                    reason: format!("{up} is this server's own address: queries would loop"),
                });
            }
        }
        if self.upstream_timeout.is_zero() {
            return Err(DnsError::InvalidConfig {
                field: "upstream_timeout",
                reason: "must be more than zero".into(),
            });
        }
        Ok(out)
    }
}

/// The host's nameservers from /etc/resolv.conf on port 53, without loopback ones (a
/// container cannot reach the host's 127.0.0.0/8 or ::1). When that leaves none and
/// systemd-resolved is in use, its real upstreams from
/// /run/systemd/resolve/resolv.conf. Empty when neither file names a usable server.
pub fn host_upstreams() -> Vec<SocketAddr> {
    host_upstreams_from(Path::new(RESOLV_CONF), Path::new(SYSTEMD_RESOLV_CONF))
}

fn host_upstreams_from(resolv_conf: &Path, fallback: &Path) -> Vec<SocketAddr> {
    for path in [resolv_conf, fallback] {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let found = parse_resolv_conf(&text);
                if !found.is_empty() {
                    return found;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(path = %path.display(), %error, "dns: cannot read resolver configuration"),
        }
    }
    Vec::new()
}

/// The `nameserver` lines of a resolv.conf, as port-53 socket addresses, without
/// loopback addresses, unparsable ones (e.g. with a `%zone`) and duplicates.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        let addr = SocketAddr::new(ip, DNS_PORT);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolv_conf_nameservers_skip_loopback_and_junk() {
        let text = "\
# generated
search example.org
nameserver 127.0.0.53
nameserver 10.0.0.2   # office
nameserver ::1
nameserver 2001:db8::53
nameserver fe80::1%eth0
nameserver not-an-ip
nameserver 10.0.0.2
;nameserver 10.9.9.9
  nameserver 192.0.2.53
options edns0 trust-ad
";
        assert_eq!(
            parse_resolv_conf(text),
            vec![addr("10.0.0.2:53"), addr("[2001:db8::53]:53"), addr("192.0.2.53:53")]
        );
    }

    #[test]
    fn host_upstreams_fall_back_to_systemd_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("resolv.conf");
        let real = dir.path().join("systemd.conf");
        std::fs::write(&stub, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        std::fs::write(&real, "nameserver 192.0.2.1\nnameserver 192.0.2.2\n").unwrap();
        assert_eq!(
            host_upstreams_from(&stub, &real),
            vec![addr("192.0.2.1:53"), addr("192.0.2.2:53")]
        );
        // The first file wins when it names a usable server.
        std::fs::write(&stub, "nameserver 198.51.100.1\n").unwrap();
        assert_eq!(host_upstreams_from(&stub, &real), vec![addr("198.51.100.1:53")]);
        // Neither file: nothing.
        assert!(host_upstreams_from(&dir.path().join("a"), &dir.path().join("b")).is_empty());
    }

    #[test]
    fn config_is_normalized_and_checked_naming_the_field() {
        let mut cfg = DnsConfig {
            bind: addr("10.88.0.1:53"),
            upstreams: vec![addr("192.0.2.1:53")],
            search_domains: vec!["Warren.".into(), ".svc.Example.org".into()],
            ttl: 5,
            upstream_timeout: Duration::from_secs(1),
        };
        assert_eq!(
            cfg.normalized().unwrap().search_domains,
            vec!["warren", "svc.example.org"]
        );

        cfg.search_domains = vec!["bad domain".into()];
        assert_eq!(
            cfg.normalized().unwrap_err().to_string(),
            "dns config search_domains: \"bad domain\": character ' ' cannot be in a DNS label"
        );
        cfg.search_domains = vec![];

        cfg.upstreams = vec![addr("10.88.0.1:53")];
        assert_eq!(
            cfg.normalized().unwrap_err().to_string(),
            "dns config upstreams: 10.88.0.1:53 is this server's own address: queries would loop"
        );
        cfg.upstreams = vec![addr("192.0.2.1:0")];
        assert_eq!(
            cfg.normalized().unwrap_err().to_string(),
            "dns config upstreams: 192.0.2.1:0 has port 0"
        );
        cfg.upstreams = vec![addr("0.0.0.0:53")];
        assert_eq!(
            cfg.normalized().unwrap_err().to_string(),
            "dns config upstreams: 0.0.0.0:53 is the unspecified address"
        );
        cfg.upstreams = vec![];
        cfg.upstream_timeout = Duration::ZERO;
        assert_eq!(
            cfg.normalized().unwrap_err().to_string(),
            "dns config upstream_timeout: must be more than zero"
        );
    }

    #[test]
    fn default_config_uses_the_documented_defaults() {
        let cfg = DnsConfig::new(addr("10.88.0.1:53"));
        assert_eq!(cfg.search_domains, vec!["warren"]);
        assert_eq!(cfg.ttl, 5);
        assert_eq!(cfg.upstream_timeout, Duration::from_secs(2));
        assert_eq!(cfg.upstreams, host_upstreams());
        assert!(cfg.upstreams.iter().all(|u| !u.ip().is_loopback()));
    }
}
