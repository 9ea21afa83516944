//! [`FakeRuntime`]: an in-memory [`ContainerRuntime`] for unit tests of the agent
//! (no root, no containerd). It records calls and lets a test make processes exit,
//! pulls fail, and execs answer. Never used outside tests of other modules.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::broadcast;

use super::error::{PullError, Result, RuntimeError};
use super::image::{sha256_digest, ImageConfig, Platform};
use super::reference::ImageRef;
use super::registry::Credentials;
use super::{
    ContainerRuntime, ContainerSpec, ContainerStatus, ExecOutput, ExitEvent, ExitStatus, ExitStream, ImageInfo,
    LogOptions, LogStream, TaskState, TaskStatus,
};

/// A call the fake received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Pull(String),
    Import(String),
    Create(String),
    Start(String),
    Kill(String, i32),
    Stop(String, i32),
    Delete(String),
    Exec(String, Vec<String>),
}

struct FakeContainer {
    spec: ContainerSpec,
    image: String,
    task: Option<TaskStatus>,
    ignores_signals: bool,
}

#[derive(Default)]
struct State {
    registry: BTreeMap<String, ImageConfig>,
    pull_errors: HashMap<String, String>,
    images: BTreeMap<String, ImageInfo>,
    containers: BTreeMap<String, FakeContainer>,
    exec_results: HashMap<String, ExecOutput>,
    logs: HashMap<String, Vec<String>>,
    calls: Vec<FakeCall>,
    next_pid: u32,
}

/// In-memory runtime for unit tests.
pub struct FakeRuntime {
    state: Mutex<State>,
    exits: broadcast::Sender<ExitEvent>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

fn info(name: &str, config: ImageConfig) -> ImageInfo {
    let digest = sha256_digest(name.as_bytes());
    ImageInfo {
        name: name.to_string(),
        digest: digest.clone(),
        manifest_digest: digest.clone(),
        config_digest: digest.clone(),
        platform: Platform::host(),
        chain_id: digest,
        config,
    }
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime {
            state: Mutex::new(State {
                next_pid: 1000,
                ..Default::default()
            }),
            exits: broadcast::channel(1024).0,
        }
    }

    /// Makes `reference` pullable with this config.
    pub fn add_registry_image(&self, reference: &str, config: ImageConfig) {
        let name = ImageRef::parse(reference).expect("valid reference").to_string();
        self.state.lock().unwrap().registry.insert(name, config);
    }

    /// Makes pulls of `reference` fail with a registry "not found" carrying `message`.
    pub fn fail_pulls(&self, reference: &str, message: &str) {
        let name = ImageRef::parse(reference).expect("valid reference").to_string();
        self.state.lock().unwrap().pull_errors.insert(name, message.to_string());
    }

    /// The container's process exits with `code` (as if it ended by itself).
    pub fn exit(&self, id: &str, code: u32) {
        let mut st = self.state.lock().unwrap();
        if let Some(ev) = Self::exit_locked(&mut st, id, code) {
            let _ = self.exits.send(ev);
        }
    }

    fn exit_locked(st: &mut State, id: &str, code: u32) -> Option<ExitEvent> {
        let c = st.containers.get_mut(id)?;
        let t = c.task.as_mut()?;
        if t.state == TaskState::Stopped {
            return None;
        }
        let status = ExitStatus {
            code,
            exited_at: Some(SystemTime::now()),
        };
        t.state = TaskState::Stopped;
        t.exit = Some(status);
        Some(ExitEvent {
            id: id.to_string(),
            pid: t.pid,
            status,
        })
    }

    /// The container ignores catchable signals: `stop` ends in SIGKILL (137).
    pub fn ignore_signals(&self, id: &str) {
        if let Some(c) = self.state.lock().unwrap().containers.get_mut(id) {
            c.ignores_signals = true;
        }
    }

    /// What `exec` in `id` returns (default: exit 0, no output).
    pub fn set_exec_result(&self, id: &str, out: ExecOutput) {
        self.state.lock().unwrap().exec_results.insert(id.to_string(), out);
    }

    pub fn append_log(&self, id: &str, line: &str) {
        self.state
            .lock()
            .unwrap()
            .logs
            .entry(id.to_string())
            .or_default()
            .push(line.to_string());
    }

