//! The API's ingress calls: routes (create, get, list, update, remove), uploaded
//! certificates (checked as the ingress will load them, the key sealed with the
//! cluster's key before it enters the log) and the cluster's ACME settings. What
//! must hold across managers (the service and certificate exist, host and path
//! are free, a certificate in use stays) is decided in apply.

use super::common::{read, write};
use crate::manager::ManagerCtx;
use crate::model::ingress::{
    validate_certificate_name, AcmeSettings, Ingress, DEFAULT_RENEW_BEFORE_MS, LETS_ENCRYPT_PRODUCTION,
};
use crate::model::{new_id, now_ms, validate_name};
use crate::store::Command;
use crate::wire::convert;
use crate::wire::status::invalid;
use tonic::Status;
use warren_proto::v1 as pb;

pub(super) async fn create_route(
    ctx: &ManagerCtx,
    req: pb::CreateIngressRouteRequest,
) -> Result<pb::IngressRoute, Status> {
    validate_name("name", &req.name).map_err(invalid)?;
    let spec = convert::spec_from_json(&req.spec_json).map_err(invalid)?;
    spec.validate().map_err(invalid)?;
    let now = now_ms();
    let ingress = Ingress {
        id: new_id(),
        name: req.name,
        spec,
        version: 1,
        created_ms: now,
        updated_ms: now,
    };
    let id = ingress.id.clone();
    write(ctx, Command::CreateIngress { ingress }).await?;
    read(ctx, |s| Ok(convert::route_to_pb(s.ingress(&id)?)))
}

pub(super) fn get_route(ctx: &ManagerCtx, req: pb::GetIngressRouteRequest) -> Result<pb::IngressRoute, Status> {
    read(ctx, |s| Ok(convert::route_to_pb(s.ingress(&req.ingress)?)))
}

pub(super) fn list_routes(ctx: &ManagerCtx) -> pb::ListIngressRoutesResponse {
    let mut routes: Vec<pb::IngressRoute> = ctx
        .store
        .read(|s| s.ingresses.values().map(convert::route_to_pb).collect());
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListIngressRoutesResponse { routes }
}

pub(super) async fn update_route(
    ctx: &ManagerCtx,
    req: pb::UpdateIngressRouteRequest,
) -> Result<pb::IngressRoute, Status> {
    let spec = convert::spec_from_json(&req.spec_json).map_err(invalid)?;
    spec.validate().map_err(invalid)?;
    let (id, version) = read(ctx, |s| {
        let i = s.ingress(&req.ingress)?;
        Ok((i.id.clone(), i.version))
    })?;
    let expected_version = if req.expected_version == 0 {
        version
    } else {
        req.expected_version
    };
    write(
        ctx,
        Command::UpdateIngress {
            id: id.clone(),
            expected_version,
            spec,
            at_ms: now_ms(),
        },
    )
    .await?;
    read(ctx, |s| Ok(convert::route_to_pb(s.ingress(&id)?)))
}

pub(super) async fn remove_route(ctx: &ManagerCtx, req: pb::RemoveIngressRouteRequest) -> Result<pb::Empty, Status> {
    let id = read(ctx, |s| Ok(s.ingress(&req.ingress)?.id.clone()))?;
    write(ctx, Command::RemoveIngress { id }).await?;
    Ok(pb::Empty {})
}

pub(super) async fn create_certificate(
    ctx: &ManagerCtx,
    req: pb::CreateIngressCertificateRequest,
) -> Result<pb::IngressCertificate, Status> {
    validate_certificate_name("name", &req.name).map_err(invalid)?;
    let info =
        crate::ingress::inspect(&req.cert_pem, &req.key_pem).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let now = now_ms();
    let certificate = info.uploaded(
        new_id(),
        req.name,
        req.cert_pem,
        ctx.secrets_key.seal(req.key_pem.as_bytes()),
        now,
    );
    let id = certificate.id.clone();
    write(ctx, Command::CreateCertificate { certificate }).await?;
    read(ctx, |s| Ok(convert::certificate_to_pb(s.certificate(&id)?)))
}

pub(super) fn get_certificate(
    ctx: &ManagerCtx,
    req: pb::GetIngressCertificateRequest,
) -> Result<pb::IngressCertificate, Status> {
    read(ctx, |s| {
        Ok(convert::certificate_to_pb(s.certificate(&req.certificate)?))
    })
}

pub(super) fn list_certificates(ctx: &ManagerCtx) -> pb::ListIngressCertificatesResponse {
    let mut certificates: Vec<pb::IngressCertificate> = ctx
        .store
        .read(|s| s.certificates.values().map(convert::certificate_to_pb).collect());
    certificates.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListIngressCertificatesResponse { certificates }
}

pub(super) async fn remove_certificate(
    ctx: &ManagerCtx,
    req: pb::RemoveIngressCertificateRequest,
) -> Result<pb::Empty, Status> {
    let id = read(ctx, |s| Ok(s.certificate(&req.certificate)?.id.clone()))?;
    write(ctx, Command::RemoveCertificate { id }).await?;
    Ok(pb::Empty {})
}

pub(super) async fn update_acme(
    ctx: &ManagerCtx,
    req: pb::UpdateClusterAcmeRequest,
) -> Result<pb::ClusterAcme, Status> {
    let settings = if req.disable {
        None
    } else {
        let current = ctx.store.read(|s| s.acme.settings.clone());
        let email = match (req.email.trim(), &current) {
            ("", Some(c)) => c.email.clone(),
            ("", None) => return Err(Status::invalid_argument("acme-email: an account email is required")),
            (e, _) => e.to_string(),
        };
        let keep = |new: String, old: Option<String>, default: &str| {
            if !new.is_empty() {
                new
            } else {
                old.unwrap_or_else(|| default.to_string())
            }
        };
        let s = AcmeSettings {
            email,
            directory_url: keep(
                req.directory_url,
                current.as_ref().map(|c| c.directory_url.clone()),
                LETS_ENCRYPT_PRODUCTION,
            ),
            ca_pem: if req.ca_pem.is_empty() {
                current.as_ref().and_then(|c| c.ca_pem.clone())
            } else {
                Some(req.ca_pem)
            },
            renew_before_ms: match (req.renew_before_ms, &current) {
                (0, Some(c)) => c.renew_before_ms,
                (0, None) => DEFAULT_RENEW_BEFORE_MS,
                (n, _) => n,
            },
        };
        s.validate().map_err(invalid)?;
        Some(s)
    };
    write(ctx, Command::SetAcmeSettings { settings }).await?;
    Ok(ctx.store.read(|s| convert::acme_to_pb(&s.acme)))
}
