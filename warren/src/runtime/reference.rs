//! Image references: parsing and Docker-style normalization
//! (`nginx` → `docker.io/library/nginx:latest`). Not registry access.

use std::fmt;

use super::error::RuntimeError;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host (with port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// Repository path, e.g. `library/nginx`, `warren-test/http`.
    pub repository: String,
    /// Tag, if any (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// Digest (`sha256:...`), if any.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalizes `s` like Docker and containerd do.
    pub fn parse(s: &str) -> Result<ImageRef, RuntimeError> {
        let bad = |reason: &str| RuntimeError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > 4096 {
            return Err(bad("too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                validate_digest(d).map_err(|e| bad(&e.to_string()))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' only when no '/' comes after it (else the ':'
        // separates a registry port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        if name.is_empty() {
            return Err(bad("missing repository name"));
        }
        let (domain, repository) = match name.split_once('/') {
            Some((first, remainder)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), remainder.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let domain = if domain == "index.docker.io" {
            "docker.io".to_string()
        } else {
            domain
        };
        let repository = if domain == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if domain.is_empty() || !domain.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) {
            return Err(bad("invalid registry host"));
        }
        for component in repository.split('/') {
            let ok = !component.is_empty()
                && component
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && component.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && component.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
            if !ok {
                return Err(bad(
                    "repository path components must be lowercase letters, digits and separators (._-)",
                ));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(ImageRef {
            domain,
            repository,
            tag,
            digest,
        })
    }

    /// The host to talk to for this domain (`docker.io` is served by `registry-1.docker.io`).
    pub fn registry_host(&self) -> &str {
        if self.domain == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.domain
        }
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn object(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// `domain/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?} (want sha256:<64 lowercase hex>)")]
pub struct DigestError(pub String);

/// Checks a `sha256:<64 hex>` digest (the only algorithm Warren accepts).
pub fn validate_digest(d: &str) -> Result<(), DigestError> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) =>
        {
            Ok(())
        }
        _ => Err(DigestError(d.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_docker_hub_names() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:latest");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
        let r = ImageRef::parse("warren-test/http:1").unwrap();
        assert_eq!(r.to_string(), "docker.io/warren-test/http:1");
    }

    #[test]
    fn keeps_registry_with_port() {
        let r = ImageRef::parse("127.0.0.1:5000/warren-test/http:1").unwrap();
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.repository, "warren-test/http");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.object(), "1");
        let r = ImageRef::parse("localhost:5000/x").unwrap();
        assert_eq!(r.to_string(), "localhost:5000/x:latest");
    }

    #[test]
    fn digest_references() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("example.com/a/b@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.object(), d);
        let r = ImageRef::parse(&format!("example.com/a/b:v1@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.object(), d);
    }

    #[test]
    fn rejects_bad_references() {
        for bad in ["", "UPPER/case", "a/b:", "a@sha256:xyz", "a//b", "a:b c"] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("invalid image reference {bad:?}")),
                "{bad}: {e}"
            );
        }
    }
}
