//! The loader against files: the examples, a compose file using every supported key
//! compared field by field, malformed files (one error each, naming file:line and
//! field), interpolation and `.env` as docker compose documents them, the merge of
//! several files, Warren YAML kinds, and random input (never a panic).

use super::*;
use crate::model::{
    ConfigRef, Constraint, EndpointMode, FailureAction, HealthCheck, HealthTest, ManifestCanary, ManifestSecret, Mount,
    MountKind, PortConfig, Protocol, PublishMode, RateLimit, Resources, RestartCondition, SecretRef, ServiceMode,
    Ulimit, UpdateOrder,
};
use std::fs;

fn env() -> Env {
    Env::from_vars([("FROM_SHELL", "shell"), ("HOME", "/home/u")]).without_dotenv()
}

/// Writes `files` into a new directory; returns it.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = d.path().join(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(p, text).unwrap();
    }
    d
}

/// The error with the directory taken out of file names.
fn err_of(d: &tempfile::TempDir, r: Result<Loaded, LoadError>) -> String {
    let e = r.expect_err("the file is malformed");
    e.to_string().replace(&format!("{}/", d.path().display()), "")
}

fn stack(d: &tempfile::TempDir, files: &[&str]) -> Result<Loaded, LoadError> {
    let paths: Vec<PathBuf> = files.iter().map(|f| d.path().join(f)).collect();
    load_stack(&paths, "st", &env())
}

#[test]
fn the_examples_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let c = load_stack(&[root.join("stack/compose.yaml")], "shop", &env()).unwrap();
    let w = load_apply(&[root.join("warren.yaml")], &env()).unwrap();
    for l in [&c, &w] {
        let m = &l.manifest;
        let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "api", "db"]);
        assert_eq!(m.secrets[0].data, b"demo-only-password\n");
        assert_eq!(m.volumes[0].name, "db-data");
        let web = &m.services[0];
        assert_eq!(web.spec.image, "warren-test/http:1");
        assert_eq!(web.spec.replicas(), Some(2));
        assert_eq!(
            web.canary,
            Some(ManifestCanary {
                weight: 10,
                steps: vec![50]
            })
        );
        assert_eq!(web.spec.rate_limit.map(|r| r.per_sec), Some(200));
        assert!(m.services[1].spec.health.is_some() && m.services[2].spec.health.is_some());
        assert_eq!(m.services[2].spec.secrets[0].target, "/run/secrets/db_password");
        assert_eq!(m.services[2].spec.mounts[0].source, "db-data");
    }
    assert_eq!(c.manifest.stack.as_deref(), Some("shop"));
    assert_eq!(c.manifest.ignored, ["services.web.depends_on"]);
    assert!(w.manifest.ignored.is_empty());
    let route = &w.manifest.ingresses[0];
    assert_eq!((route.name.as_str(), route.spec.service.as_str()), ("shop", "web"));
    assert_eq!(route.spec.port, Some(80));
    let o = c.origins.find("services.web.deploy.replicas").unwrap();
    assert!(o.file.ends_with("compose.yaml") && o.line == 19, "{o:?}");
}

const FULL: &str = r#"name: ignored-project
x-common: &common
  restart: on-failure:3
  labels:
    team: core
services:
  web:
    <<: *common
    image: nginx:1.27
    command: nginx -g 'daemon off;'
    entrypoint: ["/docker-entrypoint.sh"]
    environment:
      - A=1
      - FROM_SHELL
      - NOT_SET_ANYWHERE
    env_file: web.env
    ports:
      - "8080:80"
      - 127.0.0.1:8443:443/tcp
      - "9000-9001:7000-7001/udp"
      - target: 53
        published: 5353
        protocol: udp
        mode: host
    expose: ["9100", "9200/udp"]
    secrets:
      - source: api_key
        target: key.txt
      - ext
    configs:
      - nginx_conf
      - source: nginx_conf
        target: /etc/nginx/nginx.conf
        mode: 0440
    volumes:
      - data:/data
      - ./static:/usr/share/nginx/html:ro
      - type: tmpfs
        target: /tmp
      - /var/cache/app
      - type: volume
        target: /scratch
    tmpfs: /run
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost/a b"]
      interval: 10s
      timeout: 3s
      retries: 5
      start_period: 1m30s
    deploy:
      mode: replicated
      replicas: 3
      endpoint_mode: vip
      placement:
        constraints: [node.labels.zone==edge, node.role!=manager]
      resources:
        limits: {cpus: "0.5", memory: 512M, pids: 100}
        reservations: {cpus: 0.25, memory: 128M}
      update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 30s, max_failure_ratio: 0.2, order: start-first}
      rollback_config: {parallelism: 1, failure_action: pause}
      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 120s}
      labels: {tier: front}
    user: "101:101"
    working_dir: /srv
    hostname: web-host
    cap_add: [NET_ADMIN]
    cap_drop: [sys_time]
    read_only: true
    init: true
    stop_signal: SIGQUIT
    stop_grace_period: 1m
    ulimits:
      nofile: {soft: 1024, hard: 2048}
      nproc: 512
    sysctls:
      net.core.somaxconn: 1024
    dns: 1.1.1.1
    networks: [front]
    depends_on:
      db:
        condition: service_healthy
    build: .
    container_name: web1
    x-warren:
      rate_limit: 100/s
      rate_burst: 50
  db:
    image: postgres:16
    restart: "no"
    deploy:
      mode: global
    healthcheck:
      disable: true
    networks:
      front:
        aliases: [database]
