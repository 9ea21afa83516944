//! Backup and restore (issue 16, item 4): `warren cluster backup` on a
//! three-manager cluster with a task that reads a secret, a config and a named
//! volume; the old cluster gone; `warren cluster restore` into a fresh node (its
//! own data dir and network namespace) brings back every service, secret, config
//! and volume with the same CA, and the task placed again reads the secret that the
//! restored key still opens. A wrong passphrase, a damaged file and a used data dir
//! are refused before anything is written. Real `warren` processes and containers.

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use warren_tests::cluster::{text, warren_bin};
use warren_tests::env::Env;

const SECRET: &str = "s3cret-of-the-old-cluster";
const SITE: &str = "listen 80; # the site config";

fn stack(image: &str) -> String {
    format!(
        "services:
  web:
    image: {image}
    secrets:
      - pw
    configs:
      - source: site
        target: /etc/site.conf
    volumes:
      - data:/data
secrets:
  pw:
    file: ./pw.txt
configs:
  site:
    file: ./site.conf
volumes:
  data: {{}}
"
    )
}

fn names(env: &Env, m: usize, noun: &str) -> Vec<String> {
    let v: Value = env.c.json(m, &[noun, "ls", "--format", "json"]).unwrap();
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("{noun} ls: {v}"))
        .iter()
        .map(|o| o["name"].as_str().unwrap_or_default().to_string())
        .collect();
    out.sort();
    out
}

/// What the running task of `shop_web` on `node` reads: its secret, its config, and
/// whether its volume is mounted writable.
fn task_reads(env: &Env, m: usize, node: &str) -> (String, String) {
    let t = env.running(m, "shop_web", 1);
    assert_eq!(t[0]["node_name"], node, "{t:?}");
    let id = t[0]["id"].as_str().unwrap();
    let cat = |path: &str| {
        let out = env.exec_in(node, id, &["/bin/busybox", "cat", path]);
        assert!(out.status.success(), "cat {path}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = env.exec_in(node, id, &["/bin/busybox", "touch", "/data/written"]);
    assert!(out.status.success(), "the volume is not writable: {}", text(&out));
    (cat("/run/secrets/pw"), cat("/etc/site.conf"))
}

/// `warren cluster restore` that must fail before starting anything: its error, one
/// line, and the data dir left as it was.
fn restore_refused(file: &Path, passphrase: &Path, data_dir: &Path) -> String {
    let before: Vec<_> = std::fs::read_dir(data_dir)
        .map(|d| d.flatten().count())
        .into_iter()
        .collect();
    let out = Command::new(warren_bin())
        .args(["cluster", "restore"])
        .arg(file)
        .arg("--passphrase-file")
        .arg(passphrase)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-addr", "127.0.0.1:1", "--socket"])
        .arg(data_dir.with_extension("sock"))
        .env_remove("WARREN_BACKUP_PASSPHRASE")
        .output()
        .expect("running warren cluster restore");
    assert!(!out.status.success(), "the restore succeeded: {}", text(&out));
    let after: Vec<_> = std::fs::read_dir(data_dir)
        .map(|d| d.flatten().count())
        .into_iter()
        .collect();
    assert_eq!(before, after, "a refused restore wrote into {}", data_dir.display());
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("rror")).collect();
    assert_eq!(errors.len(), 1, "not one error: {err}");
    errors[0].to_string()
}

#[test]
fn a_backup_of_three_managers_restores_into_a_fresh_node_with_its_secrets() {
    let started = Instant::now();
    let mut env = Env::new();
    let m1 = env.init("m1");
    let token = env.c.token(m1, "manager");
    env.join("m2", &token, m1);
    env.join("m3", &token, m1);
    let dir = env.c.dir.path().to_path_buf();
    std::fs::write(dir.join("pw.txt"), SECRET).unwrap();
    std::fs::write(dir.join("site.conf"), SITE).unwrap();
    let compose = dir.join("compose.yaml");
    std::fs::write(&compose, stack(&env.image("warren-test/http"))).unwrap();
    env.c
        .ok(m1, &["stack", "deploy", "-c", compose.to_str().unwrap(), "shop"]);
    let t = env.running(m1, "shop_web", 1);
    let old_node = t[0]["node_name"].as_str().unwrap().to_string();
    let on = env.c.nodes.iter().position(|n| n.name == old_node).unwrap();
    assert_eq!(task_reads(&env, on, &old_node), (SECRET.to_string(), SITE.to_string()));
    let old_info: Value = env.c.json(m1, &["cluster", "info", "--format", "json"]).unwrap();

    // The backup, from a follower: its read goes through the leader.
    let pass = dir.join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let file = dir.join("cluster.wbk");
    let follower = (0..3).find(|&i| i != env.c.leader()).unwrap();
    let out = env.c.ok(
        follower,
        &[
            "cluster",
            "backup",
            file.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("1 services, 1 secrets, 1 configs, 1 volumes, 3 nodes"),
        "{out}"
    );
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..8], b"WARRENBK");
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the backup holds the secret in the clear"
    );

    // Refusals: nothing written, one error each.
    let fresh = dir.join("refused");
    std::fs::create_dir_all(&fresh).unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "incorrect horse").unwrap();
    let err = restore_refused(&file, &wrong, &fresh);
    assert!(err.contains("wrong passphrase for this backup"), "{err}");
    let cut = dir.join("cut.wbk");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = restore_refused(&cut, &pass, &fresh);
    assert!(err.contains("the backup is truncated"), "{err}");
    let mut bad = bytes.clone();
    bad[bytes.len() / 2] ^= 1;
    std::fs::write(&cut, &bad).unwrap();
    let err = restore_refused(&cut, &pass, &fresh);
    assert!(err.contains("the backup is corrupt"), "{err}");
    let used = env.c.nodes[m1].data_dir.clone();
    let err = restore_refused(&file, &pass, &used);
    assert!(err.contains("is not empty"), "{err}");

    // The old cluster is lost.
    for i in 0..3 {
        env.c.nodes[i].stop();
    }

    let (ns, ip) = env.lab.node();
    env.c.place("r1", &ns, &ip);
    let flags = env.runtime_flags("r1");
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let r = env
        .c
        .restore("r1", &file, &["--passphrase-file", pass.to_str().unwrap()], &refs);
    let info: Value = env.c.json(r, &["cluster", "info", "--format", "json"]).unwrap();
    assert_eq!(info["cluster_id"], old_info["cluster_id"], "{info}");
    assert_eq!(
        std::fs::read_to_string(env.c.nodes[r].data_dir.join("certs/ca.pem")).unwrap(),
        std::fs::read_to_string(env.c.nodes[m1].data_dir.join("certs/ca.pem")).unwrap(),
        "not the same CA"
    );
    assert_eq!(names(&env, r, "service"), ["shop_web"]);
    assert_eq!(names(&env, r, "secret"), ["shop_pw"]);
    assert_eq!(names(&env, r, "config"), ["shop_site"]);
    assert_eq!(names(&env, r, "volume"), ["shop_data"]);
    assert_eq!(names(&env, r, "node"), ["r1"]);
    // The task placed again on the new node reads the secret the restored key opens.
    assert_eq!(task_reads(&env, r, "r1"), (SECRET.to_string(), SITE.to_string()));

    // Other nodes join it with its token.
    let token = env.c.token(r, "worker");
    env.join("w1", &token, r);
    assert_eq!(names(&env, r, "node"), ["r1", "w1"]);
    eprintln!("backup test: {:?}", started.elapsed());
}
