//! [`Containerd`]: the real [`ContainerRuntime`] over containerd's gRPC API —
//! connecting (or starting a supervised containerd), containers from OCI specs, tasks
//! with file-backed stdio, stop with a grace period, exec, exit events and listing
//! for adoption. Creating containers is create.rs's, exec exec.rs's, exit events
//! events.rs's; image pulls and imports live in pull.rs and import.rs.

mod create;
mod events;
mod exec;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1::{
    Container, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest, GetContainerRequest, GetRequest,
    KillRequest, ListContainersRequest, ListTasksRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::{Process, Status as ProcStatus};
use tonic::transport::Channel;
use tonic::Code;

use super::client::{probe, system_time, Cd};
use super::error::{Result, RuntimeError};
use super::image::Platform;
use super::reference::ImageRef;
use super::registry::{Credentials, Registry, RegistryConfig};
use super::store;
use super::supervisor::{find_binary, ManagedLayout, Supervisor};
use super::{
    ContainerRuntime, ContainerSpec, ContainerStatus, ExecOutput, ExitStatus, ExitStream, ImageInfo, LogOptions,
    LogStream, TaskState, TaskStatus,
};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const KILL_WAIT: Duration = Duration::from_secs(30);
/// Topic of the events Warren publishes to itself to open a subscription.
const PROBE_TOPIC: &str = "/warren/subscribed";

/// How to reach (or run) containerd, and where containers go.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// containerd's gRPC socket (`--containerd-socket`).
    pub socket: PathBuf,
    /// containerd namespace of everything Warren creates.
    pub namespace: String,
    /// Where to run our own containerd when `socket` does not answer (e.g.
    /// `<data-dir>/containerd`); None never starts one.
    pub managed_dir: Option<PathBuf>,
    /// The containerd binary to run; None looks for `containerd` on PATH.
    pub containerd_binary: Option<PathBuf>,
    /// Container log files: `<log_dir>/<id>.log`.
    pub log_dir: PathBuf,
    /// FIFOs of running execs.
    pub exec_dir: PathBuf,
    /// cgroup (v1 hierarchies and v2) under which containers are placed: `<parent>/<id>`.
    pub cgroup_parent: String,
    pub snapshotter: String,
    /// containerd runtime (shim) name.
    pub runtime: String,
    /// Platform to pull and run.
    pub platform: Platform,
    pub registry: RegistryConfig,
}

impl RuntimeConfig {
    /// Defaults for a node whose data lives in `data_dir`.
    pub fn new(data_dir: &Path) -> RuntimeConfig {
        RuntimeConfig {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: super::DEFAULT_NAMESPACE.to_string(),
            managed_dir: Some(data_dir.join("containerd")),
            containerd_binary: None,
            log_dir: data_dir.join("logs"),
            exec_dir: data_dir.join("exec"),
            cgroup_parent: "/warren".to_string(),
            snapshotter: "overlayfs".to_string(),
            runtime: "io.containerd.runc.v2".to_string(),
            platform: Platform::host(),
            registry: RegistryConfig::default(),
        }
    }
}

/// The containerd-backed runtime.
pub struct Containerd {
    pub(crate) cd: Cd,
    pub(crate) config: RuntimeConfig,
    pub(crate) registry: Registry,
    socket: PathBuf,
    supervisor: Option<Supervisor>,
}

impl Containerd {
    /// Connects to `config.socket`; if nothing answers there and a containerd binary
    /// is installed, starts (and supervises) our own under `config.managed_dir`.
    pub async fn connect(config: RuntimeConfig) -> Result<Containerd> {
        let (channel, socket, supervisor) = match probe(&config.socket).await {
            Ok(c) => (c, config.socket.clone(), None),
            Err(first) => {
                let Some(dir) = config.managed_dir.clone() else {
                    return Err(RuntimeError::NoContainerd(format!(
                        "{first}, and starting our own containerd is disabled"
                    )));
                };
                let layout = ManagedLayout::new(dir);
                // Our own containerd from an earlier run may still be serving.
                if let Ok(c) = probe(&layout.socket()).await {
                    tracing::info!(socket = %layout.socket().display(), "using the containerd left running by an earlier start");
                    (c, layout.socket(), None)
                } else {
                    let binary = match &config.containerd_binary {
                        Some(b) => Some(b.clone()).filter(|b| b.is_file()),
                        None => find_binary("containerd"),
                    }
                    .ok_or_else(|| {
                        RuntimeError::NoContainerd(format!(
                            "{first}, and no containerd binary is installed to start one (Debian package: containerd)"
                        ))
                    })?;
                    tracing::info!(reason = %first, binary = %binary.display(), dir = %layout.dir.display(), "starting our own containerd");
                    let sup = Supervisor::start(&binary, layout.clone()).await?;
                    let c = probe(&sup.socket())
                        .await
                        .map_err(|e| RuntimeError::NoContainerd(e.to_string()))?;
                    (c, sup.socket(), Some(sup))
                }
            }
        };
        Self::with_channel(channel, socket, config, supervisor)
    }