secrets:
  api_key:
    file: ./api_key.txt
  ext:
    external: true
    name: shared_ext
configs:
  nginx_conf:
    file: ./nginx.conf
volumes:
  data:
    driver: local
    labels: {backup: "yes"}
networks:
  front:
    driver: overlay
"#;

#[test]
fn a_full_compose_file_maps_field_by_field() {
    let d = dir_with(&[
        ("compose.yaml", FULL),
        ("web.env", "B=2\nA=from-file\n"),
        ("api_key.txt", "k3y"),
        ("nginx.conf", "events {}\n"),
        ("static/index.html", "hi"),
    ]);
    let l = stack(&d, &["compose.yaml"]).unwrap();
    let m = &l.manifest;
    assert_eq!(m.stack.as_deref(), Some("st"));
    assert_eq!(
        m.ignored,
        [
            "services.web.build",
            "services.web.container_name",
            "services.web.ports[1].host_ip",
            "services.web.deploy.restart_policy.window",
            "services.web.depends_on",
            "services.db.networks.front.aliases",
        ]
    );
    assert_eq!(
        m.secrets,
        [
            ManifestSecret {
                name: "api_key".into(),
                external: false,
                data: b"k3y".to_vec(),
                labels: Default::default()
            },
            ManifestSecret {
                name: "shared_ext".into(),
                external: true,
                data: vec![],
                labels: Default::default()
            },
        ]
    );
    assert_eq!(m.configs.len(), 1);
    assert_eq!(
        (m.configs[0].name.as_str(), m.configs[0].data.as_slice()),
        ("nginx_conf", &b"events {}\n"[..])
    );
    assert_eq!(m.volumes.len(), 1);
    assert_eq!((m.volumes[0].name.as_str(), m.volumes[0].driver.as_str()), ("data", ""));
    assert_eq!(m.volumes[0].labels["backup"], "yes");
    assert_eq!(m.networks.len(), 1);
    assert_eq!(
        (m.networks[0].name.as_str(), m.networks[0].driver.as_str()),
        ("front", "overlay")
    );

    let web = &m.services[0];
    let s = &web.spec;
    assert_eq!(web.name, "web");
    assert_eq!(s.image, "nginx:1.27");
    assert_eq!(s.args, ["nginx", "-g", "daemon off;"]);
    assert_eq!(s.command, ["/docker-entrypoint.sh"]);
    assert_eq!(s.env, ["B=2", "A=1", "FROM_SHELL=shell"]);
    let p = |published, target, protocol, mode| PortConfig {
        published,
        target,
        protocol,
        mode,
    };
    assert_eq!(
        s.ports,
        [
            p(8080, 80, Protocol::Tcp, PublishMode::Ingress),
            p(8443, 443, Protocol::Tcp, PublishMode::Ingress),
            p(9000, 7000, Protocol::Udp, PublishMode::Ingress),
            p(9001, 7001, Protocol::Udp, PublishMode::Ingress),
            p(5353, 53, Protocol::Udp, PublishMode::Host),
        ]
    );
    assert_eq!(
        s.secrets,
        [
            SecretRef {
                name: "api_key".into(),
                target: "/run/secrets/key.txt".into()
            },
            SecretRef {
                name: "shared_ext".into(),
                target: "/run/secrets/ext".into()
            },
        ]
    );
    assert_eq!(
        web.configs,
        [
            ConfigRef {
                name: "nginx_conf".into(),
                target: "/nginx_conf".into(),
                mode: 0o444
            },
            ConfigRef {
                name: "nginx_conf".into(),
                target: "/etc/nginx/nginx.conf".into(),
                mode: 0o440
            },
        ]
    );
    let static_dir = d.path().join("static").canonicalize().unwrap().display().to_string();
    let mount = |kind, source: &str, target: &str, readonly| Mount {
        kind,
        source: source.into(),
        target: target.into(),
        readonly,
    };
    assert_eq!(
        s.mounts,
        [
            mount(MountKind::Volume, "data", "/data", false),
            mount(MountKind::Bind, &static_dir, "/usr/share/nginx/html", true),
            mount(MountKind::Tmpfs, "", "/tmp", false),
            mount(MountKind::Volume, "", "/var/cache/app", false),
            mount(MountKind::Volume, "", "/scratch", false),
            mount(MountKind::Tmpfs, "", "/run", false),
        ]
    );
    assert_eq!(
        s.health,
        Some(HealthCheck {
            test: HealthTest::Cmd("curl -f 'http://localhost/a b'".into()),
            interval_ms: 10_000,
            timeout_ms: 3_000,
            retries: 5,
            start_period_ms: 90_000,
        })
    );
    assert_eq!(s.mode, ServiceMode::Replicated { replicas: 3 });
    assert_eq!(s.endpoint_mode, EndpointMode::Vip);
    assert_eq!(
        s.constraints,
        [
            Constraint::parse("c", "node.labels.zone==edge").unwrap(),
            Constraint::parse("c", "node.role!=manager").unwrap()
        ]
    );
    assert_eq!(
        s.limits,
        Resources {
            nano_cpus: 500_000_000,
            memory_bytes: 512 << 20
        }
    );
    assert_eq!(
        s.reservations,
        Resources {
            nano_cpus: 250_000_000,
            memory_bytes: 128 << 20
        }
    );
    assert_eq!(s.container.pids_limit, 100);
    assert_eq!(
        (
            s.update.parallelism,
            s.update.delay_ms,
            s.update.failure_action,
            s.update.monitor_ms
        ),
        (2, 10_000, FailureAction::Rollback, 30_000)
    );
    assert_eq!(
        (s.update.max_failure_ratio, s.update.order),
        (0.2, Some(UpdateOrder::StartFirst))
    );
    assert_eq!(
        (s.rollback.parallelism, s.rollback.failure_action),
        (1, FailureAction::Pause)
    );
    assert_eq!(
        (s.restart.condition, s.restart.delay_ms, s.restart.max_attempts),
        (RestartCondition::OnFailure, 5_000, 3)
    );
    let labels: Vec<(&str, &str)> = s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(labels, [("team", "core"), ("tier", "front")]);
    assert_eq!((s.user.as_str(), s.workdir.as_str()), ("101:101", "/srv"));
    let o = &s.container;
    assert_eq!(o.hostname, "web-host");
    assert_eq!(
        (o.cap_add.as_slice(), o.cap_drop.as_slice()),
        (&["CAP_NET_ADMIN".to_string()][..], &["CAP_SYS_TIME".to_string()][..])
    );
    assert!(o.read_only && o.init);
    assert_eq!((s.stop_signal.as_str(), s.stop_grace_ms), ("SIGQUIT", 60_000));
    assert_eq!(
        o.ulimits,
        [
            Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048
            },
            Ulimit {
                name: "nproc".into(),
                soft: 512,
                hard: 512
            }
        ]
    );
    assert_eq!(o.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(o.dns, ["1.1.1.1".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(web.networks, ["front"]);
    assert_eq!(
        s.rate_limit,
        Some(RateLimit {
            per_sec: 100,
            burst: 50
        })
    );
    assert_eq!(web.canary, None);

    let db = &m.services[1];
    assert_eq!(db.spec.mode, ServiceMode::Global);
    assert_eq!(db.spec.health, Some(HealthCheck::new(HealthTest::Disabled)));
    assert_eq!(db.spec.restart.condition, RestartCondition::None);
    assert_eq!(db.networks, ["front"]);

    // Every key has its line; model field names find theirs too.
    let line = |p: &str| l.origins.find(p).map(|o| o.line);
    assert_eq!(line("services.web.deploy.resources.limits.memory"), Some(57));
    assert_eq!(line("services.web.publish"), Some(17));
    assert_eq!(line("services.web.ports[3].mode"), Some(24));
    assert_eq!(line("secrets.shared_ext"), Some(100));
    assert_eq!(
        locate(&l.origins, "services.web.publish", "port 8080/tcp is in use"),
        format!(
            "{}:17: services.web.publish: port 8080/tcp is in use",
            d.path().join("compose.yaml").display()
        )
    );
    assert_eq!(locate(&l.origins, "nowhere.x", "gone"), "nowhere.x: gone");
}

/// Each malformed file gives one error naming file:line and the field.
#[test]
fn malformed_files_name_file_line_and_field() {
    let svc = |body: &str| format!("services:\n  web:\n    image: a:1\n{body}");
    let cases: Vec<(String, &str)> = vec![
        (
            svc("    deploy:\n      replicas: three\n"),
            r#"bad.yaml:5: services.web.deploy.replicas: expected a number, got "three""#,
        ),
        (
            svc("    depends_on: [db]\n"),
            r#"bad.yaml:4: services.web.depends_on[0]: depends on "db", which is not a service of this file"#,
        ),
        (
            svc("    secrets: [nope]\n"),
            r#"bad.yaml:4: services.web.secrets[0]: secret "nope" is not declared under the top-level secrets"#,
        ),
        (
            svc("    ports: [\"8080:80\"]\n  api:\n    image: b:1\n    ports:\n      - 8080:81\n"),
            "bad.yaml:7: services.api.ports: port 8080/tcp is already published by services.web",
        ),
        (
            svc("    ports:\n      - 8080:80\n      - 8080:81\n"),
            "bad.yaml:4: services.web.ports: port 8080/tcp is published twice",
        ),
        (
            svc("    stop_grace_period: 10 seconds\n"),
            r#"bad.yaml:4: services.web.stop_grace_period: invalid duration "10 seconds": expected e.g. 10s, 1m30s, 500ms"#,
        ),
        (
            svc("    environment:\n      A: ${UNCLOSED\n"),
            r#"bad.yaml:5: services.web.environment.A: invalid interpolation format: "${UNCLOSED" has an unterminated ${; you may need to escape any $ with another $"#,
        ),
        (
            svc("    environment:\n      B: ${DB_PASSWORD:?set it in .env}\n"),
            "bad.yaml:5: services.web.environment.B: required variable DB_PASSWORD is missing a value: set it in .env",
        ),
        (
            "services:\n  web:\n    image: a:1\n   ports: []\n".to_string(),
            "bad.yaml:4: invalid YAML: while parsing a block mapping, did not find expected key",
        ),
        (
            "services:\n  web:\n    command: x\n".to_string(),
            "bad.yaml:2: services.web.image: a service needs an image (Warren does not build images)",
        ),
        (
            svc("    ports: [\"80:eighty\"]\n"),
            r#"bad.yaml:4: services.web.ports[0]: invalid port "80:eighty": expected PUBLISHED:TARGET with ports 1-65535"#,
        ),
        (
            svc("    ports: [\"eighty\"]\n"),
            r#"bad.yaml:4: services.web.ports[0]: invalid port "eighty": expected [PUBLISHED:]TARGET with ports 1-65535"#,
        ),
        (
            svc("    imgae: b:1\n"),
            r#"bad.yaml:4: services.web.imgae: unknown key "imgae"; did you mean "image"?"#,
        ),
        (
            svc("    volumes: [\"./missing:/data\"]\n"),
            r#"bad.yaml:4: services.web.volumes[0]: bind source "./missing" (./missing) does not exist"#,
        ),
        (
            svc("    volumes: [\"data:/data\"]\n"),
            r#"bad.yaml:4: services.web.volumes[0]: volume "data" is not declared under the top-level volumes"#,
        ),
        (
            svc("    deploy:\n      placement:\n        constraints: [zone=edge]\n"),
            r#"bad.yaml:6: services.web.deploy.placement.constraints[0]: invalid constraint "zone=edge": expected KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==edge"#,
        ),
        (
            svc("    image: b:1\n"),
            r#"bad.yaml:4: invalid YAML: duplicate key "image""#,
        ),
        (
            svc("    deploy:\n      resources:\n        limits:\n          memory: 1k\n"),
            "bad.yaml:6: services.web.deploy.resources.limits: a memory limit must be at least 4MiB",
        ),
        (
            svc("    read_only: maybe\n"),
            r#"bad.yaml:4: services.web.read_only: expected true or false, got "maybe""#,
        ),
        (
            svc("    x-warren:\n      canary_weight: 150\n"),
            "bad.yaml:5: services.web.x-warren.canary_weight: 150 is not a percentage between 1 and 100",
        ),
        (
            svc("    networks: [back]\n"),
            r#"bad.yaml:4: services.web.networks[0]: network "back" is not declared under the top-level networks"#,
        ),
    ];
    let mut failures = vec![];
    for (text, want) in &cases {
        let d = dir_with(&[("bad.yaml", text)]);
        let got = err_of(&d, stack(&d, &["bad.yaml"]));
        let want = want.replace("DIR", &d.path().display().to_string());
        if got != want {
            failures.push(format!("file:\n{text}\nwant: {want}\ngot:  {got}\n"));
        }
    }
    // Warren YAML.
    let wcases = [
        (
            "apiVersion: warren/v1\nkind: Deployment\nmetadata: {name: x}\n",
            r#"bad.yaml:2: kind: unknown kind "Deployment": expected one of Service, Secret, Config, Volume, Ingress, Certificate"#,
        ),
        (
            "apiVersion: warren/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: a:1\n  replicas: -1\n",
            r#"bad.yaml:6: services.web.replicas: expected a number, got "-1""#,
        ),
        (
            "apiVersion: warren/v2\nkind: Service\n",
            r#"bad.yaml:1: apiVersion: unknown version "warren/v2": expected warren/v1"#,
        ),
        (
            "apiVersion: warren/v1\nkind: Secret\nmetadata: {name: s}\nspec: {}\n",
            "bad.yaml:4: secrets.s: a secret needs spec.file, spec.data or spec.external: true",
        ),
        (
            "apiVersion: warren/v1\nkind: Ingress\nmetadata: {name: r}\nspec:\n  host: \"*.Example.com.\"\n  service: web\n  tls: acme\n",
            "bad.yaml:7: ingresses.r.tls: acme needs an exact host: HTTP-01 cannot prove a wildcard or a default route",
        ),
        (
            "kind: Service\napiVersion: warren/v1\nmetadata: {name: a}\nspec: {image: a:1}\n---\nkind: Service\napiVersion: warren/v1\nmetadata: {name: a}\nspec: {image: b:1}\n",
            "bad.yaml:8: services.a: is defined twice (first at bad.yaml:3)",
        ),
        (
            "hello: world\n",
            "bad.yaml:1: neither Warren YAML (apiVersion and kind) nor a compose file (a services mapping)",
        ),
    ];
    for (text, want) in wcases {
        let d = dir_with(&[("bad.yaml", text)]);
        let got = err_of(&d, load_apply(&[d.path().join("bad.yaml")], &env()));
        let got = got.replace(&format!("{}/", d.path().display()), "");
        if got != want {
            failures.push(format!("file:\n{text}\nwant: {want}\ngot:  {got}\n"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len() + 7,
        failures.join("\n")
    );
}

#[test]
fn dotenv_beside_the_first_file_and_the_shell_wins() {
    let d = dir_with(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: ${IMAGE:-busybox}:${TAG}\n    environment:\n      - MODE=${MODE-unset}\n      - PRICE=$$5\n      - EMPTY=${EMPTY:-dflt}/${EMPTY-kept}\n      - ALT=${TAG:+tagged}\n",
        ),
        (".env", "# comment\nexport TAG=1.36\nMODE='from .env'\nEMPTY=\nFROM_SHELL=file\n"),
    ]);
    let e = Env::from_vars([("MODE", "from shell")]);
    let l = load_stack(&[d.path().join("compose.yaml")], "st", &e).unwrap();
    let s = &l.manifest.services[0].spec;
    assert_eq!(s.image, "busybox:1.36");
    assert_eq!(s.env, ["MODE=from shell", "PRICE=$5", "EMPTY=dflt/", "ALT=tagged"]);
    // Without .env: TAG is unset (a warning, and a blank), MODE still the shell's.
    let l = load_stack(
        &[d.path().join("compose.yaml")],
        "st",
        &Env::from_vars([("MODE", "x")]).without_dotenv(),
    )
    .unwrap();
    assert_eq!(l.manifest.services[0].spec.image, "busybox:");
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].ends_with("compose.yaml:3: the TAG variable is not set, defaulting to a blank string"));
    // A bad .env is an error at its line.
    let d = dir_with(&[
        ("compose.yaml", "services: {web: {image: a}}\n"),
        (".env", "OK=1\nNOT OK=2\n"),
    ]);
    let got = err_of(
        &d,
        load_stack(
            &[d.path().join("compose.yaml")],
            "st",
            &Env::from_vars::<&str, &str>([]),
        ),
    );
    assert_eq!(got, ".env:2: invalid variable name \"NOT OK\"");
}

#[test]
fn later_files_override_earlier_ones() {
    let d = dir_with(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: a:1\n    command: [a, b]\n    environment: [A=1, B=2]\n    ports: [\"80:80\"]\n    labels: {x: \"1\"}\n    deploy: {replicas: 2, resources: {limits: {memory: 64M}}}\n  db:\n    image: pg:1\n",
        ),
        (
            "override.yaml",
            "services:\n  web:\n    image: a:2\n    command: [c]\n    environment: {B: \"3\", C: \"4\"}\n    ports: [\"80:80\", \"443:443\"]\n    deploy: {replicas: 5}\n  extra:\n    image: e:1\n",
        ),
    ]);
    let l = stack(&d, &["compose.yaml", "override.yaml"]).unwrap();
    let m = &l.manifest;
    let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "db", "extra"]);
    let s = &m.services[0].spec;
    assert_eq!(s.image, "a:2");
    assert_eq!(s.args, ["c"]);
    assert_eq!(s.env, ["A=1", "B=3", "C=4"]);
    assert_eq!(s.ports.iter().map(|p| p.published).collect::<Vec<_>>(), [80, 443]);
    assert_eq!(s.labels["x"], "1");
    assert_eq!(s.replicas(), Some(5));
    assert_eq!(s.limits.memory_bytes, 64 << 20);
    // The replicas' origin is the file that set them last.
    let o = l.origins.find("services.web.deploy.replicas").unwrap();
    assert!(o.file.ends_with("override.yaml") && o.line == 7, "{o:?}");
    let o = l.origins.find("services.web.deploy.resources").unwrap();
    assert!(o.file.ends_with("compose.yaml") && o.line == 8, "{o:?}");
}

