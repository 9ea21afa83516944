//! Model values for the store's unit tests, built in one place.

use crate::model::*;

pub(crate) fn node(id: &str, name: &str) -> Node {
    Node {
        ingress: None,
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
        metrics_port: 0,
        last_contact_ms: 0,
        cert_expires_ms: 0,
        autonomy: String::new(),
    }
}

pub(crate) fn service(id: &str, name: &str) -> Service {
    Service {
        id: id.into(),
        name: name.into(),
        spec: ServiceSpec {
            image: "img".into(),
            mode: ServiceMode::Replicated { replicas: 1 },
            ..Default::default()
        },
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

pub(crate) fn task(id: &str, svc: &Service) -> Task {
    Task {
        id: id.into(),
        service_id: svc.id.clone(),
        service_name: svc.name.clone(),
        slot: 1,
        node_id: None,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Pending,
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

pub(crate) fn secret(id: &str, name: &str) -> Secret {
    Secret {
        id: id.into(),
        name: name.into(),
        labels: Default::default(),
        sealed: vec![],
        digest: String::new(),
        created_ms: 0,
    }
}

pub(crate) fn volume(id: &str, name: &str) -> Volume {
    Volume {
        id: id.into(),
        name: name.into(),
        driver: "local".into(),
        node_id: None,
        labels: Default::default(),
        options: Default::default(),
        created_ms: 0,
    }
}
