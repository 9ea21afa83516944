//! End-to-end tests of declarative deployments on real containers: a compose stack
//! of three services deploys, its tasks reach each other by their short names,
//! re-applying changes nothing, an image change rolls only its service, a dry run
//! changes nothing, a port conflict and a changed secret are refused at their
//! file:line with nothing changed, `--prune` and `stack rm` remove what goes, and
//! `apply -f` of Warren YAML creates, keeps and prunes, its ingress routes and
//! certificates too, and a target-only port gets a picked, stable number. One
//! cluster for every step, to keep the time small.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use warren_tests::env::Env;

const PORT: u16 = 18480;

/// The stack's compose file; `api_image` varies, `with_api` drops the api service.
fn compose(image: &str, api_image: &str, with_api: bool) -> String {
    let api = if with_api {
        format!("  api:\n    image: {api_image}\n")
    } else {
        String::new()
    };
    format!(
        "services:
  web:
    image: {image}
    ports:
      - \"{PORT}:80\"
    environment:
      API_HOST: api
      DATABASE_HOST: db
    configs:
      - source: site
        target: /etc/site.conf
        mode: 0440
{api}  db:
    image: {image}
    secrets:
      - db_password
    volumes:
      - data:/data
    healthcheck:
      test: [\"CMD-SHELL\", \"wget -q -O /dev/null http://127.0.0.1/healthz\"]
      interval: 1s
      retries: 3
    depends_on:
      - web
secrets:
  db_password:
    file: ./db_password.txt
configs:
  site:
    file: ./site.conf
volumes:
  data: {{}}
"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Every live task of the stack, by service, as task IDs.
fn task_ids(env: &Env, m: usize) -> BTreeMap<String, BTreeSet<String>> {
    let tasks: Value = env.c.json(m, &["stack", "ps", "shop", "--format", "json"]).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in tasks.as_array().unwrap() {
        if t["desired_state"] == "Running" {
            out.entry(t["service_name"].as_str().unwrap_or_default().to_string())
                .or_default()
                .insert(t["id"].as_str().unwrap().to_string());
        }
    }
    out
}

/// What the cluster holds, as `service ls` and `secret ls` show it (without counts,
/// which move as tasks start).
fn state(env: &Env, m: usize) -> Value {
    let mut services: Value = env.c.json(m, &["service", "ls", "--format", "json"]).unwrap();
    for s in services.as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("replicas");
    }
    let secrets: Value = env.c.json(m, &["secret", "ls", "--format", "json"]).unwrap();
    serde_json::json!({ "services": services, "secrets": secrets })
}

/// `nslookup NAME` in a container, with the container's own resolver settings.
fn lookup(env: &Env, task: &str, name: &str) -> BTreeSet<String> {
    let out = env.exec_in("m1", task, &["/bin/busybox", "nslookup", name]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("Name:")
        .skip(1)
        .flat_map(|block| {
            block
                .lines()
                .filter_map(|l| l.strip_prefix("Address:"))
                .map(|a| a.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn vip(env: &Env, m: usize, service: &str) -> String {
    let s: Value = env
        .c
        .json(m, &["service", "inspect", service, "--format", "json"])
        .unwrap();
    s["vip"].as_str().unwrap().to_string()
}

#[test]
fn a_compose_stack_deploys_reapplies_rolls_refuses_prunes_and_goes() {
    let mut env = Env::new();
    let m1 = env.init("m1");
    let v1 = env.image("warren-test/http");
    let v2 = format!("{}/warren-test/http:2", env.registry);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "db_password.txt", "hunter2\n");
    write(dir.path(), "site.conf", "greeting = hello\n");
    let file = write(dir.path(), "compose.yaml", &compose(&v1, &v1, true));

    // 1. It deploys: services named shop_<service>, one task each.
    let out = env.c.ok(m1, &["stack", "deploy", "-c", &file, "shop"]);
    assert!(out.contains("create") && out.contains("shop_web"), "{out}");
    let web = env.running(m1, "shop_web", 1);
    env.running(m1, "shop_api", 1);
    env.running(m1, "shop_db", 1);
    let ls = env.c.ok(m1, &["stack", "ls"]);
    assert!(ls.contains("shop") && ls.contains('3'), "{ls}");
    let db: Value = env
        .c
        .json(m1, &["service", "inspect", "shop_db", "--format", "json"])
        .unwrap();
    assert_eq!(db["spec"]["secrets"][0]["name"], "shop_db_password", "{db}");
    assert_eq!(db["spec"]["secrets"][0]["target"], "/run/secrets/db_password", "{db}");
    assert_eq!(db["spec"]["mounts"][0]["source"], "shop_data", "{db}");
    assert!(db["spec"]["health"].is_object(), "{db}");

    // 2. The web task reaches api and db by their short names (their VIPs).
    let web_task = web[0]["id"].as_str().unwrap().to_string();
    for (short, full) in [("api", "shop_api"), ("db", "shop_db")] {
        let want = BTreeSet::from([vip(&env, m1, full)]);
        env.c
            .wait(&format!("{short} to resolve in web"), Duration::from_secs(30), || {
                (lookup(&env, &web_task, short) == want).then_some(())
            });
    }
    let api_vip = vip(&env, m1, "shop_api");
    let got = env.exec_in(
        "m1",
        &web_task,
        &["/bin/busybox", "wget", "-q", "-O", "-", &format!("http://{api_vip}/")],
    );
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));

    // The config is a read-only file at its target, with its mode.
    let cat = env.exec_in("m1", &web_task, &["/bin/busybox", "cat", "/etc/site.conf"]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "greeting = hello\n");
    let mode = env.exec_in("m1", &web_task, &["/bin/busybox", "stat", "-c", "%a", "/etc/site.conf"]);
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "440");
    let ro = env.exec_in(
        "m1",
        &web_task,
        &["/bin/busybox", "sh", "-c", "echo x > /etc/site.conf"],
    );
    assert!(!ro.status.success(), "the config must be read-only");

    // 3. `stack ps` lists every task; the db task gets healthy.
    let ids = task_ids(&env, m1);
    assert_eq!(
        ids.keys().cloned().collect::<Vec<_>>(),
        ["shop_api", "shop_db", "shop_web"],
        "{ids:?}"
    );
    env.c.wait("db healthy", Duration::from_secs(60), || {
        let t = env.running(m1, "shop_db", 1);
        (t[0]["status"]["health"] == "healthy").then_some(())
    });

    // 4. The same file again: nothing changes, no task restarts.
    let before = state(&env, m1);
    let out = env.c.ok(m1, &["stack", "deploy", "-c", &file, "shop"]);
    assert!(out.contains("0 to create, 0 to update"), "{out}");
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(state(&env, m1), before);
    assert_eq!(task_ids(&env, m1), ids);

    // 5. A dry run of an image change prints the diff (also as JSON) and changes nothing.
    write(dir.path(), "compose.yaml", &compose(&v1, &v2, true));
    let out = env.c.ok(m1, &["stack", "deploy", "-c", &file, "shop", "--dry-run"]);
    assert!(out.contains("dry run: nothing changed"), "{out}");
    let diff: Value = env
        .c
        .json(
            m1,
            &["stack", "deploy", "-c", &file, "shop", "--dry-run", "--format", "json"],
        )
        .unwrap();
    let changes = diff["changes"].as_array().unwrap();
    let updated: Vec<&Value> = changes.iter().filter(|c| c["action"] == "update").collect();
    assert_eq!(updated.len(), 1, "{diff}");
    assert_eq!(updated[0]["name"], "shop_api");
    assert_eq!(updated[0]["changed"], serde_json::json!(["image"]));
    assert_eq!(diff["applied"], false);
    assert_eq!(state(&env, m1), before);
    assert_eq!(task_ids(&env, m1), ids);

    // 6. Applied: only api rolls (through a new spec version), web and db keep their tasks.
    env.c.ok(m1, &["stack", "deploy", "-c", &file, "shop"]);
    env.c.wait("api on the new image", Duration::from_secs(90), || {
        let t = env.running(m1, "shop_api", 1);
        (t[0]["spec"]["image"] == v2.as_str()).then_some(())
    });
    let after = task_ids(&env, m1);
    assert_eq!(after["shop_web"], ids["shop_web"]);
    assert_eq!(after["shop_db"], ids["shop_db"]);
    assert!(after["shop_api"].is_disjoint(&ids["shop_api"]), "{after:?}");

    // 7. A second stack publishing the same port is refused at its line, and nothing of
    //    it is created (its secret neither).
    let before = state(&env, m1);
    let other = write(dir.path(), "other.yaml", &compose(&v1, &v1, true));
    let err = env.c.fails(m1, &["stack", "deploy", "-c", &other, "other"]);
    assert!(
        err.contains("other.yaml:5: services.web.ports[0].published: port 18480/tcp is already published by service \"shop_web\""),
        "{err}"
    );
    assert_eq!(state(&env, m1), before);

    // 8. A changed secret is refused, naming it; nothing changes.
    write(dir.path(), "db_password.txt", "changed\n");
    let err = env.c.fails(m1, &["stack", "deploy", "-c", &file, "shop"]);
    assert!(
        err.contains("secrets.db_password: secret \"shop_db_password\""),
        "{err}"
    );
    assert!(err.contains("immutable"), "{err}");
    assert_eq!(state(&env, m1), before);
    write(dir.path(), "db_password.txt", "hunter2\n");

    // 9. --prune after removing a service from the file removes it, and only it.
    write(dir.path(), "compose.yaml", &compose(&v1, &v2, false));
    let out = env.c.ok(m1, &["stack", "deploy", "-c", &file, "shop", "--prune"]);
    assert!(out.contains("remove") && out.contains("shop_api"), "{out}");
    let services = env.c.ok(m1, &["stack", "services", "shop", "-q"]);
    assert_eq!(services.lines().count(), 2, "{services}");
    assert!(env
        .c
        .fails(m1, &["service", "inspect", "shop_api"])
        .contains("not found"));
    assert_eq!(task_ids(&env, m1).get("shop_web"), ids.get("shop_web"));

    // 10. stack rm removes its services and secret.
    env.c.ok(m1, &["stack", "rm", "shop"]);
    let left: Value = env.c.json(m1, &["service", "ls", "--format", "json"]).unwrap();
    assert_eq!(left, serde_json::json!([]));
    let secrets: Value = env.c.json(m1, &["secret", "ls", "--format", "json"]).unwrap();
    assert_eq!(secrets, serde_json::json!([]));
    let configs: Value = env.c.json(m1, &["config", "ls", "--format", "json"]).unwrap();
    assert_eq!(configs, serde_json::json!([]));
    assert!(env
        .c
        .fails(m1, &["stack", "ps", "shop"])
        .contains("nothing found in stack shop"));

    // 11. `apply -f` of Warren YAML: created under its own names, unchanged when
    //     applied again, and `--prune` removes what the file no longer names.
    let doc =
        |name: &str| format!("apiVersion: warren/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  image: {v1}\n");
    let yaml = write(dir.path(), "warren.yaml", &format!("{}---\n{}", doc("one"), doc("two")));
    env.c.ok(m1, &["apply", "-f", &yaml]);
    env.running(m1, "one", 1);
    let before = state(&env, m1);
    let out = env.c.ok(m1, &["apply", "-f", &yaml]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(state(&env, m1), before);
    write(dir.path(), "warren.yaml", &doc("one"));
    let out = env.c.ok(m1, &["apply", "-f", &yaml, "--prune"]);
    assert!(out.contains("remove") && out.contains("two"), "{out}");
    let left: Value = env.c.json(m1, &["service", "ls", "--format", "json"]).unwrap();
    let names: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one"]);

    // 12. One Warren YAML file with a service publishing a target only, its
    //     certificate and its ingress route: one apply creates them all, the port is
    //     picked from 30000-32767 and kept on re-apply (nothing to do), a dry run of
    //     a changed route changes nothing, and `--prune` removes the dropped route.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    write(dir.path(), "shop.pem", &cert.pem());
    write(dir.path(), "shop-key.pem", &key.serialize_pem());
    let front = |path: &str, with_docs: bool| {
        let mut y = format!(
            "apiVersion: warren/v1\nkind: Service\nmetadata: {{name: front}}\nspec:\n  image: {v1}\n  ports: [\"80\"]\n---\n\
             apiVersion: warren/v1\nkind: Certificate\nmetadata: {{name: shop-cert}}\nspec: {{cert_file: shop.pem, key_file: shop-key.pem}}\n---\n\
             apiVersion: warren/v1\nkind: Ingress\nmetadata: {{name: shop}}\nspec: {{host: shop.test, path: {path}, service: front, tls: shop-cert}}\n"
        );
        if with_docs {
            y.push_str("---\napiVersion: warren/v1\nkind: Ingress\nmetadata: {name: docs}\nspec: {host: docs.test, service: front}\n");
        }
        y
    };
    let routes = |env: &Env| -> Value { env.c.json(m1, &["ingress", "ls", "--format", "json"]).unwrap() };
    let route_names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    let front_file = write(dir.path(), "front.yaml", &front("/", true));
    let out = env.c.ok(m1, &["apply", "-f", &front_file]);
    assert!(out.contains("certificate") && out.contains("ingress"), "{out}");
    env.running(m1, "front", 1);
    let picked = || -> u64 {
        let s: Value = env
            .c
            .json(m1, &["service", "inspect", "front", "--format", "json"])
            .unwrap();
        s["spec"]["ports"][0]["published"].as_u64().unwrap()
    };
    let port = picked();
    assert!((30000..=32767).contains(&port), "{port}");
    assert_eq!(route_names(&routes(&env)), ["docs", "shop"]);
    let certs: Value = env.c.json(m1, &["certificate", "ls", "--format", "json"]).unwrap();
    assert!(
        certs.as_array().unwrap().iter().any(|c| c["name"] == "shop-cert"),
        "{certs}"
    );
    let before = (state(&env, m1), routes(&env));
    let out = env.c.ok(m1, &["apply", "-f", &front_file]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(picked(), port);
    write(dir.path(), "front.yaml", &front("/shop", true));
    let out = env.c.ok(m1, &["apply", "-f", &front_file, "--dry-run"]);
    assert!(out.contains("update") && out.contains("path"), "{out}");
    assert_eq!((state(&env, m1), routes(&env)), before);
    write(dir.path(), "front.yaml", &front("/shop", false));
    let out = env.c.ok(m1, &["apply", "-f", &front_file, "--prune"]);
    assert!(out.contains("remove") && out.contains("docs"), "{out}");
    let now = routes(&env);
    assert_eq!(route_names(&now), ["shop"]);
    assert_eq!(picked(), port);

    // 13. Malformed files, and a route the manager refuses: one error each naming
    //     file:line and field, and the cluster as it was.
    let before = (state(&env, m1), routes(&env));
    let svc = |body: &str| format!("services:\n  web:\n    image: {v1}\n{body}");
    let cases = [
        (
            svc("    deploy:\n      replicas: three\n"),
            "bad.yaml:5: services.web.deploy.replicas: expected a number, got \"three\"",
        ),
        (
            svc("    depends_on: [nope]\n"),
            "bad.yaml:4: services.web.depends_on[0]: depends on \"nope\"",
        ),
        (
            svc("    secrets: [nope]\n"),
            "bad.yaml:4: services.web.secrets[0]: secret \"nope\" is not declared",
        ),
        (
            svc("    stop_grace_period: soon\n"),
            "bad.yaml:4: services.web.stop_grace_period: invalid duration \"soon\"",
        ),
        (
            svc("    environment:\n      A: ${NOPE:?set NOPE}\n"),
            "bad.yaml:5: services.web.environment.A: required variable NOPE is missing a value: set NOPE",
        ),
        (
            "services:\n  web:\n    image: x\n   ports: []\n".to_string(),
            "bad.yaml:4: invalid YAML",
        ),
    ];
    for (text, want) in &cases {
        let bad = write(dir.path(), "bad.yaml", text);
        let err = env.c.fails(m1, &["stack", "deploy", "-c", &bad, "shop"]);
        assert!(err.contains(want), "want {want:?} in {err}");
    }
    let bad = write(
        dir.path(),
        "bad-route.yaml",
        "apiVersion: warren/v1\nkind: Ingress\nmetadata: {name: lost}\nspec:\n  host: lost.test\n  service: nope\n",
    );
    let err = env.c.fails(m1, &["apply", "-f", &bad]);
    assert!(
        err.contains("bad-route.yaml:6: ingresses.lost.service: service \"nope\" not found"),
        "{err}"
    );
    assert_eq!((state(&env, m1), routes(&env)), before);
}
