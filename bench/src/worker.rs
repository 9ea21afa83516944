//! Worker scenarios on real containers: `control.schedule` (service create to all
//! tasks running, for 1, 10 and 50 replicas; containers started per second) and the
//! worker's memory with 50 tasks. Nodes run in network namespaces of a lab with a
//! private containerd; the image is loaded with `warren image load`, so no registry
//! or network pull is timed.

use crate::control::connect;
use crate::stats::Record;
use std::time::{Duration, Instant};
use warren_proto::v1 as pb;
use warren_tests::cluster::Cluster;
use warren_tests::containerd::{CgroupParent, PrivateContainerd};
use warren_tests::lab::Lab;

const MIB: f64 = 1024.0 * 1024.0;

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0 / MIB)
}

/// Time until every task of `service` runs.
async fn until_running(c: &mut crate::control::Client, service: &str, n: usize) -> Duration {
    let started = Instant::now();
    loop {
        let tasks = c
            .list_tasks(pb::ListTasksRequest {
                service: service.to_string(),
                node: String::new(),
            })
            .await
            .expect("list tasks")
            .into_inner()
            .tasks;
        let running = tasks
            .iter()
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| s.state == pb::TaskState::Running as i32)
            })
            .count();
        if running >= n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{service}: only {running} of {n} tasks running after 300s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn remove_and_wait(c: &mut crate::control::Client, service: &str) {
    c.remove_service(pb::RemoveServiceRequest {
        service: service.to_string(),
    })
    .await
    .expect("remove service");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let info = c
            .get_cluster_info(pb::ClusterInfoRequest {})
            .await
            .expect("info")
            .into_inner();
        if info.tasks == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn schedule(quick: bool) -> Vec<Record> {
    let reps = if quick { 2 } else { 3 };
    let mut c = Cluster::with_flags(warren_tests::cluster::fast_flags());
    let mut lab = Lab::new();
    let containerd = PrivateContainerd::start().expect("a private containerd (Debian packages containerd, runc)");
    let ns = warren_tests::containerd::unique("bench");
    let mut cgroups = Vec::new();
    let mut flags = |node: &str| {
        let cg = CgroupParent::new(&format!("bench-{node}"));
        let f = vec![
            "--runtime".to_string(),
            "containerd".into(),
            "--containerd-socket".into(),
            containerd.socket().display().to_string(),
            "--containerd-namespace".into(),
            format!("{ns}-{node}"),
            "--cgroup-parent".into(),
            cg.path.clone(),
            "--dataplane".into(),
            "none".into(),
        ];
        cgroups.push(cg);
        f
    };
    let (mns, mip) = lab.node();
    c.place("m1", &mns, &mip);
    let f = flags("m1");
    let m1 = c.init("m1", &f.iter().map(String::as_str).collect::<Vec<_>>());
    // A worker that only runs the tasks placed on it, for its own memory figure.
    let token = c.token(m1, "worker");
    let (wns, wip) = lab.node();
    c.place("w1", &wns, &wip);
    let f = flags("w1");
    let w1 = c.join("w1", &token, m1, &f.iter().map(String::as_str).collect::<Vec<_>>());
    let archive = lab.oci_archive(warren_tests::images::TestImage::Http, "bench/http:1");
    c.ok(m1, &["image", "load", archive.to_str().unwrap()]);
    let mut client = connect(&c.nodes[m1].socket).await;
    let spec = |replicas: u64| pb::ServiceSpec {
        image: "bench/http:1".into(),
        replicas,
        constraints: vec!["node.role==worker".into()],
        // Removal between runs is not measured: the test server is killed at once
        // instead of waiting out the default 10 s grace.
        stop_signal: "SIGKILL".into(),
        ..Default::default()
    };
    // Warm-up: the first container pays for the image's snapshot and the shim binary.
    client
        .create_service(pb::CreateServiceRequest {
            name: "warmup".into(),
            spec: Some(spec(1)),
        })
        .await
        .expect("create warm-up service");
    until_running(&mut client, "warmup", 1).await;
    remove_and_wait(&mut client, "warmup").await;

    let mut records = Vec::new();
    let mut rate = Vec::new();
    let mut rss_50 = Vec::new();
    for n in [1u64, 10, 50] {
        let mut per_task = Vec::new();
        let mut total = Vec::new();
        for rep in 0..reps {
            let name = format!("s{n}-{rep}");
            client
                .create_service(pb::CreateServiceRequest {
                    name: name.clone(),
                    spec: Some(spec(n)),
                })
                .await
                .expect("create service");
            let took = until_running(&mut client, &name, n as usize).await;
            total.push(took.as_secs_f64() * 1000.0);
            per_task.push(took.as_secs_f64() * 1000.0 / n as f64);
            if n == 50 {
                rate.push(n as f64 / took.as_secs_f64());
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Some(pid) = c.nodes[w1].pid() {
                    rss_50.extend(rss_mib(pid));
                }
            }
            remove_and_wait(&mut client, &name).await;
        }
        records.push(Record::new(
            "control.schedule",
            &format!("{n} replicas"),
            "create to all running",
            "ms",
            false,
            total,
        ));
        records.push(Record::new(
            "control.schedule",
            &format!("{n} replicas"),
            "per task",
            "ms",
            false,
            per_task,
        ));
    }
    records.push(Record::new(
        "control.schedule",
        "50 replicas",
        "containers started",
        "containers/s",
        true,
        rate,
    ));
    records.push(Record::new(
        "footprint",
        "worker, 50 tasks",
        "RSS",
        "MiB",
        false,
        rss_50,
    ));
    drop(c);
    drop(containerd);
    drop(cgroups);
    drop(lab);
    records
}
