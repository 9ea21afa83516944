//! The name table of the service DNS: which names are Warren's and what they resolve
//! to, built from plain data (service name, VIP, task slots and addresses). Owns name
//! matching (case, search domains, `tasks.`, slots) and dnsrr rotation; not sockets,
//! records or forwarding (see `server` and `forward`).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::DnsError;

/// The longest DNS name in text form, without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;
/// The longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// The prefix that turns a service name into the list of its tasks.
const TASKS_PREFIX: &str = "tasks.";

/// The services this node answers for: an immutable snapshot, replaced as a whole by
/// [`super::DnsServer::update`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsTable {
    services: HashMap<String, ServiceEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceEntry {
    vip: Option<Ipv4Addr>,
    /// Running, healthy tasks, sorted by (slot, address) so that answers do not depend
    /// on the order the caller listed them in.
    tasks: Vec<(u64, Ipv4Addr)>,
}

/// Builds a [`DnsTable`]; every service is checked as it is added, so one bad
/// service is reported (and can be skipped) without losing the others.
#[derive(Debug, Default)]
pub struct DnsTableBuilder {
    services: HashMap<String, ServiceEntry>,
}

/// What a name in a query is, as far as the table knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A Warren name. `addrs` may be empty: the service exists but has nothing to
    /// answer with now (answered NOERROR with no records).
    Local { kind: NameKind, addrs: Vec<Ipv4Addr> },
    /// Not a Warren name: ask the upstream resolvers.
    Forward,
}

/// Which kind of Warren name matched; decides the TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// `NAME` of a service in endpoint mode `vip`: its virtual IP.
    Vip,
    /// `NAME` of a service in endpoint mode `dnsrr`: its tasks, rotated.
    Dnsrr,
    /// `tasks.NAME`: all running, healthy tasks, rotated.
    Tasks,
    /// `NAME.SLOT`: the task(s) of one replica slot.
    Slot,
}

impl DnsTable {
    pub fn builder() -> DnsTableBuilder {
        DnsTableBuilder::default()
    }

    /// The number of services in the table.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Resolves `qname` (any case, with or without the trailing dot, with or without
    /// one of `search_domains` appended). Lists of task addresses are rotated left by
    /// `rotation` (modulo their length) so that successive queries start at
    /// successive tasks.
    pub fn resolve(&self, qname: &str, search_domains: &[String], rotation: usize) -> Resolution {
        let name = qname.strip_suffix('.').unwrap_or(qname).to_ascii_lowercase();
        if name.is_empty() {
            return Resolution::Forward;
        }
        // The full name first, so that a service whose name happens to end in a search
        // domain still matches itself.
        let stripped = search_domains.iter().filter_map(|d| {
            name.strip_suffix(d.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .filter(|rest| !rest.is_empty())
        });
        for candidate in std::iter::once(name.as_str()).chain(stripped) {
            if let Some((kind, mut addrs)) = self.match_relative(candidate) {
                if matches!(kind, NameKind::Dnsrr | NameKind::Tasks) && !addrs.is_empty() {
                    let n = rotation % addrs.len();
                    addrs.rotate_left(n);
                }
                return Resolution::Local { kind, addrs };
            }
        }
        Resolution::Forward
    }

    /// Matches a lowercase name without search domain: `NAME`, `tasks.NAME`,
    /// `NAME.SLOT`, in that order (an exact service name always wins).
    fn match_relative(&self, name: &str) -> Option<(NameKind, Vec<Ipv4Addr>)> {
        if let Some(svc) = self.services.get(name) {
            return Some(match svc.vip {
                Some(vip) => (NameKind::Vip, vec![vip]),
                None => (NameKind::Dnsrr, svc.addrs(|_| true)),
            });
        }
        if let Some(svc) = name.strip_prefix(TASKS_PREFIX).and_then(|n| self.services.get(n)) {
            return Some((NameKind::Tasks, svc.addrs(|_| true)));
        }
        let (base, slot) = name.rsplit_once('.')?;
        if slot.is_empty() || !slot.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Slot 0 marks tasks without a slot (global services): no `NAME.0`.
        let slot: u64 = slot.parse().ok().filter(|s| *s > 0)?;
        let svc = self.services.get(base)?;
        Some((NameKind::Slot, svc.addrs(|s| s == slot)))
    }
}

impl ServiceEntry {
    fn addrs(&self, slot: impl Fn(u64) -> bool) -> Vec<Ipv4Addr> {
        self.tasks.iter().filter(|(s, _)| slot(*s)).map(|(_, a)| *a).collect()
    }
}

impl DnsTableBuilder {
    /// Adds a service. `vip: Some(_)` is endpoint mode `vip` (the name answers the
    /// VIP), `None` is `dnsrr` (the name answers the task addresses). `tasks` are the
    /// service's running, healthy tasks as (slot, address); slots count from 1, slot 0
    /// means "no slot" (tasks of global services) and is served only under `NAME` and
    /// `tasks.NAME`.
    ///
    /// Fails, naming the service, when the name cannot be a DNS name or is already in
    /// the table (names are case-insensitive); the builder is unchanged then.
    pub fn service(
        &mut self,
        name: &str,
        vip: Option<Ipv4Addr>,
        tasks: Vec<(u64, Ipv4Addr)>,
    ) -> Result<&mut Self, DnsError> {
        let key = normalize_name(name).map_err(|e| DnsError::InvalidServiceName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        if self.services.contains_key(&key) {
            return Err(DnsError::DuplicateService { name: name.to_string() });
        }
        let mut tasks = tasks;
        tasks.sort_unstable();
        tasks.dedup();
        self.services.insert(key, ServiceEntry { vip, tasks });
        Ok(self)
    }

    pub fn build(self) -> DnsTable {
        DnsTable {
            services: self.services,
        }
    }
}

/// Why a name cannot be served.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("the name has an empty label (two dots in a row or a leading dot)")]
    EmptyLabel,
    #[error("label {0:?} is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong(String),
    #[error("character {0:?} cannot be in a DNS label")]
    BadChar(char),
}

/// Lowercases a name and checks that every label is a plain DNS label (letters,
/// digits, `-`, `_`), so that it can be matched against the labels of a query.
pub(crate) fn normalize_name(name: &str) -> Result<String, NameError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong(label.to_string()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(NameError::BadChar(c));
        }
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn search() -> Vec<String> {
        vec!["warren".into(), "svc.example.org".into()]
    }

