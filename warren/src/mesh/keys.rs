//! The node's WireGuard key pair: x25519 keys in WireGuard's format (32 bytes,
//! base64 as `wg genkey` writes them), created on the node, the private key only
//! in a 0600 file in the node's data dir, and the pending key of a rotation beside
//! it. Not what peers do with the public key (the plan), not the Raft state.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;

use super::error::MeshError;

/// The file of the node's current private key inside the key directory.
pub const PRIVATE_KEY_FILE: &str = "private.key";
/// The private key a rotation switches to, until it is committed.
pub const NEXT_KEY_FILE: &str = "private.key.next";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A WireGuard public key: what a node publishes and its peers configure.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub(crate) fn from_hex(s: &str) -> Option<PublicKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(PublicKey(out))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&b64().encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = MeshError;

    fn from_str(s: &str) -> Result<PublicKey, MeshError> {
        decode_key(s).map(PublicKey).ok_or_else(|| {
            MeshError::invalid(
                "public_key",
                format!("{s:?} is not a WireGuard key (32 bytes in base64)"),
            )
        })
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard private key. Never printed, never serialized: it leaves the node's
/// key file only towards the local WireGuard device.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh key from the OS's random source, clamped as x25519 wants.
    pub fn generate() -> PrivateKey {
        PrivateKey(wireguard_control::Key::generate_private().0)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(wireguard_control::Key(self.0).get_public().0)
    }

    pub(crate) fn from_bytes(b: [u8; 32]) -> PrivateKey {
        PrivateKey(b)
    }

    pub(crate) fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub(crate) fn to_wg(&self) -> wireguard_control::Key {
        wireguard_control::Key(self.0)
    }

    fn to_base64(&self) -> String {
        b64().encode(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    let bytes = b64().decode(s.trim()).ok()?;
    bytes.try_into().ok()
}

/// The key directory of one node (`<data dir>/wireguard`, mode 0700).
#[derive(Clone, Debug)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    pub fn new(dir: impl Into<PathBuf>) -> KeyStore {
        KeyStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's key: read from its file, or created there on first use.
    pub fn load_or_create(&self) -> Result<PrivateKey, MeshError> {
        let path = self.dir.join(PRIVATE_KEY_FILE);
        if let Some(k) = read_key(&path)? {
            return Ok(k);
        }
        let key = PrivateKey::generate();
        self.write(PRIVATE_KEY_FILE, &key)?;
        tracing::info!(public_key = %key.public_key(), path = %path.display(), "created the node's wireguard key");
        Ok(key)
    }

    /// The pending key of a rotation, if one was prepared.
    pub fn next(&self) -> Result<Option<PrivateKey>, MeshError> {
        read_key(&self.dir.join(NEXT_KEY_FILE))
    }

    /// Prepares a rotation: a new key pair, kept beside the current one until
    /// [`KeyStore::commit`]. Preparing again keeps the key already prepared, so a
    /// retried request publishes the same public key.
    pub fn prepare(&self) -> Result<PrivateKey, MeshError> {
        if let Some(k) = self.next()? {
            return Ok(k);
        }
        let key = PrivateKey::generate();
        self.write(NEXT_KEY_FILE, &key)?;
        Ok(key)
    }

    /// Makes the prepared key the current one (one rename: a crash leaves either
    /// the old key with the rotation still pending, or the new key).
    pub fn commit(&self) -> Result<PrivateKey, MeshError> {
        let next = self.next()?.ok_or(MeshError::NoRotation)?;
        let from = self.dir.join(NEXT_KEY_FILE);
        let to = self.dir.join(PRIVATE_KEY_FILE);
        std::fs::rename(&from, &to).map_err(|source| MeshError::KeyFile { path: to, source })?;
        sync_dir(&self.dir)?;
        Ok(next)
    }

    /// Removes the key files (the node is leaving the cluster).
    pub fn remove(&self) -> Result<(), MeshError> {
        for f in [PRIVATE_KEY_FILE, NEXT_KEY_FILE] {
            let p = self.dir.join(f);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(MeshError::KeyFile { path: p, source }),
            }
        }
        Ok(())
    }

    /// Writes `key` to `name` through a 0600 temporary file and a rename.
    fn write(&self, name: &str, key: &PrivateKey) -> Result<(), MeshError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MeshError::KeyFile { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(err(&self.dir))?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err(&tmp))?;
        f.write_all(format!("{}\n", key.to_base64()).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(err(&tmp))?;
        let path = self.dir.join(name);
        std::fs::rename(&tmp, &path).map_err(err(&path))?;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), MeshError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| MeshError::KeyFile {
            path: dir.to_path_buf(),
            source,
        })
}

/// Reads a key file; `None` when there is none. A file others can read is refused
/// rather than used: the key may have leaked, and the operator should know.
fn read_key(path: &Path) -> Result<Option<PrivateKey>, MeshError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MeshError::KeyFile {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(MeshError::KeyMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| MeshError::KeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    decode_key(&text)
        .map(|k| Some(PrivateKey(k)))
        .ok_or_else(|| MeshError::BadKey {
            path: path.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_matches_wireguard_tools() {
        // `echo SGb+... | wg pubkey`, the example of wireguard-control's own test.
        let text = "SGb+ojrRNDuMePufwtIYhXzA//k6wF3R21tEBgKlzlM=";
        let key = PrivateKey(decode_key(text).unwrap());
        assert_eq!(
            key.public_key().to_string(),
            "DD5yKRfzExcV5+kDnTroDgCU15latdMjiQ59j1hEuk8="
        );
        let p: PublicKey = "DD5yKRfzExcV5+kDnTroDgCU15latdMjiQ59j1hEuk8=".parse().unwrap();
        assert_eq!(p, key.public_key());
        assert_eq!(PublicKey::from_hex(&p.to_hex()), Some(p));
        assert!(
            !format!("{key:?}").contains(text),
            "Debug must not print the private key"
        );
        let e = "abc".parse::<PublicKey>().unwrap_err().to_string();
        assert!(e.starts_with("invalid public_key: "), "{e}");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), p);
    }

    #[test]
    fn the_key_file_is_private_stable_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("wireguard"));
        let k1 = store.load_or_create().unwrap();
        let path = store.dir().join(PRIVATE_KEY_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(store.load_or_create().unwrap(), k1, "a second start keeps the key");

        assert!(matches!(store.commit(), Err(MeshError::NoRotation)));
        let next = store.prepare().unwrap();
        assert_ne!(next, k1);
        assert_eq!(store.prepare().unwrap(), next, "a retried prepare keeps its key");
        assert_eq!(store.load_or_create().unwrap(), k1, "prepared is not current yet");
        assert_eq!(store.commit().unwrap(), next);
        assert_eq!(store.load_or_create().unwrap(), next);
        assert_eq!(store.next().unwrap(), None);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load_or_create().unwrap_err();
        assert!(matches!(e, MeshError::KeyMode { mode: 0o644, .. }), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(store.load_or_create(), Err(MeshError::BadKey { .. })));
        store.remove().unwrap();
        assert!(!path.exists());
    }
}