    fn with_channel(
        channel: Channel,
        socket: PathBuf,
        config: RuntimeConfig,
        supervisor: Option<Supervisor>,
    ) -> Result<Containerd> {
        if config.namespace.is_empty() || config.namespace.parse::<tonic::metadata::MetadataValue<_>>().is_err() {
            return Err(RuntimeError::InvalidSpec {
                field: "namespace".into(),
                reason: format!("{:?} is not a valid containerd namespace", config.namespace),
            });
        }
        Ok(Containerd {
            cd: Cd {
                channel,
                namespace: config.namespace.clone(),
                snapshotter: config.snapshotter.clone(),
            },
            registry: Registry::new(config.registry.clone()),
            config,
            socket,
            supervisor,
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The socket in use (ours when we started containerd).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The supervised containerd, when we started it.
    pub fn supervisor(&self) -> Option<&Supervisor> {
        self.supervisor.as_ref()
    }

    /// Stops the containerd we started (containers keep running in their shims).
    pub async fn shutdown(&self) {
        if let Some(s) = &self.supervisor {
            s.shutdown().await;
        }
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.config.log_dir.join(format!("{id}.log"))
    }

    async fn get_container(&self, id: &str) -> Result<Container> {
        match self
            .cd
            .containers()
            .get(self.cd.req(GetContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .container
                .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() }),
            Err(s) if s.code() == Code::NotFound => Err(RuntimeError::NotFound { id: id.to_string() }),
            Err(s) => Err(RuntimeError::grpc("get container", id, s)),
        }
    }

    async fn get_task(&self, id: &str) -> Result<Option<Process>> {
        match self
            .cd
            .tasks()
            .get(self.cd.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(RuntimeError::grpc("get task", id, s)),
        }
    }

    async fn kill_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> std::result::Result<(), tonic::Status> {
        self.cd
            .tasks()
            .kill(self.cd.req(KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal: signal as u32,
                all,
            }))
            .await
            .map(|_| ())
    }

    /// Starts waiting for a process now, so that an exit right after a kill is not missed.
    fn spawn_wait(
        &self,
        id: &str,
        exec_id: &str,
    ) -> tokio::task::JoinHandle<std::result::Result<ExitStatus, tonic::Status>> {
        let cd = self.cd.clone();
        let req = WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        tokio::spawn(async move {
            let r = cd.tasks().wait(cd.req(req)).await?.into_inner();
            Ok(ExitStatus {
                code: r.exit_status,
                exited_at: system_time(r.exited_at.as_ref()),
            })
        })
    }

    async fn start_task(&self, id: &str) -> Result<u32> {
        let container = self.get_container(id).await?;
        if let Some(p) = self.get_task(id).await? {
            match ProcStatus::try_from(p.status).unwrap_or(ProcStatus::Unknown) {
                ProcStatus::Running | ProcStatus::Paused | ProcStatus::Pausing => return Ok(p.pid),
                // A previous run: clear it so that a new task can be created.
                _ => self.delete_task(id).await?,
            }
        }
        let rootfs = self.cd.snapshot_mounts(&container.snapshot_key).await?;
        let log = self.log_path(id);
        std::fs::create_dir_all(&self.config.log_dir)
            .map_err(|e| RuntimeError::io(format!("create log dir {}", self.config.log_dir.display()), e))?;
        // The shim appends stdout and stderr to this file itself, so logging goes on
        // while Warren restarts.
        let uri = format!("file://{}", log.display());
        let created = self
            .cd
            .tasks()
            .create(self.cd.req(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdin: String::new(),
                stdout: uri.clone(),
                stderr: uri,
                terminal: false,
                ..Default::default()
            }))
            .await
            .map_err(|s| RuntimeError::grpc("create task", id, s))?
            .into_inner();
        if let Err(s) = self
            .cd
            .tasks()
            .start(self.cd.req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            let _ = self.delete_task(id).await;
            return Err(RuntimeError::grpc("start task", id, s));
        }
        tracing::info!(container = id, pid = created.pid, "started task");
        Ok(created.pid)
    }

