//! Config objects (create, and no removal while a service names them) and a
//! manifest's apply (`Command::Apply`): all of its steps or none, each failure named
//! by the manifest field it comes from. What the steps are (the diff) is decided by
//! the manager that proposes them; whether they may happen is decided here.

use super::change;
use crate::model::ingress::{Certificate, CertificateSource};
use crate::model::{ConfigObject, ServiceSpec};
use crate::store::command::{ApplyOp, ApplyStep};
use crate::store::state::{Action, Change, ObjectKind, State};
use crate::store::{ApplyError, Command, Rules};

impl State {
    pub(super) fn create_config(&mut self, config: &ConfigObject, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        if self.configs.values().any(|c| c.name == config.name) || self.configs.contains_key(&config.id) {
            return Err(ApplyError::AlreadyExists(format!(
                "config {:?} already exists",
                config.name
            )));
        }
        self.configs.insert(config.id.clone(), config.clone());
        changes.push(change(ObjectKind::Config, Action::Created, &config.id, &config.name));
        Ok(())
    }

    pub(super) fn remove_config(
        &mut self,
        id: &str,
        rules: Rules,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let config = self
            .configs
            .get(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Config, id))?;
        if rules.checked() {
            self.check_config_unused(config)?;
        }
        let name = config.name.clone();
        self.configs.remove(id);
        changes.push(change(ObjectKind::Config, Action::Removed, id, &name));
        Ok(())
    }

    /// Applies every step to a copy of the state; the copy replaces the state only
    /// when all succeeded, so a refused manifest changes nothing.
    pub(super) fn apply_manifest(&mut self, steps: &[ApplyStep], changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let mut next = self.clone();
        let mut touched = Vec::new();
        for step in steps {
            next.apply_step(&step.op, &mut touched)
                .map_err(|e| at_field(&step.field, &step.op, e))?;
        }
        *self = next;
        changes.extend(touched);
        Ok(())
    }

    /// A manifest's certificate: kept when the chain is the same, else replaced in
    /// place (its ID, so the routes naming it serve the new one), else created.
    fn put_certificate(&mut self, cert: &Certificate, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let Some(cur) = self.certificates.values_mut().find(|c| c.name == cert.name) else {
            return self.create_certificate(cert, changes);
        };
        if cur.source != CertificateSource::Uploaded {
            return Err(ApplyError::Invalid(format!(
                "certificate {:?} was obtained through ACME and cannot be replaced by a file",
                cert.name
            )));
        }
        if cur.cert_pem == cert.cert_pem {
            return Ok(());
        }
        let (id, created_ms, version) = (cur.id.clone(), cur.created_ms, cur.version);
        *cur = Certificate {
            id: id.clone(),
            created_ms,
            version: version + 1,
            updated_ms: cert.created_ms,
            ..cert.clone()
        };
        changes.push(change(ObjectKind::Certificate, Action::Updated, &id, &cert.name));
        Ok(())
    }

    fn apply_step(&mut self, op: &ApplyOp, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        match op {
            ApplyOp::Secret(secret) => match self.secrets.values().find(|s| s.name == secret.name) {
                Some(s) if s.digest == secret.digest => Ok(()),
                Some(_) => Err(ApplyError::Invalid(format!(
                    "secret {:?} already exists with another value: secrets are immutable; give the new value a new name (or remove the secret first)",
                    secret.name
                ))),
                None => self.create_secret(secret, changes),
            },
            ApplyOp::Config(config) => match self.configs.values().find(|c| c.name == config.name) {
                Some(c) if c.digest == config.digest => Ok(()),
                Some(_) => Err(ApplyError::Invalid(format!(
                    "config {:?} already exists with another content: configs are immutable; give the new content a new name (or remove the config first)",
                    config.name
                ))),
                None => self.create_config(config, changes),
            },
            ApplyOp::Volume(volume) => {
                if self.volumes.values().any(|v| v.name == volume.name) {
                    return Ok(());
                }
                self.create_volume(volume, changes)
            }
            ApplyOp::Run(
                cmd @ (Command::CreateService { rules: Rules::V1, .. }
                | Command::UpdateService { rules: Rules::V1, .. }
                | Command::StartCanary { rules: Rules::V1, .. }
                | Command::RemoveService { .. }
                | Command::RemoveSecret { rules: Rules::V1, .. }
                | Command::RemoveConfig { rules: Rules::V1, .. }
                | Command::RemoveVolume { rules: Rules::V1, .. }
                | Command::CreateIngress { .. }
                | Command::UpdateIngress { .. }
                | Command::RemoveIngress { .. }),
            ) => self.apply(cmd, changes),
            ApplyOp::Certificate(cert) => self.put_certificate(cert, changes),
            ApplyOp::Run(cmd) => Err(ApplyError::Invalid(format!(
                "a manifest cannot carry a {} command (or one without the current rules)",
                cmd.kind()
            ))),
        }
    }
}

