//! Sealing of secrets at rest: AES-256-GCM under the managers' secrets key, which
//! lives in each manager's data dir (`keys/secrets.key`, mode 0600) and is handed to
//! a new manager over mutual TLS when it joins. The Raft log and state only ever
//! hold sealed bytes.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use std::path::Path;

const NONCE_LEN: usize = 12;
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the secrets key must be {KEY_LEN} bytes, found {0}")]
    KeyLength(usize),
    #[error("sealed data is corrupt or was sealed with another key")]
    Open,
    #[error("cannot read the secrets key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the secrets key {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

#[derive(Clone)]
pub struct SecretsKey([u8; KEY_LEN]);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    pub fn generate() -> SecretsKey {
        use rand::RngCore;
        let mut k = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut k);
        SecretsKey(k)
    }

    pub fn from_bytes(b: &[u8]) -> Result<SecretsKey, SealError> {
        let k: [u8; KEY_LEN] = b.try_into().map_err(|_| SealError::KeyLength(b.len()))?;
        Ok(SecretsKey(k))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn load(path: &Path) -> Result<SecretsKey, SealError> {
        let b = std::fs::read(path).map_err(|source| SealError::Read {
            path: path.display().to_string(),
            source,
        })?;
        SecretsKey::from_bytes(&b)
    }

    pub fn save(&self, path: &Path) -> Result<(), SealError> {
        use std::os::unix::fs::OpenOptionsExt;
        let werr = |source| SealError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(werr)?;
        std::io::Write::write_all(&mut f, &self.0).map_err(werr)?;
        f.sync_all().map_err(werr)
    }

    /// `nonce || ciphertext+tag`, with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        use rand::RngCore;
        let cipher = Aes256Gcm::new_from_slice(&self.0).expect("key length is fixed");
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let cipher = Aes256Gcm::new_from_slice(&self.0).expect("key length is fixed");
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let k = SecretsKey::generate();
        let sealed = k.seal(b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open(&sealed).unwrap(), b"hunter2");
        let other = SecretsKey::generate();
        assert!(matches!(other.open(&sealed), Err(SealError::Open)));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(k.open(&tampered).is_err());
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys/secrets.key");
        let k = SecretsKey::generate();
        k.save(&p).unwrap();
        assert_eq!(SecretsKey::load(&p).unwrap().as_bytes(), k.as_bytes());
        assert!(matches!(SecretsKey::from_bytes(b"short"), Err(SealError::KeyLength(5))));
    }
}
