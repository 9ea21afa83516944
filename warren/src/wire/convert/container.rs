//! A service's container options (hostname, init, read-only root, capabilities,
//! ulimits, sysctls, pids limit, DNS servers) on the wire, in both directions.

use crate::model::{ContainerOptions, Ulimit, ValidationError};
use warren_proto::v1 as pb;

pub(super) fn container_to_pb(o: &ContainerOptions) -> Option<pb::ContainerOptions> {
    // Unset on the wire when nothing is set, so older peers see the spec they know.
    (*o != ContainerOptions::default()).then(|| pb::ContainerOptions {
        hostname: o.hostname.clone(),
        init: o.init,
        read_only: o.read_only,
        cap_add: o.cap_add.clone(),
        cap_drop: o.cap_drop.clone(),
        ulimits: o
            .ulimits
            .iter()
            .map(|u| pb::Ulimit {
                name: u.name.clone(),
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        sysctls: o.sysctls.clone().into_iter().collect(),
        pids_limit: o.pids_limit,
        dns: o.dns.iter().map(|a| a.to_string()).collect(),
    })
}

/// Converts; `ServiceSpec::validate` then checks the values.
pub(super) fn container_from_pb(o: Option<pb::ContainerOptions>) -> Result<ContainerOptions, ValidationError> {
    let Some(o) = o else {
        return Ok(ContainerOptions::default());
    };
    Ok(ContainerOptions {
        hostname: o.hostname,
        init: o.init,
        read_only: o.read_only,
        cap_add: o.cap_add,
        cap_drop: o.cap_drop,
        ulimits: o
            .ulimits
            .into_iter()
            .map(|u| Ulimit {
                name: u.name,
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        sysctls: o.sysctls.into_iter().collect(),
        pids_limit: o.pids_limit,
        dns: o
            .dns
            .iter()
            .map(|a| crate::model::parse_dns("dns", a))
            .collect::<Result<_, _>>()?,
    })
}
