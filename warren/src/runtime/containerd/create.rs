//! Creating a container: the image resolved (and unpacked if need be), the user
//! looked up in the image's own passwd and group files, the OCI spec built and the
//! container recorded with its snapshot.

use super::{Containerd, SPEC_TYPE_URL};
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::image::ImageConfig;
use crate::runtime::reference::ImageRef;
use crate::runtime::spec::{self, SpecInputs, User};
use crate::runtime::store;
use crate::runtime::ContainerSpec;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{Container, CreateContainerRequest};
use prost_types::Any;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

impl Containerd {
    async fn resolve_user(&self, spec: &ContainerSpec, image: &ImageConfig, snapshot: &str) -> Result<User> {
        let user = spec.user.clone().or_else(|| image.user.clone()).unwrap_or_default();
        let bad = |e: spec::UserError| RuntimeError::InvalidSpec {
            field: "user".into(),
            reason: e.to_string(),
        };
        if user.is_empty() {
            return Ok(User::default());
        }
        if !spec::needs_lookup(&user) {
            return spec::resolve_user(&user, None, None).map_err(bad);
        }
        let mounts: Vec<(String, String, Vec<String>)> = self
            .cd
            .snapshot_mounts(snapshot)
            .await?
            .into_iter()
            .map(|m| (m.r#type, m.source, m.options))
            .collect();
        let passwd = spec::read_rootfs_file(&mounts, "etc/passwd");
        let group = spec::read_rootfs_file(&mounts, "etc/group");
        spec::resolve_user(&user, passwd.as_deref(), group.as_deref()).map_err(bad)
    }

    pub(super) async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        spec::validate(spec)?;
        // Before anything is created: a node without an init binary fails the task
        // with the binaries it looked for.
        let init_binary = if spec.init {
            Some(spec::find_init(crate::runtime::INIT_BINARIES)?)
        } else {
            None
        };
        let r = ImageRef::parse(&spec.image)?;
        let name = r.to_string();
        let image = store::resolve_local(&self.cd, &name, &self.config.platform)
            .await?
            .ok_or_else(|| RuntimeError::ImageNotFound {
                image: spec.image.clone(),
            })?;
        let chain_id = image.chain_id().map_err(|e| RuntimeError::BadImage {
            image: name.clone(),
            reason: e.to_string(),
        })?;
        match self.get_container(&spec.id).await {
            Ok(_) => return Err(RuntimeError::AlreadyExists { id: spec.id.clone() }),
            Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let lease = self.cd.lease_create(Duration::from_secs(3600)).await?;
        let result = async {
            if !self.cd.snapshot_exists(&chain_id).await? {
                // Content is there but not unpacked (e.g. after a snapshotter wipe).
                store::unpack(&self.cd, &lease, &image)
                    .await
                    .map_err(|source| RuntimeError::Pull {
                        image: spec.image.clone(),
                        source,
                    })?;
            }
            match self
                .cd
                .snapshot_prepare(&spec.id, &chain_id, HashMap::new(), Some(&lease))
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => {
                    // Left over from a create that failed half-way: no container owns it.
                    self.cd.snapshot_remove(&spec.id).await?;
                    self.cd
                        .snapshot_prepare(&spec.id, &chain_id, HashMap::new(), Some(&lease))
                        .await
                        .map_err(|s| RuntimeError::grpc("prepare rootfs", &spec.id, s))?;
                }
                Err(s) => return Err(RuntimeError::grpc("prepare rootfs", &spec.id, s)),
            }
            let built = async {
                let config = ImageConfig::from_config_file(&image.config);
                let user = self.resolve_user(spec, &config, &spec.id).await?;
                let oci = spec::build(
                    spec,
                    &SpecInputs {
                        image: &config,
                        user,
                        cgroup_parent: &self.config.cgroup_parent,
                        init_binary: init_binary.as_deref(),
                    },
                )?;
                let container = Container {
                    id: spec.id.clone(),
                    labels: spec.labels.clone().into_iter().collect(),
                    image: name.clone(),
                    runtime: Some(Runtime {
                        name: self.config.runtime.clone(),
                        options: None,
                    }),
                    spec: Some(Any {
                        type_url: SPEC_TYPE_URL.to_string(),
                        value: serde_json::to_vec(&oci).expect("serializable"),
                    }),
                    snapshotter: self.config.snapshotter.clone(),
                    snapshot_key: spec.id.clone(),
                    ..Default::default()
                };
                match self
                    .cd
                    .containers()
                    .create(self.cd.req_in(
                        CreateContainerRequest {
                            container: Some(container),
                        },
                        Some(&lease),
                    ))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == Code::AlreadyExists => {
                        Err(RuntimeError::AlreadyExists { id: spec.id.clone() })
                    }
                    Err(s) => Err(RuntimeError::grpc("create container", &spec.id, s)),
                }
            }
            .await;
            if built.is_err() {
                let _ = self.cd.snapshot_remove(&spec.id).await;
            }
            built
        }
        .await;
        self.cd.lease_delete(&lease).await;
        if result.is_ok() {
            tracing::info!(container = %spec.id, image = %name, "created container");
        }
        result
    }
}