    pub fn calls(&self) -> Vec<FakeCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The spec a container was created with.
    pub fn spec(&self, id: &str) -> Option<ContainerSpec> {
        self.state.lock().unwrap().containers.get(id).map(|c| c.spec.clone())
    }

    fn status_of(id: &str, c: &FakeContainer) -> ContainerStatus {
        ContainerStatus {
            id: id.to_string(),
            image: c.image.clone(),
            labels: c.spec.labels.clone(),
            task: c.task.clone(),
        }
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn pull(&self, reference: &str, _auth: Option<&Credentials>) -> Result<ImageInfo> {
        let name = ImageRef::parse(reference)?.to_string();
        let mut st = self.state.lock().unwrap();
        st.calls.push(FakeCall::Pull(name.clone()));
        let fail = |m: &str| RuntimeError::Pull {
            image: reference.to_string(),
            source: PullError::NotFound(m.to_string()),
        };
        if let Some(m) = st.pull_errors.get(&name) {
            return Err(fail(m));
        }
        let config = st
            .registry
            .get(&name)
            .cloned()
            .ok_or_else(|| fail("manifest unknown"))?;
        let i = info(&name, config);
        st.images.insert(name, i.clone());
        Ok(i)
    }

    async fn ensure_image(&self, reference: &str, auth: Option<&Credentials>) -> Result<ImageInfo> {
        if let Some(i) = self.image(reference).await? {
            return Ok(i);
        }
        self.pull(reference, auth).await
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let name = ImageRef::parse(reference)?.to_string();
        Ok(self.state.lock().unwrap().images.get(&name).cloned())
    }

    async fn import(&self, archive: &Path, name: Option<&str>) -> Result<Vec<ImageInfo>> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(FakeCall::Import(archive.display().to_string()));
        let Some(n) = name else {
            return Err(RuntimeError::Import {
                path: archive.to_path_buf(),
                reason: "the fake imports only named archives".into(),
            });
        };
        let n = ImageRef::parse(n)?.to_string();
        let i = info(&n, ImageConfig::default());
        st.images.insert(n, i.clone());
        Ok(vec![i])
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<()> {
        super::spec::validate(spec)?;
        let name = ImageRef::parse(&spec.image)?.to_string();
        let mut st = self.state.lock().unwrap();
        st.calls.push(FakeCall::Create(spec.id.clone()));
        let image = st
            .images
            .get(&name)
            .cloned()
            .ok_or_else(|| RuntimeError::ImageNotFound {
                image: spec.image.clone(),
            })?;
        super::spec::process_args(spec, &image.config)?;
        if st.containers.contains_key(&spec.id) {
            return Err(RuntimeError::AlreadyExists { id: spec.id.clone() });
        }
        st.containers.insert(
            spec.id.clone(),
            FakeContainer {
                spec: spec.clone(),
                image: name,
                task: None,
                ignores_signals: false,
            },
        );
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(FakeCall::Start(id.to_string()));
        st.next_pid += 1;
        let pid = st.next_pid;
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        if let Some(t) = &c.task {
            if t.state == TaskState::Running {
                return Ok(t.pid);
            }
        }
        c.task = Some(TaskStatus {
            state: TaskState::Running,
            pid,
            exit: None,
        });
        Ok(pid)
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(FakeCall::Kill(id.to_string(), signal));
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        if c.task.as_ref().is_none_or(|t| t.state != TaskState::Running) {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        if signal == libc::SIGKILL || !c.ignores_signals {
            if let Some(ev) = Self::exit_locked(&mut st, id, 128 + signal as u32) {
                let _ = self.exits.send(ev);
            }
        }
        Ok(())
    }

    async fn stop(&self, id: &str, signal: i32, _grace: Duration) -> Result<Option<ExitStatus>> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(FakeCall::Stop(id.to_string(), signal));
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        let Some(t) = &c.task else {
            return Ok(None);
        };
        if t.state == TaskState::Stopped {
            return Ok(t.exit);
        }
        let sig = if c.ignores_signals { libc::SIGKILL } else { signal };
        let ev = Self::exit_locked(&mut st, id, 128 + sig as u32);
        let status = ev.as_ref().map(|e| e.status);
        if let Some(ev) = ev {
            let _ = self.exits.send(ev);
        }
        Ok(status)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(FakeCall::Delete(id.to_string()));
        if let Some(ev) = Self::exit_locked(&mut st, id, 137) {
            let _ = self.exits.send(ev);
        }
        st.containers.remove(id);
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<ContainerStatus> {
        let st = self.state.lock().unwrap();
        st.containers
            .get(id)
            .map(|c| Self::status_of(id, c))
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ContainerStatus>> {
        let st = self.state.lock().unwrap();
        Ok(st
            .containers
            .iter()
            .filter(|(_, c)| labels.iter().all(|(k, v)| c.spec.labels.get(k) == Some(v)))
            .map(|(id, c)| Self::status_of(id, c))
            .collect())
    }

    async fn wait(&self, id: &str) -> Result<ExitStatus> {
        let mut rx = self.exits.subscribe();
        {
            let st = self.state.lock().unwrap();
            let c = st
                .containers
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
            match &c.task {
                None => return Err(RuntimeError::NotRunning { id: id.to_string() }),
                Some(t) if t.state == TaskState::Stopped => return Ok(t.exit.expect("stopped has exit")),
                Some(_) => {}
            }
        }
        loop {
            match rx.recv().await {
                Ok(ev) if ev.id == id => return Ok(ev.status),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(RuntimeError::NotRunning { id: id.to_string() })
                }
            }
        }
    }

    async fn exit_events(&self) -> Result<ExitStream> {
        let rx = self.exits.subscribe();
        let s = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((Ok(ev), rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(s.boxed())
    }

    async fn exec(&self, id: &str, command: &[String], _timeout: Duration) -> Result<ExecOutput> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(FakeCall::Exec(id.to_string(), command.to_vec()));
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        if c.task.as_ref().is_none_or(|t| t.state != TaskState::Running) {
            return Err(RuntimeError::NotRunning { id: id.to_string() });
        }
        Ok(st.exec_results.get(id).cloned().unwrap_or(ExecOutput {
            exit_code: 0,
            stdout: vec![],
            stderr: vec![],
        }))
    }

    async fn logs(&self, id: &str, options: LogOptions) -> Result<LogStream> {
        let st = self.state.lock().unwrap();
        let lines = st.logs.get(id).cloned().unwrap_or_default();
        let skip = options.tail.map_or(0, |n| lines.len().saturating_sub(n));
        let lines: Vec<Result<String>> = lines.into_iter().skip(skip).map(Ok).collect();
        Ok(futures::stream::iter(lines).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lifecycle_and_events() {
        let rt = FakeRuntime::new();
        rt.add_registry_image(
            "example.com/app:1",
            ImageConfig {
                cmd: vec!["serve".into()],
                ..Default::default()
            },
        );
        let e = rt.pull("example.com/app:2", None).await.unwrap_err();
        assert_eq!(e.to_string(), "pull example.com/app:2: manifest unknown");
        rt.pull("example.com/app:1", None).await.unwrap();
        let mut spec = ContainerSpec {
            id: "c1".into(),
            image: "example.com/app:1".into(),
            ..Default::default()
        };
        spec.labels.insert("warren.node".into(), "n1".into());
        let mut events = rt.exit_events().await.unwrap();
        let pid = rt.run(&spec).await.unwrap();
        let found = rt.list(&spec.labels).await.unwrap();
        assert_eq!(found[0].task.as_ref().unwrap().pid, pid);
        rt.exit("c1", 3);
        assert_eq!(rt.wait("c1").await.unwrap().code, 3);
        assert_eq!(events.next().await.unwrap().unwrap().status.code, 3);
        rt.start("c1").await.unwrap();
        rt.ignore_signals("c1");
        let st = rt.stop("c1", libc::SIGTERM, Duration::from_secs(1)).await.unwrap();
        assert_eq!(st.unwrap().code, 137);
        rt.delete("c1").await.unwrap();
        assert!(rt.list(&BTreeMap::new()).await.unwrap().is_empty());
        assert!(rt.calls().contains(&FakeCall::Delete("c1".into())));
    }

    #[tokio::test]
    async fn create_needs_the_image() {
        let rt = FakeRuntime::new();
        let spec = ContainerSpec {
            id: "c1".into(),
            image: "example.com/app:1".into(),
            ..Default::default()
        };
        let e = rt.create(&spec).await.unwrap_err();
        assert_eq!(e.to_string(), "image example.com/app:1 not found; pull it first");
    }
}
