//! The container runtime seam of the node agent: the [`ContainerRuntime`] trait and
//! its types, implemented by [`Containerd`] (containerd's gRPC API through
//! `containerd-client`: pull, import, unpack, containers, tasks, exec, logs, and a
//! supervised containerd when none runs) and by [`FakeRuntime`] for unit tests of the
//! agent. Not networking (the caller creates the network namespace and passes its
//! path) and not scheduling or restart policy (the agent's).

mod client;
mod containerd;
mod error;
mod fake;
pub mod image;
mod import;
mod logs;
mod pull;
pub mod reference;
mod registry;
pub mod spec;
mod store;
pub mod supervisor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use containerd::{Containerd, RuntimeConfig};
pub use error::{PullError, Result, RuntimeError};
pub use fake::{FakeCall, FakeRuntime};
pub use image::{HealthTest, Healthcheck, ImageConfig, Platform, Protocol};
pub use logs::LogOptions;
pub use reference::ImageRef;
pub use registry::{Credentials, RegistryConfig};

/// Default containerd namespace of Warren's containers and images.
pub const DEFAULT_NAMESPACE: &str = "warren";
/// Default time between the stop signal and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Label keys the agent puts on containers, used to find them again after a restart.
pub const LABEL_NODE: &str = "warren.node";
pub const LABEL_TASK_ID: &str = "warren.task.id";
pub const LABEL_SERVICE: &str = "warren.service";

/// What the agent asks for when it creates a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    /// containerd container id (also the snapshot key and the log file name).
    pub id: String,
    /// Image reference; must have been pulled or imported.
    pub image: String,
    /// Labels, e.g. [`LABEL_NODE`] and [`LABEL_TASK_ID`], for adoption after a restart.
    pub labels: BTreeMap<String, String>,
    /// Replaces the image's ENTRYPOINT (and drops its CMD).
    pub command: Option<Vec<String>>,
    /// Replaces the image's CMD.
    pub args: Option<Vec<String>>,
    /// Added to (and overriding by name) the image's environment.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// `user[:group]`, names resolved in the image's /etc/passwd and /etc/group.
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub network: NetworkMode,
    pub mounts: Vec<MountSpec>,
    pub resources: Resources,
    /// Bind-mounted over /etc/hosts.
    pub hosts_file: Option<PathBuf>,
    /// Bind-mounted over /etc/resolv.conf.
    pub resolv_conf: Option<PathBuf>,
    pub read_only_rootfs: bool,
    // Swarm's container flags (issue 10, item 5).
    /// Added to containerd's default capability set (`CAP_X`, or `ALL`); added ones
    /// win over dropped ones, as in Docker.
    pub cap_add: Vec<String>,
    /// Removed from the default set; `ALL` starts from none.
    pub cap_drop: Vec<String>,
    /// Each replaces the default of its resource (`RLIMIT_NOFILE` 1024:1024).
    pub rlimits: Vec<Rlimit>,
    /// Namespaced kernel parameters, set by runc in the container's namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// Run the node's init binary (see [`INIT_BINARIES`]) as PID 1 in front of the
    /// command.
    pub init: bool,
}

/// A resource limit of the container's processes (setrlimit(2)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, `RLIMIT_NPROC`, ...
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// Static init binaries for `init`, in order of preference: Debian's tini-static
/// (package tini), catatonit (package catatonit), and Docker's docker-init.
/// Bind-mounted read-only at [`INIT_TARGET`], as Docker does.
pub const INIT_BINARIES: &[&str] = &[
    "/usr/bin/tini-static",
    "/usr/bin/catatonit",
    "/usr/libexec/docker/docker-init",
    "/usr/bin/docker-init",
];
/// Where the init binary appears in the container.
pub const INIT_TARGET: &str = "/sbin/docker-init";

/// Which network namespace the container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A new, empty network namespace (loopback only, down).
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// Join an existing namespace (e.g. `/var/run/netns/<name>`), made by the caller.
    Join(PathBuf),
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size_bytes: Option<u64>,
        /// Permission bits of the tmpfs root, e.g. `0o1777`.
        mode: Option<u32>,
    },
}