    async fn delete_task(&self, id: &str) -> Result<()> {
        match self
            .cd
            .tasks()
            .delete(self.cd.req(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(RuntimeError::grpc("delete task", id, s)),
        }
    }

    async fn stop_task(&self, id: &str, signal: i32, grace: Duration) -> Result<Option<ExitStatus>> {
        let Some(p) = self.get_task(id).await? else {
            self.get_container(id).await?;
            return Ok(None);
        };
        if p.status == ProcStatus::Stopped as i32 {
            return Ok(Some(exit_of(&p)));
        }
        let waiter = self.spawn_wait(id, "");
        match self.kill_process(id, "", signal, false).await {
            Ok(()) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(RuntimeError::grpc("kill task", id, s)),
        }
        let mut waiter = waiter;
        match tokio::time::timeout(grace, &mut waiter).await {
            Ok(r) => return join_wait(id, r).map(Some),
            Err(_) => {
                tracing::info!(container = id, ?grace, "still running after the grace period; killing");
            }
        }
        match self.kill_process(id, "", libc::SIGKILL, true).await {
            Ok(()) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(RuntimeError::grpc("kill task", id, s)),
        }
        match tokio::time::timeout(KILL_WAIT, waiter).await {
            Ok(r) => join_wait(id, r).map(Some),
            Err(_) => Err(RuntimeError::Containerd {
                op: "stop",
                object: id.to_string(),
                code: Code::DeadlineExceeded,
                message: format!("task did not exit within {KILL_WAIT:?} of SIGKILL"),
            }),
        }
    }

    async fn delete_container(&self, id: &str) -> Result<()> {
        if let Some(p) = self.get_task(id).await? {
            if p.status != ProcStatus::Stopped as i32 {
                self.stop_task(id, libc::SIGKILL, Duration::ZERO).await?;
            }
            self.delete_task(id).await?;
        }
        match self
            .cd
            .containers()
            .delete(self.cd.req(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(RuntimeError::grpc("delete container", id, s)),
        }
        self.cd.snapshot_remove(id).await?;
        tracing::info!(container = id, "deleted container");
        Ok(())
    }

    async fn list_containers(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ContainerStatus>> {
        let filters = if labels.is_empty() {
            vec![]
        } else {
            vec![label_filter(labels)]
        };
        let containers = self
            .cd
            .containers()
            .list(self.cd.req(ListContainersRequest { filters }))
            .await
            .map_err(|s| RuntimeError::grpc("list containers", "", s))?
            .into_inner()
            .containers;
        let tasks: HashMap<String, Process> = self
            .cd
            .tasks()
            .list(self.cd.req(ListTasksRequest { filter: String::new() }))
            .await
            .map_err(|s| RuntimeError::grpc("list tasks", "", s))?
            .into_inner()
            .tasks
            .into_iter()
            // containerd 1.6 sets only `id` (the container id, for init processes).
            .map(|p| {
                let key = if p.container_id.is_empty() {
                    p.id.clone()
                } else {
                    p.container_id.clone()
                };
                (key, p)
            })
            .collect();
        let mut out: Vec<ContainerStatus> = containers
            .into_iter()
            .map(|c| ContainerStatus {
                task: tasks.get(&c.id).map(task_status),
                id: c.id,
                image: c.image,
                labels: c.labels.into_iter().collect(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

fn join_wait(
    id: &str,
    r: std::result::Result<std::result::Result<ExitStatus, tonic::Status>, tokio::task::JoinError>,
) -> Result<ExitStatus> {
    match r {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(s)) if s.code() == Code::NotFound => Err(RuntimeError::NotRunning { id: id.to_string() }),
        Ok(Err(s)) => Err(RuntimeError::grpc("wait task", id, s)),
        Err(e) => Err(RuntimeError::Containerd {
            op: "wait task",
            object: id.to_string(),
            code: Code::Cancelled,
            message: e.to_string(),
        }),
    }
}

fn exit_of(p: &Process) -> ExitStatus {
    ExitStatus {
        code: p.exit_status,
        exited_at: system_time(p.exited_at.as_ref()),
    }
}

fn task_status(p: &Process) -> TaskStatus {
    let state = match ProcStatus::try_from(p.status).unwrap_or(ProcStatus::Unknown) {
        ProcStatus::Created => TaskState::Created,
        ProcStatus::Running => TaskState::Running,
        ProcStatus::Paused | ProcStatus::Pausing => TaskState::Paused,
        ProcStatus::Stopped => TaskState::Stopped,
        ProcStatus::Unknown => TaskState::Unknown,
    };
    TaskStatus {
        state,
        pid: p.pid,
        exit: (state == TaskState::Stopped).then(|| exit_of(p)),
    }
}

/// containerd filter matching all labels: `labels."k"=="v",labels."k2"=="v2"`.
fn label_filter(labels: &BTreeMap<String, String>) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    labels
        .iter()
        .map(|(k, v)| format!("labels.{}=={}", q(k), q(v)))
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait]
impl ContainerRuntime for Containerd {
    async fn pull(&self, reference: &str, auth: Option<&Credentials>) -> Result<ImageInfo> {
        self.pull_image(reference, auth).await
    }

    async fn ensure_image(&self, reference: &str, auth: Option<&Credentials>) -> Result<ImageInfo> {
        let name = ImageRef::parse(reference)?.to_string();
        if let Some(info) = self.present(&name, None).await? {
            return Ok(info);
        }
        self.pull_image(reference, auth).await
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let name = ImageRef::parse(reference)?.to_string();
        match store::resolve_local(&self.cd, &name, &self.config.platform).await? {
            None => Ok(None),
            Some(r) => r.info(&name).map(Some).map_err(|e| RuntimeError::BadImage {
                image: name,
                reason: e.to_string(),
            }),
        }
    }

    async fn import(&self, archive: &Path, name: Option<&str>) -> Result<Vec<ImageInfo>> {
        self.import_archive(archive, name).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        self.create_container(spec).await
    }

    async fn start(&self, id: &str) -> Result<u32> {
        self.start_task(id).await
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<()> {
        match self.kill_process(id, "", signal, false).await {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::NotFound => {
                self.get_container(id).await?;
                Err(RuntimeError::NotRunning { id: id.to_string() })
            }
            Err(s) => Err(RuntimeError::grpc("kill task", id, s)),
        }
    }

    async fn stop(&self, id: &str, signal: i32, grace: Duration) -> Result<Option<ExitStatus>> {
        self.stop_task(id, signal, grace).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.delete_container(id).await
    }

    async fn status(&self, id: &str) -> Result<ContainerStatus> {
        let c = self.get_container(id).await?;
        let task = self.get_task(id).await?;
        Ok(ContainerStatus {
            id: c.id,
            image: c.image,
            labels: c.labels.into_iter().collect(),
            task: task.as_ref().map(task_status),
        })
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ContainerStatus>> {
        self.list_containers(labels).await
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus> {
        let r = self.spawn_wait(id, "").await;
        match join_wait(id, r) {
            Err(RuntimeError::NotRunning { .. }) => {
                self.get_container(id).await?;
                Err(RuntimeError::NotRunning { id: id.to_string() })
            }
            other => other,
        }
    }

    async fn exit_events(&self) -> Result<ExitStream> {
        self.subscribe_exits().await
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput> {
        self.exec_in(id, command, timeout).await
    }

    async fn logs(&self, id: &str, options: LogOptions) -> Result<LogStream> {
        super::logs::stream(&self.log_path(id), options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_quote_keys_and_values() {
        let mut l = BTreeMap::new();
        l.insert("warren.node".to_string(), "n1".to_string());
        l.insert("warren.task.id".to_string(), "a\"b".to_string());
        assert_eq!(
            label_filter(&l),
            r#"labels."warren.node"=="n1",labels."warren.task.id"=="a\"b""#
        );
    }

    #[test]
    fn task_status_maps_exit() {
        let p = Process {
            container_id: "c".into(),
            id: "c".into(),
            pid: 42,
            status: ProcStatus::Stopped as i32,
            exit_status: 3,
            ..Default::default()
        };
        let s = task_status(&p);
        assert_eq!(s.state, TaskState::Stopped);
        assert_eq!(s.exit.unwrap().code, 3);
        let p = Process {
            status: ProcStatus::Running as i32,
            ..p
        };
        assert_eq!(task_status(&p).exit, None);
    }

    #[tokio::test]
    async fn no_containerd_is_reported_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = RuntimeConfig::new(dir.path());
        c.socket = dir.path().join("nope.sock");
        c.managed_dir = None;
        let e = match Containerd::connect(c.clone()).await {
            Err(e) => e,
            Ok(_) => panic!("connected to nothing"),
        };
        assert!(e.to_string().starts_with("no containerd: no socket at "), "{e}");
        c.managed_dir = Some(dir.path().join("containerd"));
        c.containerd_binary = Some(dir.path().join("no-containerd-here"));
        let e = match Containerd::connect(c).await {
            Err(e) => e,
            Ok(_) => panic!("connected to nothing"),
        };
        assert!(e.to_string().contains("no containerd binary is installed"), "{e}");
    }
}
