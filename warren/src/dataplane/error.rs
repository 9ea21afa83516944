//! Errors of the data plane: refusals at startup (naming what the kernel or the
//! system lacks), invalid services (naming the field) and failed BPF operations
//! (naming the program, map or pin).

use std::{io, path::PathBuf};

/// Everything the data plane can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("kernel {found} is too old: the data plane needs Linux 5.8 or later")]
    KernelTooOld { found: String },
    #[error("cannot read the kernel version: {0}")]
    KernelVersion(String),
    #[error(
        "the bpf() system call does not work ({0}); the data plane needs CONFIG_BPF_SYSCALL and CAP_BPF/CAP_SYS_ADMIN"
    )]
    BpfSyscall(#[source] io::Error),
    #[error("kernel BTF is missing: {path} does not exist (the data plane needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    BtfMissing { path: PathBuf },
    #[error("bpffs is not mounted at {path} and mounting it failed: {source}")]
    BpffsMount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pin directory {path} is not on a bpf filesystem (bpffs)")]
    NotBpffs { path: PathBuf },
    #[error("cgroup root {path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("interface {iface} does not exist")]
    NoSuchInterface { iface: String },
    #[error("invalid data plane config: {field}: {problem}")]
    InvalidConfig { field: &'static str, problem: String },
    #[error("invalid service {service}: {field}: {problem}")]
    InvalidService {
        /// The service's name (or `#<index>` when it has none).
        service: String,
        /// The field, e.g. `ports[1].published`.
        field: String,
        problem: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("loading eBPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {program}: {detail}")]
    Program { program: String, detail: String },
    #[error(
        "pinned map {path} does not match this version's layout ({detail}); run the data plane cleanup to remove it"
    )]
    IncompatiblePin { path: PathBuf, detail: String },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {map} is missing from the loaded object")]
    MissingMap { map: &'static str },
    #[error("link {path}: {detail}")]
    Link { path: PathBuf, detail: String },
    #[error("no free {what}: the limit is {limit}")]
    Exhausted { what: &'static str, limit: u32 },
}

impl DataplaneError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn map(map: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            map,
            source: Box::new(source),
        }
    }

    pub(crate) fn program(program: &str, detail: impl std::fmt::Display) -> Self {
        Self::Program {
            program: program.to_string(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn invalid(service: impl Into<String>, field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidService {
            service: service.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// An error and its sources on one line (aya's pin errors hide the errno in the
/// source).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The verifier log is the useful part of a load failure.
pub(crate) fn verifier_detail(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            format!("{io_error}; verifier log:\n{verifier_log}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_is_missing() {
        let e = DataplaneError::KernelTooOld { found: "5.4.0".into() };
        assert_eq!(
            e.to_string(),
            "kernel 5.4.0 is too old: the data plane needs Linux 5.8 or later"
        );
        let e = DataplaneError::BtfMissing {
            path: "/sys/kernel/btf/vmlinux".into(),
        };
        assert!(e.to_string().contains("/sys/kernel/btf/vmlinux does not exist"));
        assert!(e.to_string().contains("CONFIG_DEBUG_INFO_BTF"));
        let e = DataplaneError::invalid("web", "ports[1].published", "port 0 cannot be published");
        assert_eq!(
            e.to_string(),
            "invalid service web: ports[1].published: port 0 cannot be published"
        );
        let e = DataplaneError::NotCgroup2 { path: "/tmp".into() };
        assert_eq!(e.to_string(), "cgroup root /tmp is not a cgroup v2 directory");
    }
}
