//! Images in containerd, as `ctr images pull` leaves them client-side: the blob tree
//! (index → platform manifest → config + layers) written into the content store with
//! the garbage-collection labels that keep it alive, layers unpacked into the
//! snapshotter (Prepare + Diff.Apply + Commit by chain ID), and the image record.
//! Where the blobs come from (registry, archive) is a [`BlobSource`]; not this module.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use bytes::Bytes;
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image as CdImage, UpdateImageRequest,
};
use containerd_client::types::Descriptor as CdDescriptor;
use tonic::Code;

use super::client::{unique, Cd, Committed, Opened, Writer};
use super::error::{PullError, Result, RuntimeError};
use super::image::{
    chain_ids, is_index, is_manifest, sha256_digest, ConfigFile, Descriptor, ImageConfig, Index, Manifest, Platform,
};

const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
const INHERITED_SNAPSHOT_PREFIX: &str = "containerd.io/snapshot/";
const MAX_DOCUMENT: usize = 4 << 20;

/// Where the blobs of an image come from.
#[async_trait]
pub(crate) trait BlobSource: Send + Sync {
    /// Reads a small document (index, manifest, config) whole.
    async fn read(&self, desc: &Descriptor) -> Result<Bytes, PullError>;
    /// Streams a blob into an open content writer.
    async fn copy(&self, desc: &Descriptor, w: &mut Writer) -> Result<(), PullError>;
    /// Labels to put on every blob (the distribution source, for pulls).
    fn labels(&self) -> BTreeMap<String, String>;
}

/// A resolved image: its target and the platform manifest, config and layers.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub target: Descriptor,
    pub manifest_desc: Descriptor,
    pub manifest: Manifest,
    pub config_desc: Descriptor,
    pub config: ConfigFile,
}

/// Why a resolved image has no usable layer chain.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LayersError {
    #[error("image config has no layers (rootfs.diff_ids is empty)")]
    None,
    #[error("manifest has {layers} layers but config has {diff_ids} diff_ids")]
    Mismatch { layers: usize, diff_ids: usize },
}

impl Resolved {
    /// Chain ID of the top layer: the snapshot a container's rootfs is prepared from.
    pub fn chain_id(&self) -> Result<String, LayersError> {
        let diff_ids = &self.config.rootfs.diff_ids;
        if diff_ids.is_empty() {
            return Err(LayersError::None);
        }
        if diff_ids.len() != self.manifest.layers.len() {
            return Err(LayersError::Mismatch {
                layers: self.manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        Ok(chain_ids(diff_ids).pop().expect("non-empty"))
    }

    pub fn info(&self, name: &str) -> Result<super::ImageInfo, LayersError> {
        Ok(super::ImageInfo {
            name: name.to_string(),
            digest: self.target.digest.clone(),
            manifest_digest: self.manifest_desc.digest.clone(),
            config_digest: self.config_desc.digest.clone(),
            platform: Platform {
                os: self.config.os.clone(),
                architecture: self.config.architecture.clone(),
                variant: self.config.variant.clone(),
            },
            chain_id: self.chain_id()?,
            config: ImageConfig::from_config_file(&self.config),
        })
    }
}

fn store_err(e: RuntimeError) -> PullError {
    PullError::Store(Box::new(e))
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], desc: &Descriptor) -> Result<T, PullError> {
    serde_json::from_slice(bytes).map_err(|e| PullError::Invalid(format!("{} {}: {e}", desc.media_type, desc.digest)))
}

/// Writes an image's tree for `platform` into the content store under `lease`.
pub(crate) struct Fetcher<'a> {
    pub cd: &'a Cd,
    pub lease: &'a str,
    pub source: &'a dyn BlobSource,
    pub platform: &'a Platform,
}

impl Fetcher<'_> {
    /// Reads a document: from the content store when it is there, else from the source.
    async fn document(&self, desc: &Descriptor) -> Result<(Bytes, bool), PullError> {
        if self.cd.content_info(&desc.digest).await.map_err(store_err)?.is_some() {
            let b = self.cd.content_read(&desc.digest).await.map_err(store_err)?;
            return Ok((Bytes::from(b), true));
        }
        let b = self.source.read(desc).await?;
        if b.len() > MAX_DOCUMENT {
            return Err(PullError::Invalid(format!(
                "{} is larger than {MAX_DOCUMENT} bytes",
                desc.digest
            )));
        }
        let got = sha256_digest(&b);
        if got != desc.digest {
            return Err(PullError::Invalid(format!(
                "{} {} has digest {got}",
                desc.media_type, desc.digest
            )));
        }
        Ok((b, false))
    }

