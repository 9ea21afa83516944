//! Importing image archives (what `warren image load` calls, like `docker load`): an
//! OCI image layout in a tar (`index.json` + `blobs/`), or a `docker save` archive
//! (`manifest.json` + config + layer tars, for which a Docker schema 2 manifest is
//! synthesized as containerd's importer does). The archive is the [`BlobSource`] of
//! the image store. Not registry pulls.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::client::{Writer, WRITE_CHUNK};
use super::error::{PullError, Result, RuntimeError};
use super::image::{
    sha256_digest, Descriptor, Index, Manifest, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER, MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_MANIFEST,
};
use super::reference::ImageRef;
use super::store::{self, BlobSource, Fetcher};
use super::{Containerd, ImageInfo};

const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const MAX_LINKS: usize = 16;
const MAX_JSON: u64 = 16 << 20;

#[derive(Debug, Clone)]
enum Entry {
    File { offset: u64, size: u64 },
    Link(String),
}

/// Where each member of a tar archive is.
#[derive(Debug)]
struct TarIndex {
    path: PathBuf,
    entries: HashMap<String, Entry>,
}

fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = vec![];
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

impl TarIndex {
    fn build(path: &Path) -> std::io::Result<TarIndex> {
        let file = std::fs::File::open(path)?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let mut entries = HashMap::new();
        for e in archive.entries()? {
            let e = e?;
            let name = clean(&e.path()?.to_string_lossy());
            let kind = e.header().entry_type();
            if kind.is_file() {
                entries.insert(
                    name,
                    Entry::File {
                        offset: e.raw_file_position(),
                        size: e.size(),
                    },
                );
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = e
                    .link_name()?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target = if kind.is_symlink() && !target.starts_with('/') {
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    clean(&format!("{dir}/{target}"))
                } else {
                    clean(&target)
                };
                entries.insert(name, Entry::Link(target));
            }
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Offset and size of a regular file, following links.
    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = clean(name);
        for _ in 0..MAX_LINKS {
            match self.entries.get(&name)? {
                Entry::File { offset, size } => return Some((*offset, *size)),
                Entry::Link(t) => name = t.clone(),
            }
        }
        None
    }

    fn read(&self, name: &str, limit: u64) -> std::io::Result<Vec<u8>> {
        let (offset, size) = self.locate(name).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{name} is not in the archive"))
        })?;
        if size > limit {
            return Err(std::io::Error::other(format!("{name} is larger than {limit} bytes")));
        }
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; size as usize];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// sha256 digest, size and whether the member is gzip-compressed.
    fn hash(&self, name: &str) -> std::io::Result<(String, u64, bool)> {
        let (offset, size) = self.locate(name).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{name} is not in the archive"))
        })?;
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut r = f.take(size);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; WRITE_CHUNK];
        let mut first = None;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if first.is_none() {
                first = Some(n >= 2 && buf[0] == 0x1f && buf[1] == 0x8b);
            }
            h.update(&buf[..n]);
        }
        Ok((
            format!("sha256:{}", hex::encode(h.finalize())),
            size,
            first.unwrap_or(false),
        ))
    }
}

struct ArchiveSource {
    tar: std::sync::Arc<TarIndex>,
    /// Digest → archive member.
    members: HashMap<String, String>,
    /// Documents made up during the import (docker-save manifests).
    synthesized: HashMap<String, Bytes>,
}

impl ArchiveSource {
    fn member(&self, digest: &str) -> Result<String, PullError> {
        if let Some(m) = self.members.get(digest) {
            return Ok(m.clone());
        }
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| PullError::Invalid(format!("bad digest {digest}")))?;
        let name = format!("blobs/{alg}/{hex}");
        if self.tar.locate(&name).is_none() {
            return Err(PullError::NotFound(format!("blob {digest} is not in the archive")));
        }
        Ok(name)
    }
}

#[async_trait]
impl BlobSource for ArchiveSource {
    async fn read(&self, desc: &Descriptor) -> Result<Bytes, PullError> {
        if let Some(b) = self.synthesized.get(&desc.digest) {
            return Ok(b.clone());
        }
        let member = self.member(&desc.digest)?;
        let tar = self.tar.clone();
        let data = tokio::task::spawn_blocking(move || tar.read(&member, MAX_JSON))
            .await
            .map_err(|e| PullError::Invalid(e.to_string()))?
            .map_err(|e| PullError::Invalid(e.to_string()))?;
        Ok(Bytes::from(data))
    }

