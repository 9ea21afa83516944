//! Ingress routes, certificates, the nodes' ingress ports and the ACME state: a
//! route names an existing service and an existing certificate (or `acme`), no
//! two routes share a host and path, a certificate in use stays, and the ports a
//! node's ingress listens on are never published by a service (nor the other way
//! round). The ACME commands only record what the ordering manager did.

use super::{change, Versioned};
use crate::model::ingress::{
    validate_certificate_name, AcmeChallenge, AcmeOrder, AcmeSettings, Certificate, CertificateSource, Ingress,
    IngressSpec, NodeIngress, RouteTls, ACME_PREFIX,
};
use crate::model::Protocol;
use crate::store::error::{IngressPortFlag, User};
use crate::store::state::{Action, Change, ObjectKind, State};
use crate::store::ApplyError;

fn invalid(e: crate::model::ValidationError) -> ApplyError {
    ApplyError::Invalid(e.to_string())
}

impl State {
    /// What a route's spec must satisfy against the rest of the state; `own`: the
    /// route being updated.
    fn check_route(&self, name: &str, spec: &IngressSpec, own: Option<&str>) -> Result<(), ApplyError> {
        spec.validate().map_err(invalid)?;
        if !self.services.values().any(|s| s.name == spec.service) {
            return Err(ApplyError::Invalid(format!(
                "service: service {:?} not found (create it first, or fix --service)",
                spec.service
            )));
        }
        if let RouteTls::Certificate(c) = &spec.tls {
            if !self.certificates.values().any(|x| x.name == *c) {
                return Err(ApplyError::Invalid(format!(
                    "tls: certificate {c:?} not found (upload it with `warren certificate create {c} --cert FILE --key FILE`, or use --tls acme)"
                )));
            }
        }
        let others = || self.ingresses.values().filter(|i| Some(i.id.as_str()) != own);
        if let Some(other) = others().find(|i| i.spec.host == spec.host && i.spec.path == spec.path) {
            return Err(ApplyError::AlreadyExists(format!(
                "path: {}{} is already routed by ingress {:?}",
                spec.host, spec.path, other.name
            )));
        }
        if spec.default_backend {
            if let Some(other) = others().find(|i| i.spec.default_backend) {
                return Err(ApplyError::AlreadyExists(format!(
                    "default: ingress {:?} is already the default route",
                    other.name
                )));
            }
        }
        if name != name.trim() || name.is_empty() {
            return Err(ApplyError::Invalid("name: a route needs a name".into()));
        }
        Ok(())
    }

    pub(super) fn create_ingress(&mut self, ingress: &Ingress, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        crate::model::validate_name("name", &ingress.name).map_err(invalid)?;
        if self.ingresses.values().any(|i| i.name == ingress.name) || self.ingresses.contains_key(&ingress.id) {
            return Err(ApplyError::AlreadyExists(format!(
                "ingress {:?} already exists",
                ingress.name
            )));
        }
        self.check_route(&ingress.name, &ingress.spec, None)?;
        self.ingresses.insert(ingress.id.clone(), ingress.clone());
        changes.push(change(ObjectKind::Ingress, Action::Created, &ingress.id, &ingress.name));
        Ok(())
    }

