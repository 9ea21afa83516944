//! Files a task's container mounts from the node: its secrets, written to a tmpfs
//! (so that their plaintext never reaches the node's disk), and local volumes,
//! directories under the data dir that outlive the tasks using them.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount a tmpfs for the secrets of task {task} at {path}: {reason}")]
    Tmpfs { task: String, path: String, reason: String },
    #[error("cannot write secret {name} of task {task}: {reason}")]
    Secret { task: String, name: String, reason: String },
    #[error("cannot write config {name} of task {task}: {reason}")]
    Config { task: String, name: String, reason: String },
    #[error("cannot create volume {name} at {path}: {reason}")]
    Volume { name: String, path: String, reason: String },
}

/// Mounts a fresh tmpfs at `dir` and writes each secret as a 0400 file owned by
/// `owner` (uid, gid). Returns the host path of each secret by name.
pub fn write_secrets(
    task: &str,
    dir: &Path,
    secrets: &[(String, Vec<u8>)],
    owner: Option<(u32, u32)>,
) -> Result<BTreeMap<String, PathBuf>, MountError> {
    let tmpfs_err = |reason: String| MountError::Tmpfs {
        task: task.to_string(),
        path: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| tmpfs_err(e.to_string()))?;
    if !is_mountpoint(dir) {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4m,mode=0700"),
        )
        .map_err(|e| tmpfs_err(e.to_string()))?;
    }
    let mut out = BTreeMap::new();
    for (name, data) in secrets {
        let serr = |reason: String| MountError::Secret {
            task: task.to_string(),
            name: name.clone(),
            reason,
        };
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(|e| serr(e.to_string()))?;
        f.write_all(data).map_err(|e| serr(e.to_string()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| serr(e.to_string()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).map_err(|e| serr(e.to_string()))?;
        out.insert(name.clone(), path);
    }
    Ok(out)
}

/// Writes each config (name, content, mode) as a file in `dir` owned by `owner`,
/// returning their host paths in order. Configs are not secret: they live in the
/// task's directory on disk and are bind-mounted read-only.
pub fn write_configs(
    task: &str,
    dir: &Path,
    configs: &[(String, Vec<u8>, u32)],
    owner: Option<(u32, u32)>,
) -> Result<Vec<PathBuf>, MountError> {
    let mut out = Vec::new();
    for (i, (name, data, mode)) in configs.iter().enumerate() {
        let cerr = |reason: String| MountError::Config {
            task: task.to_string(),
            name: name.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| cerr(e.to_string()))?;
        // One file per reference: a config may be mounted twice with other modes.
        let path = dir.join(format!("{i}-{name}"));
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, data).map_err(|e| cerr(e.to_string()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| cerr(e.to_string()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(|e| cerr(e.to_string()))?;
        out.push(path);
    }
    Ok(out)
}

/// Unmounts and removes a task's secrets directory; nothing there is fine.
pub fn remove_secrets(dir: &Path) {
    if is_mountpoint(dir) {
        if let Err(e) = umount2(dir, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %dir.display(), error = %e, "unmounting a task's secrets");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn is_mountpoint(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(target.as_ref()))
}

/// The data directory of a local volume, created on first use.
pub fn volume_dir(root: &Path, name: &str) -> Result<PathBuf, MountError> {
    let dir = root.join(name).join("_data");
    std::fs::create_dir_all(&dir).map_err(|e| MountError::Volume {
        name: name.to_string(),
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(dir)
}

/// The data directory of a task's anonymous volume (its `index`th mount), created
/// empty under the task's own directory and removed with it.
pub fn anonymous_volume_dir(task_dir: &Path, index: usize) -> Result<PathBuf, MountError> {
    let dir = task_dir.join("volumes").join(index.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| MountError::Volume {
        name: format!("anonymous volume {index}"),
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(dir)
}

/// Removes the data of volumes that are no longer this node's and no task uses.
pub fn collect_volumes(root: &Path, keep: &[String], in_use: &[String]) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if keep.contains(&name) || in_use.contains(&name) {
            continue;
        }
        tracing::info!(volume = %name, "removing the data of a deleted volume");
        if let Err(err) = std::fs::remove_dir_all(e.path()) {
            tracing::warn!(volume = %name, error = %err, "could not remove a deleted volume's data");
        }
    }
}

/// `uid[:gid]` when the user is numeric; names are resolved inside the image.
pub fn numeric_owner(user: &str) -> Option<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid: u32 = u.parse().ok()?;
    let gid: u32 = match g {
        Some(g) => g.parse().ok()?,
        None => uid,
    };
    Some((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_written_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_configs(
            "t1",
            &dir.path().join("configs"),
            &[
                ("a".into(), b"x=1".to_vec(), 0o440),
                ("a".into(), b"x=1".to_vec(), 0o444),
            ],
            None,
        )
        .unwrap();
        assert_eq!(paths.len(), 2);
        assert_eq!(std::fs::read(&paths[0]).unwrap(), b"x=1");
        let mode = std::fs::metadata(&paths[0]).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o440);
    }

    #[test]
    fn owners() {
        assert_eq!(numeric_owner("1000"), Some((1000, 1000)));
        assert_eq!(numeric_owner("1000:50"), Some((1000, 50)));
        assert_eq!(numeric_owner("nobody"), None);
        assert_eq!(numeric_owner(""), None);
    }

    #[test]
    fn volume_collection_keeps_what_is_listed_or_used() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["keep", "used", "gone"] {
            volume_dir(dir.path(), v).unwrap();
        }
        collect_volumes(dir.path(), &["keep".into()], &["used".into()]);
        assert!(dir.path().join("keep").exists());
        assert!(dir.path().join("used").exists());
        assert!(!dir.path().join("gone").exists());
    }
}