    async fn copy(&self, desc: &Descriptor, w: &mut Writer) -> Result<(), PullError> {
        let member = self.member(&desc.digest)?;
        let (offset, size) = self
            .tar
            .locate(&member)
            .ok_or_else(|| PullError::NotFound(format!("{member} is not in the archive")))?;
        if size as i64 != desc.size {
            return Err(PullError::Invalid(format!(
                "{member} has {size} bytes, the manifest says {}",
                desc.size
            )));
        }
        let io = |e: std::io::Error| PullError::Invalid(format!("read {member}: {e}"));
        let mut f = tokio::fs::File::open(&self.tar.path).await.map_err(io)?;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        f.seek(SeekFrom::Start(offset)).await.map_err(io)?;
        let mut left = size;
        let mut buf = vec![0u8; WRITE_CHUNK];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..want]).await.map_err(io)?;
            w.write(Bytes::copy_from_slice(&buf[..want]))
                .await
                .map_err(|e| PullError::Store(Box::new(e)))?;
            left -= want as u64;
        }
        Ok(())
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// The images found in an archive: (name, if any; bare tag, if any; target).
type Found = Vec<(Option<String>, Option<String>, Descriptor)>;
/// A docker-save scan: images, digest → member, synthesized manifests.
type DockerScan = (Found, HashMap<String, String>, HashMap<String, Bytes>);

fn scan_oci(tar: &TarIndex) -> std::io::Result<Found> {
    let bytes = tar.read("index.json", MAX_JSON)?;
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| std::io::Error::other(format!("index.json: {e}")))?;
    Ok(index
        .manifests
        .into_iter()
        .map(|d| {
            let full = d.annotations.get(ANNOTATION_CONTAINERD_NAME).cloned();
            let refname = d.annotations.get(ANNOTATION_REF_NAME).cloned();
            // A ref.name may be a full reference or just a tag (skopeo's `oci:dir:tag`).
            let (name, tag) = match (full, refname) {
                (Some(n), _) => (Some(n), None),
                (None, Some(r)) if r.contains('/') || r.contains('@') => (Some(r), None),
                (None, Some(r)) if r.contains(':') => (Some(r), None),
                (None, r) => (None, r),
            };
            (name, tag, d)
        })
        .collect())
}

fn scan_docker(tar: &TarIndex) -> std::io::Result<DockerScan> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Item {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let bytes = tar.read("manifest.json", MAX_JSON)?;
    let items: Vec<Item> =
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::other(format!("manifest.json: {e}")))?;
    let mut found = vec![];
    let mut members = HashMap::new();
    let mut synthesized = HashMap::new();
    for item in items {
        let (config_digest, config_size, _) = tar.hash(&item.config)?;
        members.insert(config_digest.clone(), item.config.clone());
        let mut layers = vec![];
        for l in &item.layers {
            let (digest, size, gzip) = tar.hash(l)?;
            members.insert(digest.clone(), l.clone());
            layers.push(Descriptor {
                media_type: if gzip {
                    MEDIA_DOCKER_LAYER_GZIP
                } else {
                    MEDIA_DOCKER_LAYER
                }
                .to_string(),
                digest,
                size: size as i64,
                ..Default::default()
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_DOCKER_MANIFEST.to_string()),
            config: Descriptor {
                media_type: MEDIA_DOCKER_CONFIG.to_string(),
                digest: config_digest,
                size: config_size as i64,
                ..Default::default()
            },
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("serializable"));
        let target = Descriptor {
            media_type: MEDIA_DOCKER_MANIFEST.to_string(),
            digest: sha256_digest(&bytes),
            size: bytes.len() as i64,
            ..Default::default()
        };
        synthesized.insert(target.digest.clone(), bytes);
        let tags = item.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            found.push((None, None, target.clone()));
        }
        for t in tags {
            found.push((Some(t), None, target.clone()));
        }
    }
    Ok((found, members, synthesized))
}

