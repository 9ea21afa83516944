//! A node's data-plane status on the wire, as the API shows it.

use warren_proto::v1 as pb;

/// A node's data-plane status as the API shows it (None: `--dataplane none`).
pub fn dataplane_to_pb(node_name: &str, st: Option<&crate::dataplane::DataplaneStatus>) -> pb::NodeDataplane {
    let Some(st) = st else {
        return pb::NodeDataplane {
            node_name: node_name.to_string(),
            ..Default::default()
        };
    };
    pb::NodeDataplane {
        node_name: node_name.to_string(),
        enabled: true,
        programs: st
            .programs
            .iter()
            .map(|p| pb::DataplaneProgram {
                program: p.program.clone(),
                target: p.target.clone(),
                adopted: p.adopted,
            })
            .collect(),
        maps: st
            .maps
            .iter()
            .map(|m| pb::DataplaneMap {
                name: m.name.clone(),
                entries: m.entries,
                capacity: m.capacity,
            })
            .collect(),
        sock_destroy: st.sock_destroy,
        services: st.services.len() as u64,
        backends: st.backends.len() as u64,
        connections: st.services.iter().map(|s| s.connections).sum(),
        drops: st.services.iter().map(|s| s.drops.total()).sum(),
        errors: st.errors.clone(),
        mesh: None,
    }
}
