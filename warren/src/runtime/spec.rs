//! The OCI runtime spec of a container, built from the image config and a
//! [`ContainerSpec`] the way containerd's `oci.WithImageConfig` & co. do (defaults of
//! `populateDefaultUnixSpec`), plus user resolution against the image's
//! `/etc/passwd` and `/etc/group`. Pure functions; no containerd calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::error::RuntimeError;
use super::image::ImageConfig;
use super::{ContainerSpec, MountSpec, NetworkMode, INIT_TARGET};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set (as Docker's).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows, by bit number (`capability.h`, up to 6.x), for
/// `ALL`. The model's list of the names users may write is the same (a worker test
/// checks).
pub const ALL_CAPS: &[&str] = &[
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

/// A resolved process identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

fn invalid(field: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Checks a container id the way containerd's identifiers package does.
pub fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "id",
            format!("{id:?} must be 1-76 letters, digits and ._- starting and ending with a letter or digit"),
        ))
    }
}

/// Validates everything in a spec that does not need the image.
pub fn validate(spec: &ContainerSpec) -> Result<(), RuntimeError> {
    validate_id(&spec.id)?;
    if spec.image.trim().is_empty() {
        return Err(invalid("image", "must not be empty"));
    }
    for (k, _) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(invalid(
                &format!("env[{k:?}]"),
                "variable names must be non-empty without '='",
            ));
        }
    }
    if let Some(c) = &spec.command {
        if c.is_empty() {
            return Err(invalid(
                "command",
                "must not be an empty list (leave it unset to use the image's)",
            ));
        }
    }
    if let Some(w) = &spec.workdir {
        if !w.starts_with('/') {
            return Err(invalid("workdir", format!("{w:?} must be an absolute path")));
        }
    }
    if let Some(h) = &spec.hostname {
        let ok = !h.is_empty() && h.len() <= 64 && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
        if !ok {
            return Err(invalid("hostname", format!("{h:?} is not a valid host name")));
        }
    }
    if let NetworkMode::Join(p) = &spec.network {
        if !p.is_absolute() {
            return Err(invalid(
                "network",
                format!("netns path {} must be absolute", p.display()),
            ));
        }
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        let target = m.target();
        if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
            return Err(invalid(
                &format!("mounts[{i}].target"),
                format!("{target:?} must be an absolute path without '..'"),
            ));
        }
        if let MountSpec::Bind { source, .. } = m {
            if !source.is_absolute() {
                return Err(invalid(
                    &format!("mounts[{i}].source"),
                    format!("{} must be an absolute path", source.display()),
                ));
            }
        }
    }
    for (field, p) in [("hosts_file", &spec.hosts_file), ("resolv_conf", &spec.resolv_conf)] {
        if let Some(p) = p {
            if !p.is_absolute() {
                return Err(invalid(field, format!("{} must be an absolute path", p.display())));
            }
        }
    }
    if let Some(c) = spec.resources.cpus {
        if !(c > 0.0 && c.is_finite()) {
            return Err(invalid("resources.cpus", format!("{c} must be a positive number")));
        }
    }
    if spec.resources.memory_bytes == Some(0) {
        return Err(invalid("resources.memory_bytes", "must be positive"));
    }
    if spec.resources.memory_bytes.is_some_and(|m| m < 6 << 20) {
        return Err(invalid("resources.memory_bytes", "must be at least 6 MiB"));
    }
    for (field, caps) in [("cap_add", &spec.cap_add), ("cap_drop", &spec.cap_drop)] {
        for c in caps {
            if c != "ALL" && !ALL_CAPS.contains(&c.as_str()) {
                return Err(invalid(field, format!("unknown capability {c:?}")));
            }
        }
    }
    for r in &spec.rlimits {
        let known = r
            .kind
            .strip_prefix("RLIMIT_")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_uppercase()));
        if !known {
            return Err(invalid("rlimits", format!("{:?} is not an RLIMIT_ name", r.kind)));
        }
        if r.soft > r.hard {
            return Err(invalid(
                "rlimits",
                format!("{}: soft limit {} above hard limit {}", r.kind, r.soft, r.hard),
            ));
        }
    }
    for (k, v) in &spec.sysctls {
        if k.is_empty() || k.contains(['=', '\n', ' ']) || v.contains('\n') {
            return Err(invalid("sysctls", format!("{k:?}={v:?} is not one KEY=VALUE line")));
        }
    }
    Ok(())
}

