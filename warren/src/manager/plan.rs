//! The diff of a manifest (`warren apply -f`, `warren stack deploy`) against the
//! replicated state: what to create, update, leave unchanged and (with prune)
//! remove, and the steps of the one `Command::Apply` that makes it so. Pure: the
//! caller seals secrets, chooses IDs and the time; whether the steps may happen
//! (references, ports, immutability, versions) is decided again in apply.

use crate::model::ingress::{validate_certificate_name, Ingress, RouteTls};
use crate::model::{
    digest_of, validate_name, ConfigObject, Manifest, MountKind, Protocol, Secret, Service, ServiceMode, ServiceSpec,
    Volume, APPLY_LABEL, STACK_LABEL,
};
use crate::store::state::spec_differs_beyond_scale;
use crate::store::{ApplyError, ApplyOp, ApplyStep, Command, ObjectKind, Rules, State};
use std::collections::{BTreeMap, HashSet};

/// Largest secret or config accepted, as in Swarm.
const MAX_DATA_BYTES: usize = 500 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffAction {
    Create,
    Update,
    Unchanged,
    Remove,
}

impl DiffAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DiffAction::Create => "create",
            DiffAction::Update => "update",
            DiffAction::Unchanged => "unchanged",
            DiffAction::Remove => "remove",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    pub kind: ObjectKind,
    /// The name in the cluster (`shop_web` for service web of stack shop).
    pub name: String,
    pub action: DiffAction,
    /// The manifest field path; empty for a removal.
    pub field: String,
    /// For an update: the spec fields that differ.
    pub changed: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub diff: Vec<DiffEntry>,
    pub steps: Vec<ApplyStep>,
}

/// What the planner needs from outside: sealing, IDs and the time.
pub trait Minter {
    fn seal(&self, plaintext: &[u8]) -> Vec<u8>;
    fn new_id(&mut self) -> String;
    fn now_ms(&self) -> i64;
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> ApplyError {
    ApplyError::Field {
        field: field.into(),
        error: Box::new(ApplyError::Invalid(msg.into())),
    }
}

/// The scope a manifest's objects carry and prune within.
struct Scope<'a> {
    stack: Option<&'a str>,
}

impl Scope<'_> {
    fn label(&self) -> (&'static str, String) {
        match self.stack {
            Some(s) => (STACK_LABEL, s.to_string()),
            None => (APPLY_LABEL, "true".to_string()),
        }
    }

    fn owns(&self, labels: &crate::model::Labels) -> bool {
        let (k, v) = self.label();
        labels.get(k) == Some(&v)
    }

    fn full(&self, name: &str) -> String {
        match self.stack {
            Some(s) => format!("{s}_{name}"),
            None => name.to_string(),
        }
    }
}

