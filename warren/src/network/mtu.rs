//! The MTU of task interfaces: with the WireGuard mesh, both ends of every task's
//! veth get the mesh's MTU, so a task's TCP announces an MSS that fits the tunnel
//! and never depends on path-MTU discovery through it. Not how the MTU is derived
//! (`mesh`), not the rest of the task's network (`netlink`).

use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec};

use super::error::{nl_errno, nl_io, NetworkError};

/// Sets the MTU of link `name` (seen through `h`) to `mtu` unless it has it;
/// `label` names the link and its namespace in errors.
pub(crate) async fn ensure_mtu(h: &Handle, name: &str, label: &str, mtu: u32) -> Result<(), NetworkError> {
    let err = |op, e| NetworkError::Link {
        op,
        link: label.to_string(),
        source: nl_io(e),
    };
    let link = match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(()),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => return Ok(()),
        Err(e) => return Err(err("look up", e)),
    };
    let current = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    if current == Some(mtu) {
        return Ok(());
    }
    h.link()
        .change(LinkUnspec::new_with_index(link.header.index).mtu(mtu).build())
        .execute()
        .await
        .map_err(|e| err("set mtu of", e))
}
