//! The API handlers over a `FakeProposer` (real state machine, no Raft): callers
//! refused by the call layer, bad input naming the field and changing nothing, and
//! the state machine's conflicts reaching the caller.

use super::ApiService;
use crate::manager::ManagerCtx;
use crate::model::fixtures;
use crate::store::{Command, FakeProposer, Proposer};
use crate::wire::calls::CallLayer;
use std::sync::Arc;
use tonic::{Code, Request, Status};
use tower::{Layer, ServiceExt};
use warren_proto::v1 as pb;
use warren_proto::v1::warren_api_server::WarrenApi;

/// A one-manager cluster (`m1`, the leader) with a worker `n1`.
async fn cluster() -> (Arc<ManagerCtx>, Arc<FakeProposer>, ApiService) {
    let (ctx, raft) = ManagerCtx::fake();
    let mut m1 = fixtures::manager("m1", "m1", 1);
    m1.addr = "127.0.0.1:2377".into();
    raft.propose(Command::Bootstrap {
        meta: fixtures::meta(),
        node: m1,
    })
    .await
    .unwrap();
    raft.propose(Command::AddNode {
        node: fixtures::node("n1", "n1"),
    })
    .await
    .unwrap();
    let api = ApiService::new(ctx.clone());
    (ctx, raft, api)
}

fn spec(image: &str) -> pb::ServiceSpec {
    pb::ServiceSpec {
        image: image.into(),
        replicas: 1,
        ..Default::default()
    }
}

fn create(name: &str, spec: pb::ServiceSpec) -> Request<pb::CreateServiceRequest> {
    Request::new(pb::CreateServiceRequest {
        name: name.into(),
        spec: Some(spec),
    })
}

#[track_caller]
fn refused(r: Result<impl std::fmt::Debug, Status>, code: Code, message: &str) {
    let e = r.expect_err("the call was accepted");
    assert_eq!((e.code(), e.message()), (code, message));
}

fn services(ctx: &ManagerCtx) -> usize {
    ctx.store.read(|s| s.services.len())
}

/// A unary gRPC request as it arrives over HTTP/2, one framed message.
fn grpc_request(path: &str, msg: impl prost::Message) -> http::Request<tonic::body::Body> {
    let body = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(
            frame,
        ))))
        .unwrap()
}

fn calls(ctx: &ManagerCtx, method: &str, code: &str) -> u64 {
    ctx.metrics
        .api_duration
        .with_label_values(&[method, code])
        .get_sample_count()
}

#[tokio::test]
async fn the_call_layer_refuses_anonymous_callers_before_the_handler_and_counts_them() {
    let (ctx, _, api) = cluster().await;
    let server =
        CallLayer::new(ctx.metrics.api_duration.clone()).layer(pb::warren_api_server::WarrenApiServer::new(api));
    let path = "/warren.v1.WarrenApi/CreateService";
    let msg = pb::CreateServiceRequest {
        name: "web".into(),
        spec: Some(spec("img:1")),
    };

    // 1. Without a certificate or the local socket: refused, counted, nothing written.
    let resp = server.clone().oneshot(grpc_request(path, msg.clone())).await.unwrap();
    let status = Status::from_header_map(resp.headers()).expect("a refusal carries its status in the headers");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().starts_with("a cluster certificate is required"),
        "{}",
        status.message()
    );
    assert_eq!(services(&ctx), 0, "a refused call reached the handler");
    assert_eq!(calls(&ctx, "CreateService", "Unauthenticated"), 1);

    // 2. Through the local socket the same call goes through, and is counted as Ok.
    let mut req = grpc_request(path, msg);
    req.extensions_mut().insert(tonic::transport::server::UdsConnectInfo {
        peer_addr: None,
        peer_cred: None,
    });
    let resp = server.oneshot(req).await.unwrap();
    assert!(resp.headers().get("grpc-status").is_none(), "{:?}", resp.headers());
    assert_eq!(services(&ctx), 1);
    assert_eq!(calls(&ctx, "CreateService", "Ok"), 1);
}