/// Computes the diff and the steps. `prune` also removes the services, secrets,
/// configs and ingress routes of the scope (the stack, or everything `apply -f`
/// created) that the manifest no longer names; volumes are kept, as `docker stack
/// rm` keeps them, and so are certificates (they carry no labels to scope them).
pub fn plan(state: &State, m: &Manifest, prune: bool, minter: &mut dyn Minter) -> Result<Plan, ApplyError> {
    if let Some(s) = &m.stack {
        validate_name("stack", s).map_err(|e| bad("stack", e.message))?;
    }
    let scope = Scope {
        stack: m.stack.as_deref(),
    };
    let (label_key, label_value) = scope.label();
    let mut plan = Plan::default();
    let now = minter.now_ms();

    // Names as the specs write them → names in the cluster.
    let mut secret_names = BTreeMap::new();
    let mut config_names = BTreeMap::new();
    let mut volume_names = BTreeMap::new();

    for s in &m.secrets {
        let field = format!("secrets.{}", s.name);
        let (full, existing) = if s.external {
            (s.name.clone(), state.secrets.values().find(|x| x.name == s.name))
        } else {
            let full = scope.full(&s.name);
            let existing = state.secrets.values().find(|x| x.name == full);
            (full, existing)
        };
        validate_name(&field, &full).map_err(|e| bad(&field, e.message))?;
        secret_names.insert(s.name.clone(), full.clone());
        if s.external {
            if existing.is_none() {
                return Err(bad(
                    &field,
                    format!("external secret {full:?} not found (create it with `warren secret create {full} FILE`)"),
                ));
            }
            continue;
        }
        check_data(&field, "secret", &s.data)?;
        let digest = digest_of(&s.data);
        match existing {
            Some(x) if x.digest == digest => plan.entry(ObjectKind::Secret, &full, DiffAction::Unchanged, &field),
            Some(_) => {
                return Err(bad(
                    &field,
                    format!("secret {full:?} already exists with another value: secrets are immutable; give the new value a new name (or remove the secret first)"),
                ))
            }
            None => {
                let mut labels = s.labels.clone();
                labels.insert(label_key.into(), label_value.clone());
                plan.entry(ObjectKind::Secret, &full, DiffAction::Create, &field);
                plan.steps.push(ApplyStep {
                    field,
                    op: ApplyOp::Secret(Secret {
                        id: minter.new_id(),
                        name: full,
                        labels,
                        sealed: minter.seal(&s.data),
                        digest,
                        created_ms: now,
                    }),
                });
            }
        }
    }

    for c in &m.configs {
        let field = format!("configs.{}", c.name);
        let full = if c.external {
            c.name.clone()
        } else {
            scope.full(&c.name)
        };
        validate_name(&field, &full).map_err(|e| bad(&field, e.message))?;
        config_names.insert(c.name.clone(), full.clone());
        let existing = state.configs.values().find(|x| x.name == full);
        if c.external {
            if existing.is_none() {
                return Err(bad(
                    &field,
                    format!("external config {full:?} not found (create it with `warren config create {full} FILE`)"),
                ));
            }
            continue;
        }
        check_data(&field, "config", &c.data)?;
        let digest = digest_of(&c.data);
        match existing {
            Some(x) if x.digest == digest => plan.entry(ObjectKind::Config, &full, DiffAction::Unchanged, &field),
            Some(_) => {
                return Err(bad(
                    &field,
                    format!("config {full:?} already exists with another content: configs are immutable; give the new content a new name (or remove the config first)"),
                ))
            }
            None => {
                let mut labels = c.labels.clone();
                labels.insert(label_key.into(), label_value.clone());
                plan.entry(ObjectKind::Config, &full, DiffAction::Create, &field);
                plan.steps.push(ApplyStep {
                    field,
                    op: ApplyOp::Config(ConfigObject {
                        id: minter.new_id(),
                        name: full,
                        labels,
                        data: c.data.clone(),
                        digest,
                        created_ms: now,
                    }),
                });
            }
        }
    }

    for v in &m.volumes {
        let field = format!("volumes.{}", v.name);
        let full = if v.external {
            v.name.clone()
        } else {
            scope.full(&v.name)
        };
        validate_name(&field, &full).map_err(|e| bad(&field, e.message))?;
        volume_names.insert(v.name.clone(), full.clone());
        let exists = state.volumes.values().any(|x| x.name == full);
        if v.external {
            if !exists {
                return Err(bad(
                    &field,
                    format!("external volume {full:?} not found (create it with `warren volume create {full}`)"),
                ));
            }
            continue;
        }
        let driver = if v.driver.is_empty() {
            "local"
        } else {
            v.driver.as_str()
        };
        if driver != "local" {
            return Err(bad(
                format!("{field}.driver"),
                format!("unknown volume driver {driver:?} (supported: local)"),
            ));
        }
        if exists {
            plan.entry(ObjectKind::Volume, &full, DiffAction::Unchanged, &field);
            continue;
        }
        let mut labels = v.labels.clone();
        labels.insert(label_key.into(), label_value.clone());
        plan.entry(ObjectKind::Volume, &full, DiffAction::Create, &field);
        plan.steps.push(ApplyStep {
            field,
            op: ApplyOp::Volume(Volume {
                id: minter.new_id(),
                name: full,
                driver: driver.into(),
                node_id: None,
                labels,
                options: v.options.clone(),
                created_ms: now,
            }),
        });
    }

    let mut cert_names = BTreeMap::new();
    for c in &m.certificates {
        let field = format!("certificates.{}", c.name);
        let full = scope.full(&c.name);
        validate_certificate_name(&field, &full).map_err(|e| bad(&field, e.message))?;
        cert_names.insert(c.name.clone(), full.clone());
        let info = crate::ingress::inspect(&c.cert_pem, &c.key_pem).map_err(|e| bad(&field, e.to_string()))?;
        let action = match state.certificates.values().find(|x| x.name == full) {
            Some(x) if x.cert_pem == c.cert_pem => {
                plan.entry(ObjectKind::Certificate, &full, DiffAction::Unchanged, &field);
                continue;
            }
            Some(_) => DiffAction::Update,
            None => DiffAction::Create,
        };
        plan.diff.push(DiffEntry {
            kind: ObjectKind::Certificate,
            name: full.clone(),
            action,
            field: field.clone(),
            changed: if action == DiffAction::Update {
                vec!["cert".into()]
            } else {
                vec![]
            },
        });
        plan.steps.push(ApplyStep {
            field,
            op: ApplyOp::Certificate(info.uploaded(
                minter.new_id(),
                full,
                c.cert_pem.clone(),
                minter.seal(c.key_pem.as_bytes()),
                now,
            )),
        });
    }

    // Services: removals first, then updates, then creations, so that a port one
    // service gives up can be taken by another in the same apply.
    let mut taken = ports_in_use(state, m);
    let mut named = std::collections::BTreeSet::new();
    let mut updates = Vec::new();
    let mut creates = Vec::new();
    for ms in &m.services {
        let field = format!("services.{}", ms.name);
        let full = scope.full(&ms.name);
        validate_name(&field, &full).map_err(|e| bad(&field, e.message))?;
        if !named.insert(full.clone()) {
            return Err(bad(&field, format!("service {full:?} is named twice")));
        }
        let mut spec = ms.spec.clone();
        if spec.configs.is_empty() {
            spec.configs = ms.configs.clone();
        }
        let current = state.services.values().find(|s| s.name == full);
        pick_published(&mut spec, current, &mut taken, &field)?;
        resolve_names(&mut spec, &secret_names, &config_names, &volume_names);
        spec.labels.insert(label_key.into(), label_value.clone());
        spec.validate()
            .map_err(|e| bad(format!("{field}.{}", e.field), e.message))?;
        match current {
            Some(cur) if cur.spec == spec => plan.entry(ObjectKind::Service, &full, DiffAction::Unchanged, &field),
            // The canary already runs this version: re-applying restarts nothing.
            Some(cur)
                if cur
                    .canary
                    .as_ref()
                    .is_some_and(|c| !spec_differs_beyond_scale(&c.spec, &spec)) =>
            {
                plan.entry(ObjectKind::Service, &full, DiffAction::Unchanged, &field)
            }
            Some(cur) => {
                if matches!(cur.spec.mode, ServiceMode::Global) != matches!(spec.mode, ServiceMode::Global) {
                    return Err(bad(
                        format!("{field}.deploy.mode"),
                        "a service's mode cannot change; remove and re-create the service",
                    ));
                }
                let mut changed = changed_fields(&cur.spec, &spec);
                // x-warren `strategy: canary`: a change of what the tasks run starts
                // a canary beside the stable version (promoted with `service promote`).
                if let Some(c) = ms
                    .canary
                    .as_ref()
                    .filter(|_| spec_differs_beyond_scale(&cur.spec, &spec))
                {
                    changed.push(format!("canary {}%", c.weight));
                    plan.diff.push(DiffEntry {
                        kind: ObjectKind::Service,
                        name: full.clone(),
                        action: DiffAction::Update,
                        field: field.clone(),
                        changed,
                    });
                    updates.push(ApplyStep {
                        field,
                        op: ApplyOp::Run(Command::StartCanary {
                            id: cur.id.clone(),
                            expected_version: cur.version,
                            spec,
                            weight: c.weight,
                            at_ms: now,
                            rules: Rules::CURRENT,
                        }),
                    });
                    continue;
                }
                plan.diff.push(DiffEntry {
                    kind: ObjectKind::Service,
                    name: full.clone(),
                    action: DiffAction::Update,
                    field: field.clone(),
                    changed,
                });
                updates.push(ApplyStep {
                    field,
                    op: ApplyOp::Run(Command::UpdateService {
                        id: cur.id.clone(),
                        expected_version: cur.version,
                        spec,
                        at_ms: now,
                        rules: Rules::CURRENT,
                    }),
                });
            }
            None => {
                plan.entry(ObjectKind::Service, &full, DiffAction::Create, &field);
                creates.push(ApplyStep {
                    field,
                    op: ApplyOp::Run(Command::CreateService {
                        service: new_service(minter.new_id(), full, spec, now),
                        rules: Rules::CURRENT,
                    }),
                });
            }
        }
    }

    // Routes: after the services they name are created, before those are removed.
    // A route moving off a service this apply prunes goes before the removal (which
    // refuses a service that a route still names).
    let pruned: std::collections::BTreeSet<&str> = state
        .services
        .values()
        .filter(|svc| prune && scope.owns(&svc.spec.labels) && !named.contains(&svc.name))
        .map(|svc| svc.name.as_str())
        .collect();
    let mut routes_named = std::collections::BTreeSet::new();
    let mut route_steps = Vec::new();
    let mut routes_off_pruned = Vec::new();
    for mi in &m.ingresses {
        let field = format!("ingresses.{}", mi.name);
        let full = scope.full(&mi.name);
        validate_name(&field, &full).map_err(|e| bad(&field, e.message))?;
        routes_named.insert(full.clone());
        let mut spec = mi.spec.clone();
        if m.services.iter().any(|s| s.name == spec.service) {
            spec.service = scope.full(&spec.service);
        }
        if let RouteTls::Certificate(c) = &mut spec.tls {
            if let Some(full) = cert_names.get(c.as_str()) {
                *c = full.clone();
            }
        }
        spec.labels.insert(label_key.into(), label_value.clone());
        spec.validate()
            .map_err(|e| bad(format!("{field}.{}", e.field), e.message))?;
        match state.ingresses.values().find(|i| i.name == full) {
            Some(cur) if cur.spec == spec => plan.entry(ObjectKind::Ingress, &full, DiffAction::Unchanged, &field),
            Some(cur) => {
                plan.diff.push(DiffEntry {
                    kind: ObjectKind::Ingress,
                    name: full.clone(),
                    action: DiffAction::Update,
                    field: field.clone(),
                    changed: changed_fields(&cur.spec, &spec),
                });
                let steps = if pruned.contains(cur.spec.service.as_str()) {
                    &mut routes_off_pruned
                } else {
                    &mut route_steps
                };
                steps.push(ApplyStep {
                    field,
                    op: ApplyOp::Run(Command::UpdateIngress {
                        id: cur.id.clone(),
                        expected_version: cur.version,
                        spec,
                        at_ms: now,
                    }),
                });
            }
            None => {
                plan.entry(ObjectKind::Ingress, &full, DiffAction::Create, &field);
                route_steps.push(ApplyStep {
                    field,
                    op: ApplyOp::Run(Command::CreateIngress {
                        ingress: Ingress {
                            id: minter.new_id(),
                            name: full,
                            spec,
                            version: 1,
                            created_ms: now,
                            updated_ms: now,
                        },
                    }),
                });
            }
        }
    }
    if prune {
        for i in state.ingresses.values() {
            if scope.owns(&i.spec.labels) && !routes_named.contains(&i.name) {
                plan.entry(ObjectKind::Ingress, &i.name, DiffAction::Remove, "");
                plan.steps.push(ApplyStep {
                    field: format!("ingresses.{}", i.name),
                    op: ApplyOp::Run(Command::RemoveIngress { id: i.id.clone() }),
                });
            }
        }
    }

    plan.steps.extend(routes_off_pruned);
    if prune {
        for svc in state.services.values() {
            if scope.owns(&svc.spec.labels) && !named.contains(&svc.name) {
                plan.entry(ObjectKind::Service, &svc.name, DiffAction::Remove, "");
                plan.steps.push(ApplyStep {
                    field: format!("services.{}", svc.name),
                    op: ApplyOp::Run(Command::RemoveService {
                        id: svc.id.clone(),
                        at_ms: now,
                    }),
                });
            }
        }
    }
    plan.steps.extend(updates);
    plan.steps.extend(creates);
    plan.steps.extend(route_steps);
    if prune {
        let kept_secrets: Vec<&String> = secret_names.values().collect();
        for s in state.secrets.values() {
            if scope.owns(&s.labels) && !kept_secrets.contains(&&s.name) {
                plan.entry(ObjectKind::Secret, &s.name, DiffAction::Remove, "");
                plan.steps.push(ApplyStep {
                    field: format!("secrets.{}", s.name),
                    op: ApplyOp::Run(Command::RemoveSecret {
                        id: s.id.clone(),
                        rules: Rules::CURRENT,
                    }),
                });
            }
        }
        let kept_configs: Vec<&String> = config_names.values().collect();
        for c in state.configs.values() {
            if scope.owns(&c.labels) && !kept_configs.contains(&&c.name) {
                plan.entry(ObjectKind::Config, &c.name, DiffAction::Remove, "");
                plan.steps.push(ApplyStep {
                    field: format!("configs.{}", c.name),
                    op: ApplyOp::Run(Command::RemoveConfig {
                        id: c.id.clone(),
                        rules: Rules::CURRENT,
                    }),
                });
            }
        }
    }
    Ok(plan)
}