impl Containerd {
    pub(crate) async fn import_archive(&self, path: &Path, name: Option<&str>) -> Result<Vec<ImageInfo>> {
        let fail = |reason: String| RuntimeError::Import {
            path: path.to_path_buf(),
            reason,
        };
        let p = path.to_path_buf();
        let tar = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let tar = TarIndex::build(&p)?;
            let scanned = if tar.locate("index.json").is_some() {
                (scan_oci(&tar)?, HashMap::new(), HashMap::new())
            } else if tar.locate("manifest.json").is_some() {
                scan_docker(&tar)?
            } else {
                return Err(std::io::Error::other(
                    "neither index.json (OCI layout) nor manifest.json (docker save) is in the archive",
                ));
            };
            Ok((tar, scanned))
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
        let (tar, (found, members, synthesized)) = tar;
        if found.is_empty() {
            return Err(fail("the archive holds no image".into()));
        }
        let override_name = match name {
            Some(n) if found.len() == 1 => Some(n.to_string()),
            Some(_) => {
                return Err(fail(format!(
                    "the archive holds {} images; a name can only be given for one",
                    found.len()
                )))
            }
            None => None,
        };
        let mut images = vec![];
        for (i, (n, tag, target)) in found.into_iter().enumerate() {
            let raw = match (override_name.clone(), n, tag) {
                (Some(o), _, _) => o,
                (None, Some(n), _) => n,
                (None, None, Some(t)) => {
                    return Err(fail(format!(
                        "image {i} ({}) is only tagged {t:?}; give it a name",
                        target.digest
                    )))
                }
                (None, None, None) => {
                    return Err(fail(format!("image {i} ({}) has no name; give it one", target.digest)))
                }
            };
            let r = ImageRef::parse(&raw).map_err(|e| fail(e.to_string()))?;
            images.push((r.to_string(), target));
        }
        let source = ArchiveSource {
            tar: std::sync::Arc::new(tar),
            members,
            synthesized,
        };
        let lease = self.cd.lease_create(std::time::Duration::from_secs(3600)).await?;
        let result = async {
            let mut out = vec![];
            for (image_name, target) in &images {
                let fetcher = Fetcher {
                    cd: &self.cd,
                    lease: &lease,
                    source: &source,
                    platform: &self.config.platform,
                };
                let pull_fail = |e: PullError| fail(format!("{image_name}: {e}"));
                let resolved = fetcher.fetch(target).await.map_err(pull_fail)?;
                store::unpack(&self.cd, &lease, &resolved).await.map_err(pull_fail)?;
                store::put_image_record(&self.cd, image_name, target).await?;
                out.push(
                    resolved
                        .info(image_name)
                        .map_err(|e| fail(format!("{image_name}: {e}")))?,
                );
                tracing::info!(image = %image_name, archive = %path.display(), "imported");
            }
            Ok(out)
        }
        .await;
        self.cd.lease_delete(&lease).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        for (name, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.finish().unwrap();
        f
    }

    #[test]
    fn indexes_files_and_follows_symlinks() {
        let f = tar_with(
            &[("./a/layer.tar", b"hello"), ("manifest.json", b"[]")],
            &[("b/layer.tar", "../a/layer.tar")],
        );
        let t = TarIndex::build(f.path()).unwrap();
        assert_eq!(t.read("b/layer.tar", 100).unwrap(), b"hello");
        assert_eq!(t.read("a/layer.tar", 100).unwrap(), b"hello");
        let (d, size, gz) = t.hash("b/layer.tar").unwrap();
        assert_eq!((d, size, gz), (sha256_digest(b"hello"), 5, false));
        assert!(t.read("a/layer.tar", 2).is_err());
    }

    #[test]
    fn docker_save_gets_a_schema2_manifest() {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let manifest =
            br#"[{"Config":"c.json","RepoTags":["warren-test/x:1","warren-test/x:latest"],"Layers":["l/layer.tar"]}]"#;
        let f = tar_with(
            &[
                ("c.json", config),
                ("l/layer.tar", b"layer"),
                ("manifest.json", manifest),
            ],
            &[],
        );
        let t = TarIndex::build(f.path()).unwrap();
        let (found, members, synth) = scan_docker(&t).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0.as_deref(), Some("warren-test/x:1"));
        assert_eq!(found[0].2, found[1].2);
        let m: Manifest = serde_json::from_slice(&synth[&found[0].2.digest]).unwrap();
        assert_eq!(m.layers[0].media_type, MEDIA_DOCKER_LAYER);
        assert_eq!(m.layers[0].digest, sha256_digest(b"layer"));
        assert_eq!(members[&m.config.digest], "c.json");
    }

    #[test]
    fn oci_ref_names_may_be_tags() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,
             "annotations":{"org.opencontainers.image.ref.name":"1"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":1,
             "annotations":{"org.opencontainers.image.ref.name":"example.com/x:2"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:c","size":1,
             "annotations":{"io.containerd.image.name":"docker.io/library/y:3"}}]}"#;
        let f = tar_with(&[("index.json", index)], &[]);
        let t = TarIndex::build(f.path()).unwrap();
        let found = scan_oci(&t).unwrap();
        assert_eq!((found[0].0.clone(), found[0].1.clone()), (None, Some("1".into())));
        assert_eq!(found[1].0.as_deref(), Some("example.com/x:2"));
        assert_eq!(found[2].0.as_deref(), Some("docker.io/library/y:3"));
    }
}
