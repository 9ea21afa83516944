//! The backup file (`warren cluster backup`): a cluster snapshot and the managers'
//! secrets key, sealed by a passphrase the operator gives. The key that seals them
//! is derived from the passphrase with Argon2id; both parts are AES-256-GCM under it,
//! with the header as associated data. Secrets inside the snapshot stay sealed by
//! the secrets key exactly as the store holds them, so the passphrase alone opens
//! nothing but the snapshot and the key. Bytes in, bytes out: no I/O here.
//!
//! Format, version 1 (integers big-endian; see docs/operations.md):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `WARRENBK` |
//! | 8 | 2 | format version (1) |
//! | 10 | 4 | Argon2id memory cost, KiB |
//! | 14 | 4 | Argon2id time cost (passes) |
//! | 18 | 4 | Argon2id parallelism |
//! | 22 | 16 | salt |
//! | 38 | 12 | nonce of the key block |
//! | 50 | 12 | nonce of the body |
//! | 62 | 8 | length of the sealed body |
//! | 70 | 48 | key block: the 32-byte secrets key, sealed |
//! | 118 | n | body: the snapshot (`store::backup`), sealed |
//! | 118+n | 32 | SHA-256 of every byte before it |
//!
//! The checksum tells a damaged file (truncated, altered) from a wrong passphrase:
//! with the checksum right, a key block that does not open means the passphrase.

use crate::secrets::{SecretsKey, KEY_LEN};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"WARRENBK";
pub const VERSION: u16 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 70;
const KEY_BLOCK_LEN: usize = KEY_LEN + TAG_LEN;
const SUM_LEN: usize = 32;
/// The smallest file: a header, a key block, an empty sealed body, a checksum.
const MIN_LEN: usize = HEADER_LEN + KEY_BLOCK_LEN + TAG_LEN + SUM_LEN;

/// Argon2id costs, kept in the file so that a later version can raise them and
/// still open older files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 4,
    };
    /// What a file may ask for: beyond this, opening it would be a denial of service.
    const MAX_M_KIB: u32 = 1024 * 1024;
    const MAX_T: u32 = 64;
    const MAX_P: u32 = 64;
}

#[derive(Debug, thiserror::Error)]
pub enum BackupSealError {
    #[error("the backup passphrase is empty")]
    EmptyPassphrase,
    #[error(
        "not a warren backup: the file does not start with {:?}",
        String::from_utf8_lossy(MAGIC)
    )]
    NotABackup,
    #[error("backup format version {0} is not supported: this warren reads version {VERSION}")]
    Version(u16),
    #[error("the backup is truncated: {found} bytes where its header says {expected}")]
    Truncated { found: usize, expected: usize },
    #[error("the backup is corrupt: its checksum does not match its content")]
    Corrupt,
    #[error("the backup asks for Argon2id costs out of range (memory {m_kib} KiB, time {t}, lanes {p})")]
    KdfParams { m_kib: u32, t: u32, p: u32 },
    #[error("wrong passphrase for this backup")]
    WrongPassphrase,
}

/// What `open` returns: the secrets key and the snapshot bytes.
pub struct Opened {
    pub secrets_key: SecretsKey,
    pub body: Vec<u8>,
}

/// Seals `body` and `key` by `passphrase` with the default costs.
pub fn seal(passphrase: &[u8], key: &SecretsKey, body: &[u8]) -> Result<Vec<u8>, BackupSealError> {
    seal_with(KdfParams::DEFAULT, passphrase, key, body)
}