    fn labels(&self, extra: BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut l = self.source.labels();
        l.extend(extra);
        l
    }

    /// Stores a document we already hold in memory.
    async fn put(
        &self,
        desc: &Descriptor,
        bytes: &Bytes,
        present: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<(), PullError> {
        let labels = self.labels(labels);
        if present {
            return self.cd.content_label(&desc.digest, &labels).await.map_err(store_err);
        }
        let reference = ref_key(desc);
        match Writer::open(self.cd, self.lease, &reference, &desc.digest, bytes.len() as i64)
            .await
            .map_err(store_err)?
        {
            Opened::Exists => self.cd.content_label(&desc.digest, &labels).await.map_err(store_err),
            Opened::Writer(mut w) => {
                if let Err(e) = w.write(bytes.clone()).await {
                    w.abort(self.cd).await;
                    return Err(store_err(e));
                }
                match w.commit(&labels).await.map_err(store_err)? {
                    Committed::Written => Ok(()),
                    Committed::Existed => self.cd.content_label(&desc.digest, &labels).await.map_err(store_err),
                }
            }
        }
    }

    /// Streams a blob (a layer) from the source unless the store has it.
    async fn put_stream(&self, desc: &Descriptor) -> Result<(), PullError> {
        let labels = self.labels(BTreeMap::new());
        let reference = ref_key(desc);
        match Writer::open(self.cd, self.lease, &reference, &desc.digest, desc.size)
            .await
            .map_err(store_err)?
        {
            Opened::Exists => self.cd.content_label(&desc.digest, &labels).await.map_err(store_err),
            Opened::Writer(mut w) => {
                tracing::debug!(digest = %desc.digest, size = desc.size, "fetching layer");
                if let Err(e) = self.source.copy(desc, &mut w).await {
                    w.abort(self.cd).await;
                    return Err(e);
                }
                match w.commit(&labels).await.map_err(store_err)? {
                    Committed::Written => Ok(()),
                    Committed::Existed => self.cd.content_label(&desc.digest, &labels).await.map_err(store_err),
                }
            }
        }
    }

    /// Stores the tree under `target` (an index or a manifest) for the platform.
    pub async fn fetch(&self, target: &Descriptor) -> Result<Resolved, PullError> {
        if is_index(&target.media_type) {
            let (bytes, present) = self.document(target).await?;
            let index: Index = parse(&bytes, target)?;
            let chosen = index
                .select(self.platform)
                .cloned()
                .ok_or_else(|| PullError::NoPlatform {
                    platform: self.platform.to_string(),
                    available: index.platforms(),
                })?;
            let (manifest, config_desc, config) = self.fetch_manifest(&chosen).await?;
            // Like containerd, reference every child so the index keeps whichever
            // platform manifests this store holds.
            let labels = index
                .manifests
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("containerd.io/gc.ref.content.m.{i}"), d.digest.clone()))
                .collect();
            self.put(target, &bytes, present, labels).await?;
            Ok(Resolved {
                target: target.clone(),
                manifest_desc: chosen,
                manifest,
                config_desc,
                config,
            })
        } else if is_manifest(&target.media_type) {
            let (manifest, config_desc, config) = self.fetch_manifest(target).await?;
            let platform = Platform {
                os: config.os.clone(),
                architecture: config.architecture.clone(),
                variant: config.variant.clone(),
            };
            if !config.architecture.is_empty() && !self.platform.matches(&platform) {
                return Err(PullError::NoPlatform {
                    platform: self.platform.to_string(),
                    available: platform.to_string(),
                });
            }
            Ok(Resolved {
                target: target.clone(),
                manifest_desc: target.clone(),
                manifest,
                config_desc,
                config,
            })
        } else {
            Err(PullError::Invalid(format!(
                "unsupported media type {:?} of {}",
                target.media_type, target.digest
            )))
        }
    }

    async fn fetch_manifest(&self, desc: &Descriptor) -> Result<(Manifest, Descriptor, ConfigFile), PullError> {
        let (bytes, present) = self.document(desc).await?;
        let manifest: Manifest = parse(&bytes, desc)?;
        let (config_bytes, config_present) = self.document(&manifest.config).await?;
        let config: ConfigFile = parse(&config_bytes, &manifest.config)?;
        self.put(&manifest.config, &config_bytes, config_present, BTreeMap::new())
            .await?;
        for layer in &manifest.layers {
            self.put_stream(layer).await?;
        }
        let mut labels = BTreeMap::new();
        labels.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        );
        for (i, l) in manifest.layers.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        self.put(desc, &bytes, present, labels).await?;
        Ok((manifest.clone(), manifest.config.clone(), config))
    }
}