impl MountSpec {
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Bind { target, .. } | MountSpec::Tmpfs { target, .. } => target,
        }
    }
}

/// Resource limits, enforced by the container's cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// CPUs as a fraction (0.5 = half a core): CFS quota over a 100 ms period.
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids_limit: Option<i64>,
}

/// An image in the store, resolved for the node's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Normalized reference, e.g. `docker.io/library/nginx:1`.
    pub name: String,
    /// Digest of the image record's target (the index or the manifest).
    pub digest: String,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    pub config_digest: String,
    pub platform: Platform,
    /// Chain ID of the top layer (the committed snapshot containers start from).
    pub chain_id: String,
    pub config: ImageConfig,
}

/// State of a container's task (its init process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Paused,
    Stopped,
    Unknown,
}

/// How a process ended. `code` is 128+signal for a killed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: u32,
    pub exited_at: Option<SystemTime>,
}

/// A container's task as containerd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub state: TaskState,
    pub pid: u32,
    /// Set once the task has stopped.
    pub exit: Option<ExitStatus>,
}

/// A container found in the runtime (for adoption and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// None when the container has no task (created, never started, or deleted task).
    pub task: Option<TaskStatus>,
}

/// A container's init process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub id: String,
    pub pid: u32,
    pub status: ExitStatus,
}

/// Result of an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: u32,
    /// At most [`EXEC_OUTPUT_LIMIT`] bytes of each stream.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How much of an exec's stdout and stderr is kept.
pub const EXEC_OUTPUT_LIMIT: usize = 64 << 10;

pub type LogStream = BoxStream<'static, Result<String>>;
pub type ExitStream = BoxStream<'static, Result<ExitEvent>>;

/// What the node agent needs from a container runtime.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Resolves `reference` in its registry and stores and unpacks whatever is
    /// missing. Pulling an image that is present and unpacked writes nothing.
    async fn pull(&self, reference: &str, auth: Option<&Credentials>) -> Result<ImageInfo>;

    /// Like [`Self::pull`], but an image already present and unpacked is used
    /// without asking the registry (so a node cut off from it keeps working).
    async fn ensure_image(&self, reference: &str, auth: Option<&Credentials>) -> Result<ImageInfo>;

    /// The stored image, if present.
    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>>;

    /// Imports an OCI archive or a `docker save` archive; `name` names the image
    /// when the archive holds one without a full name. Returns the images stored.
    async fn import(&self, archive: &Path, name: Option<&str>) -> Result<Vec<ImageInfo>>;

    /// Creates the container (record, spec, rootfs snapshot) without starting it.
    async fn create(&self, spec: &ContainerSpec) -> Result<()>;

    /// Starts a task for a created (or stopped) container; returns its pid.
    async fn start(&self, id: &str) -> Result<u32>;

    /// Create and start.
    async fn run(&self, spec: &ContainerSpec) -> Result<u32> {
        self.create(spec).await?;
        self.start(&spec.id).await
    }

    /// Sends a signal to the container's init process.
    async fn kill(&self, id: &str, signal: i32) -> Result<()>;

    /// Sends `signal`, then SIGKILL to every process after `grace`; returns how the
    /// task ended, or None when it had no task.
    async fn stop(&self, id: &str, signal: i32, grace: Duration) -> Result<Option<ExitStatus>>;

    /// Removes task, container and rootfs snapshot (killing a running task).
    /// Deleting what does not exist succeeds.
    async fn delete(&self, id: &str) -> Result<()>;

    async fn status(&self, id: &str) -> Result<ContainerStatus>;

    /// Containers having all these labels, with their tasks.
    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ContainerStatus>>;

    /// Waits for the container's task to exit.
    async fn wait(&self, id: &str) -> Result<ExitStatus>;

    /// Exits of every container's init process in the namespace, from now on.
    async fn exit_events(&self) -> Result<ExitStream>;

    /// Runs a command in the running container; kills it after `timeout`.
    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput>;

    /// The container's stdout/stderr lines.
    async fn logs(&self, id: &str, options: LogOptions) -> Result<LogStream>;
}