pub fn seal_with(kdf: KdfParams, passphrase: &[u8], key: &SecretsKey, body: &[u8]) -> Result<Vec<u8>, BackupSealError> {
    use rand::RngCore;
    if passphrase.is_empty() {
        return Err(BackupSealError::EmptyPassphrase);
    }
    let mut salt = [0u8; SALT_LEN];
    let mut key_nonce = [0u8; NONCE_LEN];
    let mut body_nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut salt);
    rand::rng().fill_bytes(&mut key_nonce);
    rand::rng().fill_bytes(&mut body_nonce);
    let cipher = derive(kdf, passphrase, &salt)?;

    let mut out = Vec::with_capacity(MIN_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&kdf.m_kib.to_be_bytes());
    out.extend_from_slice(&kdf.t.to_be_bytes());
    out.extend_from_slice(&kdf.p.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&key_nonce);
    out.extend_from_slice(&body_nonce);
    out.extend_from_slice(&((body.len() + TAG_LEN) as u64).to_be_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    let header = out.clone();
    let sealed = |nonce: &[u8], msg: &[u8]| {
        cipher
            .encrypt(Nonce::from_slice(nonce), Payload { msg, aad: &header })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail")
    };
    out.extend_from_slice(&sealed(&key_nonce, key.as_bytes()));
    out.extend_from_slice(&sealed(&body_nonce, body));
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Checks the file, then opens it with `passphrase`. Every failure is one error
/// that says which of the file or the passphrase is wrong.
pub fn open(passphrase: &[u8], file: &[u8]) -> Result<Opened, BackupSealError> {
    if passphrase.is_empty() {
        return Err(BackupSealError::EmptyPassphrase);
    }
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(BackupSealError::NotABackup);
    }
    let u16_at = |o: usize| u16::from_be_bytes([file[o], file[o + 1]]);
    let u32_at = |o: usize| u32::from_be_bytes(file[o..o + 4].try_into().expect("4 bytes"));
    if file.len() < 10 {
        return Err(BackupSealError::Truncated {
            found: file.len(),
            expected: MIN_LEN,
        });
    }
    let version = u16_at(8);
    if version != VERSION {
        return Err(BackupSealError::Version(version));
    }
    if file.len() < HEADER_LEN {
        return Err(BackupSealError::Truncated {
            found: file.len(),
            expected: MIN_LEN,
        });
    }
    let body_len = u64::from_be_bytes(file[62..70].try_into().expect("8 bytes"));
    let expected = usize::try_from(body_len)
        .ok()
        .and_then(|n| n.checked_add(HEADER_LEN + KEY_BLOCK_LEN + SUM_LEN))
        .ok_or(BackupSealError::Corrupt)?;
    if body_len < TAG_LEN as u64 {
        return Err(BackupSealError::Corrupt);
    }
    if file.len() < expected {
        return Err(BackupSealError::Truncated {
            found: file.len(),
            expected,
        });
    }
    if file.len() > expected {
        return Err(BackupSealError::Corrupt);
    }
    let (content, sum) = file.split_at(expected - SUM_LEN);
    if Sha256::digest(content).as_slice() != sum {
        return Err(BackupSealError::Corrupt);
    }
    let kdf = KdfParams {
        m_kib: u32_at(10),
        t: u32_at(14),
        p: u32_at(18),
    };
    let header = &file[..HEADER_LEN];
    let salt = &file[22..38];
    let key_nonce = &file[38..50];
    let body_nonce = &file[50..62];
    let cipher = derive(kdf, passphrase, salt)?;
    let key_block = &content[HEADER_LEN..HEADER_LEN + KEY_BLOCK_LEN];
    let key = cipher
        .decrypt(
            Nonce::from_slice(key_nonce),
            Payload {
                msg: key_block,
                aad: header,
            },
        )
        .map_err(|_| BackupSealError::WrongPassphrase)?;
    // The checksum matched and the key block opened: a body that does not open was
    // made to look whole (a recomputed checksum), which is corruption all the same.
    let body = cipher
        .decrypt(
            Nonce::from_slice(body_nonce),
            Payload {
                msg: &content[HEADER_LEN + KEY_BLOCK_LEN..],
                aad: header,
            },
        )
        .map_err(|_| BackupSealError::Corrupt)?;
    Ok(Opened {
        secrets_key: SecretsKey::from_bytes(&key).map_err(|_| BackupSealError::Corrupt)?,
        body,
    })
}