/// containerd's ingest ref naming (`remotes.MakeRefKey`).
fn ref_key(desc: &Descriptor) -> String {
    let kind = if is_index(&desc.media_type) {
        "index"
    } else if is_manifest(&desc.media_type) {
        "manifest"
    } else if desc.media_type.contains("config") {
        "config"
    } else if desc.media_type.contains("layer") || desc.media_type.contains("rootfs") {
        "layer"
    } else {
        "unknown"
    };
    format!("{kind}-{}", desc.digest)
}

pub(crate) fn to_cd(d: &Descriptor) -> CdDescriptor {
    CdDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

fn from_cd(d: &CdDescriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
        platform: None,
    }
}

/// Unpacks the layers into the snapshotter, skipping chain IDs already committed.
/// Returns the top chain ID.
pub(crate) async fn unpack(cd: &Cd, lease: &str, image: &Resolved) -> Result<String, PullError> {
    let diff_ids = &image.config.rootfs.diff_ids;
    image.chain_id().map_err(|e| PullError::Invalid(e.to_string()))?;
    let chain = chain_ids(diff_ids);
    let mut parent = String::new();
    for (i, layer) in image.manifest.layers.iter().enumerate() {
        let chain_id = &chain[i];
        if !cd.snapshot_exists(chain_id).await.map_err(store_err)? {
            unpack_layer(cd, lease, layer, &diff_ids[i], chain_id, &parent).await?;
        }
        parent = chain_id.clone();
    }
    let mut labels = BTreeMap::new();
    labels.insert(
        format!("containerd.io/gc.ref.snapshot.{}", cd.snapshotter),
        parent.clone(),
    );
    cd.content_label(&image.config_desc.digest, &labels)
        .await
        .map_err(store_err)?;
    Ok(parent)
}

async fn unpack_layer(
    cd: &Cd,
    lease: &str,
    layer: &Descriptor,
    diff_id: &str,
    chain_id: &str,
    parent: &str,
) -> Result<(), PullError> {
    let mut labels: HashMap<String, String> = layer
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with(INHERITED_SNAPSHOT_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_SNAPSHOT_REF.to_string(), chain_id.to_string());
    let mut key = String::new();
    let mut mounts = None;
    for _ in 0..3 {
        key = format!("extract-{} {chain_id}", unique());
        match cd.snapshot_prepare(&key, parent, labels.clone(), Some(lease)).await {
            Ok(m) => {
                mounts = Some(m);
                break;
            }
            Err(s) if s.code() == Code::AlreadyExists => {
                // Someone else committed this chain ID meanwhile.
                if cd.snapshot_exists(chain_id).await.map_err(store_err)? {
                    return Ok(());
                }
            }
            Err(s) => {
                return Err(store_err(RuntimeError::grpc("prepare snapshot", &key, s)));
            }
        }
    }
    let Some(mounts) = mounts else {
        return Err(store_err(RuntimeError::Containerd {
            op: "prepare snapshot",
            object: chain_id.to_string(),
            code: Code::AlreadyExists,
            message: "extraction key collided three times".into(),
        }));
    };
    let applied = cd
        .diff()
        .apply(cd.req_in(
            ApplyRequest {
                diff: Some(to_cd(layer)),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            },
            Some(lease),
        ))
        .await;
    let applied = match applied {
        Ok(r) => r.into_inner().applied.map(|d| d.digest).unwrap_or_default(),
        Err(s) => {
            let _ = cd.snapshot_remove(&key).await;
            return Err(store_err(RuntimeError::grpc("apply layer", &layer.digest, s)));
        }
    };
    if applied != diff_id {
        let _ = cd.snapshot_remove(&key).await;
        return Err(PullError::Invalid(format!(
            "layer {} unpacked to {applied}, config says {diff_id}",
            layer.digest
        )));
    }
    match cd.snapshot_commit(chain_id, &key, labels, Some(lease)).await {
        Ok(()) => {}
        Err(s) if s.code() == Code::AlreadyExists => {
            let _ = cd.snapshot_remove(&key).await;
            return Ok(());
        }
        Err(s) => {
            let _ = cd.snapshot_remove(&key).await;
            return Err(store_err(RuntimeError::grpc("commit snapshot", chain_id, s)));
        }
    }
    let mut l = BTreeMap::new();
    l.insert(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string());
    cd.content_label(&layer.digest, &l).await.map_err(store_err)?;
    Ok(())
}

