//! Property-based fuzzing (proptest; `cargo fuzz` needs a nightly toolchain this
//! project does not have) of every parser that takes input from outside: the CLI's
//! value parsers (ports, sizes, CPUs, durations, constraints, rates, mounts, ...),
//! the ingress spellings, and the protobuf → model conversions fed with arbitrary
//! bytes, as a peer or a client could send them. The property is that each returns
//! a value or a `ValidationError` naming its field, and never panics; where a parser
//! has a printer, what it accepts prints back to something it accepts again.
//! The number of cases is bounded (`FUZZ_CASES`, default 2000 per target) so the
//! suite's time stays fixed. The DNS query path is fuzzed beside its server
//! (`dns::server` tests); the YAML and compose loaders beside them.

use crate::model::{self, ingress, ValidationError};
use proptest::prelude::*;
use prost::Message;
use warren_proto::v1 as pb;

/// The cases per target, from `FUZZ_CASES`; every fuzz test reads it here.
pub(crate) fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings built from the characters these grammars use, so that cases get past
/// the first character often enough to reach the deeper branches.
fn spelling() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-zA-Z:=,./_*+%@ -]{0,40}",
        "[0-9]{0,12}[kKmMgGtTbBiI]{0,3}",
        "[0-9]{1,6}(:[0-9]{1,6})?(/(tcp|udp|sctp|x))?",
        "(published|target|mode|protocol|src|source|dst|target|type|readonly|ro)=[a-z0-9/]{0,12}(,[a-z]+=[a-z0-9/]{0,8}){0,3}",
        "(node|engine)\\.(labels\\.)?[a-z]{0,8} ?(==|!=|=) ?[a-z0-9]{0,8}",
        any::<String>(),
    ]
}

/// The error of a parser names its field (the flag's name), as the CLI shows it.
fn names_field<T>(field: &str, r: Result<T, ValidationError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert_eq!(e.field.as_str(), field, "error {} names another field", e);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cli_value_parsers_never_panic_and_name_their_field(s in spelling()) {
        names_field("memory", model::parse_size("memory", &s))?;
        names_field("cpus", model::parse_cpus("cpus", &s))?;
        names_field("env", model::parse_key_value("env", &s))?;
        names_field("constraint", model::Constraint::parse("constraint", &s))?;
        names_field("publish", model::parse_publish("publish", &s))?;
        names_field("rate-limit", model::parse_rate("rate-limit", &s))?;
        names_field("mount", model::Mount::parse("mount", &s))?;
        names_field("secret", model::SecretRef::parse("secret", &s))?;
        names_field("health-http", model::parse_health_http("health-http", &s))?;
        names_field("stop-grace-period", model::parse_duration("stop-grace-period", &s))?;
        names_field("stop-signal", model::parse_signal("stop-signal", &s))?;
        names_field("ulimit", model::Ulimit::parse("ulimit", &s))?;
        names_field("sysctl", model::parse_sysctl("sysctl", &s))?;
        names_field("dns", model::parse_dns("dns", &s))?;
        names_field("cap-add", model::parse_capability("cap-add", &s))?;
        names_field("endpoint-mode", model::EndpointMode::parse("endpoint-mode", &s))?;
        names_field("availability", model::Availability::parse("availability", &s))?;
        names_field("restart-condition", model::RestartCondition::parse("restart-condition", &s))?;
        names_field("update-failure-action", model::FailureAction::parse("update-failure-action", &s))?;
        names_field("update-order", model::UpdateOrder::parse("update-order", &s))?;
        let _ = model::parse_env_file("env-file", &s, |_| None);
    }

    #[test]
    fn ingress_spellings_never_panic_and_name_their_field(s in spelling()) {
        names_field("host", ingress::parse_host("host", &s))?;
        names_field("path", ingress::parse_path("path", &s))?;
        names_field("service", ingress::parse_service_target("service", &s))?;
        names_field("allow", ingress::parse_cidr("allow", &s))?;
        names_field("header-rm", ingress::parse_header_name("header-rm", &s))?;
        names_field("tls", ingress::RouteTls::parse("tls", &s))?;
        names_field("rewrite", ingress::Rewrite::parse("rewrite", &s))?;
        names_field("header-add", ingress::HeaderAdd::parse("header-add", &s))?;
    }

    #[test]
    fn sizes_that_parse_print_back_to_the_same_value(n in 0i64..(1 << 50), unit in prop::sample::select(vec!["", "b", "k", "kb", "m", "mb", "g", "gb"])) {
        let s = format!("{n}{unit}");
        if let Ok(v) = model::parse_size("memory", &s) {
            prop_assert_eq!(model::parse_size("memory", &v.to_string()).ok(), Some(v));
        }
    }

    #[test]
    fn published_ports_that_parse_parse_again_from_their_long_form(p in 1u16..=65535, t in 1u16..=65535, udp in any::<bool>()) {
        let short = format!("{p}:{t}{}", if udp { "/udp" } else { "" });
        let a = model::parse_publish("publish", &short).unwrap();
        let long = format!("published={p},target={t},protocol={}", if udp { "udp" } else { "tcp" });
        let b = model::parse_publish("publish", &long).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn protobuf_specs_from_arbitrary_bytes_convert_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(spec) = pb::ServiceSpec::decode(bytes.as_slice()) {
            let _ = crate::wire::convert::spec_from_pb(spec);
        }
        if let Ok(svc) = pb::Service::decode(bytes.as_slice()) {
            let _ = crate::wire::convert::service_from_pb(svc);
        }
        if let Ok(task) = pb::Task::decode(bytes.as_slice()) {
            let _ = crate::wire::convert::task_from_pb(task);
        }
        if let Ok(node) = pb::Node::decode(bytes.as_slice()) {
            let _ = crate::wire::convert::node_from_pb(node);
        }
        if let Ok(ep) = pb::ServiceEndpoints::decode(bytes.as_slice()) {
            let _ = crate::wire::convert::endpoints_from_pb(ep);
        }
        if let Ok(c) = pb::UpdateConfig::decode(bytes.as_slice()) {
            let _ = crate::wire::convert::update_config_from_pb("update", c);
        }
        if let Ok(b) = pb::TaskStatusBatch::decode(bytes.as_slice()) {
            let _ = crate::wire::convert::reports_from_pb(b.reports);
        }
    }

    #[test]
    fn structured_protobuf_specs_convert_or_name_a_field(
        image in "[a-z0-9:./-]{0,20}",
        ports in prop::collection::vec((any::<u32>(), any::<u32>(), any::<i32>()), 0..4),
        env in prop::collection::vec(any::<String>(), 0..3),
        replicas in any::<u64>(),
    ) {
        let spec = pb::ServiceSpec {
            image,
            env,
            replicas,
            ports: ports
                .into_iter()
                .map(|(published, target, protocol)| pb::PortConfig {
                    published,
                    target,
                    protocol,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        if let Err(e) = crate::wire::convert::spec_from_pb(spec) {
            prop_assert!(!e.field.is_empty(), "an error without a field: {}", e);
        }
    }
}