#[test]
fn a_target_only_port_is_left_for_the_manager_to_pick() {
    let d = dir_with(&[(
        "compose.yaml",
        "services:\n  web:\n    image: a:1\n    ports: [\"80\", \"53/udp\", {target: 443}]\n  api:\n    image: b:1\n    ports: [\"80\"]\n",
    )]);
    let l = stack(&d, &["compose.yaml"]).unwrap();
    let ports = |i: usize| -> Vec<(u16, u16, &str)> {
        l.manifest.services[i]
            .spec
            .ports
            .iter()
            .map(|p| (p.published, p.target, p.protocol.as_str()))
            .collect()
    };
    // Two services with target 80 and no number are no conflict: each gets its own.
    assert_eq!(ports(0), [(0, 80, "tcp"), (0, 53, "udp"), (0, 443, "tcp")]);
    assert_eq!(ports(1), [(0, 80, "tcp")]);
}

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

#[test]
fn warren_yaml_kinds_directories_and_documents() {
    let d = dir_with(&[
        (
            "b-services.yaml",
            "apiVersion: warren/v1\nkind: Service\nmetadata:\n  name: api\n  labels: {team: a}\nspec:\n  image: api:1\n  replicas: 4\n  resources: {limits: {memory: 256M}}\n  health_check: {type: http, endpoint: /health, port: 8080, interval: 2s}\n  deploy:\n    strategy: canary\n    update_config: {canary_weight: 20}\n  rate_limit: 10/s\n",
        ),
        (
            "a-objects.yml",
            "apiVersion: warren/v1\nkind: Secret\nmetadata: {name: lit}\nspec: {data: s3cret}\n---\napiVersion: warren/v1\nkind: Secret\nmetadata: {name: fromfile}\nspec: {file: pw.txt}\n---\napiVersion: warren/v1\nkind: Config\nmetadata: {name: conf}\nspec: {data: \"x=1\"}\n---\napiVersion: warren/v1\nkind: Volume\nmetadata: {name: vol}\nspec: {options: {size: 1g}}\n---\napiVersion: warren/v1\nkind: Ingress\nmetadata: {name: shop}\nspec:\n  host: shop.example.com\n  service: api:8080\n  path: /v1\n  tls: shop-cert\n  strip_prefix: true\n  header_add: {X-Env: prod}\n  allow: [10.0.0.0/8]\n  rate_limit: 5/s\n  rate_burst: 10\n---\napiVersion: warren/v1\nkind: Certificate\nmetadata: {name: shop-cert}\nspec: {cert_file: c.pem, key_file: k.pem}\n",
        ),
        ("pw.txt", "pw"),
        ("c.pem", CERT),
        ("k.pem", KEY),
        ("notes.txt", "not yaml"),
    ]);
    let l = load_apply(&[d.path().to_path_buf()], &env()).unwrap();
    let m = &l.manifest;
    assert_eq!(m.stack, None);
    let secrets: Vec<(&str, &[u8])> = m.secrets.iter().map(|s| (s.name.as_str(), s.data.as_slice())).collect();
    assert_eq!(secrets, [("lit", &b"s3cret"[..]), ("fromfile", &b"pw"[..])]);
    assert_eq!(m.configs[0].data, b"x=1");
    assert_eq!(m.volumes[0].options["size"], "1g");
    let ing = &m.ingresses[0];
    assert_eq!(
        (ing.name.as_str(), ing.spec.host.as_str(), ing.spec.path.as_str()),
        ("shop", "shop.example.com", "/v1")
    );
    assert_eq!((ing.spec.service.as_str(), ing.spec.port), ("api", Some(8080)));
    assert_eq!(
        ing.spec.tls,
        crate::model::ingress::RouteTls::Certificate("shop-cert".into())
    );
    assert!(ing.spec.strip_prefix);
    assert_eq!(ing.spec.header_add[0].name, "x-env");
    assert_eq!(ing.spec.rate_limit, Some(RateLimit { per_sec: 5, burst: 10 }));
    assert_eq!(m.certificates[0].cert_pem, CERT);
    let api = &m.services[0];
    assert_eq!(api.spec.replicas(), Some(4));
    assert_eq!(api.spec.labels["team"], "a");
    assert_eq!(api.spec.limits.memory_bytes, 256 << 20);
    assert_eq!(
        api.spec.health.as_ref().map(|h| (&h.test, h.interval_ms)),
        Some((
            &HealthTest::Http {
                port: 8080,
                path: "/health".into()
            },
            2_000
        ))
    );
    assert_eq!(
        api.canary,
        Some(ManifestCanary {
            weight: 20,
            steps: vec![]
        })
    );
    assert_eq!(api.spec.rate_limit, Some(RateLimit { per_sec: 10, burst: 10 }));
    let o = l.origins.find("services.api.replicas").unwrap();
    assert!(o.file.ends_with("b-services.yaml") && o.line == 8, "{o:?}");
    assert_eq!(l.origins.find("ingresses.shop").unwrap().line, 23);
    // Forced formats: a compose file given to apply -f loads as compose.
    let d = dir_with(&[("c.yaml", "services: {web: {image: a}}\n")]);
    let l = load_apply_as(&[d.path().join("c.yaml")], Format::Compose, &env()).unwrap();
    assert_eq!(l.manifest.services[0].name, "web");
    assert!(load_apply_as(&[d.path().join("c.yaml")], Format::Warren, &env()).is_err());
}