    /// web: vip 10.99.0.1, three tasks in slots 1..3; db: dnsrr with two tasks; idle:
    /// dnsrr with none; agent: global (slot 0) with two tasks.
    fn table() -> DnsTable {
        let mut b = DnsTable::builder();
        b.service(
            "web",
            Some(ip("10.99.0.1")),
            vec![(3, ip("10.88.1.4")), (1, ip("10.88.1.2")), (2, ip("10.88.1.3"))],
        )
        .unwrap()
        .service("DB", None, vec![(1, ip("10.88.2.2")), (2, ip("10.88.2.3"))])
        .unwrap()
        .service("idle", None, vec![])
        .unwrap()
        .service("agent", None, vec![(0, ip("10.88.3.2")), (0, ip("10.88.4.2"))])
        .unwrap();
        b.build()
    }

    fn local(kind: NameKind, addrs: &[&str]) -> Resolution {
        Resolution::Local {
            kind,
            addrs: addrs.iter().map(|a| ip(a)).collect(),
        }
    }

    #[test]
    fn vip_service_answers_its_vip_in_any_case_and_with_trailing_dot() {
        let t = table();
        for q in ["web", "web.", "WEB", "Web."] {
            assert_eq!(t.resolve(q, &search(), 0), local(NameKind::Vip, &["10.99.0.1"]), "{q}");
        }
    }

    #[test]
    fn search_domains_are_stripped_once() {
        let t = table();
        for q in ["web.warren", "web.warren.", "WEB.Warren.", "web.svc.example.org."] {
            assert_eq!(t.resolve(q, &search(), 0), local(NameKind::Vip, &["10.99.0.1"]), "{q}");
        }
        assert_eq!(
            t.resolve("tasks.db.warren", &search(), 0),
            local(NameKind::Tasks, &["10.88.2.2", "10.88.2.3"])
        );
        assert_eq!(
            t.resolve("web.2.warren.", &search(), 0),
            local(NameKind::Slot, &["10.88.1.3"])
        );
        // Not a search domain, or the domain alone: not ours.
        assert_eq!(t.resolve("web.example.org", &search(), 0), Resolution::Forward);
        assert_eq!(t.resolve("warren.", &search(), 0), Resolution::Forward);
        assert_eq!(t.resolve("web.warren.warren", &search(), 0), Resolution::Forward);
        // Without search domains configured only the bare names match.
        assert_eq!(t.resolve("web.warren", &[], 0), Resolution::Forward);
    }

