//! Control-plane scenarios on a loopback cluster of real `warren` processes:
//! `control.failover` (leader kill to first successful write), `control.create`
//! (service creations per second), `control.api` (ListServices latency with 1,000
//! services) and `footprint` (binary size, manager memory).

use crate::stats::{quantile, Record};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use warren_proto::v1 as pb;
use warren_proto::v1::warren_api_client::WarrenApiClient;
use warren_tests::cluster::Cluster;

pub type Client = WarrenApiClient<Channel>;

pub async fn connect(socket: &Path) -> Client {
    let p = socket.to_path_buf();
    let channel =
        Endpoint::try_from("http://warren.local")
            .expect("static endpoint")
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .expect("connecting to the manager's socket");
    WarrenApiClient::new(channel).max_decoding_message_size(256 << 20)
}

fn spec() -> pb::ServiceSpec {
    pb::ServiceSpec {
        image: "bench/idle:1".into(),
        replicas: 0,
        ..Default::default()
    }
}

pub async fn create(c: &mut Client, name: String) -> Result<(), tonic::Status> {
    c.create_service(pb::CreateServiceRequest {
        name,
        spec: Some(spec()),
    })
    .await
    .map(|_| ())
}

fn rss_bytes(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

const MIB: f64 = 1024.0 * 1024.0;

/// Creates `n` services with `concurrency` parallel clients; returns creations/s.
async fn create_many(socket: &Path, prefix: &str, n: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let socket = socket.to_path_buf();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&socket).await;
            let mut i = w;
            while i < n {
                create(&mut c, format!("{prefix}-{i:05}"))
                    .await
                    .expect("create_service");
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("creation worker");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn three_managers() -> (Cluster, [usize; 3]) {
    let mut c = Cluster::with_flags(["--runtime", "none", "--dataplane", "none"].map(String::from).to_vec());
    let m1 = c.init("m1", &[]);
    let token = c.token(m1, "manager");
    let m2 = c.join("m2", &token, m1, &[]);
    let m3 = c.join("m3", &token, m1, &[]);
    (c, [m1, m2, m3])
}

pub async fn failover(quick: bool) -> Vec<Record> {
    let reps = if quick { 3 } else { 10 };
    let (mut c, managers) = three_managers();
    let mut runs = Vec::new();
    // The first kill is a warm-up: caches, connections and page faults of a fresh cluster.
    for rep in 0..=reps {
        let leader = c.leader();
        let survivor = managers.into_iter().find(|i| *i != leader).expect("a survivor");
        let mut client = connect(&c.nodes[survivor].socket).await;
        // Make sure the survivor has a working connection before the kill.
        create(&mut client, format!("pre-{rep}"))
            .await
            .expect("write before the kill");
        c.nodes[leader].kill9();
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                create(&mut client, format!("post-{rep}-{attempt}")),
            )
            .await;
            if matches!(r, Ok(Ok(()))) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no write succeeded within 60s of the leader kill"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if rep > 0 {
            runs.push(ms);
        }
        c.restart(leader);
        c.wait_api(leader);
    }
    vec![Record::new(
        "control.failover",
        "warren",
        "leader kill to first write",
        "ms",
        false,
        runs,
    )]
}

pub async fn create_and_api(quick: bool) -> Vec<Record> {
    let n = if quick { 300 } else { 1000 };
    let reps = if quick { 2 } else { 3 };
    let (c, _) = three_managers();
    let leader = c.leader();
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let socket = c.nodes[leader].socket.clone();
    let mut records = Vec::new();

    let mut concurrent = Vec::new();
    let mut sequential = Vec::new();
    let mut via_follower = Vec::new();
    for rep in 0..reps {
        concurrent.push(create_many(&socket, &format!("c{rep}"), n / 2, 16).await);
        sequential.push(create_many(&socket, &format!("s{rep}"), 100, 1).await);
        via_follower.push(create_many(&c.nodes[follower].socket, &format!("f{rep}"), 100, 16).await);
    }
    records.push(Record::new(
        "control.create",
        "16 clients, leader",
        "creations",
        "services/s",
        true,
        concurrent,
    ));
    records.push(Record::new(
        "control.create",
        "16 clients, follower",
        "creations",
        "services/s",
        true,
        via_follower,
    ));
    records.push(Record::new(
        "control.create",
        "1 client, leader",
        "creations",
        "services/s",
        true,
        sequential,
    ));

    // ListServices and the leader's memory at exactly 1,000 services: a fresh
    // cluster, so that the figure does not depend on how many the creation runs made.
    drop(c);
    let (c, _) = three_managers();
    let leader = c.leader();
    let socket = c.nodes[leader].socket.clone();
    create_many(&socket, "api", 1000, 16).await;
    let mut client = connect(&socket).await;
    let count = client
        .list_services(pb::ListServicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .services
        .len();
    for _ in 0..50 {
        client
            .list_services(pb::ListServicesRequest {})
            .await
            .expect("warm-up list");
    }
    let calls = if quick { 200 } else { 1000 };
    let mut p50 = Vec::new();
    let mut p95 = Vec::new();
    let mut p99 = Vec::new();
    for _ in 0..reps {
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            client.list_services(pb::ListServicesRequest {}).await.expect("list");
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        p50.push(quantile(&samples, 0.50).unwrap_or(f64::NAN));
        p95.push(quantile(&samples, 0.95).unwrap_or(f64::NAN));
        p99.push(quantile(&samples, 0.99).unwrap_or(f64::NAN));
    }
    let variant = format!("warren, {count} services");
    records.push(Record::new(
        "control.api",
        &variant,
        "ListServices p50",
        "ms",
        false,
        p50,
    ));
    records.push(Record::new(
        "control.api",
        &variant,
        "ListServices p95",
        "ms",
        false,
        p95,
    ));
    records.push(Record::new(
        "control.api",
        &variant,
        "ListServices p99",
        "ms",
        false,
        p99,
    ));

    let leader_pid = c.nodes[leader].pid().expect("leader pid");
    let rss = rss_bytes(leader_pid).map(|b| b / MIB);
    records.push(Record::new(
        "footprint",
        &format!("manager (leader), {count} services"),
        "RSS",
        "MiB",
        false,
        rss.into_iter().collect(),
    ));
    records
}

pub async fn footprint(warren: &Path) -> Vec<Record> {
    let mut records = Vec::new();
    let size = std::fs::metadata(warren).map(|m| m.len() as f64 / MIB).ok();
    records.push(Record::new(
        "footprint",
        "warren binary (release)",
        "size",
        "MiB",
        false,
        size.into_iter().collect(),
    ));
    let mut c = Cluster::with_flags(["--runtime", "none", "--dataplane", "none"].map(String::from).to_vec());
    let m1 = c.init("idle", &[]);
    // Let the node settle: first heartbeats, sessions, allocator warm-up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = c.nodes[m1].pid().expect("pid");
    let samples: Vec<f64> = (0..3)
        .filter_map(|_| {
            std::thread::sleep(Duration::from_millis(300));
            rss_bytes(pid).map(|b| b / MIB)
        })
        .collect();
    records.push(Record::new(
        "footprint",
        "manager, idle single node",
        "RSS",
        "MiB",
        false,
        samples,
    ));
    c.nodes[m1].stop();
    records
}
