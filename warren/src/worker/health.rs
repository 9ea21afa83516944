//! Health probes of a running task: the service's check, or else the image's
//! HEALTHCHECK, run every interval; the result after `retries` consecutive failures
//! (failures during the start period do not count) is `unhealthy`. Probes reach the
//! task at its own address from the node, or run inside it (exec).

use crate::model::{HealthCheck, HealthTest};
use crate::runtime::{self, ContainerRuntime};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One way of probing, whatever its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Exec(Vec<String>),
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

/// The check that applies: the service's (unless it disables checks), else the
/// image's. None: no check.
pub fn plan(service: Option<&HealthCheck>, image: Option<&runtime::Healthcheck>) -> Option<Plan> {
    if let Some(h) = service {
        let probe = match &h.test {
            HealthTest::Disabled => return None,
            HealthTest::Cmd(c) => Probe::Exec(vec!["/bin/sh".into(), "-c".into(), c.clone()]),
            HealthTest::Http { port, path } => Probe::Http {
                port: *port,
                path: path.clone(),
            },
            HealthTest::Tcp { port } => Probe::Tcp { port: *port },
        };
        return Some(Plan {
            probe,
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
            retries: h.retries.max(1),
            start_period: Duration::from_millis(h.start_period_ms),
        });
    }
    let h = image?;
    let probe = match &h.test {
        runtime::HealthTest::None => return None,
        runtime::HealthTest::Exec(args) if args.is_empty() => return None,
        runtime::HealthTest::Exec(args) => Probe::Exec(args.clone()),
        runtime::HealthTest::Shell(cmd) => Probe::Exec(vec!["/bin/sh".into(), "-c".into(), cmd.clone()]),
    };
    let or = |d: Duration, default: u64| if d.is_zero() { Duration::from_secs(default) } else { d };
    Some(Plan {
        probe,
        interval: or(h.interval, 30),
        timeout: or(h.timeout, 30),
        retries: if h.retries == 0 { 3 } else { h.retries },
        start_period: h.start_period,
    })
}

/// Why a probe failed; the message becomes the task's status message.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Exec(#[from] crate::runtime::RuntimeError),
    #[error("exit code {code}: {output}")]
    Exit { code: u32, output: String },
    #[error("tcp {addr}:{port}: {source}")]
    Tcp {
        addr: Ipv4Addr,
        port: u16,
        source: std::io::Error,
    },
    #[error("http {addr}:{port}: {source}")]
    Http {
        addr: Ipv4Addr,
        port: u16,
        source: std::io::Error,
    },
    #[error("http {addr}:{port}{path}: not an HTTP answer")]
    NotHttp { addr: Ipv4Addr, port: u16, path: String },
    #[error("http {addr}:{port}{path}: status {code}")]
    Status {
        addr: Ipv4Addr,
        port: u16,
        path: String,
        code: u16,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Runs one probe; Err says why it failed.
pub async fn probe(rt: &dyn ContainerRuntime, container: &str, addr: Ipv4Addr, plan: &Plan) -> Result<(), ProbeError> {
    let attempt = async {
        match &plan.probe {
            Probe::Exec(cmd) => {
                let out = rt.exec(container, cmd, plan.timeout).await?;
                if out.exit_code == 0 {
                    Ok(())
                } else {
                    let text = String::from_utf8_lossy(if out.stderr.is_empty() {
                        &out.stdout
                    } else {
                        &out.stderr
                    });
                    Err(ProbeError::Exit {
                        code: out.exit_code,
                        output: text.trim().to_string(),
                    })
                }
            }
            Probe::Tcp { port } => tokio::net::TcpStream::connect((addr, *port))
                .await
                .map(|_| ())
                .map_err(|source| ProbeError::Tcp {
                    addr,
                    port: *port,
                    source,
                }),
            Probe::Http { port, path } => http_get(addr, *port, path).await,
        }
    };
    match tokio::time::timeout(plan.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(plan.timeout)),
    }
}

async fn http_get(addr: Ipv4Addr, port: u16, path: &str) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Http { addr, port, source };
    let mut s = tokio::net::TcpStream::connect((addr, port)).await.map_err(io)?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}:{port}\r\nUser-Agent: warren-health\r\n\r\n").as_bytes())
        .await
        .map_err(io)?;
    let mut head = vec![0u8; 64];
    let n = s.read(&mut head).await.map_err(io)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ProbeError::NotHttp {
            addr,
            port,
            path: path.to_string(),
        })?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            addr,
            port,
            path: path.to_string(),
            code,
        })
    }
}

/// Consecutive-failure accounting.
#[derive(Debug, Default)]
pub struct Tracker {
    failures: u32,
    pub healthy_once: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Starting,
    Healthy,
    /// Still healthy (or starting) but failing.
    Failing(u32),
    Unhealthy,
}

impl Tracker {
    pub fn record(&mut self, ok: bool, in_start_period: bool, retries: u32) -> Verdict {
        if ok {
            self.failures = 0;
            self.healthy_once = true;
            return Verdict::Healthy;
        }
        if in_start_period && !self.healthy_once {
            return Verdict::Starting;
        }
        self.failures += 1;
        if self.failures >= retries {
            Verdict::Unhealthy
        } else {
            Verdict::Failing(self.failures)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_check_wins_and_can_disable_the_image_check() {
        let image = runtime::Healthcheck {
            test: runtime::HealthTest::Shell("wget -q localhost".into()),
            interval: Duration::ZERO,
            timeout: Duration::from_secs(2),
            start_period: Duration::ZERO,
            retries: 0,
        };
        let p = plan(None, Some(&image)).unwrap();
        assert_eq!(
            p.probe,
            Probe::Exec(vec!["/bin/sh".into(), "-c".into(), "wget -q localhost".into()])
        );
        assert_eq!(
            (p.interval, p.timeout, p.retries),
            (Duration::from_secs(30), Duration::from_secs(2), 3)
        );
        let svc = HealthCheck::new(HealthTest::Tcp { port: 7 });
        assert_eq!(plan(Some(&svc), Some(&image)).unwrap().probe, Probe::Tcp { port: 7 });
        let off = HealthCheck::new(HealthTest::Disabled);
        assert_eq!(plan(Some(&off), Some(&image)), None);
        assert_eq!(plan(None, None), None);
    }

    #[test]
    fn failures_count_after_the_start_period_or_a_first_success() {
        let mut t = Tracker::default();
        assert_eq!(t.record(false, true, 2), Verdict::Starting);
        assert_eq!(t.record(false, false, 2), Verdict::Failing(1));
        assert_eq!(t.record(true, false, 2), Verdict::Healthy);
        assert_eq!(
            t.record(false, true, 2),
            Verdict::Failing(1),
            "after a success the start period is over"
        );
        assert_eq!(t.record(false, false, 2), Verdict::Unhealthy);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Unavailable"
                };
                let _ = s.write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes()).await;
            }
        });
        let rt = crate::runtime::FakeRuntime::new();
        let mk = |probe| Plan {
            probe,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            retries: 1,
            start_period: Duration::ZERO,
        };
        let lo = Ipv4Addr::LOCALHOST;
        assert!(probe(
            &rt,
            "c",
            lo,
            &mk(Probe::Http {
                port,
                path: "/ok".into()
            })
        )
        .await
        .is_ok());
        let e = probe(
            &rt,
            "c",
            lo,
            &mk(Probe::Http {
                port,
                path: "/bad".into(),
            }),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("status 503"), "{e}");
        assert!(probe(&rt, "c", lo, &mk(Probe::Tcp { port })).await.is_ok());
    }
}
