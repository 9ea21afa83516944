//! The agent's session handling against fake managers (`FakeLink`): hello,
//! acceptance, assignment sets, status reports, heartbeats, redirects to the
//! leader and reconnects.

use super::executor::{Assignment, Executor, NodeNetwork, Report};
use super::*;
use crate::model::fixtures;
use crate::model::{ServiceEndpoints, TaskState, TaskStatus};
use crate::wire::convert;
use std::sync::Mutex;
use tokio::sync::mpsc::UnboundedReceiver;
use warren_proto::v1 as pb;
use warren_proto::v1::agent_message::Msg as AgentMsg;
use warren_proto::v1::dispatcher_message::Msg as DispatcherMsg;

/// What the executor and listeners were told, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }

    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct FakeExecutor {
    log: Arc<Log>,
    statuses: Mutex<Vec<Report>>,
    assigned: Mutex<Vec<Assignment>>,
    networks: Mutex<Vec<NodeNetwork>>,
}

impl Executor for FakeExecutor {
    fn configure(&self, network: NodeNetwork) {
        self.log.push("executor.configure");
        self.networks.lock().unwrap().push(network);
    }

    fn assign(&self, assignment: Assignment) {
        self.log.push("executor.assign");
        self.assigned.lock().unwrap().push(assignment);
    }

    fn statuses(&self) -> Vec<Report> {
        self.statuses.lock().unwrap().clone()
    }
}

struct Listener(Arc<Log>);

impl EndpointsListener for Listener {
    fn configure(&self, network: &NodeNetwork) {
        self.0.push(format!("listener.configure {}", network.subnet));
    }

    fn endpoints(&self, services: &[ServiceEndpoints]) {
        self.0.push(format!("listener.endpoints {}", services.len()));
    }
}

fn running(addr: &str) -> TaskStatus {
    TaskStatus {
        state: TaskState::Running,
        addr: addr.into(),
        ..Default::default()
    }
}

struct Agent {
    link: Arc<FakeLink>,
    sessions: UnboundedReceiver<FakeSession>,
    executor: Arc<FakeExecutor>,
    log: Arc<Log>,
    announced: Arc<Mutex<Vec<SessionInfo>>>,
    reports: mpsc::UnboundedSender<Report>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// An agent of node `n1` that knows `managers` and runs task `t0`.
fn start(managers: &[&str]) -> Agent {
    let (link, sessions) = FakeLink::new();
    let link = Arc::new(link);
    let log = Arc::new(Log::default());
    let executor = Arc::new(FakeExecutor {
        log: log.clone(),
        statuses: Mutex::new(vec![("t0".into(), running("10.88.3.2"))]),
        assigned: Mutex::default(),
        networks: Mutex::default(),
    });
    let announced = Arc::new(Mutex::new(Vec::new()));
    let seen = announced.clone();
    let cfg = AgentConfig {
        mesh: None,
        node_id: "n1".into(),
        hostname: "edge-1".into(),
        managers: managers.iter().map(|m| m.to_string()).collect(),
        link: link.clone(),
        resources: Resources {
            nano_cpus: 1_000_000_000,
            memory_bytes: 1 << 30,
        },
        on_session: Box::new(move |info| seen.lock().unwrap().push(info.clone())),
        listeners: vec![Arc::new(Listener(log.clone()))],
        metrics_port: 0,
        ingress_seed: None,
        autonomy: None,
        known_network: None,
    };
    let (reports, reports_rx) = mpsc::unbounded_channel();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(run(cfg, executor.clone(), reports_rx, shutdown_rx));
    Agent {
        link,
        sessions,
        executor,
        log,
        announced,
        reports,
        shutdown,
        task,
    }
}

const WITHIN: Duration = Duration::from_secs(5);

impl Agent {
    async fn session(&mut self) -> FakeSession {
        tokio::time::timeout(WITHIN, self.sessions.recv())
            .await
            .expect("the agent opened no session within 5s")
            .expect("the link is gone")
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(WITHIN, self.task)
            .await
            .expect("the agent did not stop within 5s of shutdown")
            .unwrap();
    }
}

/// The next message that is not a heartbeat.
async fn next_message(s: &mut FakeSession) -> AgentMsg {
    loop {
        let msg = tokio::time::timeout(WITHIN, s.next())
            .await
            .expect("the agent sent nothing within 5s")
            .expect("the agent closed the session");
        if !matches!(msg, AgentMsg::Heartbeat(_)) {
            return msg;
        }
    }
}

async fn hello(s: &mut FakeSession) -> pb::AgentHello {
    match next_message(s).await {
        AgentMsg::Hello(h) => h,
        other => panic!("the first message of a session was {other:?}, not hello"),
    }
}

/// Waits until `f` holds, naming `what` if it never does.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within 5s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn hello_acceptance_assignments_reports_and_heartbeats() {
    let mut a = start(&["10.0.0.1:2377"]);
    let mut s = a.session().await;
    assert_eq!(s.addr, "10.0.0.1:2377");