impl Plan {
    fn entry(&mut self, kind: ObjectKind, name: &str, action: DiffAction, field: &str) {
        self.diff.push(DiffEntry {
            kind,
            name: name.to_string(),
            action,
            field: field.to_string(),
            changed: vec![],
        });
    }

    /// Whether applying would change anything.
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The range published ports are picked from when a file gives a target only, as
/// Swarm's.
pub const PICKED_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Every port a pick must avoid: what services (stable or canary) publish, what
/// the daemons and nodes' ingresses listen on, and what the manifest publishes.
fn ports_in_use(state: &State, m: &Manifest) -> HashSet<(u16, Protocol)> {
    let mut taken = HashSet::new();
    for svc in state.services.values() {
        for spec in std::iter::once(&svc.spec).chain(svc.canary.as_ref().map(|c| &c.spec)) {
            taken.extend(spec.ports.iter().map(|p| (p.published, p.protocol)));
        }
    }
    for n in state.nodes.values() {
        taken.extend(n.daemon_ports().into_iter().map(|(port, proto, _)| (port, proto)));
        if let Some(i) = n.ingress {
            taken.extend([(i.http_port, Protocol::Tcp), (i.https_port, Protocol::Tcp)]);
        }
    }
    for ms in &m.services {
        taken.extend(ms.spec.ports.iter().map(|p| (p.published, p.protocol)));
    }
    taken
}

/// Gives each port without a published number (compose `- "80"`) one: the one the
/// service already publishes for that target, so that re-applying the file
/// changes nothing, else the lowest free one of [`PICKED_PORTS`].
fn pick_published(
    spec: &mut ServiceSpec,
    current: Option<&Service>,
    taken: &mut HashSet<(u16, Protocol)>,
    field: &str,
) -> Result<(), ApplyError> {
    for i in 0..spec.ports.len() {
        let p = spec.ports[i];
        if p.published != 0 {
            continue;
        }
        let in_spec = |port: u16| {
            spec.ports
                .iter()
                .any(|q| q.published == port && q.protocol == p.protocol)
        };
        let kept = current
            .into_iter()
            .flat_map(|c| std::iter::once(&c.spec).chain(c.canary.as_ref().map(|x| &x.spec)))
            .flat_map(|s| s.ports.iter())
            .find(|q| q.target == p.target && q.protocol == p.protocol && q.mode == p.mode && !in_spec(q.published))
            .map(|q| q.published);
        let port = match kept {
            Some(port) => port,
            None => PICKED_PORTS
                .clone()
                .find(|port| !taken.contains(&(*port, p.protocol)))
                .ok_or_else(|| {
                    bad(
                        format!("{field}.ports[{i}].published"),
                        format!(
                            "no free port left in {}-{} to publish target {} on",
                            PICKED_PORTS.start(),
                            PICKED_PORTS.end(),
                            p.target
                        ),
                    )
                })?,
        };
        taken.insert((port, p.protocol));
        spec.ports[i].published = port;
    }
    Ok(())
}

fn check_data(field: &str, what: &str, data: &[u8]) -> Result<(), ApplyError> {
    if data.is_empty() {
        return Err(bad(field, format!("a {what} cannot be empty")));
    }
    if data.len() > MAX_DATA_BYTES {
        return Err(bad(
            field,
            format!("{} bytes is more than the limit of {MAX_DATA_BYTES}", data.len()),
        ));
    }
    Ok(())
}

/// Points the spec's secrets, configs and volumes at their names in the cluster
/// (a stack's own ones are prefixed); the file keeps its short name (a secret at
/// `/run/secrets/db_password`, a config at `/db.conf`), as Docker's.
fn resolve_names(
    spec: &mut ServiceSpec,
    secrets: &BTreeMap<String, String>,
    configs: &BTreeMap<String, String>,
    volumes: &BTreeMap<String, String>,
) {
    for r in &mut spec.secrets {
        if r.target.is_empty() {
            r.target = format!("/run/secrets/{}", r.name);
        }
        if let Some(full) = secrets.get(&r.name) {
            r.name = full.clone();
        }
    }
    for r in &mut spec.configs {
        if r.target.is_empty() {
            r.target = format!("/{}", r.name);
        }
        if r.mode == 0 {
            r.mode = 0o444;
        }
        if let Some(full) = configs.get(&r.name) {
            r.name = full.clone();
        }
    }
    for m in &mut spec.mounts {
        if m.kind == MountKind::Volume {
            if let Some(full) = volumes.get(&m.source) {
                m.source = full.clone();
            }
        }
    }
}

fn new_service(id: String, name: String, spec: ServiceSpec, now: i64) -> Service {
    Service {
        id,
        name,
        spec,
        version: 1,
        spec_version: 1,
        created_ms: now,
        updated_ms: now,
        vip: None,
        dp_id: 0,
        canary: None,
        previous_spec: None,
        update_status: None,
    }
}

/// The top-level spec fields that differ, by their serialized names.
fn changed_fields<T: serde::Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec![];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_publish, ManifestSecret, ManifestService, ManifestVolume, Mount, SecretRef};
    use crate::store::FakeProposer;

    struct TestMinter(u32);
    impl Minter for TestMinter {
        fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
            plaintext.iter().rev().copied().collect()
        }
        fn new_id(&mut self) -> String {
            self.0 += 1;
            format!("id{:04}", self.0)
        }
        fn now_ms(&self) -> i64 {
            1000
        }
    }

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec {
            image: image.into(),
            ..Default::default()
        }
    }

    fn stack() -> Manifest {
        let mut web = spec("web:1");
        web.ports = vec![parse_publish("publish", "8080:80").unwrap()];
        let mut db = spec("db:1");
        db.secrets = vec![SecretRef {
            name: "pw".into(),
            target: String::new(),
        }];
        db.mounts = vec![Mount::parse("mount", "type=volume,source=data,target=/data").unwrap()];
        Manifest {
            stack: Some("shop".into()),
            services: vec![
                ManifestService {
                    name: "web".into(),
                    spec: web,
                    ..Default::default()
                },
                ManifestService {
                    name: "api".into(),
                    spec: spec("api:1"),
                    ..Default::default()
                },
                ManifestService {
                    name: "db".into(),
                    spec: db,
                    ..Default::default()
                },
            ],
            secrets: vec![ManifestSecret {
                name: "pw".into(),
                external: false,
                data: b"hunter2".to_vec(),
                labels: Default::default(),
            }],
            volumes: vec![ManifestVolume {
                name: "data".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn actions(p: &Plan) -> Vec<(String, &'static str)> {
        p.diff
            .iter()
            .map(|d| (format!("{} {}", d.kind, d.name), d.action.as_str()))
            .collect()
    }

    struct Cluster {
        store: std::sync::Arc<crate::store::Store>,
        raft: std::sync::Arc<FakeProposer>,
    }

    impl Cluster {
        fn new() -> Cluster {
            let store = crate::store::Store::new();
            let raft = FakeProposer::new(store.clone());
            Cluster { store, raft }
        }

        fn state(&self) -> State {
            self.store.read(|s| s.clone())
        }
    }

    async fn apply(c: &Cluster, m: &Manifest, prune: bool, minter: &mut TestMinter) -> Result<Plan, ApplyError> {
        let p = c.store.read(|s| plan(s, m, prune, minter))?;
        if !p.is_noop() {
            use crate::store::Proposer;
            c.raft
                .propose(Command::Apply { steps: p.steps.clone() })
                .await
                .map_err(|e| match e {
                    crate::store::WriteError::Apply(a) => a,
                    other => ApplyError::Invalid(other.to_string()),
                })?;
        }
        Ok(p)
    }

    #[tokio::test]
    async fn a_stack_is_created_then_unchanged_then_updated_and_pruned() {
        let store = Cluster::new();
        let mut minter = TestMinter(0);
        let m = stack();
        let p = apply(&store, &m, false, &mut minter).await.unwrap();
        assert_eq!(
            actions(&p),
            [
                ("secret shop_pw".to_string(), "create"),
                ("volume shop_data".to_string(), "create"),
                ("service shop_web".to_string(), "create"),
                ("service shop_api".to_string(), "create"),
                ("service shop_db".to_string(), "create"),
            ]
        );
        let st = store.state();
        let db = st.service("shop_db").unwrap();
        assert_eq!(db.spec.secrets[0].name, "shop_pw");
        assert_eq!(db.spec.secrets[0].target, "/run/secrets/pw");
        assert_eq!(db.spec.mounts[0].source, "shop_data");
        assert_eq!(db.spec.labels[STACK_LABEL], "shop");

        // The same manifest again: nothing to do, nothing written.
        let p = apply(&store, &m, false, &mut minter).await.unwrap();
        assert!(p.is_noop());
        assert!(p.diff.iter().all(|d| d.action == DiffAction::Unchanged));
        assert_eq!(store.state(), st);

        // One image changes: only that service updates, through a new spec version.
        let mut m2 = m.clone();
        m2.services[1].spec.image = "api:2".into();
        m2.services.remove(0);
        let p = apply(&store, &m2, true, &mut minter).await.unwrap();
        let changed: Vec<_> = p.diff.iter().filter(|d| d.action != DiffAction::Unchanged).collect();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert_eq!(
            (changed[0].name.as_str(), changed[0].action),
            ("shop_api", DiffAction::Update)
        );
        assert_eq!(changed[0].changed, ["image"]);
        assert_eq!(
            (changed[1].name.as_str(), changed[1].action),
            ("shop_web", DiffAction::Remove)
        );
        let st2 = store.state();
        assert!(st2.service("shop_web").is_err());
        assert_eq!(st2.service("shop_api").unwrap().spec_version, 2);
        assert_eq!(st2.service("shop_db").unwrap().version, db.version);

        // An empty manifest with prune (stack rm): services and secrets go, the volume stays.
        let rm = Manifest {
            stack: Some("shop".into()),
            ..Default::default()
        };
        apply(&store, &rm, true, &mut minter).await.unwrap();
        let st3 = store.state();
        assert!(st3.services.is_empty() && st3.secrets.is_empty());
        assert_eq!(st3.volumes.len(), 1);
    }

    #[tokio::test]
    async fn refusals_name_the_field_and_change_nothing() {
        let store = Cluster::new();
        let mut minter = TestMinter(0);
        apply(&store, &stack(), false, &mut minter).await.unwrap();
        let before = store.state();

        let mut changed_secret = stack();
        changed_secret.secrets[0].data = b"other".to_vec();
        changed_secret.services[1].spec.image = "api:2".into();
        let e = apply(&store, &changed_secret, false, &mut minter).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("secrets.pw: secret \"shop_pw\" already exists with another value"),
            "{e}"
        );

        let mut other = stack();
        other.stack = Some("other".into());
        let e = apply(&store, &other, false, &mut minter).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "services.web.ports[0].published: port 8080/tcp is already published by service \"shop_web\""
        );

        let mut unknown = stack();
        unknown.services[2].spec.secrets[0].name = "nope".into();
        let e = apply(&store, &unknown, false, &mut minter).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("services.db.secrets[0]: secret \"nope\" not found"),
            "{e}"
        );
        assert_eq!(store.state(), before);
    }

    #[tokio::test]
    async fn a_canary_strategy_starts_a_canary_and_reapplying_it_changes_nothing() {
        let store = Cluster::new();
        let mut minter = TestMinter(0);
        let mut m = stack();
        apply(&store, &m, false, &mut minter).await.unwrap();
        m.services[1].spec.image = "api:2".into();
        m.services[1].canary = Some(crate::model::ManifestCanary {
            weight: 10,
            steps: vec![],
        });
        let p = apply(&store, &m, false, &mut minter).await.unwrap();
        let api = p.diff.iter().find(|d| d.name == "shop_api").unwrap();
        assert_eq!(api.changed, ["image", "canary 10%"]);
        let svc = store.state().service("shop_api").unwrap().clone();
        assert_eq!(svc.spec.image, "api:1");
        assert_eq!(
            svc.canary.as_ref().map(|c| (c.spec.image.as_str(), c.weight)),
            Some(("api:2", 10))
        );
        let p = apply(&store, &m, false, &mut minter).await.unwrap();
        assert!(p.is_noop(), "{:?}", p.diff);
    }

    fn route(name: &str, host: &str, service: &str, tls: &str) -> crate::model::ManifestIngress {
        crate::model::ManifestIngress {
            name: name.into(),
            spec: crate::model::ingress::IngressSpec {
                host: host.into(),
                path: "/".into(),
                service: service.into(),
                tls: RouteTls::parse("tls", tls).unwrap(),
                ..Default::default()
            },
        }
    }

    fn cert(name: &str, host: &str) -> crate::model::ManifestCertificate {
        let pem = crate::ingress::tls::test_certs::self_signed(name, &[host], &rcgen::PKCS_ECDSA_P256_SHA256);
        crate::model::ManifestCertificate {
            name: name.into(),
            cert_pem: pem.cert_pem,
            key_pem: pem.key_pem,
        }
    }

    #[tokio::test]
    async fn routes_and_certificates_go_through_the_same_apply() {
        let store = Cluster::new();
        let mut minter = TestMinter(0);
        let mut m = stack();
        m.certificates = vec![cert("shop-cert", "shop.example.com")];
        m.ingresses = vec![
            route("site", "shop.example.com", "web", "shop-cert"),
            route("docs", "docs.example.com", "api", "none"),
        ];
        let p = apply(&store, &m, false, &mut minter).await.unwrap();
        let made: Vec<_> = actions(&p)
            .into_iter()
            .filter(|(k, _)| k.starts_with("ingress") || k.starts_with("certificate"))
            .collect();
        assert_eq!(
            made,
            [
                ("certificate shop_shop-cert".to_string(), "create"),
                ("ingress shop_site".to_string(), "create"),
                ("ingress shop_docs".to_string(), "create"),
            ]
        );
        let st = store.state();
        let site = st.ingresses.values().find(|i| i.name == "shop_site").unwrap();
        assert_eq!(site.spec.service, "shop_web");
        assert_eq!(site.spec.tls, RouteTls::Certificate("shop_shop-cert".into()));
        let c = st.certificates.values().next().unwrap();
        assert_eq!(c.hosts, ["shop.example.com"]);
        assert_ne!(c.key_sealed, m.certificates[0].key_pem.as_bytes(), "the key is sealed");

        // Again: nothing to write.
        let p = apply(&store, &m, false, &mut minter).await.unwrap();
        assert!(p.is_noop(), "{:?}", p.diff);

        // A changed route updates in place, a new chain replaces the certificate
        // under its ID, and prune drops the route the file no longer names.
        let cert_id = c.id.clone();
        m.ingresses[0].spec.path = "/shop".into();
        m.ingresses.remove(1);
        m.certificates = vec![cert("shop-cert", "shop.example.com")];
        let p = apply(&store, &m, true, &mut minter).await.unwrap();
        let changed: Vec<_> = p
            .diff
            .iter()
            .filter(|d| d.action != DiffAction::Unchanged)
            .map(|d| (d.name.as_str(), d.action, d.changed.clone()))
            .collect();
        assert_eq!(
            changed,
            [
                ("shop_shop-cert", DiffAction::Update, vec!["cert".to_string()]),
                ("shop_site", DiffAction::Update, vec!["path".to_string()]),
                ("shop_docs", DiffAction::Remove, vec![]),
            ]
        );
        let st2 = store.state();
        assert_eq!(st2.ingresses.len(), 1);
        let c2 = &st2.certificates[&cert_id];
        assert_eq!(
            (c2.version, c2.cert_pem.as_str()),
            (2, m.certificates[0].cert_pem.as_str())
        );

        // A route to a service that exists nowhere refuses the whole manifest.
        let before = store.state();
        m.ingresses.push(route("bad", "bad.example.com", "nope", "none"));
        m.services[1].spec.image = "api:9".into();
        let e = apply(&store, &m, false, &mut minter).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ingresses.bad.service: service \"nope\" not found"),
            "{e}"
        );
        assert_eq!(store.state(), before);

        // A certificate whose key does not match is refused at its field.
        let mut bad = cert("other", "x.example.com");
        bad.key_pem = cert("k", "y.example.com").key_pem;
        let mut m2 = stack();
        m2.certificates = vec![bad];
        let e = apply(&store, &m2, false, &mut minter).await.unwrap_err();
        assert!(e.to_string().starts_with("certificates.other: "), "{e}");
    }

    #[tokio::test]
    async fn a_route_moves_off_a_service_that_the_same_apply_prunes() {
        let store = Cluster::new();
        let mut minter = TestMinter(0);
        let mut m = stack();
        m.ingresses = vec![route("docs", "docs.example.com", "api", "none")];
        apply(&store, &m, false, &mut minter).await.unwrap();

        // The route now names web, and api leaves the file: one apply does both.
        m.ingresses[0].spec.service = "web".into();
        m.services.retain(|s| s.name != "api");
        let p = apply(&store, &m, true, &mut minter).await.unwrap();
        let changed: Vec<_> = actions(&p).into_iter().filter(|(_, a)| *a != "unchanged").collect();
        assert_eq!(
            changed,
            [
                ("ingress shop_docs".to_string(), "update"),
                ("service shop_api".to_string(), "remove"),
            ]
        );
        let st = store.state();
        assert!(!st.services.values().any(|s| s.name == "shop_api"));
        assert_eq!(st.ingresses.values().next().unwrap().spec.service, "shop_web");

        // A route left on a service the file prunes still refuses the apply.
        let before = store.state();
        m.ingresses[0].spec.service = "shop_web".into();
        m.services.retain(|s| s.name != "web");
        let e = apply(&store, &m, true, &mut minter).await.unwrap_err();
        assert!(e.to_string().contains("shop_web"), "{e}");
        assert_eq!(store.state(), before);
    }

    #[tokio::test]
    async fn a_target_only_port_gets_a_free_port_that_stays_across_applies() {
        let store = Cluster::new();
        let mut minter = TestMinter(0);
        let mut m = stack();
        // web publishes 8080:80 and also a target only; api publishes 30000 itself.
        let web_port = m.services[0].spec.ports[0];
        m.services[0].spec.ports.push(crate::model::PortConfig {
            published: 0,
            target: 9000,
            ..web_port
        });
        m.services[1].spec.ports = vec![parse_publish("publish", "30000:80").unwrap()];
        let mut db_port = m.services[0].spec.ports[1];
        db_port.target = 5432;
        m.services[2].spec.ports = vec![db_port];
        apply(&store, &m, false, &mut minter).await.unwrap();
        let published = |st: &State, name: &str| st.service(name).unwrap().spec.ports.last().unwrap().published;
        let st = store.state();
        assert_eq!(published(&st, "shop_web"), 30001);
        assert_eq!(published(&st, "shop_db"), 30002);

        // Re-applied: the same ports, nothing written.
        let p = apply(&store, &m, false, &mut minter).await.unwrap();
        assert!(p.is_noop(), "{:?}", p.diff);
        // An image change keeps the picked port.
        m.services[2].spec.image = "db:2".into();
        apply(&store, &m, false, &mut minter).await.unwrap();
        assert_eq!(published(&store.state(), "shop_db"), 30002);
    }

    #[test]
    fn apply_without_a_stack_keeps_names_and_prunes_only_what_it_labelled() {
        let mut state = State::default();
        let mut minter = TestMinter(0);
        let mut hand = new_service("h".into(), "by-hand".into(), spec("x:1"), 0);
        hand.spec.labels.clear();
        state.services.insert("h".into(), hand);
        let mut applied = new_service("a".into(), "old".into(), spec("x:1"), 0);
        applied.spec.labels.insert(APPLY_LABEL.into(), "true".into());
        state.services.insert("a".into(), applied);
        let m = Manifest {
            services: vec![ManifestService {
                name: "web".into(),
                spec: spec("web:1"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = plan(&state, &m, true, &mut minter).unwrap();
        assert_eq!(
            actions(&p),
            [
                ("service web".to_string(), "create"),
                ("service old".to_string(), "remove")
            ]
        );
    }
}