/// Creates the image record `name` → `target`, or points an existing one at it.
pub(crate) async fn put_image_record(cd: &Cd, name: &str, target: &Descriptor) -> Result<()> {
    let image = CdImage {
        name: name.to_string(),
        target: Some(to_cd(target)),
        ..Default::default()
    };
    match cd
        .images()
        .create(cd.req(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            cd.images()
                .update(cd.req(UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                }))
                .await
                .map_err(|s| RuntimeError::grpc("update image", name, s))?;
            Ok(())
        }
        Err(s) => Err(RuntimeError::grpc("create image", name, s)),
    }
}

/// The image record's target, if the image exists.
pub(crate) async fn image_target(cd: &Cd, name: &str) -> Result<Option<Descriptor>> {
    match cd
        .images()
        .get(cd.req(GetImageRequest { name: name.to_string() }))
        .await
    {
        Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target).map(|t| from_cd(&t))),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(RuntimeError::grpc("get image", name, s)),
    }
}

/// Resolves a stored image for `platform` from the content store alone.
pub(crate) async fn resolve_local(cd: &Cd, name: &str, platform: &Platform) -> Result<Option<Resolved>> {
    let Some(target) = image_target(cd, name).await? else {
        return Ok(None);
    };
    let bad = |reason: String| RuntimeError::BadImage {
        image: name.to_string(),
        reason,
    };
    let read = |d: Descriptor| async move {
        match cd.content_read(&d.digest).await {
            Ok(b) => Ok(b),
            Err(e) if e.is_code(Code::NotFound) => Err(bad(format!("content {} is missing", d.digest))),
            Err(e) => Err(e),
        }
    };
    let manifest_desc = if is_index(&target.media_type) {
        let bytes = read(target.clone()).await?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| bad(format!("index: {e}")))?;
        index
            .select(platform)
            .cloned()
            .ok_or_else(|| bad(format!("no manifest for {platform} (index has: {})", index.platforms())))?
    } else {
        target.clone()
    };
    let bytes = read(manifest_desc.clone()).await?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest: {e}")))?;
    let bytes = read(manifest.config.clone()).await?;
    let config: ConfigFile = serde_json::from_slice(&bytes).map_err(|e| bad(format!("config: {e}")))?;
    Ok(Some(Resolved {
        target,
        manifest_desc,
        config_desc: manifest.config.clone(),
        manifest,
        config,
    }))
}

/// Whether every layer of the image is unpacked (its top chain ID is committed).
pub(crate) async fn is_unpacked(cd: &Cd, image: &Resolved) -> Result<bool> {
    match image.chain_id() {
        Ok(c) => cd.snapshot_exists(&c).await,
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_keys_follow_containerd() {
        let d = |m: &str| Descriptor {
            media_type: m.into(),
            digest: "sha256:x".into(),
            ..Default::default()
        };
        assert_eq!(ref_key(&d(super::super::image::MEDIA_OCI_INDEX)), "index-sha256:x");
        assert_eq!(
            ref_key(&d(super::super::image::MEDIA_DOCKER_MANIFEST)),
            "manifest-sha256:x"
        );
        assert_eq!(ref_key(&d(super::super::image::MEDIA_OCI_CONFIG)), "config-sha256:x");
        assert_eq!(
            ref_key(&d(super::super::image::MEDIA_DOCKER_LAYER_GZIP)),
            "layer-sha256:x"
        );
    }
}
