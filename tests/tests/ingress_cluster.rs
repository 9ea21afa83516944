//! The ingress on a real cluster: a `warren` node started with `--ingress` in a
//! network namespace of its own, services on real containers, routes by host and
//! path made with `warren ingress`, HTTPS with an uploaded certificate and with one
//! that ACME obtains from Debian's Pebble, route changes and scaling under a
//! constant request loop without a failed request, the ingress's ports refused to
//! services, and the uploaded key never in plaintext in the node's data dir.
//! Clients run in the lab's LAN namespace, as a user's would.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use warren_tests::env::{ChildGuard, Env};
use warren_tests::ingress::{Pebble, TestCa};

const HEALTH: &[&str] = &[
    "--health-cmd",
    "wget -q -O /dev/null http://127.0.0.1/healthz",
    "--health-interval",
    "1s",
    "--health-retries",
    "1",
];

/// curl inside namespace `ns`: (status code, body); status 0 when nothing answered.
fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--noproxy", "*", "--max-time", "5"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test file");
    p.display().to_string()
}

/// The distinct answers (task hostnames) of `n` requests; None unless all are 200.
fn try_answers(ns: &str, n: usize, args: &[&str]) -> Option<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let (code, body) = curl(ns, args);
        if code != 200 {
            return None;
        }
        seen.insert(body.trim().to_string());
    }
    Some(seen)
}

fn answers(ns: &str, n: usize, args: &[&str]) -> BTreeSet<String> {
    try_answers(ns, n, args).unwrap_or_else(|| panic!("{args:?}: a request did not get 200"))
}

/// Every file under `dir`, read whole (redb files and the Raft log included).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(p.display().to_string());
                    }
                }
            }
        }
    }
    hits
}