#[tokio::test]
async fn bad_service_input_names_the_field_and_changes_nothing() {
    let (ctx, raft, api) = cluster().await;
    let proposed = raft.proposed().len();
    refused(
        api.create_service(create("-web", spec("img:1"))).await,
        Code::InvalidArgument,
        "name: invalid name \"-web\": use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
    );
    refused(
        api.create_service(Request::new(pb::CreateServiceRequest {
            name: "web".into(),
            spec: None,
        }))
        .await,
        Code::InvalidArgument,
        "spec: missing",
    );
    refused(
        api.create_service(create("web", spec(""))).await,
        Code::InvalidArgument,
        "image: an image is required",
    );
    let global = pb::ServiceSpec {
        mode: pb::ServiceMode::Global as i32,
        ..spec("img:1")
    };
    let e = api.create_service(create("web", global)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("replicas: "), "{}", e.message());
    assert_eq!(raft.proposed().len(), proposed, "bad input was written");
    // A missing secret is a rule of the state machine: the command is proposed and
    // refused by apply, so nothing changes.
    let with_secret = pb::ServiceSpec {
        secrets: vec![pb::SecretReference {
            name: "db".into(),
            target: String::new(),
        }],
        ..spec("img:1")
    };
    let e = api.create_service(create("web", with_secret)).await.unwrap_err();
    assert!(
        e.message().starts_with("secret: secret \"db\" not found"),
        "{}",
        e.message()
    );
    assert_eq!(services(&ctx), 0);

    api.create_service(create("web", spec("img:1"))).await.unwrap();
    let scale = Request::new(pb::ScaleServiceRequest {
        service: "web".into(),
        replicas: 10_001,
    });
    refused(
        api.scale_service(scale).await,
        Code::InvalidArgument,
        "replicas: 10001 is more than the limit of 10000",
    );
    let canary = Request::new(pb::UpdateServiceRequest {
        service: "web".into(),
        spec: Some(spec("img:2")),
        version: 0,
        canary_weight: Some(101),
    });
    refused(
        api.update_service(canary).await,
        Code::InvalidArgument,
        "canary-weight: 101 is not between 0 and 100",
    );
    let global = Request::new(pb::UpdateServiceRequest {
        service: "web".into(),
        spec: Some(pb::ServiceSpec {
            mode: pb::ServiceMode::Global as i32,
            replicas: 0,
            ..spec("img:1")
        }),
        version: 0,
        canary_weight: None,
    });
    refused(
        api.update_service(global).await,
        Code::InvalidArgument,
        "mode: a service's mode cannot change; remove and re-create the service",
    );
    let svc = ctx.store.read(|s| s.service("web").unwrap().clone());
    assert_eq!((svc.version, svc.spec.image.as_str()), (1, "img:1"));
}

