//! Model values for unit tests: one place that writes a `Node`, `Service`, `Task`,
//! `Secret` or `Volume` out in full, so that tests state only what they are about.

use super::*;

/// A ready, active worker with 2 CPUs and 1 GiB at `127.0.0.1:1`.
pub fn node(id: &str, name: &str) -> Node {
    Node {
        id: id.into(),
        name: name.into(),
        role: NodeRole::Worker,
        availability: Availability::Active,
        labels: Default::default(),
        addr: "127.0.0.1:1".into(),
        resources: Resources {
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
        },
        platform: Platform::current(),
        state: NodeState::Ready,
        message: String::new(),
        raft_id: 0,
        subnet: None,
        mesh: None,
        warren_version: String::new(),
        created_ms: 0,
        updated_ms: 0,
        version: 1,
        ingress: None,
        metrics_port: 0,
        last_contact_ms: 0,
        cert_expires_ms: 0,
        autonomy: String::new(),
    }
}

/// A manager node with Raft ID `raft_id`.
pub fn manager(id: &str, name: &str, raft_id: u64) -> Node {
    Node {
        role: NodeRole::Manager,
        raft_id,
        ..node(id, name)
    }
}

/// A spec of one replica of `img`.
pub fn spec() -> ServiceSpec {
    ServiceSpec {
        image: "img".into(),
        mode: ServiceMode::Replicated { replicas: 1 },
        ..Default::default()
    }
}

pub fn service(id: &str, name: &str) -> Service {
    Service {
        id: id.into(),
        name: name.into(),
        spec: spec(),
        version: 1,
        spec_version: 1,
        created_ms: 0,
        updated_ms: 0,
        vip: None,
        dp_id: 0,
        canary: None,
        previous_spec: None,
        update_status: None,
    }
}

/// Slot 1 of `svc`, meant to run, in `state`, on `node` if placed.
pub fn task(id: &str, svc: &Service, node: Option<&str>, state: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: svc.id.clone(),
        service_name: svc.name.clone(),
        slot: 1,
        node_id: node.map(str::to_string),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state,
            ..Default::default()
        },
        spec: svc.spec.clone(),
        spec_version: 1,
        attempt: 0,
        canary: false,
        created_ms: 0,
        updated_ms: 0,
        version: 1,
    }
}

pub fn secret(id: &str, name: &str) -> Secret {
    Secret {
        id: id.into(),
        name: name.into(),
        labels: Default::default(),
        sealed: vec![],
        digest: String::new(),
        created_ms: 0,
    }
}

pub fn volume(id: &str, name: &str, node: Option<&str>) -> Volume {
    Volume {
        id: id.into(),
        name: name.into(),
        driver: "local".into(),
        node_id: node.map(str::to_string),
        labels: Default::default(),
        options: Default::default(),
        created_ms: 0,
    }
}

/// A cluster's identity with pod CIDR `10.88.0.0/16` and service CIDR `10.96.0.0/16`.
pub fn meta() -> ClusterMeta {
    ClusterMeta {
        cluster_id: "c1".into(),
        created_ms: 0,
        ca_cert_pem: String::new(),
        ca_key_sealed: vec![],
        worker_token_secret: "w".repeat(25),
        manager_token_secret: "m".repeat(25),
        pod_cidr: "10.88.0.0/16".into(),
        service_cidr: "10.96.0.0/16".into(),
        overlay: Default::default(),
        ..Default::default()
    }
}