    // 1. The hello says who the node is and what its tasks are doing.
    let h = hello(&mut s).await;
    assert_eq!((h.node_id.as_str(), h.hostname.as_str()), ("n1", "edge-1"));
    assert_eq!(h.warren_version, crate::VERSION);
    assert_eq!(h.resources.map(|r| r.memory_bytes), Some(1 << 30));
    assert_eq!(h.tasks.len(), 1);
    assert_eq!(h.tasks[0].task_id, "t0");
    assert_eq!(
        convert::task_status_from_pb(h.tasks[0].status.clone().unwrap()).state,
        TaskState::Running
    );

    // 2. The acceptance configures the listeners and the executor, and is kept.
    assert!(s.send(DispatcherMsg::Accepted(pb::SessionAccepted {
        heartbeat_period_ms: 100,
        managers: vec!["10.0.0.1:2377".into(), "10.0.0.2:2377".into()],
        node_subnet: "10.88.3.0/24".into(),
        cluster_cidr: "10.88.0.0/16".into(),
    })));
    until("the session callback", || !a.announced.lock().unwrap().is_empty()).await;
    let network = NodeNetwork {
        subnet: "10.88.3.0/24".into(),
        cluster_cidr: "10.88.0.0/16".into(),
    };
    assert_eq!(
        a.announced.lock().unwrap()[0],
        SessionInfo {
            managers: vec!["10.0.0.1:2377".into(), "10.0.0.2:2377".into()],
            network: Some(network.clone()),
        }
    );
    assert_eq!(*a.executor.networks.lock().unwrap(), vec![network]);

    // 3. An assignment set reaches the listeners before the executor.
    let svc = fixtures::service("s1", "web");
    let task = fixtures::task("t1", &svc, Some("n1"), TaskState::Assigned);
    let endpoints = ServiceEndpoints {
        id: svc.id.clone(),
        name: svc.name.clone(),
        dp_id: 1,
        vip: Some("10.96.0.2".parse().unwrap()),
        endpoint_mode: crate::model::EndpointMode::Vip,
        ports: vec![],
        canary_weight: 0,
        rate_limit: None,
        endpoint_locality: Default::default(),
        endpoints: vec![],
        stack: String::new(),
        removed: false,
    };
    assert!(s.send(DispatcherMsg::Assignments(pb::Assignments {
        ingress: Default::default(),
        tasks: vec![convert::task_to_pb(&task)],
        index: 7,
        secrets: vec![pb::SecretData {
            name: "db".into(),
            data: b"pw".to_vec(),
        }],
        peers: vec![
            pb::NodeRoute {
                node_id: "n2".into(),
                subnet: "10.88.4.0/24".into(),
                via: "10.0.0.2".into(),
                mesh: None,
            },
            pb::NodeRoute {
                node_id: "n3".into(),
                subnet: "10.88.5.0/24".into(),
                via: "not an address".into(),
                mesh: None,
            },
        ],
        volumes: vec!["data".into()],
        services: vec![convert::endpoints_to_pb(&endpoints)],
        configs: vec![],
        mesh_rotation: 0,
        own_mesh: None,
    })));
    until("the assignment", || !a.executor.assigned.lock().unwrap().is_empty()).await;
    let got = a.executor.assigned.lock().unwrap()[0].clone();
    assert_eq!(got.tasks, vec![task]);
    assert_eq!(got.secrets.get("db").map(Vec::as_slice), Some(&b"pw"[..]));
    assert_eq!(
        got.peers,
        vec![("10.88.4.0/24".to_string(), "10.0.0.2".parse().unwrap())],
        "a peer with an unreadable address is skipped"
    );
    assert_eq!((got.volumes, got.services), (vec!["data".to_string()], vec![endpoints]));
    assert_eq!(
        a.log.entries(),
        vec![
            "listener.configure 10.88.3.0/24",
            "executor.configure",
            "listener.endpoints 1",
            "executor.assign"
        ]
    );