#[tokio::test]
async fn the_state_machines_conflicts_reach_the_caller() {
    let (ctx, raft, api) = cluster().await;
    let web = api
        .create_service(create("web", spec("img:1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((web.name.as_str(), web.replicas.map(|r| r.desired)), ("web", Some(1)));

    // 1. A second service of the same name.
    let e = api.create_service(create("web", spec("img:2"))).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    assert_eq!(services(&ctx), 1);

    // 2. An update made against a version that changed meanwhile.
    let update = |version| {
        Request::new(pb::UpdateServiceRequest {
            service: "web".into(),
            spec: Some(spec("img:2")),
            version,
            canary_weight: None,
        })
    };
    let updated = api.update_service(update(web.version)).await.unwrap().into_inner();
    assert_eq!(updated.spec.map(|s| s.image), Some("img:2".to_string()));
    let e = api.update_service(update(web.version)).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{}", e.message());

    // 3. What is not there.
    let get = Request::new(pb::GetServiceRequest { service: "nope".into() });
    assert_eq!(api.get_service(get).await.unwrap_err().code(), Code::NotFound);

    // 4. No leader: nothing commits, and the caller is told to retry.
    raft.set_leader(None);
    let e = api.create_service(create("api", spec("img:1"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
}

#[tokio::test]
async fn secrets_and_volumes_in_use_stay() {
    let (ctx, _, api) = cluster().await;
    let secret = |data: &[u8]| {
        Request::new(pb::CreateSecretRequest {
            name: "db".into(),
            data: data.to_vec(),
            labels: Default::default(),
        })
    };
    refused(
        api.create_secret(secret(b"")).await,
        Code::InvalidArgument,
        "data: a secret cannot be empty",
    );
    let big = vec![b'x'; 500 * 1024 + 1];
    refused(
        api.create_secret(secret(&big)).await,
        Code::InvalidArgument,
        "data: 512001 bytes is more than the limit of 512000",
    );
    let created = api.create_secret(secret(b"pw")).await.unwrap().into_inner();
    assert_eq!(created.name, "db");
    let sealed = ctx.store.read(|s| s.secret("db").unwrap().sealed.clone());
    assert_ne!(sealed, b"pw".to_vec(), "a secret enters the log sealed");

    let volume = |driver: &str| {
        Request::new(pb::CreateVolumeRequest {
            name: "data".into(),
            driver: driver.into(),
            labels: Default::default(),
            options: Default::default(),
        })
    };
    refused(
        api.create_volume(volume("nfs")).await,
        Code::InvalidArgument,
        "driver: unknown volume driver \"nfs\" (supported: local)",
    );
    api.create_volume(volume("")).await.unwrap();

    let user = pb::ServiceSpec {
        secrets: vec![pb::SecretReference {
            name: "db".into(),
            target: String::new(),
        }],
        mounts: vec![pb::Mount {
            r#type: pb::MountType::Volume as i32,
            source: "data".into(),
            target: "/data".into(),
            readonly: false,
        }],
        ..spec("img:1")
    };
    api.create_service(create("web", user)).await.unwrap();
    refused(
        api.remove_secret(Request::new(pb::RemoveSecretRequest { secret: "db".into() }))
            .await,
        Code::FailedPrecondition,
        "secret db is in use by service web: remove it from the service first",
    );
    refused(
        api.remove_volume(Request::new(pb::RemoveVolumeRequest { volume: "data".into() }))
            .await,
        Code::FailedPrecondition,
        "volume data is in use by service web",
    );
    assert_eq!(ctx.store.read(|s| (s.secrets.len(), s.volumes.len())), (1, 1));

    api.remove_service(Request::new(pb::RemoveServiceRequest { service: "web".into() }))
        .await
        .unwrap();
    api.remove_secret(Request::new(pb::RemoveSecretRequest { secret: "db".into() }))
        .await
        .unwrap();
    let listed = api
        .list_secrets(Request::new(pb::ListSecretsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.secrets.is_empty());
}

#[tokio::test]
async fn nodes_are_shown_with_their_manager_status_and_guarded_on_removal() {
    let (ctx, raft, api) = cluster().await;
    let nodes = api
        .list_nodes(Request::new(pb::ListNodesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["m1", "n1"]);
    let m1 = nodes[0].manager.clone().expect("a manager shows its Raft status");
    assert!(m1.leader && m1.raft_id == 1);
    assert!(nodes[1].manager.is_none());

    let label = Request::new(pb::UpdateNodeRequest {
        ingress: None,
        ingress_ports: None,
        node: "n1".into(),
        availability: None,
        label_add: [("zone=a".to_string(), "x".to_string())].into(),
        label_rm: vec![],
        rotate_key: false,
    });
    refused(
        api.update_node(label).await,
        Code::InvalidArgument,
        "label: invalid label key \"zone=a\"",
    );
    let rm = |node: &str, force| {
        Request::new(pb::RemoveNodeRequest {
            node: node.into(),
            force,
        })
    };
    refused(
        api.remove_node(rm("m1", true)).await,
        Code::FailedPrecondition,
        "node m1 is the manager answering this request: run `warren node rm` on another manager",
    );
    refused(
        api.remove_node(rm("n1", false)).await,
        Code::FailedPrecondition,
        "node n1 is ready and would keep running its tasks: stop it first, or use --force",
    );
    api.remove_node(rm("n1", true)).await.unwrap();
    assert!(ctx.store.read(|s| !s.nodes.contains_key("n1")));

    // Another manager leads: this one shows as a follower.
    raft.set_leader(Some((2, "10.0.0.2:2377")));
    let info = api
        .get_cluster_info(Request::new(pb::ClusterInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.leader_addr, "10.0.0.2:2377");
    assert_eq!((info.node_id.as_str(), info.pod_cidr.as_str()), ("m1", "10.88.0.0/16"));
    let m1 = api
        .get_node(Request::new(pb::GetNodeRequest { node: "m1".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(!m1.manager.unwrap().leader);
}

#[tokio::test]
async fn joining_takes_a_token_of_this_cluster_and_a_valid_node() {
    use crate::pki::{CertificateAuthority, JoinToken};
    use warren_proto::v1::membership_server::Membership;
    let (ctx, raft) = ManagerCtx::fake();
    let ca = CertificateAuthority::generate("c1").unwrap();
    let meta = crate::model::ClusterMeta {
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key_sealed: ctx.secrets_key.seal(&ca.key_pkcs8_der()),
        ..fixtures::meta()
    };
    raft.propose(Command::Bootstrap {
        meta: meta.clone(),
        node: fixtures::manager("m1", "m1", 1),
    })
    .await
    .unwrap();
    let membership = super::MembershipService::new(ctx.clone());
    let (_, csr) = crate::pki::new_node_key("n9").unwrap();
    let join = |token: String, name: &str, addr: &str| {
        Request::new(pb::JoinRequest {
            ingress: Default::default(),
            token,
            csr_der: csr.clone(),
            node_name: name.into(),
            advertise_addr: addr.into(),
            resources: None,
            platform: None,
            warren_version: crate::VERSION.into(),
        })
    };
    let token = |ca_digest: String, secret: &str| {
        JoinToken {
            ca_digest,
            secret: secret.to_string(),
        }
        .to_string()
    };
    let worker = token(ca.digest(), &meta.worker_token_secret);

    refused(
        membership
            .join(join(
                token("a".repeat(64), &meta.worker_token_secret),
                "n9",
                "10.0.0.9:2377",
            ))
            .await,
        Code::PermissionDenied,
        "the join token was issued by another cluster (its CA digest does not match)",
    );
    let e = membership
        .join(join(token(ca.digest(), &"x".repeat(25)), "n9", "10.0.0.9:2377"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().starts_with("invalid join token: it was rotated"),
        "{}",
        e.message()
    );
    let e = membership
        .join(join(worker.clone(), "-n9", "10.0.0.9:2377"))
        .await
        .unwrap_err();
    assert!(e.message().starts_with("node-name: invalid name"), "{}", e.message());
    refused(
        membership.join(join(worker.clone(), "n9", "10.0.0.9")).await,
        Code::InvalidArgument,
        "advertise-addr: invalid address \"10.0.0.9\": expected IP:PORT",
    );
    assert_eq!(ctx.store.read(|s| s.nodes.len()), 1, "a refused join added a node");

    let joined = membership
        .join(join(worker, "n9", "10.0.0.9:2377"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.role, pb::NodeRole::Worker as i32);
    assert!(joined.secrets_key.is_empty(), "a worker never gets the secrets key");
    assert_eq!((joined.raft_id, joined.cluster_id.as_str()), (0, "c1"));
    let node = ctx.store.read(|s| s.nodes[&joined.node_id].clone());
    assert_eq!((node.name.as_str(), node.addr.as_str()), ("n9", "10.0.0.9:2377"));
    assert!(node.subnet.is_some(), "the new node got a task subnet");
}

#[tokio::test]
async fn a_backup_opens_with_its_passphrase_and_restores_the_state_it_read() {
    let (ctx, _raft, api) = cluster().await;
    api.create_service(create("web", spec("img:1"))).await.unwrap();
    refused(
        api.backup_cluster(Request::new(pb::BackupClusterRequest { passphrase: vec![] }))
            .await,
        Code::InvalidArgument,
        "passphrase: must not be empty",
    );
    let r = api
        .backup_cluster(Request::new(pb::BackupClusterRequest {
            passphrase: b"pass".to_vec(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.cluster_id.as_str(), r.services, r.nodes), ("c1", 1, 2));
    let opened = crate::backup_seal::open(b"pass", &r.file).unwrap();
    assert_eq!(opened.secrets_key.as_bytes(), ctx.secrets_key.as_bytes());
    let snap = crate::store::backup::Snapshot::decode(&opened.body).unwrap();
    assert_eq!(snap.applied_index, r.applied_index);
    assert_eq!(snap.state, ctx.store.read(|s| s.clone()));
    // A later write is not in it.
    api.create_service(create("api", spec("img:1"))).await.unwrap();
    assert!(!snap.state.services.values().any(|s| s.name == "api"));
}