/// The first of `candidates` that exists on the node, for `init`.
pub fn find_init(candidates: &[&str]) -> Result<PathBuf, RuntimeError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| RuntimeError::NoInitBinary {
            tried: candidates.iter().map(|c| c.to_string()).collect(),
        })
}

/// Docker's rules (moby's `TweakCapabilities`): `ALL` added is every capability
/// but the dropped ones; `ALL` dropped is only the added ones; otherwise the
/// defaults less the dropped, plus the added.
pub fn capabilities(spec: &ContainerSpec) -> Vec<String> {
    let has_all = |v: &[String]| v.iter().any(|c| c == "ALL");
    let mut caps: Vec<String> = if has_all(&spec.cap_add) {
        ALL_CAPS
            .iter()
            .filter(|c| !spec.cap_drop.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .collect()
    } else if has_all(&spec.cap_drop) {
        spec.cap_add.clone()
    } else {
        DEFAULT_CAPS
            .iter()
            .filter(|c| !spec.cap_drop.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .chain(spec.cap_add.iter().cloned())
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    caps.retain(|c| seen.insert(c.clone()));
    caps
}

/// containerd's default `RLIMIT_NOFILE` of 1024, each replaced by the spec's own.
fn rlimits(spec: &ContainerSpec) -> Vec<Value> {
    let mut out = vec![];
    if !spec.rlimits.iter().any(|r| r.kind == "RLIMIT_NOFILE") {
        out.push(json!({"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}));
    }
    out.extend(
        spec.rlimits
            .iter()
            .map(|r| json!({"type": r.kind, "hard": r.hard, "soft": r.soft})),
    );
    out
}

/// Process arguments: Docker's rules for ENTRYPOINT/CMD overrides.
pub fn process_args(spec: &ContainerSpec, image: &ImageConfig) -> Result<Vec<String>, RuntimeError> {
    let args = match (&spec.command, &spec.args) {
        (Some(cmd), Some(args)) => cmd.iter().chain(args).cloned().collect(),
        // Overriding the entrypoint drops the image's CMD.
        (Some(cmd), None) => cmd.clone(),
        (None, Some(args)) => image.entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect::<Vec<_>>(),
    };
    if args.is_empty() {
        return Err(invalid("command", "neither the spec nor the image says what to run"));
    }
    Ok(args)
}

/// Image env overlaid with the spec's (by name), with a default PATH.
pub fn process_env(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    let mut order: Vec<String> = vec![];
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        if !values.contains_key(k) {
            order.push(k.to_string());
        }
        values.insert(k.to_string(), v.to_string());
    };
    for e in &image.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v);
    }
    for (k, v) in &spec.env {
        set(k, v);
    }
    if !values.contains_key("PATH") {
        let (k, v) = DEFAULT_PATH.split_once('=').expect("has =");
        order.insert(0, k.to_string());
        values.insert(k.to_string(), v.to_string());
    }
    if let Some(h) = &spec.hostname {
        if !values.contains_key("HOSTNAME") {
            order.push("HOSTNAME".into());
            values.insert("HOSTNAME".into(), h.clone());
        }
    }
    order.into_iter().map(|k| format!("{k}={}", values[&k])).collect()
}

/// Why `user[:group]` does not resolve in an image.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("bad uid for {0} in /etc/passwd")]
    BadUid(String),
    #[error("no user {0:?} in the image's /etc/passwd")]
    NoUser(String),
    #[error("no group {0:?} in the image's /etc/group")]
    NoGroup(String),
}

/// Resolves `user[:group]` (names or numbers) against passwd/group file contents.
pub fn resolve_user(user: &str, passwd: Option<&str>, group: Option<&str>) -> Result<User, UserError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd_entries: Vec<Vec<&str>> = passwd
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let group_entries: Vec<Vec<&str>> = group
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let entry = if let Ok(uid) = u.parse::<u32>() {
        passwd_entries.iter().find(|f| f[2].parse() == Ok(uid))
    } else {
        passwd_entries.iter().find(|f| f[0] == u)
    };
    let uid = match (u.parse::<u32>(), entry) {
        (Ok(n), _) => n,
        (Err(_), Some(e)) => e[2].parse().map_err(|_| UserError::BadUid(u.to_string()))?,
        (Err(_), None) => return Err(UserError::NoUser(u.to_string())),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| UserError::NoGroup(g.to_string()))?,
        },
        None => entry.and_then(|e| e[3].parse().ok()).unwrap_or(0),
    };
    let mut additional_gids = vec![];
    if g.is_none() {
        if let Some(name) = entry.map(|e| e[0]) {
            for f in &group_entries {
                let members = f.get(3).copied().unwrap_or("");
                if members.split(',').any(|m| m == name) {
                    if let Ok(n) = f[2].parse::<u32>() {
                        if n != gid && !additional_gids.contains(&n) {
                            additional_gids.push(n);
                        }
                    }
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// Whether resolving `user` needs the image's files.
pub fn needs_lookup(user: &str) -> bool {
    match user.split_once(':') {
        Some((u, g)) => u.parse::<u32>().is_err() || g.parse::<u32>().is_err(),
        None => !user.is_empty(),
    }
}

/// Reads `/etc/<name>` of a rootfs described by overlay/bind mounts, without
/// mounting: the topmost lower layer that has the file wins, as overlayfs would.
pub fn read_rootfs_file(mounts: &[(String, String, Vec<String>)], rel: &str) -> Option<String> {
    let mut dirs: Vec<PathBuf> = vec![];
    for (kind, source, options) in mounts {
        if kind == "overlay" {
            for o in options {
                if let Some(u) = o.strip_prefix("upperdir=") {
                    dirs.insert(0, PathBuf::from(u));
                }
            }
            for o in options {
                if let Some(l) = o.strip_prefix("lowerdir=") {
                    dirs.extend(l.split(':').map(PathBuf::from));
                }
            }
        } else if kind == "bind" || options.iter().any(|o| o == "bind" || o == "rbind") {
            dirs.push(PathBuf::from(source));
        }
    }
    for d in dirs {
        let p = d.join(rel);
        match std::fs::symlink_metadata(&p) {
            // A 0/0 character device is an overlay whiteout: the file was deleted.
            Ok(m) if is_whiteout(&m) => return None,
            Ok(_) => return std::fs::read_to_string(&p).ok(),
            Err(_) => continue,
        }
    }
    None
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Everything the spec needs beyond the [`ContainerSpec`].
pub struct SpecInputs<'a> {
    pub image: &'a ImageConfig,
    pub user: User,
    pub cgroup_parent: &'a str,
    /// The node's init binary when the spec asks for `init` ([`find_init`]).
    pub init_binary: Option<&'a Path>,
}

/// Builds the runtime spec (JSON) of a container.
pub fn build(spec: &ContainerSpec, inputs: &SpecInputs<'_>) -> Result<Value, RuntimeError> {
    validate(spec)?;
    let mut args = process_args(spec, inputs.image)?;
    if spec.init {
        // Docker's way: the init runs the command as its child, reaps zombies and
        // forwards signals.
        args.splice(0..0, [INIT_TARGET.to_string(), "--".to_string()]);
    }
    let env = process_env(spec, inputs.image);
    let cwd = spec
        .workdir
        .clone()
        .or_else(|| inputs.image.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    let parent = inputs.cgroup_parent.trim_end_matches('/');
    if !parent.is_empty() && !parent.starts_with('/') {
        return Err(invalid(
            "cgroup_parent",
            format!("{parent:?} must be an absolute cgroup path"),
        ));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    let bind = |src: &Path, dst: &str, ro: bool| {
        let mut options = vec!["rbind", "rprivate"];
        if ro {
            options.push("ro");
        }
        json!({"destination": dst, "type": "bind", "source": src, "options": options})
    };
    if let Some(h) = &spec.hosts_file {
        mounts.push(bind(h, "/etc/hosts", false));
    }
    if let Some(r) = &spec.resolv_conf {
        mounts.push(bind(r, "/etc/resolv.conf", false));
    }
    if spec.init {
        let init = inputs
            .init_binary
            .ok_or_else(|| invalid("init", "no init binary was found for the container"))?;
        mounts.push(bind(init, INIT_TARGET, true));
    }
    // Parents before children, whatever order the caller listed them in.
    let mut user_mounts: Vec<&MountSpec> = spec.mounts.iter().collect();
    user_mounts.sort_by_key(|m| m.target().trim_end_matches('/').matches('/').count());
    for m in user_mounts {
        match m {
            MountSpec::Bind {
                source,
                target,
                read_only,
            } => mounts.push(bind(source, target, *read_only)),
            MountSpec::Tmpfs {
                target,
                size_bytes,
                mode,
            } => {
                let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                if let Some(s) = size_bytes {
                    options.push(format!("size={s}"));
                }
                if let Some(m) = mode {
                    options.push(format!("mode={m:o}"));
                }
                mounts.push(json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options}));
            }
        }
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match &spec.network {
        NetworkMode::Host => {}
        NetworkMode::None => namespaces.push(json!({"type": "network"})),
        NetworkMode::Join(p) => namespaces.push(json!({"type": "network", "path": p})),
    }
    let mut resources = json!({
        "devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"},
        ]
    });
    if let Some(m) = spec.resources.memory_bytes {
        resources["memory"] = json!({"limit": m});
    }
    if let Some(c) = spec.resources.cpus {
        let period: u64 = 100_000;
        resources["cpu"] = json!({"quota": (c * period as f64).round() as i64, "period": period});
    }
    if let Some(p) = spec.resources.pids_limit {
        resources["pids"] = json!({"limit": p});
    }
    let caps = capabilities(spec);
    let mut user = json!({"uid": inputs.user.uid, "gid": inputs.user.gid});
    if !inputs.user.additional_gids.is_empty() {
        user["additionalGids"] = json!(inputs.user.additional_gids);
    }
    let mut s = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": user,
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": rlimits(spec),
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": spec.read_only_rootfs},
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("{parent}/{}", spec.id),
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some(h) = &spec.hostname {
        s["hostname"] = json!(h);
    }
    if !spec.sysctls.is_empty() {
        s["linux"]["sysctl"] = json!(spec.sysctls);
    }
    Ok(s)
}

/// The process spec of an exec: the container's process with other args.
pub fn exec_process(container_spec: &Value, args: &[String]) -> Value {
    let mut p = container_spec.get("process").cloned().unwrap_or_else(|| json!({}));
    p["args"] = json!(args);
    p["terminal"] = json!(false);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Resources;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "web.1".into(),
            image: "127.0.0.1:5000/warren-test/http:1".into(),
            ..Default::default()
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/serve".into()],
            cmd: vec!["--port".into(), "80".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: Some("/srv".into()),
            ..Default::default()
        }
    }

    fn inputs(image: &ImageConfig) -> SpecInputs<'_> {
        SpecInputs {
            image,
            user: User::default(),
            cgroup_parent: "/warren/node1",
            init_binary: None,
        }
    }

    #[test]
    fn docker_override_rules() {
        let img = image();
        let mut s = spec();
        assert_eq!(process_args(&s, &img).unwrap(), ["/bin/serve", "--port", "80"]);
        s.args = Some(vec!["--port".into(), "81".into()]);
        assert_eq!(process_args(&s, &img).unwrap(), ["/bin/serve", "--port", "81"]);
        s.args = None;
        s.command = Some(vec!["/bin/sh".into()]);
        assert_eq!(process_args(&s, &img).unwrap(), ["/bin/sh"]);
        s.args = Some(vec!["-c".into(), "true".into()]);
        assert_eq!(process_args(&s, &img).unwrap(), ["/bin/sh", "-c", "true"]);
        let e = process_args(&spec(), &ImageConfig::default()).unwrap_err();
        assert!(e.to_string().contains("command"), "{e}");
    }

    #[test]
    fn env_overrides_by_name_and_adds_path() {
        let mut s = spec();
        s.env = vec![("A".into(), "spec".into()), ("B".into(), "2".into())];
        s.hostname = Some("web-1".into());
        assert_eq!(
            process_env(&s, &image()),
            ["PATH=/bin", "A=spec", "B=2", "HOSTNAME=web-1"]
        );
        let env = process_env(&spec(), &ImageConfig::default());
        assert_eq!(env, [DEFAULT_PATH]);
    }

    #[test]
    fn builds_spec_with_limits_mounts_and_netns() {
        let img = image();
        let mut s = spec();
        s.hostname = Some("web-1".into());
        s.network = NetworkMode::Join("/var/run/netns/t1".into());
        s.resources = Resources {
            cpus: Some(0.5),
            memory_bytes: Some(64 << 20),
            pids_limit: Some(100),
        };
        s.mounts = vec![
            MountSpec::Tmpfs {
                target: "/data/tmp".into(),
                size_bytes: Some(1 << 20),
                mode: Some(0o1777),
            },
            MountSpec::Bind {
                source: "/srv/data".into(),
                target: "/data".into(),
                read_only: true,
            },
        ];
        s.hosts_file = Some("/run/warren/web.1/hosts".into());
        let v = build(&s, &inputs(&img)).unwrap();
        assert_eq!(v["hostname"], "web-1");
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(v["linux"]["cgroupsPath"], "/warren/node1/web.1");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/var/run/netns/t1"})));
        let mounts = v["mounts"].as_array().unwrap();
        let dests: Vec<&str> = mounts.iter().map(|m| m["destination"].as_str().unwrap()).collect();
        let data = dests.iter().position(|d| *d == "/data").unwrap();
        let tmp = dests.iter().position(|d| *d == "/data/tmp").unwrap();
        assert!(data < tmp, "parent mount first: {dests:?}");
        assert_eq!(mounts[data]["options"], json!(["rbind", "rprivate", "ro"]));
        assert_eq!(
            mounts[tmp]["options"],
            json!(["nosuid", "nodev", "size=1048576", "mode=1777"])
        );
        assert!(dests.contains(&"/etc/hosts"));
    }

    #[test]
    fn host_network_has_no_netns() {
        let img = image();
        let mut s = spec();
        s.network = NetworkMode::Host;
        let v = build(&s, &inputs(&img)).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
    }

    #[test]
    fn bad_fields_are_named() {
        let img = image();
        type Mutation = Box<dyn Fn(&mut ContainerSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.id = "-bad".into()), "id"),
            (Box::new(|s| s.workdir = Some("rel".into())), "workdir"),
            (Box::new(|s| s.env = vec![("A=B".into(), "x".into())]), "env[\"A=B\"]"),
            (
                Box::new(|s| {
                    s.mounts = vec![MountSpec::Tmpfs {
                        target: "tmp".into(),
                        size_bytes: None,
                        mode: None,
                    }]
                }),
                "mounts[0].target",
            ),
            (Box::new(|s| s.resources.cpus = Some(0.0)), "resources.cpus"),
            (Box::new(|s| s.hostname = Some("bad host".into())), "hostname"),
            (Box::new(|s| s.command = Some(vec![])), "command"),
        ];
        for (mutate, field) in cases {
            let mut s = spec();
            mutate(&mut s);
            let e = build(&s, &inputs(&img)).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("invalid container spec: {field}: ")),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn resolves_users() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwarren:x:1000:1000::/home/warren:/bin/sh\n";
        let group = "root:x:0:\nwarren:x:1000:\nextra:x:2000:warren,other\n";
        let u = resolve_user("warren", Some(passwd), Some(group)).unwrap();
        assert_eq!(
            u,
            User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![2000]
            }
        );
        let u = resolve_user("1000", Some(passwd), Some(group)).unwrap();
        assert_eq!(u.gid, 1000);
        let u = resolve_user("warren:extra", Some(passwd), Some(group)).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 2000));
        let u = resolve_user("4242:4243", None, None).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 4243));
        let u = resolve_user("4242", Some(passwd), None).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        let e = resolve_user("nobody", Some(passwd), Some(group))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no user \"nobody\""), "{e}");
        assert!(!needs_lookup("1:2"));
        assert!(needs_lookup("1"));
        assert!(needs_lookup("warren"));
    }

    #[test]
    fn reads_files_through_overlay_layers() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let bottom = dir.path().join("bottom");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "old").unwrap();
        std::fs::write(bottom.join("etc/group"), "g").unwrap();
        std::fs::write(top.join("etc/passwd"), "new").unwrap();
        let mounts = vec![(
            "overlay".to_string(),
            "overlay".to_string(),
            vec![format!("lowerdir={}:{}", top.display(), bottom.display())],
        )];
        assert_eq!(read_rootfs_file(&mounts, "etc/passwd").as_deref(), Some("new"));
        assert_eq!(read_rootfs_file(&mounts, "etc/group").as_deref(), Some("g"));
        assert_eq!(read_rootfs_file(&mounts, "etc/shadow"), None);
    }

    #[test]
    fn exec_keeps_container_identity() {
        let img = image();
        let mut s = spec();
        s.env = vec![("X".into(), "1".into())];
        let v = build(&s, &inputs(&img)).unwrap();
        let p = exec_process(&v, &["id".to_string()]);
        assert_eq!(p["args"], json!(["id"]));
        assert_eq!(p["cwd"], "/srv");
        assert!(p["env"].as_array().unwrap().contains(&json!("X=1")));
    }

    #[test]
    fn swarm_container_options_reach_the_oci_spec() {
        let img = image();
        let mut s = spec();
        s.read_only_rootfs = true;
        s.cap_add = vec!["CAP_NET_ADMIN".into()];
        s.cap_drop = vec!["CAP_NET_RAW".into(), "CAP_MKNOD".into()];
        s.rlimits = vec![
            crate::runtime::Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 2048,
            },
            crate::runtime::Rlimit {
                kind: "RLIMIT_NPROC".into(),
                soft: 64,
                hard: 64,
            },
        ];
        s.sysctls = [("net.core.somaxconn".to_string(), "512".to_string())].into();
        s.resources.pids_limit = Some(50);
        s.init = true;
        let init = Path::new("/usr/bin/tini-static");
        let v = build(
            &s,
            &SpecInputs {
                init_binary: Some(init),
                ..inputs(&img)
            },
        )
        .unwrap();
        assert_eq!(v["root"]["readonly"], true);
        let caps: Vec<&str> = v["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(
            caps.contains(&"CAP_NET_ADMIN") && caps.contains(&"CAP_CHOWN"),
            "{caps:?}"
        );
        assert!(
            !caps.contains(&"CAP_NET_RAW") && !caps.contains(&"CAP_MKNOD"),
            "{caps:?}"
        );
        assert_eq!(
            v["process"]["capabilities"]["bounding"],
            v["process"]["capabilities"]["effective"]
        );
        // The spec's nofile replaces the default one; nothing else is doubled.
        assert_eq!(
            v["process"]["rlimits"],
            json!([
                {"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024},
                {"type": "RLIMIT_NPROC", "hard": 64, "soft": 64}
            ])
        );
        assert_eq!(v["linux"]["sysctl"], json!({"net.core.somaxconn": "512"}));
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 50);
        // The init runs the command; its binary is bind-mounted read-only.
        assert_eq!(
            v["process"]["args"],
            json!([INIT_TARGET, "--", "/bin/serve", "--port", "80"])
        );
        let init_mount = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == INIT_TARGET)
            .expect("the init binary is mounted");
        assert_eq!(init_mount["source"], "/usr/bin/tini-static");
        assert_eq!(init_mount["options"], json!(["rbind", "rprivate", "ro"]));

        // Without options: containerd's defaults, no sysctl key, no init.
        let v = build(&spec(), &inputs(&img)).unwrap();
        assert_eq!(
            v["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        assert_eq!(v["process"]["capabilities"]["effective"], json!(DEFAULT_CAPS));
        assert!(v["linux"].get("sysctl").is_none());
        assert_eq!(v["process"]["args"][0], "/bin/serve");
        // init asked for but no binary found: refused, naming the field.
        let e = build(&s, &inputs(&img)).unwrap_err();
        assert!(e.to_string().starts_with("invalid container spec: init: "), "{e}");
    }

    #[test]
    fn all_and_drop_follow_dockers_rules() {
        let caps = |add: &[&str], drop: &[&str]| {
            let mut s = spec();
            s.cap_add = add.iter().map(|c| c.to_string()).collect();
            s.cap_drop = drop.iter().map(|c| c.to_string()).collect();
            capabilities(&s)
        };
        assert_eq!(caps(&["ALL"], &["CAP_SYS_ADMIN"]).len(), ALL_CAPS.len() - 1);
        assert_eq!(caps(&["CAP_NET_ADMIN"], &["ALL"]), ["CAP_NET_ADMIN"]);
        assert!(caps(&[], &["ALL"]).is_empty());
        // Added wins over dropped; no duplicates.
        let c = caps(&["CAP_CHOWN", "CAP_KILL"], &["CAP_CHOWN"]);
        assert_eq!(c.iter().filter(|x| *x == "CAP_CHOWN").count(), 1);
        assert_eq!(c.iter().filter(|x| *x == "CAP_KILL").count(), 1);
    }

    #[test]
    fn the_init_binary_is_looked_up_and_a_missing_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("catatonit");
        std::fs::write(&present, "").unwrap();
        let missing = dir.path().join("tini-static");
        let (m, p) = (missing.to_str().unwrap(), present.to_str().unwrap());
        assert_eq!(find_init(&[m, p]).unwrap(), present);
        let e = find_init(&[m]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("init: no init binary on this node (looked for {m}): install Debian's tini or catatonit")
        );
    }

    #[test]
    fn bad_container_options_are_named() {
        let img = image();
        let mut s = spec();
        s.cap_add = vec!["CAP_NOPE".into()];
        assert!(build(&s, &inputs(&img))
            .unwrap_err()
            .to_string()
            .starts_with("invalid container spec: cap_add: "));
        let mut s = spec();
        s.rlimits = vec![crate::runtime::Rlimit {
            kind: "NOFILE".into(),
            soft: 1,
            hard: 1,
        }];
        assert!(build(&s, &inputs(&img))
            .unwrap_err()
            .to_string()
            .starts_with("invalid container spec: rlimits: "));
        s.rlimits[0].kind = "RLIMIT_NOFILE".into();
        s.rlimits[0].soft = 2;
        assert!(build(&s, &inputs(&img)).is_err());
        let mut s = spec();
        s.sysctls = [("a=b".to_string(), "1".to_string())].into();
        assert!(build(&s, &inputs(&img))
            .unwrap_err()
            .to_string()
            .starts_with("invalid container spec: sysctls: "));
    }
}
