//! Small rtnetlink queries and edits that the node and task setup share: a link
//! by name and its kind, controller and peer; a link's IPv4 addresses; the main
//! table's IPv4 routes. Each names the link or route in its error.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::error::{nl_errno, nl_io, NetworkError};

/// The link called `name`, or `None`.
pub(super) async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetworkError> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(NetworkError::Link {
            op: "look up",
            link: name.to_string(),
            source: nl_io(e),
        }),
    }
}

pub(super) async fn del_link(h: &Handle, index: u32, name: &str) -> Result<(), NetworkError> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(NetworkError::Link {
            op: "delete",
            link: name.to_string(),
            source: nl_io(e),
        }),
    }
}

pub(super) fn link_kind(l: &LinkMessage) -> Option<InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

pub(super) fn link_controller(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// IFLA_LINK: for a veth, the index of its peer (in the peer's namespace).
pub(super) fn link_peer(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

pub(super) fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The IPv4 addresses on link `index`, with the messages that delete them.
pub(super) async fn ipv4_addrs(
    h: &Handle,
    index: u32,
    link: &str,
) -> Result<Vec<(Ipv4Addr, u8, AddressMessage)>, NetworkError> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::Address {
            op: "list",
            address: "(all)".into(),
            link: link.to_string(),
            source: nl_io(e),
        })?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let a = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
                _ => None,
            })?;
            Some((a, m.header.prefix_len, m))
        })
        .collect())
}

/// Adds `address/prefix_len` to link `index` unless it is there already.
pub(super) async fn set_ipv4_addr(
    h: &Handle,
    index: u32,
    link: &str,
    address: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetworkError> {
    if ipv4_addrs(h, index, link)
        .await?
        .iter()
        .any(|(a, p, _)| (*a, *p) == (address, prefix_len))
    {
        return Ok(());
    }
    h.address()
        .add(index, IpAddr::V4(address), prefix_len)
        .replace()
        .execute()
        .await
        .map_err(|e| NetworkError::Address {
            op: "add",
            address: format!("{address}/{prefix_len}"),
            link: link.to_string(),
            source: nl_io(e),
        })
}

pub(super) struct Ipv4Route {
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub protocol: RouteProtocol,
}

/// The IPv4 routes of the main table.
pub(super) async fn main_ipv4_routes(h: &Handle) -> Result<Vec<Ipv4Route>, NetworkError> {
    let msgs: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::Route {
            op: "list",
            destination: "(all)".into(),
            via: "(any)".into(),
            source: nl_io(e),
        })?;
    let mut out = Vec::new();
    for m in msgs {
        let table = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table));
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            continue;
        }
        let dst = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let Ok(destination) = Ipv4Net::new(dst, m.header.destination_prefix_length) else {
            continue;
        };
        let gateway = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
            _ => None,
        });
        out.push(Ipv4Route {
            destination,
            gateway,
            protocol: m.header.protocol,
        });
    }
    Ok(out)
}