/// Random bytes and mutations of valid files never make the loader panic.
#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let seeds = [
        FULL,
        include_str!("../../../examples/warren.yaml"),
        include_str!("../../../examples/stack/compose.yaml"),
    ];
    let alphabet = b"{}[]:-,&*<>!|'\"#$%\n \t?~0123456789abcxyz._/=@\\";
    let vars = Vars {
        env: [("A".to_string(), "1".to_string())].into(),
        dotenv: Default::default(),
    };
    for i in 0..1500 {
        let text: String = if i % 5 == 0 {
            (0..rng.random_range(0..200))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
                .collect()
        } else {
            let mut b: Vec<u8> = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..b.len().max(1));
                match rng.random_range(0..3) {
                    0 if !b.is_empty() => {
                        b.remove(at.min(b.len() - 1));
                    }
                    1 => b.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    _ => {
                        let end = (at + rng.random_range(0..40)).min(b.len());
                        b.drain(at..end);
                    }
                }
            }
            String::from_utf8_lossy(&b).into_owned()
        };
        let src = || Source {
            name: "fuzz.yaml".into(),
            dir: PathBuf::from("/nonexistent"),
            text: text.clone(),
        };
        let _ = apply_sources(&[src()], Format::Auto, &vars);
        let _ = stack_sources(&[src(), src()], "st", &vars);
    }
}