    #[test]
    fn dnsrr_service_answers_all_tasks_rotated_per_query() {
        let t = table();
        assert_eq!(
            t.resolve("db", &search(), 0),
            local(NameKind::Dnsrr, &["10.88.2.2", "10.88.2.3"])
        );
        assert_eq!(
            t.resolve("db", &search(), 1),
            local(NameKind::Dnsrr, &["10.88.2.3", "10.88.2.2"])
        );
        assert_eq!(
            t.resolve("db", &search(), 2),
            local(NameKind::Dnsrr, &["10.88.2.2", "10.88.2.3"])
        );
        // Every task comes first once in as many queries as there are tasks.
        let firsts: std::collections::BTreeSet<Ipv4Addr> = (0..3)
            .map(|r| match t.resolve("tasks.web", &search(), r) {
                Resolution::Local { addrs, .. } => addrs[0],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn tasks_prefix_lists_every_task_in_slot_order() {
        let t = table();
        assert_eq!(
            t.resolve("tasks.web", &search(), 0),
            local(NameKind::Tasks, &["10.88.1.2", "10.88.1.3", "10.88.1.4"])
        );
        assert_eq!(
            t.resolve("TASKS.agent.", &search(), 0),
            local(NameKind::Tasks, &["10.88.3.2", "10.88.4.2"])
        );
        assert_eq!(t.resolve("tasks.nope", &search(), 0), Resolution::Forward);
        assert_eq!(t.resolve("tasks", &search(), 0), Resolution::Forward);
    }

    #[test]
    fn slot_names_answer_one_replica() {
        let t = table();
        assert_eq!(t.resolve("web.1", &search(), 0), local(NameKind::Slot, &["10.88.1.2"]));
        assert_eq!(t.resolve("web.3", &search(), 7), local(NameKind::Slot, &["10.88.1.4"]));
        assert_eq!(t.resolve("db.2", &search(), 0), local(NameKind::Slot, &["10.88.2.3"]));
        // A slot with no running task: the service exists, so no data rather than
        // forwarding.
        assert_eq!(t.resolve("web.9", &search(), 0), local(NameKind::Slot, &[]));
        // Slot 0 (global services) and things that only look like slots are not ours.
        for q in [
            "agent.0",
            "web.0",
            "web.+1",
            "web.1a",
            "web.-1",
            "web.99999999999999999999999",
        ] {
            assert_eq!(t.resolve(q, &search(), 0), Resolution::Forward, "{q}");
        }
    }

    #[test]
    fn existing_service_without_tasks_is_local_and_empty() {
        let t = table();
        assert_eq!(t.resolve("idle", &search(), 3), local(NameKind::Dnsrr, &[]));
        assert_eq!(t.resolve("tasks.idle", &search(), 3), local(NameKind::Tasks, &[]));
    }

    #[test]
    fn unknown_names_are_forwarded() {
        let t = table();
        for q in [
            "example.com",
            "example.com.",
            "www",
            "webx",
            "xweb",
            "tasks.",
            ".",
            "",
            "db.x",
        ] {
            assert_eq!(t.resolve(q, &search(), 0), Resolution::Forward, "{q:?}");
        }
        assert_eq!(DnsTable::default().resolve("web", &search(), 0), Resolution::Forward);
    }

    #[test]
    fn exact_service_name_wins_over_patterns() {
        let mut b = DnsTable::builder();
        b.service("tasks.web", Some(ip("10.99.0.7")), vec![])
            .unwrap()
            .service("web", Some(ip("10.99.0.1")), vec![(1, ip("10.88.1.2"))])
            .unwrap()
            .service("web.1", Some(ip("10.99.0.8")), vec![])
            .unwrap();
        let t = b.build();
        assert_eq!(t.resolve("tasks.web", &[], 0), local(NameKind::Vip, &["10.99.0.7"]));
        assert_eq!(t.resolve("web.1", &[], 0), local(NameKind::Vip, &["10.99.0.8"]));
        assert_eq!(t.resolve("web.2", &[], 0), local(NameKind::Slot, &[]));
    }

    #[test]
    fn dotted_service_names_match_with_all_patterns() {
        let mut b = DnsTable::builder();
        b.service("shop.api", None, vec![(1, ip("10.88.5.2")), (2, ip("10.88.5.3"))])
            .unwrap();
        let t = b.build();
        assert_eq!(
            t.resolve("shop.api.warren.", &search(), 0),
            local(NameKind::Dnsrr, &["10.88.5.2", "10.88.5.3"])
        );
        assert_eq!(
            t.resolve("tasks.shop.api", &search(), 1),
            local(NameKind::Tasks, &["10.88.5.3", "10.88.5.2"])
        );
        assert_eq!(
            t.resolve("shop.api.2", &search(), 0),
            local(NameKind::Slot, &["10.88.5.3"])
        );
    }

    #[test]
    fn bad_service_names_are_rejected_naming_the_service() {
        let mut b = DnsTable::builder();
        b.service("web", None, vec![]).unwrap();
        let cases = [
            ("", "dns service \"\": the name is empty"),
            (
                "a..b",
                "dns service \"a..b\": the name has an empty label (two dots in a row or a leading dot)",
            ),
            ("we b", "dns service \"we b\": character ' ' cannot be in a DNS label"),
            (
                "Web",
                "dns service \"Web\": already in the table (names are case-insensitive)",
            ),
        ];
        for (name, msg) in cases {
            let err = b.service(name, None, vec![]).unwrap_err();
            assert_eq!(err.to_string(), msg);
        }
        let long = "a".repeat(64);
        let err = b.service(&long, None, vec![]).unwrap_err();
        assert!(err.to_string().contains("is longer than 63 characters"), "{err}");
        // The failures left the builder as it was.
        assert_eq!(b.build().len(), 1);
    }

    #[test]
    fn task_order_from_the_caller_does_not_matter() {
        let mut a = DnsTable::builder();
        a.service("x", None, vec![(2, ip("10.0.0.3")), (1, ip("10.0.0.2"))])
            .unwrap();
        let mut b = DnsTable::builder();
        b.service("x", None, vec![(1, ip("10.0.0.2")), (2, ip("10.0.0.3"))])
            .unwrap();
        assert_eq!(a.build(), b.build());
    }
}
