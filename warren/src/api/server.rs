//! `warren.v1.WarrenApi` on a manager: each call is one line that hands the request
//! to its family (`services`, `nodes`, `secrets`, `cluster`, `node_proxy`). Who may
//! call, and the call's metrics, are the call layer's (`wire::calls`), which wraps
//! every service a node serves. Reads after a caller's own write see it, because a
//! write returns only once this manager has applied the entry.

use super::{apply, cluster, ingress, node_proxy, nodes, secrets, services};
use crate::manager::ManagerCtx;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use warren_proto::v1 as pb;

pub struct ApiService {
    ctx: Arc<ManagerCtx>,
}

impl ApiService {
    pub fn new(ctx: Arc<ManagerCtx>) -> Self {
        ApiService { ctx }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(r: Result<T, Status>) -> Reply<T> {
    r.map(Response::new)
}

#[tonic::async_trait]
impl pb::warren_api_server::WarrenApi for ApiService {
    async fn create_ingress_route(&self, req: Request<pb::CreateIngressRouteRequest>) -> Reply<pb::IngressRoute> {
        ok(ingress::create_route(&self.ctx, req.into_inner()).await)
    }

    async fn get_ingress_route(&self, req: Request<pb::GetIngressRouteRequest>) -> Reply<pb::IngressRoute> {
        ok(ingress::get_route(&self.ctx, req.into_inner()))
    }

    async fn list_ingress_routes(
        &self,
        _: Request<pb::ListIngressRoutesRequest>,
    ) -> Reply<pb::ListIngressRoutesResponse> {
        Ok(Response::new(ingress::list_routes(&self.ctx)))
    }

    async fn update_ingress_route(&self, req: Request<pb::UpdateIngressRouteRequest>) -> Reply<pb::IngressRoute> {
        ok(ingress::update_route(&self.ctx, req.into_inner()).await)
    }

    async fn remove_ingress_route(&self, req: Request<pb::RemoveIngressRouteRequest>) -> Reply<pb::Empty> {
        ok(ingress::remove_route(&self.ctx, req.into_inner()).await)
    }

    async fn create_ingress_certificate(
        &self,
        req: Request<pb::CreateIngressCertificateRequest>,
    ) -> Reply<pb::IngressCertificate> {
        ok(ingress::create_certificate(&self.ctx, req.into_inner()).await)
    }

    async fn get_ingress_certificate(
        &self,
        req: Request<pb::GetIngressCertificateRequest>,
    ) -> Reply<pb::IngressCertificate> {
        ok(ingress::get_certificate(&self.ctx, req.into_inner()))
    }

    async fn list_ingress_certificates(
        &self,
        _: Request<pb::ListIngressCertificatesRequest>,
    ) -> Reply<pb::ListIngressCertificatesResponse> {
        Ok(Response::new(ingress::list_certificates(&self.ctx)))
    }

    async fn remove_ingress_certificate(&self, req: Request<pb::RemoveIngressCertificateRequest>) -> Reply<pb::Empty> {
        ok(ingress::remove_certificate(&self.ctx, req.into_inner()).await)
    }

    async fn update_cluster_acme(&self, req: Request<pb::UpdateClusterAcmeRequest>) -> Reply<pb::ClusterAcme> {
        ok(ingress::update_acme(&self.ctx, req.into_inner()).await)
    }

    async fn update_cluster_certs(
        &self,
        req: Request<pb::UpdateClusterCertsRequest>,
    ) -> Reply<pb::UpdateClusterCertsResponse> {
        ok(cluster::update_certs(&self.ctx, req.into_inner()).await)
    }

    async fn create_service(&self, req: Request<pb::CreateServiceRequest>) -> Reply<pb::Service> {
        ok(services::create(&self.ctx, req.into_inner()).await)
    }

    async fn get_service(&self, req: Request<pb::GetServiceRequest>) -> Reply<pb::Service> {
        ok(services::get(&self.ctx, req.into_inner()))
    }

    async fn list_services(&self, _: Request<pb::ListServicesRequest>) -> Reply<pb::ListServicesResponse> {
        Ok(Response::new(services::list(&self.ctx)))
    }

    async fn update_service(&self, req: Request<pb::UpdateServiceRequest>) -> Reply<pb::Service> {
        ok(services::update(&self.ctx, req.into_inner()).await)
    }

    async fn promote_service(&self, req: Request<pb::PromoteServiceRequest>) -> Reply<pb::Service> {
        ok(services::promote(&self.ctx, req.into_inner()).await)
    }

    async fn rollback_service(&self, req: Request<pb::RollbackServiceRequest>) -> Reply<pb::Service> {
        ok(services::rollback(&self.ctx, req.into_inner()).await)
    }

    async fn scale_service(&self, req: Request<pb::ScaleServiceRequest>) -> Reply<pb::Service> {
        ok(services::scale(&self.ctx, req.into_inner()).await)
    }

    async fn remove_service(&self, req: Request<pb::RemoveServiceRequest>) -> Reply<pb::Empty> {
        ok(services::remove(&self.ctx, req.into_inner()).await)
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Reply<pb::ListTasksResponse> {
        ok(services::list_tasks(&self.ctx, req.into_inner()))
    }

    async fn get_task(&self, req: Request<pb::GetTaskRequest>) -> Reply<pb::Task> {
        ok(services::get_task(&self.ctx, req.into_inner()))
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> Reply<pb::ListNodesResponse> {
        Ok(Response::new(nodes::list(&self.ctx)))
    }

    async fn get_node(&self, req: Request<pb::GetNodeRequest>) -> Reply<pb::Node> {
        ok(nodes::get(&self.ctx, req.into_inner()))
    }

    async fn get_node_dataplane(&self, req: Request<pb::GetNodeRequest>) -> Reply<pb::NodeDataplane> {
        ok(nodes::dataplane(&self.ctx, req.into_inner()).await)
    }

    async fn update_node(&self, req: Request<pb::UpdateNodeRequest>) -> Reply<pb::Node> {
        ok(nodes::update(&self.ctx, req.into_inner()).await)
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Reply<pb::Empty> {
        ok(nodes::remove(&self.ctx, req.into_inner()).await)
    }

    async fn create_secret(&self, req: Request<pb::CreateSecretRequest>) -> Reply<pb::Secret> {
        ok(secrets::create_secret(&self.ctx, req.into_inner()).await)
    }

    async fn list_secrets(&self, _: Request<pb::ListSecretsRequest>) -> Reply<pb::ListSecretsResponse> {
        Ok(Response::new(secrets::list_secrets(&self.ctx)))
    }

    async fn remove_secret(&self, req: Request<pb::RemoveSecretRequest>) -> Reply<pb::Empty> {
        ok(secrets::remove_secret(&self.ctx, req.into_inner()).await)
    }

    async fn create_volume(&self, req: Request<pb::CreateVolumeRequest>) -> Reply<pb::Volume> {
        ok(secrets::create_volume(&self.ctx, req.into_inner()).await)
    }

    async fn list_volumes(&self, _: Request<pb::ListVolumesRequest>) -> Reply<pb::ListVolumesResponse> {
        Ok(Response::new(secrets::list_volumes(&self.ctx)))
    }

    async fn remove_volume(&self, req: Request<pb::RemoveVolumeRequest>) -> Reply<pb::Empty> {
        ok(secrets::remove_volume(&self.ctx, req.into_inner()).await)
    }

    async fn create_config(&self, req: Request<pb::CreateConfigRequest>) -> Reply<pb::ConfigObject> {
        ok(apply::create_config(&self.ctx, req.into_inner()).await)
    }

    async fn list_configs(&self, _: Request<pb::ListConfigsRequest>) -> Reply<pb::ListConfigsResponse> {
        Ok(Response::new(apply::list_configs(&self.ctx)))
    }

    async fn remove_config(&self, req: Request<pb::RemoveConfigRequest>) -> Reply<pb::Empty> {
        ok(apply::remove_config(&self.ctx, req.into_inner()).await)
    }

    async fn apply_manifest(&self, req: Request<pb::ApplyManifestRequest>) -> Reply<pb::ApplyManifestReply> {
        ok(apply::apply_manifest(&self.ctx, req.into_inner()).await)
    }

    async fn get_join_token(&self, req: Request<pb::GetJoinTokenRequest>) -> Reply<pb::JoinToken> {
        ok(cluster::join_token(&self.ctx, req.into_inner()).await)
    }

    async fn get_cluster_info(&self, _: Request<pb::ClusterInfoRequest>) -> Reply<pb::ClusterInfo> {
        Ok(Response::new(cluster::info(&self.ctx)))
    }

    type ServiceLogsStream = node_proxy::LineStream;

    async fn service_logs(&self, req: Request<pb::ServiceLogsRequest>) -> Reply<node_proxy::LineStream> {
        ok(node_proxy::service_logs(&self.ctx, req.into_inner()).await)
    }

    type TaskLogsStream = node_proxy::LineStream;

    async fn task_logs(&self, req: Request<pb::TaskLogsRequest>) -> Reply<node_proxy::LineStream> {
        ok(node_proxy::task_logs(&self.ctx, req.into_inner()).await)
    }

    async fn load_image(&self, req: Request<tonic::Streaming<pb::LoadImageChunk>>) -> Reply<pb::LoadImageReply> {
        ok(node_proxy::load_image(self.ctx.clone(), req.into_inner()).await)
    }

    type WatchEventsStream = cluster::EventStream;

    async fn watch_events(&self, req: Request<pb::WatchEventsRequest>) -> Reply<cluster::EventStream> {
        Ok(Response::new(cluster::events(&self.ctx, req.into_inner())))
    }

    async fn backup_cluster(&self, req: Request<pb::BackupClusterRequest>) -> Reply<pb::BackupClusterReply> {
        ok(cluster::backup(&self.ctx, req.into_inner()).await)
    }
}
