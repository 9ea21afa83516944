//! The per-task `/etc/hosts` and `/etc/resolv.conf` files that a container runtime
//! bind-mounts into a task. Not the DNS server they point at, nor the mounts.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::NetworkError;

/// What goes into a task's resolv.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers, in order; Warren's own DNS listens on the node's bridge address.
    pub nameservers: Vec<IpAddr>,
    /// Search domains, e.g. `["warren.local"]`.
    pub search: Vec<String>,
    /// `options ndots:N`: names with fewer dots are tried with the search domains first.
    pub ndots: u8,
}

impl DnsConfig {
    /// One name server, no search domains, `ndots:0`.
    pub fn with_nameserver(ns: IpAddr) -> DnsConfig {
        DnsConfig {
            nameservers: vec![ns],
            search: Vec::new(),
            ndots: 0,
        }
    }
}

/// Where [`write_etc_files`] put the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

/// glibc and musl read at most three `nameserver` lines (MAXNS).
const MAX_NAMESERVERS: usize = 3;
/// glibc caps `ndots` at 15.
const MAX_NDOTS: u8 = 15;

/// An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn validate_dns_name(field: &'static str, name: &str) -> Result<(), NetworkError> {
    let bad = |why: &str| NetworkError::invalid(field, format!("{name:?} {why}"));
    if name.is_empty() || name.len() > 253 {
        return Err(bad("must be 1 to 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("has an empty label or one longer than 63 characters"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad("may only hold letters, digits, '-' and '.'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label that starts or ends with '-'"));
        }
    }
    Ok(())
}

/// The contents of a task's /etc/hosts.
pub fn hosts_content(hostname: &str, address: Ipv4Addr) -> String {
    format!(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         {address}\t{hostname}\n"
    )
}

/// The contents of a task's /etc/resolv.conf.
pub fn resolv_conf_content(dns: &DnsConfig) -> String {
    let mut s = String::new();
    for ns in &dns.nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.search.is_empty() {
        s.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    s.push_str(&format!("options ndots:{}\n", dns.ndots));
    s
}

fn validate(hostname: &str, dns: &DnsConfig) -> Result<(), NetworkError> {
    validate_dns_name("hostname", hostname)?;
    if dns.nameservers.is_empty() {
        return Err(NetworkError::invalid(
            "nameservers",
            "at least one is needed (Warren's DNS listens on the node's bridge address)",
        ));
    }
    if dns.nameservers.len() > MAX_NAMESERVERS {
        return Err(NetworkError::invalid(
            "nameservers",
            format!(
                "{} given, but resolvers read at most {MAX_NAMESERVERS}",
                dns.nameservers.len()
            ),
        ));
    }
    for d in &dns.search {
        validate_dns_name("search", d)?;
    }
    if dns.ndots > MAX_NDOTS {
        return Err(NetworkError::invalid(
            "ndots",
            format!("{} is above the resolver's maximum of {MAX_NDOTS}", dns.ndots),
        ));
    }
    Ok(())
}

/// Writes `dir/hosts` and `dir/resolv.conf` (mode 0644), creating `dir`. A file whose
/// contents are already right is left alone, so a runtime's existing bind mount of it
/// keeps seeing the same inode; otherwise it is replaced atomically (write + rename).
pub fn write_etc_files(
    dir: &Path,
    hostname: &str,
    address: Ipv4Addr,
    dns: &DnsConfig,
) -> Result<EtcFiles, NetworkError> {
    validate(hostname, dns)?;
    std::fs::create_dir_all(dir).map_err(|source| NetworkError::File {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = EtcFiles {
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
    };
    write_if_changed(&files.hosts, &hosts_content(hostname, address))?;
    write_if_changed(&files.resolv_conf, &resolv_conf_content(dns))?;
    Ok(files)
}

fn write_if_changed(path: &Path, content: &str) -> Result<(), NetworkError> {
    let file_err = |source| NetworkError::File {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok(());
    }
    let tmp = path.with_extension("warren-tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(e)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn dns() -> DnsConfig {
        DnsConfig {
            nameservers: vec!["10.88.3.1".parse().unwrap(), "1.1.1.1".parse().unwrap()],
            search: vec!["web.warren".into(), "warren".into()],
            ndots: 2,
        }
    }

    #[test]
    fn writes_hosts_and_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_etc_files(&dir.path().join("t1"), "web-1", Ipv4Addr::new(10, 88, 3, 7), &dns()).unwrap();
        let hosts = std::fs::read_to_string(&files.hosts).unwrap();
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
        assert!(hosts.ends_with("10.88.3.7\tweb-1\n"), "{hosts}");
        let resolv = std::fs::read_to_string(&files.resolv_conf).unwrap();
        assert_eq!(
            resolv,
            "nameserver 10.88.3.1\nnameserver 1.1.1.1\nsearch web.warren warren\noptions ndots:2\n"
        );
        let mode = std::fs::metadata(&files.hosts).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn unchanged_file_keeps_its_inode_and_changed_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ipv4Addr::new(10, 88, 3, 7);
        let f = write_etc_files(dir.path(), "web-1", a, &dns()).unwrap();
        let ino = std::fs::metadata(&f.hosts).unwrap().ino();
        write_etc_files(dir.path(), "web-1", a, &dns()).unwrap();
        assert_eq!(std::fs::metadata(&f.hosts).unwrap().ino(), ino);
        write_etc_files(dir.path(), "web-2", a, &dns()).unwrap();
        assert!(std::fs::read_to_string(&f.hosts)
            .unwrap()
            .ends_with("10.88.3.7\tweb-2\n"));
        assert!(!dir.path().join("hosts.warren-tmp").exists());
    }

    #[test]
    fn bad_input_names_the_field_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ipv4Addr::new(10, 88, 3, 7);
        let e = write_etc_files(dir.path(), "web_1", a, &dns()).unwrap_err();
        assert!(e.to_string().starts_with("invalid hostname: \"web_1\""), "{e}");
        let mut d = dns();
        d.nameservers.clear();
        let e = write_etc_files(dir.path(), "web", a, &d).unwrap_err();
        assert!(e.to_string().starts_with("invalid nameservers: at least one"), "{e}");
        let mut d = dns();
        d.nameservers = vec!["10.0.0.1".parse().unwrap(); 4];
        let e = write_etc_files(dir.path(), "web", a, &d).unwrap_err();
        assert!(e.to_string().starts_with("invalid nameservers: 4 given"), "{e}");
        let mut d = dns();
        d.search = vec!["-bad.example".into()];
        let e = write_etc_files(dir.path(), "web", a, &d).unwrap_err();
        assert!(e.to_string().starts_with("invalid search: \"-bad.example\""), "{e}");
        let mut d = dns();
        d.ndots = 16;
        let e = write_etc_files(dir.path(), "web", a, &d).unwrap_err();
        assert!(e.to_string().starts_with("invalid ndots: 16"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