/// A request loop in namespace `ns`: keep-alive batches of curl requests until
/// the stop file appears; one status code per line on stdout.
fn request_loop(ns: &str, dir: &Path, url: &str, host: &str) -> (ChildGuard, std::path::PathBuf) {
    let stop = dir.join("stop-loop");
    let urls = vec![format!("-o /dev/null {url}"); 20].join(" ");
    let script = format!(
        "while [ ! -e {stop} ]; do curl -s --noproxy '*' --max-time 5 -w '%{{http_code}}\\n' -H 'Host: {host}' {urls}; done",
        stop = stop.display()
    );
    let child = ChildGuard::spawn(
        Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    (child, stop)
}

fn loop_codes(child: ChildGuard, stop: &Path) -> Vec<String> {
    std::fs::write(stop, b"").expect("stopping the request loop");
    let out = child.wait_with_output();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn routes_tls_acme_and_changes_under_load_on_a_real_cluster() {
    let mut env = Env::new();
    let (ns, ip) = env.lab.node();
    env.c.place("m1", &ns, &ip);
    let mut flags = env.runtime_flags("m1");
    flags.push("--ingress".into());
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let m1 = env.c.init("m1", &refs);
    let lan = env.lab.lan.name().to_string();
    let image = env.image("warren-test/http");
    let dir = tempfile::tempdir().expect("temp dir");

    // 1. Two services on real containers; the ingress's own ports cannot be published.
    for (name, replicas) in [("web", "2"), ("api", "1")] {
        let mut args = vec!["service", "create", name, "--image", &image, "--replicas", replicas];
        args.extend_from_slice(HEALTH);
        env.c.ok(m1, &args);
    }
    let e = env.c.fails(
        m1,
        &["service", "create", "bad", "--image", &image, "--publish", "443:80"],
    );
    assert!(
        e.contains("port 443/tcp is where the ingress of node \"m1\" listens"),
        "{e}"
    );
    // Nor the node's own listeners: its cluster port, its metrics port, DNS.
    let cluster_port = env.c.nodes[m1].addr.rsplit_once(':').unwrap().1.to_string();
    for (publish, what) in [
        (
            format!("{cluster_port}:80"),
            format!("port {cluster_port}/tcp is the cluster port (--listen-addr) of node \"m1\""),
        ),
        (
            "53:53/udp".to_string(),
            "port 53/udp is the DNS resolver of node \"m1\"".to_string(),
        ),
    ] {
        let e = env.c.fails(
            m1,
            &["service", "create", "bad", "--image", &image, "--publish", &publish],
        );
        assert!(e.contains(&what), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    let nodes = env.c.json(m1, &["service", "ls", "--format", "json"]).unwrap();
    assert!(
        !nodes.to_string().contains("\"bad\""),
        "a refused service was created: {nodes}"
    );

    // 2. Routes by host and path; bad input names its flag; an unknown service is refused.
    let e = env.c.fails(
        m1,
        &["ingress", "create", "x", "--hostname", "shop.test", "--service", "nope"],
    );
    assert!(e.contains("service \"nope\" not found"), "{e}");
    let e = env
        .c
        .fails(m1, &["ingress", "create", "x", "--hostname", "a/b", "--service", "web"]);
    assert!(e.contains("--hostname"), "{e}");
    env.c.ok(
        m1,
        &[
            "ingress",
            "create",
            "shop",
            "--hostname",
            "shop.test",
            "--service",
            "web",
        ],
    );
    env.c.ok(
        m1,
        &[
            "ingress",
            "create",
            "shop-api",
            "--hostname",
            "shop.test",
            "--path",
            "/api",
            "--service",
            "api",
            "--strip-prefix",
        ],
    );
    let e = env.c.fails(
        m1,
        &[
            "ingress",
            "create",
            "dup",
            "--hostname",
            "shop.test",
            "--service",
            "api",
        ],
    );
    assert!(e.contains("already routed by ingress \"shop\""), "{e}");
    let e = env.c.fails(m1, &["service", "rm", "api"]);
    assert!(e.contains("in use by ingress route shop-api"), "{e}");
    let ls = env.c.ok(m1, &["ingress", "ls"]);
    assert!(ls.contains("shop-api") && ls.contains("/api"), "{ls}");

    let http = format!("http://{ip}/");
    env.c.wait(
        "both web tasks answering through the ingress",
        Duration::from_secs(90),
        || {
            let (code, _) = curl(&lan, &["-H", "Host: shop.test", &http]);
            (code == 200 && try_answers(&lan, 8, &["-H", "Host: shop.test", &http]).is_some_and(|a| a.len() == 2))
                .then_some(())
        },
    );
    let web = answers(&lan, 8, &["-H", "Host: shop.test", &http]);
    let api_url = format!("http://{ip}/api/");
    env.c.wait("the api route answering", Duration::from_secs(60), || {
        (curl(&lan, &["-H", "Host: shop.test", &api_url]).0 == 200).then_some(())
    });
    let api = answers(&lan, 3, &["-H", "Host: shop.test", &api_url]);
    assert_eq!(api.len(), 1, "one api task: {api:?}");
    assert!(api.is_disjoint(&web), "/api goes to api, / to web: {api:?} {web:?}");
    let (code, _) = curl(&lan, &["-H", "Host: other.test", &http]);
    assert_eq!(code, 404, "no route for another host");

    // 3. HTTPS with an uploaded certificate, chosen by SNI; its key is sealed at rest.
    let ca = TestCa::new("ingress e2e ca");
    let leaf = ca.leaf("shop", &["shop.test"]);
    let cert_file = write(dir.path(), "shop.crt", &leaf.cert_pem);
    let key_file = write(dir.path(), "shop.key", &leaf.key_pem);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let e = env.c.fails(
        m1,
        &[
            "certificate",
            "create",
            "acme",
            "--cert",
            &cert_file,
            "--key",
            &key_file,
        ],
    );
    assert!(e.contains("reserved"), "{e}");
    env.c.ok(
        m1,
        &[
            "certificate",
            "create",
            "shop",
            "--cert",
            &cert_file,
            "--key",
            &key_file,
        ],
    );
    env.c.ok(m1, &["ingress", "update", "shop", "--tls", "shop"]);
    let certs = env.c.ok(m1, &["certificate", "ls"]);
    assert!(certs.contains("shop.test") && certs.contains("uploaded"), "{certs}");
    let resolve = format!("shop.test:443:{ip}");
    env.c
        .wait("HTTPS with the uploaded certificate", Duration::from_secs(30), || {
            let (code, body) = curl(
                &lan,
                &["--resolve", &resolve, "--cacert", &ca_file, "https://shop.test/"],
            );
            (code == 200 && web.contains(body.trim())).then_some(())
        });
    let e = env.c.fails(m1, &["certificate", "rm", "shop"]);
    assert!(e.contains("in use by ingress route shop"), "{e}");
    let key_body = leaf
        .key_pem
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .expect("a base64 line of the key");
    let hits = files_containing(&env.c.nodes[m1].data_dir, key_body.as_bytes());
    assert!(hits.is_empty(), "the private key is in plaintext in {hits:?}");

    // 4. Route changes and scaling under a constant request loop: no failed request.
    let (child, stop) = request_loop(&lan, dir.path(), &http, "shop.test");
    env.c
        .ok(m1, &["ingress", "update", "shop", "--header-add", "x-env=e2e"]);
    env.c.ok(m1, &["ingress", "update", "shop-api", "--rewrite", "/api=/"]);
    env.c.ok(m1, &["service", "scale", "web=3"]);
    env.running(m1, "web", 3);
    env.c.wait("three web tasks answering", Duration::from_secs(60), || {
        (try_answers(&lan, 12, &["-H", "Host: shop.test", &http]).is_some_and(|a| a.len() == 3)).then_some(())
    });
    env.c.ok(m1, &["service", "scale", "web=1"]);
    env.running(m1, "web", 1);
    let codes = loop_codes(child, &stop);
    let failed: Vec<&String> = codes.iter().filter(|c| c.as_str() != "200").collect();
    assert!(codes.len() > 50, "the loop made only {} requests", codes.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        codes.len(),
        &failed[..failed.len().min(10)]
    );

    // 5. ACME: Pebble (in the node's namespace, resolving every name to it) issues
    // the certificate of a `--tls acme` route; HTTPS then answers with it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pebble = rt.block_on(Pebble::start_in(Some(&ns), 80));
    let pebble_ca = pebble.ca_file().display().to_string();
    env.c.ok(
        m1,
        &[
            "cluster",
            "update",
            "--acme-email",
            "ops@shop.test",
            "--acme-directory",
            &pebble.directory_url,
            "--acme-ca-file",
            &pebble_ca,
        ],
    );
    env.c.ok(
        m1,
        &[
            "ingress",
            "create",
            "secure",
            "--hostname",
            "secure.test",
            "--service",
            "web",
            "--tls",
            "acme",
        ],
    );
    let cert = env
        .c
        .wait("the acme certificate for secure.test", Duration::from_secs(90), || {
            let list = env.c.json(m1, &["certificate", "ls", "--format", "json"]).ok()?;
            list.as_array()?
                .iter()
                .find(|c| c["name"] == "acme-secure.test")
                .cloned()
        });
    assert_eq!(cert["source"], "acme");
    let root = rt.block_on(pebble.issuing_root_pem());
    let root_file = write(dir.path(), "pebble-root.pem", &root);
    let resolve = format!("secure.test:443:{ip}");
    env.c
        .wait("HTTPS with the acme certificate", Duration::from_secs(30), || {
            let (code, body) = curl(
                &lan,
                &["--resolve", &resolve, "--cacert", &root_file, "https://secure.test/"],
            );
            (code == 200 && !body.trim().is_empty()).then_some(())
        });
    // 6. The node's ingress moves with its record: a port a service publishes is
    // refused, another one rebuilds the listeners there.
    env.c.ok(
        m1,
        &[
            "service",
            "create",
            "pub",
            "--image",
            &image,
            "--replicas",
            "0",
            "--publish",
            "8088:80",
        ],
    );
    let e = env.c.fails(
        m1,
        &[
            "node",
            "update",
            "m1",
            "--ingress",
            "true",
            "--ingress-http-port",
            "8088",
        ],
    );
    assert!(
        e.contains("--ingress-http-port: port 8088/tcp is already published by service \"pub\""),
        "{e}"
    );
    env.c.ok(
        m1,
        &[
            "node",
            "update",
            "m1",
            "--ingress",
            "true",
            "--ingress-http-port",
            "8081",
        ],
    );
    let moved = format!("http://{ip}:8081/");
    env.c
        .wait("the ingress on its new HTTP port", Duration::from_secs(30), || {
            (curl(&lan, &["-H", "Host: shop.test", &moved]).0 == 200).then_some(())
        });
    let info = env.c.ok(m1, &["cluster", "info"]);
    assert!(info.contains("ACME:         ops@shop.test at https://"), "{info}");
    drop(pebble);
}