/// Names the field of the manifest that `e` is about: the step's object, refined to
/// the port, secret, config or volume of its spec when the error names one.
fn at_field(field: &str, op: &ApplyOp, e: ApplyError) -> ApplyError {
    // A route's checks name their key first (`service: service "x" not found`):
    // that key is the manifest field.
    if let ApplyOp::Run(Command::CreateIngress { .. } | Command::UpdateIngress { .. }) = op {
        let split = |msg: &str| {
            msg.split_once(": ")
                .filter(|(k, _)| ["service", "tls", "path", "default", "host"].contains(k))
                .map(|(k, rest)| (format!("{field}.{k}"), rest.to_string()))
        };
        let refined = match &e {
            ApplyError::Invalid(m) => split(m).map(|(f, m)| (f, ApplyError::Invalid(m))),
            ApplyError::AlreadyExists(m) => split(m).map(|(f, m)| (f, ApplyError::AlreadyExists(m))),
            _ => None,
        };
        if let Some((field, error)) = refined {
            return ApplyError::Field {
                field,
                error: Box::new(error),
            };
        }
    }
    let spec: Option<&ServiceSpec> = match op {
        ApplyOp::Run(Command::CreateService { service, .. }) => Some(&service.spec),
        ApplyOp::Run(Command::UpdateService { spec, .. } | Command::StartCanary { spec, .. }) => Some(spec),
        _ => None,
    };
    let refined = spec.and_then(|spec| match &e {
        ApplyError::PortTaken { port, protocol, .. } | ApplyError::DaemonPortTaken { port, protocol, .. } => spec
            .ports
            .iter()
            .position(|p| p.published == *port && p.protocol == *protocol)
            .map(|i| format!("{field}.ports[{i}].published")),
        ApplyError::Missing {
            kind: ObjectKind::Secret,
            name,
        } => spec
            .secrets
            .iter()
            .position(|r| &r.name == name)
            .map(|i| format!("{field}.secrets[{i}]")),
        ApplyError::Missing {
            kind: ObjectKind::Config,
            name,
        } => spec
            .configs
            .iter()
            .position(|r| &r.name == name)
            .map(|i| format!("{field}.configs[{i}]")),
        ApplyError::Missing {
            kind: ObjectKind::Volume,
            name,
        } => spec
            .mounts
            .iter()
            .position(|m| &m.source == name)
            .map(|i| format!("{field}.volumes[{i}]")),
        _ => None,
    });
    ApplyError::Field {
        field: refined.unwrap_or_else(|| field.to_string()),
        error: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{digest_of, parse_publish, ConfigObject, ConfigRef, Secret};
    use crate::store::fixtures::{secret, service};
    use crate::store::{ApplyError, ApplyOp, ApplyStep, Command, Rules, State};

    fn step(field: &str, op: ApplyOp) -> ApplyStep {
        ApplyStep {
            field: field.into(),
            op,
        }
    }

    fn create(id: &str, name: &str, ports: &[&str]) -> ApplyOp {
        let mut svc = service(id, name);
        svc.spec.ports = ports.iter().map(|p| parse_publish("publish", p).unwrap()).collect();
        ApplyOp::Run(Command::CreateService {
            service: svc,
            rules: Rules::CURRENT,
        })
    }

    fn sealed(id: &str, name: &str, value: &[u8]) -> Secret {
        let mut s = secret(id, name);
        s.digest = digest_of(value);
        s
    }

    fn config(id: &str, name: &str, data: &[u8]) -> ConfigObject {
        ConfigObject {
            id: id.into(),
            name: name.into(),
            labels: Default::default(),
            data: data.to_vec(),
            digest: digest_of(data),
            created_ms: 0,
        }
    }

    #[test]
    fn a_manifest_applies_whole_or_not_at_all() {
        let mut s = State::default();
        s.apply(
            &Command::CreateService {
                service: {
                    let mut svc = service("x", "other");
                    svc.spec.ports = vec![parse_publish("publish", "8080:80").unwrap()];
                    svc
                },
                rules: Rules::CURRENT,
            },
            &mut vec![],
        )
        .unwrap();
        let before = s.clone();
        let mut ch = vec![];
        let err = s
            .apply(
                &Command::Apply {
                    steps: vec![
                        step("secrets.pw", ApplyOp::Secret(sealed("s1", "pw", b"a"))),
                        step("services.api", create("a", "api", &[])),
                        step("services.web", create("w", "web", &["9090:80", "8080:80"])),
                    ],
                },
                &mut ch,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "services.web.ports[1].published: port 8080/tcp is already published by service \"other\""
        );
        assert_eq!(s, before, "a refused manifest changes nothing");
        assert!(ch.is_empty());

        s.apply(
            &Command::Apply {
                steps: vec![
                    step("secrets.pw", ApplyOp::Secret(sealed("s1", "pw", b"a"))),
                    step("configs.conf", ApplyOp::Config(config("c1", "conf", b"x=1"))),
                    step("services.api", create("a", "api", &[])),
                ],
            },
            &mut ch,
        )
        .unwrap();
        assert_eq!((s.secrets.len(), s.configs.len(), s.services.len()), (1, 1, 2));
        assert_eq!(ch.len(), 3);
    }

    #[test]
    fn an_equal_secret_is_kept_and_a_changed_one_refused_by_name() {
        let mut s = State::default();
        let apply = |s: &mut State, op: ApplyOp| {
            s.apply(
                &Command::Apply {
                    steps: vec![step("secrets.pw", op)],
                },
                &mut vec![],
            )
        };
        apply(&mut s, ApplyOp::Secret(sealed("s1", "pw", b"a"))).unwrap();
        apply(&mut s, ApplyOp::Secret(sealed("s2", "pw", b"a"))).unwrap();
        assert_eq!(s.secrets.keys().collect::<Vec<_>>(), ["s1"]);
        let e = apply(&mut s, ApplyOp::Secret(sealed("s3", "pw", b"b"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("secrets.pw: secret \"pw\" already exists with another value"),
            "{e}"
        );
        let e = {
            apply(&mut s, ApplyOp::Config(config("c1", "conf", b"1"))).unwrap();
            apply(&mut s, ApplyOp::Config(config("c2", "conf", b"2"))).unwrap_err()
        };
        assert!(e.to_string().contains("configs are immutable"), "{e}");
    }

    #[test]
    fn a_missing_config_names_its_reference_and_a_used_one_stays() {
        let mut s = State::default();
        let mut svc = service("a", "web");
        svc.spec.configs = vec![ConfigRef {
            name: "conf".into(),
            target: "/etc/conf".into(),
            mode: 0o444,
        }];
        let cmd = Command::Apply {
            steps: vec![step(
                "services.web",
                ApplyOp::Run(Command::CreateService {
                    service: svc,
                    rules: Rules::CURRENT,
                }),
            )],
        };
        let e = s.apply(&cmd, &mut vec![]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "services.web.configs[0]: config \"conf\" not found (create it with `warren config create conf FILE`)"
        );
        s.apply(
            &Command::CreateConfig {
                config: config("c1", "conf", b"1"),
            },
            &mut vec![],
        )
        .unwrap();
        s.apply(&cmd, &mut vec![]).unwrap();
        let e = s
            .apply(
                &Command::RemoveConfig {
                    id: "c1".into(),
                    rules: Rules::CURRENT,
                },
                &mut vec![],
            )
            .unwrap_err();
        assert!(matches!(e, ApplyError::InUse { .. }), "{e:?}");
    }

    #[test]
    fn a_manifest_carries_only_service_and_removal_commands() {
        let mut s = State::default();
        let e = s
            .apply(
                &Command::Apply {
                    steps: vec![step("services.x", ApplyOp::Run(Command::RemoveTasks { ids: vec![] }))],
                },
                &mut vec![],
            )
            .unwrap_err();
        assert!(e.to_string().contains("cannot carry a remove_tasks command"), "{e}");
    }

    #[test]
    fn entries_without_config_fields_load() {
        // A service spec and a state as the previous version serialized them.
        let mut spec = serde_json::to_value(crate::model::ServiceSpec::default()).unwrap();
        spec.as_object_mut().unwrap().remove("configs");
        let back: crate::model::ServiceSpec = serde_json::from_value(spec).unwrap();
        assert!(back.configs.is_empty());
        let mut state = serde_json::to_value(State::default()).unwrap();
        state.as_object_mut().unwrap().remove("configs");
        let back: State = serde_json::from_value(state).unwrap();
        assert!(back.configs.is_empty());
    }
}
