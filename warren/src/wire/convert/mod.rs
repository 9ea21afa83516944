//! Conversions between `warren.v1` protobuf messages and Warren's own types, one
//! file per family (`service`, `task`, `node`, `endpoints`, `assignment`,
//! `objects`, `dataplane`). This is the only place that knows both: handlers, the agent and
//! the CLI convert here and work with `model` types everywhere else. Conversions
//! from protobuf validate and report the offending field.

mod assignment;
mod container;
mod dataplane;
mod endpoints;
mod ingress;
mod manifest;
mod node;
mod objects;
mod service;
mod task;

pub use assignment::*;
pub use dataplane::*;
pub use endpoints::*;
pub use ingress::*;
pub use manifest::*;
pub use node::*;
pub use objects::*;
pub use service::*;
pub use task::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use warren_proto::v1 as pb;

    #[test]
    fn specs_round_trip() {
        let spec = ServiceSpec {
            image: "reg:5000/app:1".into(),
            mode: ServiceMode::Replicated { replicas: 3 },
            env: vec!["A=1".into()],
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "true".into()],
            constraints: vec![Constraint::parse("c", "node.labels.zone==edge").unwrap()],
            reservations: Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 64 << 20,
            },
            limits: Resources {
                nano_cpus: 1_000_000_000,
                memory_bytes: 128 << 20,
            },
            ports: vec![PortConfig {
                published: 8080,
                target: 80,
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
            }],
            labels: [("a".to_string(), "b".to_string())].into_iter().collect(),
            workdir: "/srv".into(),
            user: "1000:1000".into(),
            mounts: vec![
                Mount::parse("m", "type=volume,source=data,target=/data").unwrap(),
                Mount::parse("m", "type=bind,source=/etc,target=/host-etc,ro").unwrap(),
                Mount::parse("m", "type=tmpfs,target=/scratch").unwrap(),
            ],
            secrets: vec![SecretRef::parse("s", "source=db,target=/etc/db").unwrap()],
            configs: vec![ConfigRef {
                name: "conf".into(),
                target: "/etc/app.conf".into(),
                mode: 0o440,
            }],
            health: Some(HealthCheck {
                test: HealthTest::Http {
                    port: 8080,
                    path: "/healthz".into(),
                },
                interval_ms: 1000,
                timeout_ms: 500,
                retries: 2,
                start_period_ms: 3000,
            }),
            restart: RestartPolicy {
                condition: RestartCondition::OnFailure,
                delay_ms: 100,
                max_attempts: 3,
            },
            stop_signal: "SIGQUIT".into(),
            stop_grace_ms: 0,
            drain_timeout_ms: 5_000,
            reschedule_after_ms: 0,
            endpoint_mode: EndpointMode::Dnsrr,
            endpoint_locality: EndpointLocality::PreferLocal,
            rate_limit: Some(RateLimit {
                per_sec: 50,
                burst: 100,
            }),
            container: ContainerOptions {
                hostname: "web".into(),
                init: true,
                read_only: true,
                cap_add: vec!["CAP_NET_ADMIN".into()],
                cap_drop: vec!["ALL".into()],
                ulimits: vec![Ulimit::parse("u", "nofile=1024:2048").unwrap()],
                sysctls: [("net.core.somaxconn".to_string(), "512".to_string())].into(),
                pids_limit: 64,
                dns: vec!["10.0.0.2".parse().unwrap(), "fd00::53".parse().unwrap()],
            },
            update: UpdateConfig {
                parallelism: 0,
                delay_ms: 1_500,
                failure_action: FailureAction::Rollback,
                monitor_ms: 0,
                max_failure_ratio: 0.25,
                order: Some(UpdateOrder::StopFirst),
                strategy: crate::model::UpdateStrategy::Canary,
                blue_green_hold_ms: 5_000,
                canary_steps: crate::model::CanarySteps::parse("canary-steps", "5,100").unwrap(),
                canary_interval_ms: 2_000,
                canary_max_failure_ratio: 0.2,
            },
            rollback: UpdateConfig {
                order: Some(UpdateOrder::StartFirst),
                ..Default::default()
            },
            force_update: 3,
        };
        assert_eq!(spec_from_pb(spec_to_pb(&spec)).unwrap(), spec);
        // A spec from an older client has no update configs: Swarm's defaults.
        let mut old = spec_to_pb(&spec);
        old.update = None;
        old.rollback = None;
        let old = spec_from_pb(old).unwrap();
        assert_eq!(
            (old.update, old.rollback),
            (UpdateConfig::default(), UpdateConfig::default())
        );
        // Without container options the wire field stays unset (older peers).
        assert_eq!(spec_to_pb(&ServiceSpec::default()).container, None);
        for test in [
            HealthTest::Cmd("true".into()),
            HealthTest::Tcp { port: 7 },
            HealthTest::Disabled,
        ] {
            let mut s = spec.clone();
            s.health = Some(HealthCheck::new(test));
            assert_eq!(spec_from_pb(spec_to_pb(&s)).unwrap(), s);
        }
    }

    #[test]
    fn replicas_on_a_global_service_are_refused() {
        let p = pb::ServiceSpec {
            image: "x".into(),
            mode: pb::ServiceMode::Global as i32,
            replicas: 2,
            ..Default::default()
        };
        assert_eq!(spec_from_pb(p).unwrap_err().field, "replicas");
    }

    #[test]
    fn bad_wire_values_name_their_field() {
        let p = pb::ServiceSpec {
            image: "x".into(),
            constraints: vec!["bogus".into()],
            ..Default::default()
        };
        assert_eq!(spec_from_pb(p).unwrap_err().field, "constraint");
        let p = pb::ServiceSpec {
            image: "x".into(),
            ports: vec![pb::PortConfig {
                published: 70000,
                target: 80,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(spec_from_pb(p).unwrap_err().field, "publish");
        let p = pb::ServiceSpec {
            image: "x".into(),
            mode: 7,
            ..Default::default()
        };
        assert_eq!(spec_from_pb(p).unwrap_err().field, "mode");
        let container = |o: pb::ContainerOptions| pb::ServiceSpec {
            image: "x".into(),
            container: Some(o),
            ..Default::default()
        };
        for (o, field) in [
            (
                pb::ContainerOptions {
                    sysctls: [("kernel.panic".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "sysctl",
            ),
            (
                pb::ContainerOptions {
                    cap_add: vec!["CAP_NOPE".into()],
                    ..Default::default()
                },
                "cap-add",
            ),
            (
                pb::ContainerOptions {
                    dns: vec!["not-an-ip".into()],
                    ..Default::default()
                },
                "dns",
            ),
            (
                pb::ContainerOptions {
                    ulimits: vec![pb::Ulimit {
                        name: "nofile".into(),
                        soft: 2,
                        hard: 1,
                    }],
                    ..Default::default()
                },
                "ulimit",
            ),
        ] {
            assert_eq!(spec_from_pb(container(o)).unwrap_err().field, field);
        }
    }

    #[test]
    fn task_status_keeps_the_exit_code_presence() {
        let s = TaskStatus {
            state: TaskState::Failed,
            exit_code: Some(0),
            ..Default::default()
        };
        assert_eq!(task_status_from_pb(task_status_to_pb(&s)), s);
        let s = TaskStatus::default();
        assert_eq!(task_status_from_pb(task_status_to_pb(&s)).exit_code, None);
    }
}