fn derive(kdf: KdfParams, passphrase: &[u8], salt: &[u8]) -> Result<Aes256Gcm, BackupSealError> {
    let out_of_range = || BackupSealError::KdfParams {
        m_kib: kdf.m_kib,
        t: kdf.t,
        p: kdf.p,
    };
    if kdf.m_kib > KdfParams::MAX_M_KIB || kdf.t > KdfParams::MAX_T || kdf.p > KdfParams::MAX_P {
        return Err(out_of_range());
    }
    let params = argon2::Params::new(kdf.m_kib, kdf.t, kdf.p, Some(32)).map_err(|_| out_of_range())?;
    let mut key = [0u8; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut key)
        .map_err(|_| out_of_range())?;
    Ok(Aes256Gcm::new_from_slice(&key).expect("key length is fixed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap costs: the format is what is under test, not Argon2.
    const FAST: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };

    fn sealed() -> (SecretsKey, Vec<u8>) {
        let k = SecretsKey::generate();
        let file = seal_with(FAST, b"correct horse", &k, b"{\"state\":1}").unwrap();
        (k, file)
    }

    #[test]
    fn round_trip_keeps_the_key_and_the_body_and_hides_both() {
        let (k, file) = sealed();
        assert_eq!(&file[..8], MAGIC);
        assert!(!file.windows(11).any(|w| w == b"{\"state\":1}"));
        assert!(!file.windows(KEY_LEN).any(|w| w == k.as_bytes()));
        let o = open(b"correct horse", &file).unwrap();
        assert_eq!(o.secrets_key.as_bytes(), k.as_bytes());
        assert_eq!(o.body, b"{\"state\":1}");
        // The default costs are what a real backup uses; they open too.
        let file = seal(b"pass", &k, b"").unwrap();
        assert_eq!(open(b"pass", &file).unwrap().body, b"");
    }

    #[test]
    fn a_wrong_or_empty_passphrase_is_refused() {
        let (k, file) = sealed();
        assert!(matches!(
            open(b"correct horsf", &file),
            Err(BackupSealError::WrongPassphrase)
        ));
        assert!(matches!(open(b"", &file), Err(BackupSealError::EmptyPassphrase)));
        assert!(matches!(
            seal_with(FAST, b"", &k, b"x"),
            Err(BackupSealError::EmptyPassphrase)
        ));
    }

    #[test]
    fn every_truncation_is_refused_as_such() {
        let (_, file) = sealed();
        for n in 0..file.len() {
            let err = open(b"correct horse", &file[..n]).err().unwrap();
            match n {
                0..8 => assert!(matches!(err, BackupSealError::NotABackup), "{n}: {err}"),
                _ => assert!(matches!(err, BackupSealError::Truncated { .. }), "{n}: {err}"),
            }
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(open(b"correct horse", &longer), Err(BackupSealError::Corrupt)));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let (_, file) = sealed();
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            let err = open(b"correct horse", &bad).err().unwrap();
            let expected = match i {
                0..8 => matches!(err, BackupSealError::NotABackup),
                8..10 => matches!(err, BackupSealError::Version(_)),
                // A changed length reads as a file cut short or one too long.
                62..70 => matches!(err, BackupSealError::Truncated { .. } | BackupSealError::Corrupt),
                _ => matches!(err, BackupSealError::Corrupt),
            };
            assert!(expected, "byte {i}: {err}");
        }
    }

    #[test]
    fn a_body_resealed_with_a_fixed_checksum_is_still_refused() {
        let (_, mut file) = sealed();
        let n = file.len();
        file[n - SUM_LEN - 1] ^= 1;
        let sum = Sha256::digest(&file[..n - SUM_LEN]);
        file[n - SUM_LEN..].copy_from_slice(&sum);
        assert!(matches!(open(b"correct horse", &file), Err(BackupSealError::Corrupt)));
        // And a header altered the same way fails the key block: the header is
        // authenticated, though the error cannot tell it from a wrong passphrase.
        let (_, mut file) = sealed();
        file[30] ^= 1;
        let sum = Sha256::digest(&file[..n - SUM_LEN]);
        file[n - SUM_LEN..].copy_from_slice(&sum);
        assert!(open(b"correct horse", &file).is_err());
    }

    #[test]
    fn costs_beyond_the_limits_are_refused_before_deriving() {
        let (_, mut file) = sealed();
        file[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        let n = file.len();
        let sum = Sha256::digest(&file[..n - SUM_LEN]);
        file[n - SUM_LEN..].copy_from_slice(&sum);
        assert!(matches!(
            open(b"correct horse", &file),
            Err(BackupSealError::KdfParams { .. })
        ));
    }
}
