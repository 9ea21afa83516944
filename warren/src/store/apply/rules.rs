//! The rules that must hold across managers, decided here in apply rather than by an
//! API read followed by a write, so that two managers cannot race past them: the
//! secrets and volumes a spec names exist, nothing removes a secret or volume still
//! in use, and no two services publish the same port (per protocol, in any mode).

use crate::model::{ConfigObject, Protocol, Secret, Service, ServiceSpec, Volume};
use crate::store::error::User;
use crate::store::state::{ObjectKind, State};
use crate::store::ApplyError;

impl State {
    /// The secrets and volumes `spec` names must exist.
    pub(super) fn check_references(&self, spec: &ServiceSpec) -> Result<(), ApplyError> {
        for r in &spec.secrets {
            if !self.secrets.values().any(|x| x.name == r.name) {
                return Err(ApplyError::Missing {
                    kind: ObjectKind::Secret,
                    name: r.name.clone(),
                });
            }
        }
        for r in &spec.configs {
            if !self.configs.values().any(|x| x.name == r.name) {
                return Err(ApplyError::Missing {
                    kind: ObjectKind::Config,
                    name: r.name.clone(),
                });
            }
        }
        for v in spec.volume_names() {
            if !self.volumes.values().any(|x| x.name == v) {
                return Err(ApplyError::Missing {
                    kind: ObjectKind::Volume,
                    name: v.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The ports `spec` publishes that service `own` (None: a new service) does not
    /// hold yet must be free: no other service's stable or canary spec publishes them.
    /// A service keeps the ports it holds through any update, so that a state written
    /// before this rule (two services on one port) does not block its other changes.
    pub(super) fn check_ports(&self, spec: &ServiceSpec, own: Option<&str>) -> Result<(), ApplyError> {
        let own = own.and_then(|id| self.services.get(id));
        for p in &spec.ports {
            let key = (p.published, p.protocol);
            if own.is_some_and(|s| publishes(s, key)) {
                continue;
            }
            let daemon = self.nodes.values().find_map(|n| {
                n.daemon_ports()
                    .into_iter()
                    .find(|(port, proto, _)| *port == p.published && *proto == p.protocol)
                    .map(|(_, _, what)| (n.name.clone(), what))
            });
            if let Some((node, what)) = daemon {
                return Err(ApplyError::DaemonPortTaken {
                    port: p.published,
                    protocol: p.protocol,
                    node,
                    what,
                });
            }
            if p.protocol == Protocol::Tcp {
                if let Some(node) = self.ingress_node_on(p.published) {
                    return Err(ApplyError::IngressPortTaken {
                        port: p.published,
                        node: node.to_string(),
                    });
                }
            }
            let taken = self
                .services
                .values()
                .find(|s| own.is_none_or(|o| o.id != s.id) && publishes(s, key));
            if let Some(other) = taken {
                return Err(ApplyError::PortTaken {
                    port: p.published,
                    protocol: p.protocol,
                    service: other.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// No service (stable or canary) names the secret.
    pub(super) fn check_secret_unused(&self, secret: &Secret) -> Result<(), ApplyError> {
        let user = self
            .services
            .values()
            .find(|svc| specs(svc).any(|spec| spec.secrets.iter().any(|r| r.name == secret.name)));
        match user {
            Some(svc) => Err(ApplyError::InUse {
                kind: ObjectKind::Secret,
                name: secret.name.clone(),
                user: User::Service(svc.name.clone()),
            }),
            None => Ok(()),
        }
    }

    /// No service (stable or canary) names the config.
    pub(super) fn check_config_unused(&self, config: &ConfigObject) -> Result<(), ApplyError> {
        let user = self
            .services
            .values()
            .find(|svc| specs(svc).any(|spec| spec.configs.iter().any(|r| r.name == config.name)));
        match user {
            Some(svc) => Err(ApplyError::InUse {
                kind: ObjectKind::Config,
                name: config.name.clone(),
                user: User::Service(svc.name.clone()),
            }),
            None => Ok(()),
        }
    }

    /// No service (stable or canary) names the volume, and no task that mounts it is
    /// still stopping.
    pub(super) fn check_volume_unused(&self, volume: &Volume) -> Result<(), ApplyError> {
        let mounts = |spec: &ServiceSpec| spec.volume_names().any(|v| v == volume.name);
        let user = self
            .services
            .values()
            .find(|svc| specs(svc).any(mounts))
            .map(|svc| User::Service(svc.name.clone()))
            .or_else(|| {
                self.tasks
                    .values()
                    .find(|t| !t.status.state.is_terminal() && mounts(&t.spec))
                    .map(|t| User::Task(t.name()))
            });
        match user {
            Some(user) => Err(ApplyError::InUse {
                kind: ObjectKind::Volume,
                name: volume.name.clone(),
                user,
            }),
            None => Ok(()),
        }
    }
}

/// The specs a service runs: the stable one, and its canary's.
fn specs(svc: &Service) -> impl Iterator<Item = &ServiceSpec> {
    std::iter::once(&svc.spec).chain(svc.canary.as_ref().map(|c| &c.spec))
}

fn publishes(svc: &Service, (port, protocol): (u16, Protocol)) -> bool {
    specs(svc).any(|spec| spec.ports.iter().any(|p| p.published == port && p.protocol == protocol))
}

#[cfg(test)]
mod tests {
    use crate::model::{parse_publish, Mount, Protocol, SecretRef, Service, ServiceSpec, TaskState};
    use crate::store::fixtures::{secret, service, task, volume};
    use crate::store::{ApplyError, Command, ObjectKind, Rules, State, User};

    fn with_ports(id: &str, name: &str, ports: &[&str]) -> Service {
        let mut s = service(id, name);
        s.spec.ports = ports.iter().map(|p| parse_publish("publish", p).unwrap()).collect();
        s
    }

    fn create(service: Service) -> Command {
        Command::CreateService {
            service,
            rules: Rules::CURRENT,
        }
    }

    fn update(s: &State, id: &str, spec: ServiceSpec) -> Command {
        Command::UpdateService {
            id: id.into(),
            expected_version: s.services[id].version,
            spec,
            at_ms: 1,
            rules: Rules::CURRENT,
        }
    }

    fn canary(s: &State, id: &str, spec: ServiceSpec) -> Command {
        Command::StartCanary {
            id: id.into(),
            expected_version: s.services[id].version,
            spec,
            weight: 10,
            at_ms: 1,
            rules: Rules::CURRENT,
        }
    }

    fn rollback(id: &str) -> Command {
        Command::RollbackService {
            id: id.into(),
            at_ms: 1,
            rules: Rules::CURRENT,
        }
    }

    fn taken(port: u16, protocol: Protocol, service: &str) -> ApplyError {
        ApplyError::PortTaken {
            port,
            protocol,
            service: service.into(),
        }
    }

    /// Applies `cmd`, which must fail with `want` and change nothing.
    fn refused(s: &mut State, cmd: &Command, want: ApplyError) {
        let before = s.clone();
        let mut changes = vec![];
        assert_eq!(s.apply(cmd, &mut changes), Err(want), "{cmd:?}");
        assert!(*s == before, "a refused {} changed the state", cmd.kind());
        assert!(changes.is_empty(), "a refused {} reported {changes:?}", cmd.kind());
    }

    fn ok(s: &mut State, cmd: &Command) {
        s.apply(cmd, &mut vec![])
            .unwrap_or_else(|e| panic!("{}: {e}", cmd.kind()));
    }

    #[test]
    fn a_published_port_belongs_to_one_service_per_protocol_in_any_mode() {
        let mut s = State::default();
        ok(&mut s, &create(with_ports("a", "web", &["8080:80"])));
        let e = taken(8080, Protocol::Tcp, "web");
        refused(&mut s, &create(with_ports("b", "api", &["8080:81"])), e.clone());
        refused(
            &mut s,
            &create(with_ports("b", "api", &["mode=host,8080:80"])),
            e.clone(),
        );
        refused(&mut s, &create(with_ports("b", "api", &["9000:80", "8080:80"])), e);
        assert_eq!(
            taken(8080, Protocol::Tcp, "web").to_string(),
            "publish: port 8080/tcp is already published by service \"web\""
        );
        // The same number over UDP is another port.
        ok(&mut s, &create(with_ports("b", "dns", &["8080:53/udp"])));
        refused(
            &mut s,
            &create(with_ports("c", "dns2", &["mode=host,8080:53/udp"])),
            taken(8080, Protocol::Udp, "dns"),
        );
        // A host-mode port is held like any other.
        ok(&mut s, &create(with_ports("c", "edge", &["mode=host,9090:80"])));
        refused(
            &mut s,
            &create(with_ports("d", "other", &["9090:80"])),
            taken(9090, Protocol::Tcp, "edge"),
        );
        // Once the holder is gone, the port is free again.
        ok(
            &mut s,
            &Command::RemoveService {
                id: "a".into(),
                at_ms: 1,
            },
        );
        ok(&mut s, &create(with_ports("d", "api", &["8080:80"])));
    }

    #[test]
    fn a_nodes_own_listener_ports_cannot_be_published() {
        let mut s = State::default();
        let mut n = crate::store::fixtures::node("n1", "edge-1");
        n.addr = "10.0.0.1:2377".into();
        n.metrics_port = 9090;
        n.mesh = Some(crate::model::NodeMesh {
            endpoint: "10.0.0.1:51820".into(),
            ..Default::default()
        });
        ok(&mut s, &Command::AddNode { node: n });
        for (publish, message) in [
            (
                "2377:80",
                "publish: port 2377/tcp is the cluster port (--listen-addr) of node \"edge-1\"",
            ),
            (
                "9090:80",
                "publish: port 9090/tcp is the metrics port (--metrics-addr) of node \"edge-1\"",
            ),
            (
                "53:53/udp",
                "publish: port 53/udp is the DNS resolver of node \"edge-1\"",
            ),
            ("53:53", "publish: port 53/tcp is the DNS resolver of node \"edge-1\""),
            (
                "51820:51820/udp",
                "publish: port 51820/udp is the WireGuard mesh port (--mesh-port) of node \"edge-1\"",
            ),
        ] {
            let before = s.clone();
            let e = s
                .apply(&create(with_ports("a", "web", &[publish])), &mut vec![])
                .unwrap_err();
            assert_eq!(e.to_string(), message);
            assert_eq!(e.field(), Some("publish"));
            assert_eq!(s, before, "a refused create changed the state");
        }
        // The same numbers on the other protocol are free.
        ok(&mut s, &create(with_ports("a", "web", &["2377:80/udp", "51820:80"])));
    }

    #[test]
    fn updates_keep_their_own_ports_and_cannot_take_another_services() {
        let mut s = State::default();
        ok(&mut s, &create(with_ports("a", "web", &["8080:80"])));
        ok(&mut s, &create(with_ports("b", "api", &["8081:80"])));
        // Keeping its own port (another image, another target) is fine.
        let mut spec = s.services["a"].spec.clone();
        spec.image = "img:2".into();
        spec.ports[0].target = 8000;
        let cmd = update(&s, "a", spec);
        ok(&mut s, &cmd);
        // Taking web's is not, in either mode.
        let mut spec = s.services["b"].spec.clone();
        spec.ports.push(parse_publish("publish", "mode=host,8080:80").unwrap());
        let cmd = update(&s, "b", spec);
        refused(&mut s, &cmd, taken(8080, Protocol::Tcp, "web"));
        // Scaling never trips the check.
        ok(
            &mut s,
            &Command::ScaleService {
                id: "a".into(),
                replicas: 3,
                at_ms: 2,
            },
        );
        let mut spec = s.services["a"].spec.clone();
        spec.mode = crate::model::ServiceMode::Replicated { replicas: 5 };
        let cmd = update(&s, "a", spec);
        ok(&mut s, &cmd);
    }

    #[test]
    fn a_canary_holds_its_ports_and_cannot_take_another_services() {
        let mut s = State::default();
        ok(&mut s, &create(with_ports("a", "web", &["8080:80"])));
        ok(&mut s, &create(with_ports("b", "api", &["8081:80"])));
        let mut v2 = s.services["b"].spec.clone();
        v2.image = "img:2".into();
        v2.ports = vec![parse_publish("publish", "8080:80").unwrap()];
        let cmd = canary(&s, "b", v2);
        refused(&mut s, &cmd, taken(8080, Protocol::Tcp, "web"));
        // A canary that adds a port holds it: no other service can take it meanwhile.
        let mut v2 = s.services["a"].spec.clone();
        v2.image = "img:2".into();
        v2.ports.push(parse_publish("publish", "9000:90").unwrap());
        let cmd = canary(&s, "a", v2);
        ok(&mut s, &cmd);
        refused(
            &mut s,
            &create(with_ports("c", "late", &["9000:80"])),
            taken(9000, Protocol::Tcp, "web"),
        );
        // Promoting and rolling back the canary of a service never trips on its own ports.
        ok(
            &mut s,
            &Command::PromoteCanary {
                id: "a".into(),
                at_ms: 2,
            },
        );
        ok(&mut s, &rollback("a"));
        ok(&mut s, &rollback("a"));
        assert_eq!(s.services["a"].spec.ports.len(), 2);
    }

    #[test]
    fn a_rollback_cannot_take_back_a_port_another_service_took() {
        let mut s = State::default();
        ok(&mut s, &create(with_ports("a", "web", &["8080:80"])));
        let mut spec = s.services["a"].spec.clone();
        spec.ports = vec![parse_publish("publish", "8081:80").unwrap()];
        let cmd = update(&s, "a", spec);
        ok(&mut s, &cmd);
        ok(&mut s, &create(with_ports("b", "api", &["8080:80"])));
        refused(&mut s, &rollback("a"), taken(8080, Protocol::Tcp, "api"));
        // Dropping a canary frees, never claims: it always succeeds.
        let mut v3 = s.services["a"].spec.clone();
        v3.image = "img:3".into();
        let cmd = canary(&s, "a", v3);
        ok(&mut s, &cmd);
        ok(&mut s, &rollback("a"));
        assert!(s.services["a"].canary.is_none());
    }

    #[test]
    fn a_state_that_already_shares_a_port_does_not_block_other_changes() {
        // Written before the rule: two services on 8080/tcp.
        let mut s = State::default();
        for svc in [
            with_ports("a", "web", &["8080:80"]),
            with_ports("b", "api", &["8080:80"]),
        ] {
            ok(
                &mut s,
                &Command::CreateService {
                    service: svc,
                    rules: Rules::Unchecked,
                },
            );
        }
        let mut spec = s.services["b"].spec.clone();
        spec.image = "img:2".into();
        let cmd = update(&s, "b", spec);
        ok(&mut s, &cmd);
        let mut spec = s.services["b"].spec.clone();
        spec.ports.clear();
        let cmd = update(&s, "b", spec);
        ok(&mut s, &cmd);
        // Once let go of, the port is web's alone.
        let mut spec = s.services["b"].spec.clone();
        spec.ports = vec![parse_publish("publish", "8080:80").unwrap()];
        let cmd = update(&s, "b", spec);
        refused(&mut s, &cmd, taken(8080, Protocol::Tcp, "web"));
    }

    #[test]
    fn two_creates_of_one_port_in_a_batch_keep_the_first() {
        let mut s = State::default();
        let mut changes = vec![];
        let batch = Command::Batch(vec![
            create(with_ports("a", "web", &["8080:80"])),
            create(with_ports("b", "api", &["8080:80"])),
        ]);
        assert_eq!(s.apply(&batch, &mut changes), Err(taken(8080, Protocol::Tcp, "web")));
        assert_eq!(s.services.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(changes.len(), 1, "{changes:?}");
    }

    #[test]
    fn specs_may_only_name_secrets_and_volumes_that_exist() {
        let mut s = State::default();
        let mut db = service("a", "db");
        db.spec.secrets = vec![SecretRef::parse("secret", "pass").unwrap()];
        db.spec.mounts = vec![Mount::parse("mount", "type=volume,source=data,target=/data").unwrap()];
        let missing = |kind, name: &str| ApplyError::Missing {
            kind,
            name: name.into(),
        };
        refused(&mut s, &create(db.clone()), missing(ObjectKind::Secret, "pass"));
        ok(
            &mut s,
            &Command::CreateSecret {
                secret: secret("s1", "pass"),
            },
        );
        refused(&mut s, &create(db.clone()), missing(ObjectKind::Volume, "data"));
        ok(
            &mut s,
            &Command::CreateVolume {
                volume: volume("v1", "data"),
            },
        );
        ok(&mut s, &create(db));

        // An update, a canary and a rollback may not name what is missing either.
        let mut spec = s.services["a"].spec.clone();
        spec.secrets
            .push(SecretRef::parse("secret", "source=other,target=/etc/other").unwrap());
        let cmd = update(&s, "a", spec.clone());
        refused(&mut s, &cmd, missing(ObjectKind::Secret, "other"));
        spec.image = "img:2".into();
        let cmd = canary(&s, "a", spec);
        refused(&mut s, &cmd, missing(ObjectKind::Secret, "other"));
        let mut spec = s.services["a"].spec.clone();
        spec.secrets.clear();
        spec.mounts.clear();
        let cmd = update(&s, "a", spec);
        ok(&mut s, &cmd);
        ok(
            &mut s,
            &Command::RemoveSecret {
                id: "s1".into(),
                rules: Rules::CURRENT,
            },
        );
        refused(&mut s, &rollback("a"), missing(ObjectKind::Secret, "pass"));
    }

    #[test]
    fn a_secret_in_use_by_a_service_or_its_canary_stays() {
        let mut s = State::default();
        ok(
            &mut s,
            &Command::CreateSecret {
                secret: secret("s1", "pass"),
            },
        );
        let mut db = service("a", "db");
        db.spec.secrets = vec![SecretRef::parse("secret", "pass").unwrap()];
        ok(&mut s, &create(db));
        let remove = Command::RemoveSecret {
            id: "s1".into(),
            rules: Rules::CURRENT,
        };
        let in_use = ApplyError::InUse {
            kind: ObjectKind::Secret,
            name: "pass".into(),
            user: User::Service("db".into()),
        };
        refused(&mut s, &remove, in_use.clone());
        assert_eq!(
            in_use.to_string(),
            "secret pass is in use by service db: remove it from the service first"
        );
        // Still used by the canary after the stable spec let go of it.
        let mut v2 = s.services["a"].spec.clone();
        v2.secrets.clear();
        let stable = v2.clone();
        v2.image = "img:2".into();
        let mut with_secret = v2.clone();
        with_secret.secrets = vec![SecretRef::parse("secret", "pass").unwrap()];
        let cmd = update(&s, "a", stable);
        ok(&mut s, &cmd);
        let cmd = canary(&s, "a", with_secret);
        ok(&mut s, &cmd);
        refused(&mut s, &remove, in_use);
        ok(&mut s, &rollback("a"));
        ok(&mut s, &remove);
        assert!(s.secrets.is_empty());
    }

    #[test]
    fn a_volume_in_use_by_a_service_or_a_stopping_task_stays() {
        let mut s = State::default();
        ok(
            &mut s,
            &Command::CreateVolume {
                volume: volume("v1", "data"),
            },
        );
        let mut db = service("a", "db");
        db.spec.mounts = vec![Mount::parse("mount", "type=volume,source=data,target=/data").unwrap()];
        ok(&mut s, &create(db.clone()));
        ok(
            &mut s,
            &Command::CreateTasks {
                tasks: vec![task("t1", &db)],
            },
        );
        let remove = Command::RemoveVolume {
            id: "v1".into(),
            rules: Rules::CURRENT,
        };
        let in_use = |user| ApplyError::InUse {
            kind: ObjectKind::Volume,
            name: "data".into(),
            user,
        };
        refused(&mut s, &remove, in_use(User::Service("db".into())));
        // The service is gone, its task is still stopping.
        ok(
            &mut s,
            &Command::RemoveService {
                id: "a".into(),
                at_ms: 1,
            },
        );
        refused(&mut s, &remove, in_use(User::Task("db.1".into())));
        assert_eq!(
            in_use(User::Task("db.1".into())).to_string(),
            "volume data is in use by task db.1 (still stopping)"
        );
        s.tasks.get_mut("t1").unwrap().status.state = TaskState::Complete;
        ok(&mut s, &remove);
        assert!(s.volumes.is_empty());
    }

    /// Commands as today's main wrote them to the Raft log, without `rules`: they
    /// replay as they applied then, whatever the rules say now.
    #[test]
    fn commands_logged_before_the_rules_replay_as_they_applied() {
        let old = |json: serde_json::Value| -> Command {
            let cmd: Command = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{json}: {e}"));
            cmd
        };
        let mut s = State::default();
        ok(
            &mut s,
            &Command::CreateSecret {
                secret: secret("s1", "pass"),
            },
        );
        ok(
            &mut s,
            &Command::CreateVolume {
                volume: volume("v1", "data"),
            },
        );
        ok(&mut s, &create(with_ports("a", "web", &["8080:80"])));

        let mut dup = with_ports("b", "api", &["8080:80"]);
        dup.spec.secrets = vec![SecretRef::parse("secret", "pass").unwrap()];
        dup.spec.mounts = vec![Mount::parse("mount", "type=volume,source=data,target=/data").unwrap()];
        let create_old = old(serde_json::json!({ "CreateService": { "service": dup } }));
        assert_eq!(
            create_old,
            Command::CreateService {
                service: dup.clone(),
                rules: Rules::Unchecked
            }
        );
        ok(&mut s, &create_old);
        assert_eq!(s.services.len(), 2, "the old create is applied as main applied it");

        let mut spec = dup.spec.clone();
        spec.image = "img:2".into();
        spec.ports.push(parse_publish("publish", "8080:80/udp").unwrap());
        ok(
            &mut s,
            &old(serde_json::json!({ "UpdateService": {
                "id": "b", "expected_version": 1, "spec": spec, "at_ms": 5,
            }})),
        );
        ok(
            &mut s,
            &old(serde_json::json!({ "StartCanary": {
                "id": "b", "expected_version": 2, "spec": spec, "weight": 10, "at_ms": 6,
            }})),
        );
        ok(
            &mut s,
            &old(serde_json::json!({ "RollbackService": { "id": "b", "at_ms": 7 } })),
        );
        ok(&mut s, &old(serde_json::json!({ "RemoveSecret": { "id": "s1" } })));
        ok(&mut s, &old(serde_json::json!({ "RemoveVolume": { "id": "v1" } })));
        assert!(s.secrets.is_empty() && s.volumes.is_empty());

        // What is written today names its rules, and they hold.
        let json = serde_json::to_value(create(with_ports("c", "late", &["8080:80"]))).unwrap();
        assert_eq!(json["CreateService"]["rules"], "V1");
        refused(
            &mut s,
            &serde_json::from_value(json).unwrap(),
            taken(8080, Protocol::Tcp, "web"),
        );
    }
}
