//! Exec in a running container, as health checks do: a process from the
//! container's own OCI spec, its output through a pair of FIFOs (capped), a
//! timeout that kills it.

use super::{join_wait, Containerd, KILL_WAIT, PROCESS_TYPE_URL};
use crate::runtime::client::unique;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::spec;
use crate::runtime::{ExecOutput, EXEC_OUTPUT_LIMIT};
use containerd_client::services::v1::{DeleteProcessRequest, ExecProcessRequest, StartRequest};
use prost_types::Any;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tonic::Code;

impl Containerd {
    pub(super) async fn exec_in(&self, id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput> {
        if command.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                field: "command".into(),
                reason: "exec needs a command".into(),
            });
        }
        let container = self.get_container(id).await?;
        let spec: serde_json::Value = container
            .spec
            .as_ref()
            .and_then(|a| serde_json::from_slice(&a.value).ok())
            .ok_or_else(|| RuntimeError::Containerd {
                op: "exec",
                object: id.to_string(),
                code: Code::DataLoss,
                message: "container has no readable OCI spec".into(),
            })?;
        let process = spec::exec_process(&spec, command);
        let exec_id = format!("exec-{}", unique());
        let dir = self.config.exec_dir.join(&exec_id);
        let fifos =
            Fifos::create(&dir).map_err(|e| RuntimeError::io(format!("create exec fifos in {}", dir.display()), e))?;
        let result = self.exec_with(id, &exec_id, &process, &fifos, command, timeout).await;
        drop(fifos);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn exec_with(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        fifos: &Fifos,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let (stdout_rx, stdout_keep) = fifos
            .open(&fifos.stdout)
            .map_err(|e| RuntimeError::io("open exec stdout", e))?;
        let (stderr_rx, stderr_keep) = fifos
            .open(&fifos.stderr)
            .map_err(|e| RuntimeError::io("open exec stderr", e))?;
        self.cd
            .tasks()
            .exec(self.cd.req(ExecProcessRequest {
                container_id: id.to_string(),
                stdin: String::new(),
                stdout: fifos.stdout.to_string_lossy().into_owned(),
                stderr: fifos.stderr.to_string_lossy().into_owned(),
                terminal: false,
                spec: Some(Any {
                    type_url: PROCESS_TYPE_URL.to_string(),
                    value: serde_json::to_vec(process).expect("serializable"),
                }),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(|s| match s.code() {
                Code::NotFound | Code::FailedPrecondition => RuntimeError::NotRunning { id: id.to_string() },
                _ => RuntimeError::grpc("exec", id, s),
            })?;
        let out_reader = tokio::spawn(read_capped(stdout_rx));
        let err_reader = tokio::spawn(read_capped(stderr_rx));
        let waiter = self.spawn_wait(id, exec_id);
        let started = self
            .cd
            .tasks()
            .start(self.cd.req(StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        // The shim opened its write ends while starting; ours would keep the readers
        // from ever seeing end-of-file.
        drop(stdout_keep);
        drop(stderr_keep);
        if let Err(s) = started {
            waiter.abort();
            self.delete_exec(id, exec_id).await;
            return Err(RuntimeError::grpc("start exec", id, s));
        }
        let mut waiter = waiter;
        let status = match tokio::time::timeout(timeout, &mut waiter).await {
            Ok(r) => join_wait(id, r),
            Err(_) => {
                let _ = self.kill_process(id, exec_id, libc::SIGKILL, false).await;
                let _ = tokio::time::timeout(KILL_WAIT, waiter).await;
                self.delete_exec(id, exec_id).await;
                return Err(RuntimeError::ExecTimeout {
                    id: id.to_string(),
                    command: command.to_vec(),
                    timeout,
                });
            }
        };
        // Deleting the process makes the shim flush and close its copy of the output.
        self.delete_exec(id, exec_id).await;
        let status = status?;
        let collect = |h: tokio::task::JoinHandle<Vec<u8>>| async move {
            tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default()
        };
        Ok(ExecOutput {
            exit_code: status.code,
            stdout: collect(out_reader).await,
            stderr: collect(err_reader).await,
        })
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) {
        if let Err(s) = self
            .cd
            .tasks()
            .delete_process(self.cd.req(DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
        {
            if s.code() != Code::NotFound {
                tracing::warn!(container = id, exec_id, error = %s.message(), "delete exec process");
            }
        }
    }
}

/// FIFOs for an exec's stdout and stderr, removed on drop.
struct Fifos {
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Fifos {
    fn create(dir: &Path) -> std::io::Result<Fifos> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let f = Fifos {
            dir: dir.to_path_buf(),
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
        };
        for p in [&f.stdout, &f.stderr] {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(f)
    }

    /// Opens the read end, plus a write end we hold until the shim has opened its own,
    /// since a FIFO without writers reads as end-of-file.
    fn open(&self, path: &Path) -> std::io::Result<(tokio::net::unix::pipe::Receiver, std::fs::File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let rx = tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)?;
        let keep = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok((rx, keep))
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads to EOF keeping the first [`EXEC_OUTPUT_LIMIT`] bytes (draining the rest so
/// the process never blocks on a full pipe).
async fn read_capped(mut rx: tokio::net::unix::pipe::Receiver) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}