    // 4. A status report goes out at once; heartbeats keep flowing meanwhile.
    a.reports.send(("t1".into(), running("10.88.3.3"))).unwrap();
    match next_message(&mut s).await {
        AgentMsg::Status(b) => assert_eq!(b.reports[0].task_id, "t1"),
        other => panic!("expected a status batch, got {other:?}"),
    }
    let heartbeat = tokio::time::timeout(WITHIN, async {
        while !matches!(s.next().await, Some(AgentMsg::Heartbeat(_)) | None) {}
    });
    heartbeat.await.expect("no heartbeat within 5s at a 100 ms period");
    a.stop().await;
}

#[tokio::test]
async fn a_redirect_goes_straight_to_the_leader() {
    let mut a = start(&["10.0.0.1:2377", "10.0.0.2:2377", "10.0.0.3:2377"]);
    let mut s = a.session().await;
    hello(&mut s).await;
    let leader = if s.addr == "10.0.0.3:2377" {
        "10.0.0.1:2377"
    } else {
        "10.0.0.3:2377"
    };
    assert!(s.send(DispatcherMsg::NotLeader(pb::NotLeader {
        leader_addr: leader.into(),
    })));
    let mut s2 = a.session().await;
    assert_eq!(s2.addr, leader, "the agent did not follow the redirect");
    let h = hello(&mut s2).await;
    assert_eq!(h.node_id, "n1");
    assert_eq!(a.link.attempts().len(), 2);
    a.stop().await;
}

#[tokio::test]
async fn a_lost_session_is_reopened_with_a_fresh_hello_past_unreachable_managers() {
    let mut a = start(&["10.0.0.1:2377", "10.0.0.2:2377"]);
    let mut s = a.session().await;
    hello(&mut s).await;
    let (first, other) = match s.addr.as_str() {
        "10.0.0.1:2377" => ("10.0.0.1:2377", "10.0.0.2:2377"),
        _ => ("10.0.0.2:2377", "10.0.0.1:2377"),
    };
    a.link.unreachable(other);
    *a.executor.statuses.lock().unwrap() = vec![("t0".into(), running("10.88.3.9"))];

    // The dispatcher fails; the agent tries the other manager, then this one again.
    assert!(s.fail(tonic::Status::unavailable("manager restarting")));
    let mut s2 = a.session().await;
    assert_eq!(a.link.attempts(), vec![first, other, first]);
    let h = hello(&mut s2).await;
    let status = convert::task_status_from_pb(h.tasks[0].status.clone().unwrap());
    assert_eq!(status.addr, "10.88.3.9", "the new hello carries the statuses of now");

    // A session the dispatcher closes is reopened too.
    drop(s2);
    let mut s3 = a.session().await;
    hello(&mut s3).await;
    a.stop().await;
}