    pub(super) fn update_ingress(
        &mut self,
        id: &str,
        expected_version: u64,
        spec: &IngressSpec,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let current = self
            .ingresses
            .get(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Ingress, id))?;
        if current.version != expected_version {
            return Err(ApplyError::Stale {
                kind: ObjectKind::Ingress,
                name: current.name.clone(),
                read: expected_version,
                now: current.version,
            });
        }
        let name = current.name.clone();
        self.check_route(&name, spec, Some(id))?;
        let i = self.ingresses.get_mut(id).expect("checked above");
        i.spec = spec.clone();
        i.touch(at_ms);
        changes.push(change(ObjectKind::Ingress, Action::Updated, id, &name));
        Ok(())
    }

    pub(super) fn remove_ingress(&mut self, id: &str, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let i = self
            .ingresses
            .remove(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Ingress, id))?;
        changes.push(change(ObjectKind::Ingress, Action::Removed, id, &i.name));
        // An order for a host no route wants any more is dropped by the ordering
        // manager; the certificate it obtained stays until removed.
        Ok(())
    }

    pub(super) fn create_certificate(
        &mut self,
        certificate: &Certificate,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        if certificate.source == CertificateSource::Uploaded {
            validate_certificate_name("name", &certificate.name).map_err(invalid)?;
        }
        if self.certificates.values().any(|c| c.name == certificate.name)
            || self.certificates.contains_key(&certificate.id)
        {
            return Err(ApplyError::AlreadyExists(format!(
                "certificate {:?} already exists",
                certificate.name
            )));
        }
        self.certificates.insert(certificate.id.clone(), certificate.clone());
        changes.push(change(
            ObjectKind::Certificate,
            Action::Created,
            &certificate.id,
            &certificate.name,
        ));
        Ok(())
    }

    pub(super) fn remove_certificate(&mut self, id: &str, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        let c = self
            .certificates
            .get(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Certificate, id))?;
        let user = self
            .ingresses
            .values()
            .find(|i| i.spec.certificate_name().as_deref() == Some(c.name.as_str()));
        if let Some(route) = user {
            return Err(ApplyError::InUse {
                kind: ObjectKind::Certificate,
                name: c.name.clone(),
                user: User::Ingress(route.name.clone()),
            });
        }
        let name = c.name.clone();
        self.certificates.remove(id);
        changes.push(change(ObjectKind::Certificate, Action::Removed, id, &name));
        Ok(())
    }

    /// No service publishes a port the ingress is to listen on.
    pub(super) fn check_ingress_ports(&self, ingress: &NodeIngress) -> Result<(), ApplyError> {
        ingress.validate().map_err(invalid)?;
        for (port, flag) in [
            (ingress.http_port, IngressPortFlag::Http),
            (ingress.https_port, IngressPortFlag::Https),
        ] {
            let holder = self.services.values().find(|s| {
                std::iter::once(&s.spec)
                    .chain(s.canary.as_ref().map(|c| &c.spec))
                    .any(|spec| {
                        spec.ports
                            .iter()
                            .any(|p| p.published == port && p.protocol == Protocol::Tcp)
                    })
            });
            if let Some(s) = holder {
                return Err(ApplyError::PortPublished {
                    flag,
                    port,
                    service: s.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The node whose ingress listens on `port` (TCP), if one does.
    pub(super) fn ingress_node_on(&self, port: u16) -> Option<&str> {
        self.nodes
            .values()
            .find(|n| n.ingress.is_some_and(|i| i.http_port == port || i.https_port == port))
            .map(|n| n.name.as_str())
    }

    pub(super) fn set_node_ingress(
        &mut self,
        id: &str,
        ingress: Option<NodeIngress>,
        at_ms: i64,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        if let Some(i) = &ingress {
            self.check_ingress_ports(i)?;
        }
        let node = self.node_mut(id)?;
        if node.ingress == ingress {
            return Ok(());
        }
        node.ingress = ingress;
        node.touch(at_ms);
        let name = node.name.clone();
        changes.push(change(ObjectKind::Node, Action::Updated, id, &name));
        Ok(())
    }

    pub(super) fn set_acme_settings(
        &mut self,
        settings: &Option<AcmeSettings>,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        if let Some(s) = settings {
            s.validate().map_err(invalid)?;
        }
        self.acme.settings = settings.clone();
        changes.push(acme_change());
        Ok(())
    }

    pub(super) fn save_acme_account(
        &mut self,
        directory_url: &str,
        credentials_sealed: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        self.acme
            .accounts
            .insert(directory_url.to_string(), credentials_sealed.to_vec());
        changes.push(acme_change());
        Ok(())
    }

    pub(super) fn begin_acme_order(&mut self, order: &AcmeOrder, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        if !order.certificate.starts_with(ACME_PREFIX) {
            return Err(ApplyError::Invalid(format!(
                "an acme order must be for an {ACME_PREFIX}* certificate, not {:?}",
                order.certificate
            )));
        }
        self.acme.orders.retain(|o| o.certificate != order.certificate);
        self.acme.orders.push(order.clone());
        changes.push(acme_change());
        Ok(())
    }

    pub(super) fn publish_acme_challenges(
        &mut self,
        challenges: &[AcmeChallenge],
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        self.acme
            .challenges
            .retain(|c| !challenges.iter().any(|n| n.token == c.token));
        self.acme.challenges.extend_from_slice(challenges);
        changes.push(acme_change());
        Ok(())
    }

    fn drop_order(&mut self, order_url: &str) {
        let hosts: Vec<String> = self
            .acme
            .orders
            .iter()
            .filter(|o| o.url == order_url)
            .flat_map(|o| o.hosts.clone())
            .collect();
        self.acme.orders.retain(|o| o.url != order_url);
        self.acme.challenges.retain(|c| !hosts.contains(&c.host));
    }

    pub(super) fn finish_acme_order(
        &mut self,
        order_url: &str,
        certificate: &Certificate,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        if certificate.source != CertificateSource::Acme || !certificate.name.starts_with(ACME_PREFIX) {
            return Err(ApplyError::Invalid(format!(
                "certificate {:?} is not an acme certificate",
                certificate.name
            )));
        }
        // A renewal replaces the certificate of the same name in place.
        let previous = self
            .certificates
            .values()
            .find(|c| c.name == certificate.name)
            .map(|c| (c.id.clone(), c.version, c.created_ms));
        let mut cert = certificate.clone();
        if let Some((id, version, created_ms)) = &previous {
            self.certificates.remove(id);
            changes.push(change(ObjectKind::Certificate, Action::Removed, id, &cert.name));
            cert.version = version + 1;
            cert.created_ms = *created_ms;
        }
        changes.push(change(ObjectKind::Certificate, Action::Created, &cert.id, &cert.name));
        self.certificates.insert(cert.id.clone(), cert);
        self.drop_order(order_url);
        changes.push(acme_change());
        Ok(())
    }

    pub(super) fn drop_acme_order(&mut self, order_url: &str, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        self.drop_order(order_url);
        changes.push(acme_change());
        Ok(())
    }
}

fn acme_change() -> Change {
    change(ObjectKind::Acme, Action::Updated, "acme", "")
}

#[cfg(test)]
mod tests {
    use crate::model::ingress::{Certificate, CertificateSource, Ingress, IngressSpec, NodeIngress, RouteTls};
    use crate::model::parse_publish;
    use crate::store::fixtures::service;
    use crate::store::{ApplyError, Command, IngressPortFlag, ObjectKind, Rules, State, User};

    fn route(id: &str, name: &str, host: &str, path: &str, svc: &str) -> Ingress {
        Ingress {
            id: id.into(),
            name: name.into(),
            spec: IngressSpec {
                host: host.into(),
                path: path.into(),
                service: svc.into(),
                ..Default::default()
            },
            version: 1,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn cert(id: &str, name: &str) -> Certificate {
        Certificate {
            id: id.into(),
            name: name.into(),
            cert_pem: String::new(),
            key_sealed: vec![1, 2, 3],
            hosts: vec!["shop.example.com".into()],
            not_before_ms: 0,
            not_after_ms: 1,
            source: CertificateSource::Uploaded,
            version: 1,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn ok(s: &mut State, cmd: Command) {
        s.apply(&cmd, &mut vec![])
            .unwrap_or_else(|e| panic!("{}: {e}", cmd.kind()));
    }

    fn refused(s: &mut State, cmd: Command) -> ApplyError {
        let before = s.clone();
        let mut changes = vec![];
        let e = s.apply(&cmd, &mut changes).unwrap_err();
        assert!(
            *s == before && changes.is_empty(),
            "a refused {} changed the state",
            cmd.kind()
        );
        e
    }

    fn state() -> State {
        let mut s = State::default();
        let mut web = service("s1", "web");
        web.spec.ports = vec![parse_publish("publish", "8080:80").unwrap()];
        ok(
            &mut s,
            Command::CreateService {
                service: web,
                rules: Rules::CURRENT,
            },
        );
        s
    }

    #[test]
    fn routes_name_an_existing_service_and_certificate_and_own_their_host_and_path() {
        let mut s = state();
        ok(
            &mut s,
            Command::CreateIngress {
                ingress: route("i1", "shop", "shop.example.com", "/", "web"),
            },
        );
        let e = refused(
            &mut s,
            Command::CreateIngress {
                ingress: route("i2", "api", "shop.example.com", "/api", "nope"),
            },
        );
        assert!(e.to_string().starts_with("service: service \"nope\" not found"), "{e}");
        let e = refused(
            &mut s,
            Command::CreateIngress {
                ingress: route("i2", "dup", "shop.example.com", "/", "web"),
            },
        );
        assert_eq!(
            e.to_string(),
            "path: shop.example.com/ is already routed by ingress \"shop\""
        );
        let e = refused(
            &mut s,
            Command::CreateIngress {
                ingress: route("i2", "shop", "other.com", "/", "web"),
            },
        );
        assert!(matches!(e, ApplyError::AlreadyExists(_)), "{e}");
        let mut bad = route("i2", "bad", "Shop.com", "/", "web");
        assert!(refused(&mut s, Command::CreateIngress { ingress: bad.clone() })
            .to_string()
            .starts_with("host: "));
        bad.spec.host = "tls.example.com".into();
        bad.spec.tls = RouteTls::Certificate("missing".into());
        assert!(refused(&mut s, Command::CreateIngress { ingress: bad.clone() })
            .to_string()
            .starts_with("tls: certificate \"missing\" not found"));

        // With the certificate uploaded, the route takes it; the certificate then stays.
        ok(
            &mut s,
            Command::CreateCertificate {
                certificate: cert("c1", "missing"),
            },
        );
        ok(&mut s, Command::CreateIngress { ingress: bad });
        let e = refused(&mut s, Command::RemoveCertificate { id: "c1".into() });
        assert_eq!(
            e,
            ApplyError::InUse {
                kind: ObjectKind::Certificate,
                name: "missing".into(),
                user: User::Ingress("bad".into())
            }
        );
        assert!(matches!(
            refused(
                &mut s,
                Command::CreateCertificate {
                    certificate: cert("c2", "acme")
                }
            ),
            ApplyError::Invalid(_)
        ));

        // Updates: optimistic concurrency, and the same rules.
        let mut spec = s.ingresses["i1"].spec.clone();
        spec.path = "/shop".into();
        let stale = Command::UpdateIngress {
            id: "i1".into(),
            expected_version: 0,
            spec: spec.clone(),
            at_ms: 5,
        };
        assert!(matches!(refused(&mut s, stale), ApplyError::Stale { .. }));
        ok(
            &mut s,
            Command::UpdateIngress {
                id: "i1".into(),
                expected_version: 1,
                spec,
                at_ms: 5,
            },
        );
        assert_eq!((s.ingresses["i1"].version, s.ingresses["i1"].updated_ms), (2, 5));
        ok(&mut s, Command::RemoveIngress { id: "i2".into() });
        ok(&mut s, Command::RemoveIngress { id: "i1".into() });
        ok(&mut s, Command::RemoveCertificate { id: "c1".into() });
    }

    #[test]
    fn ingress_ports_and_published_ports_exclude_each_other() {
        let mut s = state();
        let mut n1 = crate::model::fixtures::node("n1", "n1");
        n1.ingress = Some(NodeIngress {
            http_port: 80,
            https_port: 443,
        });
        ok(&mut s, Command::AddNode { node: n1 });
        let mut api = service("s2", "api");
        api.spec.ports = vec![parse_publish("publish", "443:8443").unwrap()];
        let e = refused(
            &mut s,
            Command::CreateService {
                service: api,
                rules: Rules::CURRENT,
            },
        );
        assert_eq!(
            e.to_string(),
            "publish: port 443/tcp is where the ingress of node \"n1\" listens"
        );
        assert_eq!(e.field(), Some("publish"));

        let mut n2 = crate::model::fixtures::node("n2", "n2");
        n2.ingress = Some(NodeIngress {
            http_port: 8080,
            https_port: 8443,
        });
        let e = refused(&mut s, Command::AddNode { node: n2.clone() });
        assert_eq!(
            e,
            ApplyError::PortPublished {
                flag: IngressPortFlag::Http,
                port: 8080,
                service: "web".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "ingress-http-port: port 8080/tcp is already published by service \"web\""
        );
        n2.ingress = None;
        ok(&mut s, Command::AddNode { node: n2 });
        let set_none = || Command::SetNodeIngress {
            id: "n2".into(),
            ingress: None,
            at_ms: 1,
        };
        let set = |http_port| Command::SetNodeIngress {
            id: "n2".into(),
            ingress: Some(NodeIngress {
                http_port,
                https_port: 8443,
            }),
            at_ms: 1,
        };
        assert!(matches!(refused(&mut s, set(8080)), ApplyError::PortPublished { .. }));
        ok(&mut s, set(8081));
        assert_eq!(s.nodes["n2"].ingress.unwrap().http_port, 8081);
        // `daemon --ingress` only seeds: the record set above stays.
        let seed = |http_port| Command::SeedNodeIngress {
            id: "n2".into(),
            ingress: NodeIngress {
                http_port,
                https_port: 8443,
            },
            at_ms: 2,
        };
        ok(&mut s, seed(9000));
        assert_eq!(s.nodes["n2"].ingress.unwrap().http_port, 8081);
        ok(&mut s, set_none());
        ok(&mut s, seed(9000));
        assert_eq!(s.nodes["n2"].ingress.unwrap().http_port, 9000);
    }

    #[test]
    fn acme_orders_finish_into_a_certificate_that_renewal_replaces() {
        let mut s = state();
        let order = crate::model::ingress::AcmeOrder {
            certificate: "acme-shop.example.com".into(),
            hosts: vec!["shop.example.com".into()],
            url: "https://ca/order/1".into(),
            started_ms: 1,
        };
        ok(&mut s, Command::BeginAcmeOrder { order: order.clone() });
        ok(
            &mut s,
            Command::PublishAcmeChallenges {
                challenges: vec![crate::model::ingress::AcmeChallenge {
                    token: "t".into(),
                    key_authorization: "t.k".into(),
                    host: "shop.example.com".into(),
                    created_ms: 1,
                }],
            },
        );
        assert_eq!(s.acme.challenges.len(), 1);
        let mut c = cert("c1", "acme-shop.example.com");
        c.source = CertificateSource::Acme;
        ok(
            &mut s,
            Command::FinishAcmeOrder {
                order_url: order.url.clone(),
                certificate: c.clone(),
            },
        );
        assert!(s.acme.orders.is_empty() && s.acme.challenges.is_empty());
        c.id = "c2".into();
        ok(&mut s, Command::BeginAcmeOrder { order: order.clone() });
        ok(
            &mut s,
            Command::FinishAcmeOrder {
                order_url: order.url,
                certificate: c,
            },
        );
        assert_eq!(s.certificates.len(), 1);
        assert_eq!(s.certificates["c2"].version, 2);
    }
}
