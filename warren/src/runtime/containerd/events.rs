//! Exit events: one subscription to containerd's `/tasks/exit` topic of Warren's
//! namespace, proven live before it is handed out; exits of exec'd processes are
//! left out.

use super::{Containerd, PROBE_TOPIC};
use crate::runtime::client::{system_time, PROBE_TIMEOUT};
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::{ExitEvent, ExitStatus, ExitStream};
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use futures::StreamExt;
use prost::Message;
use std::time::Duration;
use tonic::Code;

impl Containerd {
    pub(super) async fn subscribe_exits(&self) -> Result<ExitStream> {
        let filters = vec![
            format!("topic==\"/tasks/exit\",namespace=={}", self.config.namespace),
            format!("topic==\"{PROBE_TOPIC}\""),
        ];
        // containerd sends a stream's headers only with its first event, and tonic
        // returns the stream only with the headers: publish probe events until one
        // comes back, which also proves the subscription is live from here on.
        let cd = self.cd.clone();
        let mut subscribe = tokio::spawn(async move { cd.events().subscribe(SubscribeRequest { filters }).await });
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT * 2;
        let stream = loop {
            let probe = containerd_client::to_any(&containerd_client::events::TaskOom {
                container_id: String::new(),
            });
            let _ = self
                .cd
                .events()
                .publish(self.cd.req(PublishRequest {
                    topic: PROBE_TOPIC.to_string(),
                    event: Some(probe),
                }))
                .await;
            match tokio::time::timeout(Duration::from_millis(100), &mut subscribe).await {
                Ok(Ok(Ok(r))) => break r.into_inner(),
                Ok(Ok(Err(s))) => return Err(RuntimeError::grpc("subscribe", "/tasks/exit", s)),
                Ok(Err(e)) => {
                    return Err(RuntimeError::Containerd {
                        op: "subscribe",
                        object: "/tasks/exit".into(),
                        code: Code::Cancelled,
                        message: e.to_string(),
                    })
                }
                Err(_) if tokio::time::Instant::now() > deadline => {
                    subscribe.abort();
                    return Err(RuntimeError::Containerd {
                        op: "subscribe",
                        object: "/tasks/exit".into(),
                        code: Code::DeadlineExceeded,
                        message: "no event came back from containerd".into(),
                    });
                }
                Err(_) => {}
            }
        };
        let s = stream.filter_map(|envelope| async move {
            let envelope = match envelope {
                Ok(e) => e,
                Err(s) => return Some(Err(RuntimeError::grpc("receive event", "/tasks/exit", s))),
            };
            if envelope.topic != "/tasks/exit" {
                return None;
            }
            let any = envelope.event?;
            let exit = containerd_client::events::TaskExit::decode(any.value.as_slice()).ok()?;
            // Exits of exec'd processes carry their exec id; only init processes count.
            if exit.id != exit.container_id {
                return None;
            }
            Some(Ok(ExitEvent {
                id: exit.container_id,
                pid: exit.pid,
                status: ExitStatus {
                    code: exit.exit_status,
                    exited_at: system_time(exit.exited_at.as_ref()),
                },
            }))
        });
        Ok(s.boxed())
    }
}