/// docs/warren.schema.json knows every key the loader reads in a Service spec.
#[test]
fn the_json_schema_matches_the_loader() {
    let text = include_str!("../../../docs/warren.schema.json");
    let schema: serde_json::Value = serde_json::from_str(text).unwrap();
    let service = schema["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["if"]["properties"]["kind"]["const"] == "Service")
        .unwrap();
    let props = service["then"]["properties"]["spec"]["properties"].as_object().unwrap();
    for key in service::KEYS.iter().chain(service::IGNORED) {
        assert!(props.contains_key(*key), "{key} is missing from the schema");
    }
    assert_eq!(props.len(), service::KEYS.len() + service::IGNORED.len());
}

/// The tech spec's own example (a compose-like file with Warren's shortcuts) loads.
const TECH_SPEC: &str = r#"# warren.yaml
version: "1"

services:
  web:
    image: nginx:latest
    replicas: 3
    deploy:
      strategy: rolling
      update_config:
        parallelism: 1
        delay: 10s
        failure_action: rollback
    ports:
      - target: 80
        published: 8080
        protocol: tcp
    networks:
      - frontend
    health_check:
      type: http
      endpoint: /health
      interval: 10s
      timeout: 5s
      retries: 3
    resources:
      limits:
        cpus: "0.5"
        memory: 512M
      reservations:
        cpus: "0.25"
        memory: 256M
    labels:
      com.example.team: "platform"

  api:
    image: myapp:v1.0
    replicas: 5
    deploy:
      strategy: canary
      update_config:
        canary_weight: 10
    secrets:
      - db_password
    volumes:
      - api-data:/var/lib/api
    networks:
      - frontend
      - backend

networks:
  frontend:
    driver: wireguard
    subnet: 10.0.1.0/24
  backend:
    driver: wireguard
    subnet: 10.0.2.0/24

secrets:
  db_password:
    external: true  # Created separately via CLI

volumes:
  api-data:
    driver: local
"#;

#[test]
fn the_tech_spec_example_loads() {
    let d = dir_with(&[("warren.yaml", TECH_SPEC)]);
    let l = load_apply(&[d.path().join("warren.yaml")], &env()).unwrap();
    let m = &l.manifest;
    let (web, api) = (&m.services[0], &m.services[1]);
    assert_eq!((web.spec.replicas(), api.spec.replicas()), (Some(3), Some(5)));
    assert_eq!(
        web.spec.health.as_ref().map(|h| &h.test),
        Some(&HealthTest::Http {
            port: 80,
            path: "/health".into()
        })
    );
    assert_eq!(web.spec.limits.memory_bytes, 512 << 20);
    assert_eq!(web.spec.update.failure_action, FailureAction::Rollback);
    assert_eq!(
        api.canary,
        Some(ManifestCanary {
            weight: 10,
            steps: vec![]
        })
    );
    assert_eq!(api.networks, ["frontend", "backend"]);
    assert!(m.secrets[0].external);
    assert_eq!(m.ignored, ["networks.frontend.subnet", "networks.backend.subnet"]);
}

#[test]
fn endpoint_locality_is_read_from_x_warren_and_a_bad_value_names_its_line() {
    let d = dir_with(&[
        (
            "ok.yaml",
            "services:\n  web:\n    image: web:1\n    x-warren:\n      endpoint_locality: prefer-local\n  api:\n    image: api:1\n",
        ),
        (
            "bad.yaml",
            "services:\n  web:\n    image: web:1\n    x-warren:\n      endpoint_locality: nearest\n",
        ),
    ]);
    let m = stack(&d, &["ok.yaml"]).unwrap().manifest;
    let locality = |n: &str| m.services.iter().find(|s| s.name == n).unwrap().spec.endpoint_locality;
    assert_eq!(locality("web"), crate::model::EndpointLocality::PreferLocal);
    assert_eq!(locality("api"), crate::model::EndpointLocality::Any);
    let e = err_of(&d, stack(&d, &["bad.yaml"]));
    assert!(
        e.starts_with("bad.yaml:5: services.web.x-warren.endpoint_locality: invalid endpoint locality"),
        "{e}"
    );
}
