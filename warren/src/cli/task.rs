//! `warren task ...`: inspect one task, follow its output; and the log printer that
//! `service logs` shares.

use super::args::{Format, TaskCmd};
use super::client::{call, status_error, Client};
use super::render::services::TaskView;
use super::render::{self, emit, json, line};
use anyhow::Result;
use warren_proto::v1 as pb;

pub async fn run(c: &mut Client, cmd: TaskCmd) -> Result<()> {
    match cmd {
        TaskCmd::Inspect { task, format } => {
            let t = call(c.get_task(pb::GetTaskRequest { task })).await?;
            let names = super::node::names(c).await?;
            let view = TaskView::from_pb(t, &names)?;
            if format == Format::Json {
                emit(&json(&view)?)?;
            } else {
                emit(&render::services::tasks_table(std::slice::from_ref(&view)))?;
            }
        }
        TaskCmd::Logs { task, opts } => {
            let stream = call(c.task_logs(pb::TaskLogsRequest {
                task,
                follow: opts.follow,
                tail: opts.tail.unwrap_or(0),
            }))
            .await?;
            print_logs(stream, false).await?;
        }
    }
    Ok(())
}

/// Prints log lines as they arrive, each prefixed `TASK@NODE | ` when `prefix`.
pub async fn print_logs(mut stream: tonic::Streaming<pb::LogLine>, prefix: bool) -> Result<()> {
    while let Some(l) = stream.message().await.map_err(status_error)? {
        if prefix {
            line(&format!("{}@{} | {}", l.task_name, l.node_name, l.line))?;
        } else {
            line(&l.line)?;
        }
    }
    Ok(())
}
