//! The container options of a service that `docker service create` spells as flags
//! (`--hostname`, `--init`, `--read-only`, `--cap-add`/`--cap-drop`, `--ulimit`,
//! `--sysctl`, `--limit-pids`, `--dns`), their parsing and validation, and Docker's
//! `--env-file` format. Not how a runtime applies them (`runtime::spec`).

use super::ValidationError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Every field defaults to "as before these options existed", so that specs written
/// by an older Warren (Raft entries, snapshots) load unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerOptions {
    /// Empty: the first 12 characters of the task ID.
    pub hostname: String,
    /// Run an init process (tini, catatonit) as PID 1 that reaps zombies and
    /// forwards signals to the command.
    pub init: bool,
    /// Mount the container's root filesystem read-only.
    pub read_only: bool,
    /// Canonical names (`CAP_NET_ADMIN`) or `ALL`, as [`parse_capability`] returns.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// By name, replacing the runtime's default of that resource.
    pub ulimits: Vec<Ulimit>,
    /// Namespaced kernel parameters only (see [`validate_sysctl`]).
    pub sysctls: BTreeMap<String, String>,
    /// Maximum number of processes in the container; 0 is unlimited.
    pub pids_limit: u64,
    /// Name servers of the task's resolv.conf; empty: Warren's resolver on the
    /// node (service names resolve), then the node's upstreams.
    pub dns: Vec<IpAddr>,
}

impl ContainerOptions {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !self.hostname.is_empty() {
            validate_hostname("hostname", &self.hostname)?;
        }
        for (field, caps) in [("cap-add", &self.cap_add), ("cap-drop", &self.cap_drop)] {
            for c in caps {
                let canonical = parse_capability(field, c)?;
                if canonical != *c {
                    return Err(ValidationError::new(
                        field,
                        format!("{c:?} must be spelled {canonical}"),
                    ));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for u in &self.ulimits {
            u.validate("ulimit")?;
            if !names.insert(u.name.as_str()) {
                return Err(ValidationError::new("ulimit", format!("{} is given twice", u.name)));
            }
        }
        for (k, v) in &self.sysctls {
            validate_sysctl("sysctl", k, v)?;
        }
        if self.pids_limit > i64::MAX as u64 {
            return Err(ValidationError::new("limit-pids", "is larger than the kernel accepts"));
        }
        if self.dns.len() > MAX_NAMESERVERS {
            return Err(ValidationError::new(
                "dns",
                format!(
                    "{} name servers given, but resolvers read at most {MAX_NAMESERVERS}",
                    self.dns.len()
                ),
            ));
        }
        Ok(())
    }
}

/// glibc and musl read at most three `nameserver` lines (MAXNS).
pub const MAX_NAMESERVERS: usize = 3;

/// Linux capabilities by bit number (`capability.h`, up to kernel 6.x).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `NET_ADMIN`, `cap_net_admin`, `CAP_NET_ADMIN` → `CAP_NET_ADMIN`; `all` → `ALL`.
pub fn parse_capability(field: &str, input: &str) -> Result<String, ValidationError> {
    let up = input.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(up);
    }
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if CAPABILITIES.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(ValidationError::new(
            field,
            format!("unknown capability {input:?}: use a Linux capability such as NET_ADMIN, or ALL"),
        ))
    }
}

/// Resources `--ulimit` can set (setrlimit(2)), by Docker's short names.
pub const ULIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// One resource limit; `u64::MAX` is unlimited (RLIM_INFINITY).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// One of [`ULIMITS`].
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

