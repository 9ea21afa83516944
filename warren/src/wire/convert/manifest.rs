//! Manifests (`warren apply -f`, `warren stack deploy`) and their diffs on the wire.
//! A secret's value goes out in the request only; the reply never carries one.

use super::ingress::{spec_from_json, spec_to_json};
use super::service::{port_from_pb, spec_from_pb, spec_to_pb};
use crate::model::{
    Manifest, ManifestCanary, ManifestCertificate, ManifestConfig, ManifestIngress, ManifestSecret, ManifestService,
    ManifestVolume, ValidationError,
};
use warren_proto::v1 as pb;

/// CLI side. A service's `configs` travel inside its spec.
pub fn manifest_to_pb(m: &Manifest, dry_run: bool, prune: bool) -> pb::ApplyManifestRequest {
    pb::ApplyManifestRequest {
        stack: m.stack.clone().unwrap_or_default(),
        services: m
            .services
            .iter()
            .map(|s| {
                let mut spec = s.spec.clone();
                if spec.configs.is_empty() {
                    spec.configs = s.configs.clone();
                }
                pb::ManifestService {
                    name: s.name.clone(),
                    spec: Some(spec_to_pb(&spec)),
                    canary: s.canary.is_some(),
                    canary_weight: s.canary.as_ref().map_or(0, |c| u32::from(c.weight)),
                    canary_steps: s
                        .canary
                        .as_ref()
                        .map(|c| c.steps.iter().map(|&w| u32::from(w)).collect())
                        .unwrap_or_default(),
                }
            })
            .collect(),
        secrets: m
            .secrets
            .iter()
            .map(|s| pb::ManifestSecret {
                name: s.name.clone(),
                external: s.external,
                data: s.data.clone(),
                labels: s.labels.clone().into_iter().collect(),
            })
            .collect(),
        configs: m
            .configs
            .iter()
            .map(|c| pb::ManifestConfig {
                name: c.name.clone(),
                external: c.external,
                data: c.data.clone(),
                labels: c.labels.clone().into_iter().collect(),
            })
            .collect(),
        volumes: m
            .volumes
            .iter()
            .map(|v| pb::ManifestVolume {
                name: v.name.clone(),
                external: v.external,
                driver: v.driver.clone(),
                options: v.options.clone().into_iter().collect(),
                labels: v.labels.clone().into_iter().collect(),
            })
            .collect(),
        dry_run,
        prune,
        ingresses: m
            .ingresses
            .iter()
            .map(|i| pb::ManifestIngress {
                name: i.name.clone(),
                spec_json: spec_to_json(&i.spec),
            })
            .collect(),
        certificates: m
            .certificates
            .iter()
            .map(|c| pb::ManifestCertificate {
                name: c.name.clone(),
                cert_pem: c.cert_pem.clone(),
                key_pem: c.key_pem.clone(),
            })
            .collect(),
    }
}

/// `spec_from_pb` for a manifest's spec, whose ports may have no published number
/// yet (compose `- "80"`: the planner picks one); those are checked but for it and
/// kept in place with published 0.
fn spec_with_picked_ports(mut spec: pb::ServiceSpec) -> Result<crate::model::ServiceSpec, ValidationError> {
    let mut picked = Vec::new();
    let mut i = 0;
    spec.ports.retain(|p| {
        i += 1;
        if p.published == 0 {
            picked.push((i - 1, *p));
            false
        } else {
            true
        }
    });
    let mut out = spec_from_pb(spec)?;
    for (at, p) in picked {
        let mut port = port_from_pb(pb::PortConfig { published: 1, ..p })?;
        port.published = 0;
        out.ports.insert(at.min(out.ports.len()), port);
    }
    Ok(out)
}

/// Manager side: each spec is validated, its errors named by the manifest field
/// (`services.web.image`).
pub fn manifest_from_pb(r: pb::ApplyManifestRequest) -> Result<Manifest, ValidationError> {
    let services = r
        .services
        .into_iter()
        .map(|s| {
            let field = format!("services.{}", s.name);
            let spec = s
                .spec
                .ok_or_else(|| ValidationError::new(&field, "missing spec"))
                .and_then(|spec| {
                    spec_with_picked_ports(spec)
                        .map_err(|e| ValidationError::new(format!("{field}.{}", e.field), e.message))
                })?;
            let weight = |w: u32| {
                u8::try_from(w).ok().filter(|w| *w <= 100).ok_or_else(|| {
                    ValidationError::new(
                        format!("{field}.x-warren.canary_weight"),
                        format!("{w} is not between 0 and 100"),
                    )
                })
            };
            let canary = if s.canary {
                Some(ManifestCanary {
                    weight: weight(s.canary_weight)?,
                    steps: s.canary_steps.into_iter().map(weight).collect::<Result<_, _>>()?,
                })
            } else {
                None
            };
            Ok(ManifestService {
                name: s.name,
                spec,
                canary,
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, ValidationError>>()?;
    Ok(Manifest {
        stack: (!r.stack.is_empty()).then_some(r.stack),
        services,
        secrets: r
            .secrets
            .into_iter()
            .map(|s| ManifestSecret {
                name: s.name,
                external: s.external,
                data: s.data,
                labels: s.labels.into_iter().collect(),
            })
            .collect(),
        configs: r
            .configs
            .into_iter()
            .map(|c| ManifestConfig {
                name: c.name,
                external: c.external,
                data: c.data,
                labels: c.labels.into_iter().collect(),
            })
            .collect(),
        volumes: r
            .volumes
            .into_iter()
            .map(|v| ManifestVolume {
                name: v.name,
                external: v.external,
                driver: v.driver,
                options: v.options.into_iter().collect(),
                labels: v.labels.into_iter().collect(),
            })
            .collect(),
        ingresses: r
            .ingresses
            .into_iter()
            .map(|i| {
                let field = format!("ingresses.{}", i.name);
                let spec = spec_from_json(&i.spec_json)
                    .map_err(|e| ValidationError::new(format!("{field}.{}", e.field), e.message))?;
                Ok(ManifestIngress { name: i.name, spec })
            })
            .collect::<Result<Vec<_>, ValidationError>>()?,
        certificates: r
            .certificates
            .into_iter()
            .map(|c| ManifestCertificate {
                name: c.name,
                cert_pem: c.cert_pem,
                key_pem: c.key_pem,
            })
            .collect(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_publish, ManifestIngress, PortConfig, ServiceSpec};

    #[test]
    fn ports_to_pick_routes_and_certificates_cross_the_wire() {
        let pick = PortConfig {
            published: 0,
            ..parse_publish("publish", "1:9000").unwrap()
        };
        let m = Manifest {
            services: vec![ManifestService {
                name: "web".into(),
                spec: ServiceSpec {
                    image: "web:1".into(),
                    ports: vec![pick, parse_publish("publish", "8080:80").unwrap()],
                    ..Default::default()
                },
                ..Default::default()
            }],
            ingresses: vec![ManifestIngress {
                name: "shop".into(),
                spec: crate::model::ingress::IngressSpec {
                    host: "shop.test".into(),
                    path: "/".into(),
                    service: "web".into(),
                    ..Default::default()
                },
            }],
            certificates: vec![ManifestCertificate {
                name: "c".into(),
                cert_pem: "chain".into(),
                key_pem: "key".into(),
            }],
            ..Default::default()
        };
        let back = manifest_from_pb(manifest_to_pb(&m, false, false)).unwrap();
        assert_eq!(back.services[0].spec.ports, m.services[0].spec.ports);
        assert_eq!((back.ingresses, back.certificates), (m.ingresses, m.certificates));
    }
}
