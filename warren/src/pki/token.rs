//! Join tokens in Swarm's spelling: `SWMTKN-1-<CA digest>-<secret>`. The digest lets
//! a joining node authenticate the managers before it trusts them; the secret (one
//! for workers, one for managers) authenticates the node to the managers.

use std::fmt;

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
const SECRET_LEN: usize = 25;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex.
    pub ca_digest: String,
    pub secret: String,
}

/// A new random token secret: 25 characters of `[0-9a-z]`.
pub fn new_token_secret() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid join token: {0} (expected SWMTKN-1-<64 hex digits>-<25 characters>, as printed by `warren cluster join-token`)")]
pub struct TokenError(&'static str);

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        if parts.len() != 4 {
            return Err(TokenError("wrong number of parts"));
        }
        if parts[0] != PREFIX {
            return Err(TokenError("it does not start with SWMTKN"));
        }
        if parts[1] != VERSION {
            return Err(TokenError("unsupported token version"));
        }
        let digest = parts[2];
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TokenError("the CA digest is not 64 hex digits"));
        }
        let secret = parts[3];
        if secret.len() != SECRET_LEN || !secret.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(TokenError("the secret is not 25 letters and digits"));
        }
        Ok(JoinToken {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = JoinToken {
            ca_digest: "ab".repeat(32),
            secret: new_token_secret(),
        };
        let s = t.to_string();
        assert!(s.starts_with("SWMTKN-1-abab"));
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
    }

    #[test]
    fn malformed_tokens_say_why() {
        let d = "ab".repeat(32);
        assert_eq!(
            JoinToken::parse("hello").unwrap_err(),
            TokenError("wrong number of parts")
        );
        assert_eq!(
            JoinToken::parse(&format!("XXX-1-{d}-{}", "a".repeat(25))).unwrap_err(),
            TokenError("it does not start with SWMTKN")
        );
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-1-abc-{}", "a".repeat(25))).unwrap_err(),
            TokenError("the CA digest is not 64 hex digits")
        );
        let e = JoinToken::parse(&format!("SWMTKN-1-{d}-short")).unwrap_err();
        assert!(e.to_string().starts_with("invalid join token: the secret"));
    }
}
