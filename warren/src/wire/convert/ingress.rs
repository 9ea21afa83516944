//! Ingress routes, certificates, ACME settings and a node's ingress assignment on
//! the wire. A route's spec travels as the JSON of `IngressSpec`, the shape the
//! Raft state stores, so that both sides share its serde defaults.

use crate::ingress::CertificatePem;
use crate::model::ingress::{
    AcmeChallenge, AcmeState, Certificate, CertificateSource, Ingress, IngressSpec, NodeIngress,
};
use crate::model::ValidationError;
use warren_proto::v1 as pb;

pub fn node_ingress_to_pb(i: Option<NodeIngress>) -> Option<pb::IngressPorts> {
    i.map(|i| pb::IngressPorts {
        http_port: i.http_port.into(),
        https_port: i.https_port.into(),
    })
}

/// Ports beyond 65535 become 0, which validation then refuses naming the flag.
pub fn node_ingress_from_pb(p: Option<pb::IngressPorts>) -> Option<NodeIngress> {
    p.map(|p| NodeIngress {
        http_port: u16::try_from(p.http_port).unwrap_or(0),
        https_port: u16::try_from(p.https_port).unwrap_or(0),
    })
}

pub fn spec_to_json(spec: &IngressSpec) -> String {
    // A spec of plain strings, numbers and lists always serializes.
    serde_json::to_string(spec).unwrap_or_default()
}

pub fn spec_from_json(json: &str) -> Result<IngressSpec, ValidationError> {
    serde_json::from_str(json).map_err(|e| ValidationError::new("spec", format!("invalid ingress spec: {e}")))
}

pub fn route_to_pb(i: &Ingress) -> pb::IngressRoute {
    pb::IngressRoute {
        id: i.id.clone(),
        name: i.name.clone(),
        spec_json: spec_to_json(&i.spec),
        version: i.version,
        created_ms: i.created_ms,
        updated_ms: i.updated_ms,
    }
}

pub fn route_from_pb(r: pb::IngressRoute) -> Result<Ingress, ValidationError> {
    Ok(Ingress {
        spec: spec_from_json(&r.spec_json)?,
        id: r.id,
        name: r.name,
        version: r.version,
        created_ms: r.created_ms,
        updated_ms: r.updated_ms,
    })
}

pub fn certificate_source_str(s: CertificateSource) -> &'static str {
    match s {
        CertificateSource::Uploaded => "uploaded",
        CertificateSource::Acme => "acme",
    }
}

pub fn certificate_to_pb(c: &Certificate) -> pb::IngressCertificate {
    pb::IngressCertificate {
        id: c.id.clone(),
        name: c.name.clone(),
        hosts: c.hosts.clone(),
        not_before_ms: c.not_before_ms,
        not_after_ms: c.not_after_ms,
        source: certificate_source_str(c.source).to_string(),
        cert_pem: c.cert_pem.clone(),
        version: c.version,
        created_ms: c.created_ms,
        updated_ms: c.updated_ms,
    }
}

pub fn acme_to_pb(a: &AcmeState) -> pb::ClusterAcme {
    let orders = a
        .orders
        .iter()
        .map(|o| pb::AcmeOrderStatus {
            certificate: o.certificate.clone(),
            hosts: o.hosts.clone(),
            url: o.url.clone(),
            started_ms: o.started_ms,
        })
        .collect();
    match &a.settings {
        None => pb::ClusterAcme {
            orders,
            ..Default::default()
        },
        Some(s) => pb::ClusterAcme {
            enabled: true,
            email: s.email.clone(),
            directory_url: s.directory_url.clone(),
            custom_ca: s.ca_pem.is_some(),
            renew_before_ms: s.renew_before_ms,
            orders,
        },
    }
}

/// `certificates`: unsealed by the dispatcher for this node.
pub fn ingress_assignment_to_pb(
    a: &crate::model::ingress::IngressAssignment,
    certificates: Vec<CertificatePem>,
) -> pb::IngressAssignment {
    pb::IngressAssignment {
        ports: node_ingress_to_pb(Some(a.ports)),
        routes: a.routes.iter().map(route_to_pb).collect(),
        certificates: certificates
            .into_iter()
            .map(|c| pb::IngressCertificateData {
                name: c.name,
                cert_pem: c.cert_pem,
                key_pem: c.key_pem,
            })
            .collect(),
        challenges: a
            .challenges
            .iter()
            .map(|c| pb::IngressChallenge {
                token: c.token.clone(),
                key_authorization: c.key_authorization.clone(),
                host: c.host.clone(),
            })
            .collect(),
    }
}

/// What a node's ingress serves, as it arrives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngressView {
    pub ports: NodeIngress,
    pub routes: Vec<Ingress>,
    pub certificates: Vec<CertificatePem>,
    pub challenges: Vec<AcmeChallenge>,
}

/// Routes this agent cannot read are left out and reported by name.
pub fn ingress_view_from_pb(a: pb::IngressAssignment) -> (IngressView, Vec<(String, ValidationError)>) {
    let mut bad = Vec::new();
    let mut routes = Vec::with_capacity(a.routes.len());
    for r in a.routes {
        let name = r.name.clone();
        match route_from_pb(r) {
            Ok(r) => routes.push(r),
            Err(e) => bad.push((name, e)),
        }
    }
    let view = IngressView {
        ports: node_ingress_from_pb(a.ports).unwrap_or_default(),
        routes,
        certificates: a
            .certificates
            .into_iter()
            .map(|c| CertificatePem {
                name: c.name,
                cert_pem: c.cert_pem,
                key_pem: c.key_pem,
            })
            .collect(),
        challenges: a
            .challenges
            .into_iter()
            .map(|c| AcmeChallenge {
                token: c.token,
                key_authorization: c.key_authorization,
                host: c.host,
                created_ms: 0,
            })
            .collect(),
    };
    (view, bad)
}