impl Ulimit {
    /// `NAME=SOFT[:HARD]` (Docker's spelling; `-1` or `unlimited` for no limit).
    pub fn parse(field: &str, input: &str) -> Result<Ulimit, ValidationError> {
        let bad = |why: &str| {
            ValidationError::new(
                field,
                format!("invalid ulimit {input:?}: {why} (expected NAME=SOFT[:HARD], e.g. nofile=1024:2048)"),
            )
        };
        let (name, limits) = input.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let value = |s: &str| match s.trim() {
            "-1" | "unlimited" => Some(u64::MAX),
            n => n.parse::<u64>().ok(),
        };
        let (soft, hard) = match limits.split_once(':') {
            Some((s, h)) => (
                value(s).ok_or_else(|| bad("the soft limit is not a number"))?,
                value(h).ok_or_else(|| bad("the hard limit is not a number"))?,
            ),
            None => {
                let v = value(limits).ok_or_else(|| bad("the limit is not a number"))?;
                (v, v)
            }
        };
        let u = Ulimit {
            name: name.trim().to_ascii_lowercase(),
            soft,
            hard,
        };
        u.validate(field)?;
        Ok(u)
    }

    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if !ULIMITS.contains(&self.name.as_str()) {
            return Err(ValidationError::new(
                field,
                format!("unknown ulimit {:?}: use one of {}", self.name, ULIMITS.join(", ")),
            ));
        }
        if self.soft > self.hard {
            return Err(ValidationError::new(
                field,
                format!(
                    "{}: the soft limit {} is above the hard limit {}",
                    self.name, self.soft, self.hard
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Ulimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |n: u64| {
            if n == u64::MAX {
                "unlimited".to_string()
            } else {
                n.to_string()
            }
        };
        write!(f, "{}={}:{}", self.name, v(self.soft), v(self.hard))
    }
}

/// Kernel parameters that belong to the task's own IPC or network namespace, so
/// setting them cannot change the node (as Docker and runc allow them).
const SYSCTL_IPC: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// A namespaced sysctl (dotted, as [`parse_sysctl`] returns it) with a value.
pub fn validate_sysctl(field: &str, key: &str, value: &str) -> Result<(), ValidationError> {
    let ok_chars = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !key.split('.').any(str::is_empty);
    if !ok_chars {
        return Err(ValidationError::new(field, format!("invalid sysctl name {key:?}")));
    }
    let namespaced =
        SYSCTL_IPC.contains(&key) || key.starts_with("fs.mqueue.") || (key.starts_with("net.") && key.len() > 4);
    if !namespaced {
        return Err(ValidationError::new(
            field,
            format!(
                "{key} is not namespaced: only net.*, fs.mqueue.* and the IPC parameters \
                 ({}) can be set per task",
                SYSCTL_IPC.join(", ")
            ),
        ));
    }
    if value.trim().is_empty() || value.contains('\n') {
        return Err(ValidationError::new(
            field,
            format!("{key}: the value must be one non-empty line"),
        ));
    }
    Ok(())
}

/// `--sysctl KEY=VALUE`, validated; `/` separators are read as `.`.
pub fn parse_sysctl(field: &str, input: &str) -> Result<(String, String), ValidationError> {
    let (k, v) = input
        .split_once('=')
        .ok_or_else(|| ValidationError::new(field, format!("invalid {input:?}: expected KEY=VALUE")))?;
    let k = k.trim().replace('/', ".");
    validate_sysctl(field, &k, v)?;
    Ok((k, v.to_string()))
}

/// `--dns ADDRESS`.
pub fn parse_dns(field: &str, input: &str) -> Result<IpAddr, ValidationError> {
    input
        .trim()
        .parse::<IpAddr>()
        .map_err(|_| ValidationError::new(field, format!("invalid name server {input:?}: expected an IP address")))
}

/// An RFC 1123 host name that fits the kernel's 64 bytes.
pub fn validate_hostname(field: &str, name: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| ValidationError::new(field, format!("invalid host name {name:?}: {why}"));
    if name.is_empty() || name.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
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

/// Docker's `--env-file` format: one `KEY=VALUE` per line, taken as written (no
/// quotes removed); blank lines and lines starting with `#` are skipped; a line
/// with only `KEY` takes the value of `KEY` from `lookup` (the CLI's environment)
/// and is skipped when it is unset. Returns `KEY=VALUE` strings in file order.
pub fn parse_env_file(
    field: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ValidationError> {
    let mut out = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line.trim_end(), None),
        };
        if key.is_empty() {
            return Err(ValidationError::new(
                field,
                format!("line {}: no variable name before '='", i + 1),
            ));
        }
        if key.chars().any(char::is_whitespace) {
            return Err(ValidationError::new(
                field,
                format!("line {}: variable name {key:?} contains whitespace", i + 1),
            ));
        }
        match value {
            Some(v) => out.push(format!("{key}={v}")),
            None => {
                if let Some(v) = lookup(key) {
                    out.push(format!("{key}={v}"));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_normalized_and_unknown_ones_refused() {
        assert_eq!(parse_capability("cap-add", "net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(parse_capability("cap-add", "CAP_SYS_TIME").unwrap(), "CAP_SYS_TIME");
        assert_eq!(parse_capability("cap-drop", "all").unwrap(), "ALL");
        let e = parse_capability("cap-add", "NET_WIZARD").unwrap_err();
        assert_eq!(e.field, "cap-add");
        assert!(e.message.contains("unknown capability \"NET_WIZARD\""), "{e}");
        assert_eq!(CAPABILITIES[12], "CAP_NET_ADMIN");
        assert_eq!(CAPABILITIES[40], "CAP_CHECKPOINT_RESTORE");
    }

    #[test]
    fn ulimits_parse_docker_spellings() {
        let u = Ulimit::parse("ulimit", "nofile=1024:2048").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 2048));
        assert_eq!(u.to_string(), "nofile=1024:2048");
        let u = Ulimit::parse("ulimit", "nproc=100").unwrap();
        assert_eq!((u.soft, u.hard), (100, 100));
        let u = Ulimit::parse("ulimit", "memlock=-1:-1").unwrap();
        assert_eq!((u.soft, u.hard), (u64::MAX, u64::MAX));
        assert_eq!(u.to_string(), "memlock=unlimited:unlimited");
        for bad in ["nofile", "nofile=lots", "nofile=2048:1024", "files=1:2", "nofile=1:x"] {
            let e = Ulimit::parse("ulimit", bad).unwrap_err();
            assert_eq!(e.field, "ulimit", "{bad}");
        }
        assert!(Ulimit::parse("ulimit", "nofile=2048:1024")
            .unwrap_err()
            .message
            .contains("soft limit 2048 is above the hard limit 1024"));
    }

    #[test]
    fn only_namespaced_sysctls_pass() {
        assert_eq!(
            parse_sysctl("sysctl", "net.ipv4.ip_unprivileged_port_start=80").unwrap(),
            ("net.ipv4.ip_unprivileged_port_start".to_string(), "80".to_string())
        );
        assert_eq!(
            parse_sysctl("sysctl", "net/core/somaxconn=512").unwrap().0,
            "net.core.somaxconn"
        );
        parse_sysctl("sysctl", "kernel.shmmax=1000000").unwrap();
        parse_sysctl("sysctl", "fs.mqueue.msg_max=20").unwrap();
        for bad in [
            "kernel.pid_max=100",
            "vm.swappiness=1",
            "kernel.hostname=x",
            "net.=1",
            "net.ipv4..x=1",
            "net.core.somaxconn=",
            "noequals",
        ] {
            let e = parse_sysctl("sysctl", bad).unwrap_err();
            assert_eq!(e.field, "sysctl", "{bad}");
        }
        assert!(parse_sysctl("sysctl", "vm.swappiness=1")
            .unwrap_err()
            .message
            .contains("vm.swappiness is not namespaced"));
    }

    #[test]
    fn env_files_read_as_docker_does() {
        let text = "\u{feff}# comment\nA=1\n\n  B=two words \nC=\"quoted\"\nFROM_ENV\nUNSET\nD=x=y\n";
        let env = parse_env_file("env-file", text, |k| (k == "FROM_ENV").then(|| "here".to_string())).unwrap();
        assert_eq!(env, ["A=1", "B=two words ", "C=\"quoted\"", "FROM_ENV=here", "D=x=y"]);
        let e = parse_env_file("env-file", "A=1\nBAD KEY=2\n", |_| None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "env-file: line 2: variable name \"BAD KEY\" contains whitespace"
        );
        assert!(parse_env_file("env-file", "=x\n", |_| None).is_err());
    }

    #[test]
    fn options_validate_with_their_field() {
        let ok = ContainerOptions {
            hostname: "web-1.example".into(),
            cap_add: vec!["CAP_NET_ADMIN".into()],
            ulimits: vec![Ulimit::parse("u", "nofile=10:20").unwrap()],
            sysctls: [("net.core.somaxconn".to_string(), "64".to_string())].into(),
            dns: vec!["1.1.1.1".parse().unwrap()],
            ..Default::default()
        };
        ok.validate().unwrap();
        type Mutation = Box<dyn Fn(&mut ContainerOptions)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|o| o.hostname = "bad_host".into()), "hostname"),
            (Box::new(|o| o.hostname = "a".repeat(65)), "hostname"),
            (Box::new(|o| o.cap_drop = vec!["CAP_NOPE".into()]), "cap-drop"),
            (Box::new(|o| o.cap_add = vec!["net_admin".into()]), "cap-add"),
            (Box::new(|o| o.ulimits.push(o.ulimits[0].clone())), "ulimit"),
            (
                Box::new(|o| {
                    o.sysctls.insert("kernel.panic".into(), "1".into());
                }),
                "sysctl",
            ),
            (Box::new(|o| o.pids_limit = u64::MAX), "limit-pids"),
            (Box::new(|o| o.dns = vec![o.dns[0]; 4]), "dns"),
        ];
        for (mutate, field) in cases {
            let mut o = ok.clone();
            mutate(&mut o);
            assert_eq!(o.validate().unwrap_err().field, field);
        }
        assert_eq!(parse_dns("dns", "8.8.8.8").unwrap().to_string(), "8.8.8.8");
        assert_eq!(parse_dns("dns", "dns.google").unwrap_err().field, "dns");
    }

    #[test]
    fn old_specs_load_with_the_defaults() {
        let o: ContainerOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(o, ContainerOptions::default());
        let o: ContainerOptions = serde_json::from_str(r#"{"init":true}"#).unwrap();
        assert!(o.init && o.cap_add.is_empty());
    }
}
