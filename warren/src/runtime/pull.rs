//! Pulling: a registry as the [`BlobSource`] of the image store, and the pull flow
//! (resolve the reference, skip what is present, fetch under a lease, unpack, record
//! the image). Not the HTTP protocol (registry.rs) nor the store layout (store.rs).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::client::Writer;
use super::error::{PullError, Result, RuntimeError};
use super::image::{is_index, is_manifest, Descriptor};
use super::reference::ImageRef;
use super::registry::{next_chunk, read_limited, Credentials, FetchedManifest, Registry};
use super::store::{self, BlobSource, Fetcher};
use super::{Containerd, ImageInfo};

/// How long a pull's lease protects its content should Warren die mid-pull.
const PULL_LEASE: Duration = Duration::from_secs(24 * 3600);

struct RegistrySource<'a> {
    registry: &'a Registry,
    reference: &'a ImageRef,
    creds: Option<&'a Credentials>,
    /// The document the reference resolved to, already downloaded.
    top: &'a FetchedManifest,
}

#[async_trait]
impl BlobSource for RegistrySource<'_> {
    async fn read(&self, desc: &Descriptor) -> Result<Bytes, PullError> {
        if desc.digest == self.top.digest {
            return Ok(self.top.bytes.clone());
        }
        if is_index(&desc.media_type) || is_manifest(&desc.media_type) {
            return Ok(self
                .registry
                .manifest(self.reference, &desc.digest, self.creds)
                .await?
                .bytes);
        }
        let body = self.registry.blob(self.reference, &desc.digest, self.creds).await?;
        read_limited(body, 4 << 20, &desc.digest).await
    }

    async fn copy(&self, desc: &Descriptor, w: &mut Writer) -> Result<(), PullError> {
        let mut body = self.registry.blob(self.reference, &desc.digest, self.creds).await?;
        let mut hasher = Sha256::new();
        let mut size: i64 = 0;
        let what = format!("blob {}", desc.digest);
        while let Some(chunk) = next_chunk(&mut body, &what).await? {
            size += chunk.len() as i64;
            if size > desc.size {
                return Err(PullError::Invalid(format!(
                    "{what} is larger than its {} bytes",
                    desc.size
                )));
            }
            hasher.update(&chunk);
            w.write(chunk).await.map_err(|e| PullError::Store(Box::new(e)))?;
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if size != desc.size || got != desc.digest {
            return Err(PullError::Invalid(format!(
                "{what}: got {size} bytes with digest {got}, want {} bytes",
                desc.size
            )));
        }
        Ok(())
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert(
            format!("containerd.io/distribution.source.{}", self.reference.domain),
            self.reference.repository.clone(),
        );
        l
    }
}

impl Containerd {
    pub(crate) async fn pull_image(&self, reference: &str, creds: Option<&Credentials>) -> Result<ImageInfo> {
        let r = ImageRef::parse(reference)?;
        let name = r.to_string();
        let fail = |source: PullError| RuntimeError::Pull {
            image: reference.to_string(),
            source,
        };
        let top = self.registry.manifest(&r, r.object(), creds).await.map_err(fail)?;
        let target = Descriptor {
            media_type: top.media_type.clone(),
            digest: top.digest.clone(),
            size: top.bytes.len() as i64,
            ..Default::default()
        };
        if !is_index(&target.media_type) && !is_manifest(&target.media_type) {
            return Err(fail(PullError::Invalid(format!(
                "unsupported manifest media type {:?}",
                target.media_type
            ))));
        }
        if let Some(info) = self.present(&name, Some(&target.digest)).await? {
            tracing::debug!(image = %name, digest = %target.digest, "image present and unpacked");
            return Ok(info);
        }
        tracing::info!(image = %name, digest = %target.digest, "pulling");
        let lease = self.cd.lease_create(PULL_LEASE).await?;
        let result = async {
            let source = RegistrySource {
                registry: &self.registry,
                reference: &r,
                creds,
                top: &top,
            };
            let fetcher = Fetcher {
                cd: &self.cd,
                lease: &lease,
                source: &source,
                platform: &self.config.platform,
            };
            let resolved = fetcher.fetch(&target).await.map_err(fail)?;
            store::unpack(&self.cd, &lease, &resolved).await.map_err(fail)?;
            store::put_image_record(&self.cd, &name, &target).await?;
            resolved.info(&name).map_err(|e| RuntimeError::BadImage {
                image: name.clone(),
                reason: e.to_string(),
            })
        }
        .await;
        self.cd.lease_delete(&lease).await;
        if let Ok(info) = &result {
            tracing::info!(image = %name, manifest = %info.manifest_digest, "pulled");
        }
        result
    }

    /// The image if its record exists (pointing at `digest`, when given) and it is
    /// fully unpacked.
    pub(crate) async fn present(&self, name: &str, digest: Option<&str>) -> Result<Option<ImageInfo>> {
        let Some(resolved) = store::resolve_local(&self.cd, name, &self.config.platform)
            .await
            .or_else(|e| match e {
                // Missing content: treat as absent and let the pull repair it.
                RuntimeError::BadImage { .. } => Ok(None),
                e => Err(e),
            })?
        else {
            return Ok(None);
        };
        if digest.is_some_and(|d| d != resolved.target.digest) {
            return Ok(None);
        }
        if !store::is_unpacked(&self.cd, &resolved).await? {
            return Ok(None);
        }
        Ok(resolved.info(name).ok())
    }
}
