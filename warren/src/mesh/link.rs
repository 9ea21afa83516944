//! The kernel side of the mesh interface besides WireGuard itself: its MTU and
//! link state, and the mesh's routes in the main table (each peer's task subnet
//! via the interface, and a `prohibit` route for the rest of the cluster CIDR),
//! through rtnetlink behind the [`MeshLink`] seam; [`FakeLink`] for unit tests.
//! Also the underlay MTU the mesh MTU derives from. Not peers or keys.

use std::net::Ipv4Addr;
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::error::MeshError;
use crate::network::netns::NetlinkConn;
use crate::network::{nl_errno, nl_io};

/// A link as the plan needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub mtu: u32,
    pub up: bool,
}

/// What a mesh route does with its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Out of the mesh interface (by index), with this preferred source.
    Dev { index: u32, src: Option<Ipv4Addr> },
    /// Refused locally: nothing in the cluster CIDR leaves in clear.
    Prohibit,
}

/// An IPv4 route of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteState {
    pub destination: Ipv4Net,
    pub protocol: u8,
    /// `None` for routes of other shapes (via a gateway, other types).
    pub target: Option<RouteTarget>,
}

/// The netlink seam of the mesh.
pub trait MeshLink: Send + Sync {
    /// The link called `name`, or `None`.
    fn link<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<LinkState>, MeshError>>;
    fn set_mtu<'a>(&'a self, name: &'a str, index: u32, mtu: u32) -> BoxFuture<'a, Result<(), MeshError>>;
    fn set_up<'a>(&'a self, name: &'a str, index: u32) -> BoxFuture<'a, Result<(), MeshError>>;
    /// The IPv4 routes of the main table.
    fn routes(&self) -> BoxFuture<'_, Result<Vec<RouteState>, MeshError>>;
    /// Adds or replaces the route to `destination`.
    fn replace_route<'a>(
        &'a self,
        link: &'a str,
        destination: Ipv4Net,
        protocol: u8,
        target: RouteTarget,
    ) -> BoxFuture<'a, Result<(), MeshError>>;
    fn delete_route<'a>(&'a self, link: &'a str, route: RouteState) -> BoxFuture<'a, Result<(), MeshError>>;
    /// Deletes the link (the kernel backend's interface); nothing if it is gone.
    fn delete_link<'a>(&'a self, name: &'a str, index: u32) -> BoxFuture<'a, Result<(), MeshError>>;
}

/// The real seam: one rtnetlink connection bound to the node's namespace.
pub struct NetlinkMeshLink {
    conn: NetlinkConn,
}

impl NetlinkMeshLink {
    /// Opens a connection in the calling thread's namespace (inside a runtime).
    pub fn here() -> Result<NetlinkMeshLink, MeshError> {
        Ok(NetlinkMeshLink {
            conn: NetlinkConn::here()?,
        })
    }

    fn h(&self) -> &rtnetlink::Handle {
        &self.conn.handle
    }

    /// The MTU of the interface that carries the default route (the underlay);
    /// `None` without a default route.
    pub async fn default_route_mtu(&self) -> Result<Option<u32>, MeshError> {
        let msgs = self.main_routes().await?;
        let oif = msgs.iter().find_map(|m| {
            (m.header.destination_prefix_length == 0)
                .then(|| {
                    m.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(i) => Some(*i),
                        _ => None,
                    })
                })
                .flatten()
        });
        let Some(oif) = oif else { return Ok(None) };
        let link: Option<LinkMessage> = self
            .h()
            .link()
            .get()
            .match_index(oif)
            .execute()
            .try_next()
            .await
            .map_err(|e| MeshError::Link {
                op: "look up the default route's interface",
                link: format!("index {oif}"),
                source: nl_io(e),
            })?;
        Ok(link.and_then(|l| link_mtu(&l)))
    }

    async fn main_routes(&self) -> Result<Vec<RouteMessage>, MeshError> {
        let msgs: Vec<RouteMessage> = self
            .h()
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| MeshError::Link {
                op: "list routes",
                link: "(all)".into(),
                source: nl_io(e),
            })?;
        Ok(msgs
            .into_iter()
            .filter(|m| {
                let table = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(m.header.table));
                table == u32::from(RouteHeader::RT_TABLE_MAIN)
            })
            .collect())
    }
}

fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

fn route_state(m: &RouteMessage) -> Option<RouteState> {
    let dst = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let destination = Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?;
    let has_gateway = m.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(_)));
    let oif = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    let src = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::PrefSource(RouteAddress::Inet(s)) => Some(*s),
        _ => None,
    });
    let target = match (m.header.kind, oif, has_gateway) {
        (RouteType::Prohibit, _, _) => Some(RouteTarget::Prohibit),
        (RouteType::Unicast, Some(index), false) => Some(RouteTarget::Dev { index, src }),
        _ => None,
    };
    Some(RouteState {
        destination,
        protocol: u8::from(m.header.protocol),
        target,
    })
}

impl MeshLink for NetlinkMeshLink {
    fn link<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<LinkState>, MeshError>> {
        Box::pin(async move {
            match self
                .h()
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
            {
                Ok(Some(l)) => Ok(Some(LinkState {
                    index: l.header.index,
                    mtu: link_mtu(&l).unwrap_or(0),
                    up: l.header.flags.contains(LinkFlags::Up),
                })),
                Ok(None) => Ok(None),
                Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
                Err(e) => Err(MeshError::Link {
                    op: "look up",
                    link: name.to_string(),
                    source: nl_io(e),
                }),
            }
        })
    }

    fn set_mtu<'a>(&'a self, name: &'a str, index: u32, mtu: u32) -> BoxFuture<'a, Result<(), MeshError>> {
        Box::pin(async move {
            self.h()
                .link()
                .change(LinkUnspec::new_with_index(index).mtu(mtu).build())
                .execute()
                .await
                .map_err(|e| MeshError::Link {
                    op: "set mtu of",
                    link: name.to_string(),
                    source: nl_io(e),
                })
        })
    }

    fn set_up<'a>(&'a self, name: &'a str, index: u32) -> BoxFuture<'a, Result<(), MeshError>> {
        Box::pin(async move {
            self.h()
                .link()
                .change(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| MeshError::Link {
                    op: "bring up",
                    link: name.to_string(),
                    source: nl_io(e),
                })
        })
    }

    fn routes(&self) -> BoxFuture<'_, Result<Vec<RouteState>, MeshError>> {
        Box::pin(async move { Ok(self.main_routes().await?.iter().filter_map(route_state).collect()) })
    }

    fn replace_route<'a>(
        &'a self,
        link: &'a str,
        destination: Ipv4Net,
        protocol: u8,
        target: RouteTarget,
    ) -> BoxFuture<'a, Result<(), MeshError>> {
        Box::pin(async move {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(destination.network(), destination.prefix_len())
                .protocol(RouteProtocol::from(protocol));
            let msg = match target {
                RouteTarget::Dev { index, src } => {
                    let mut b = b
                        .output_interface(index)
                        .scope(RouteScope::Link)
                        .kind(RouteType::Unicast);
                    if let Some(s) = src {
                        b = b.pref_source(s);
                    }
                    b.build()
                }
                RouteTarget::Prohibit => b.scope(RouteScope::Universe).kind(RouteType::Prohibit).build(),
            };
            self.h()
                .route()
                .add(msg)
                .replace()
                .execute()
                .await
                .map_err(|e| MeshError::Route {
                    op: "add",
                    destination,
                    link: link.to_string(),
                    source: nl_io(e),
                })
        })
    }

    fn delete_route<'a>(&'a self, link: &'a str, route: RouteState) -> BoxFuture<'a, Result<(), MeshError>> {
        Box::pin(async move {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(route.destination.network(), route.destination.prefix_len())
                .protocol(RouteProtocol::from(route.protocol));
            match route.target {
                Some(RouteTarget::Prohibit) => b = b.kind(RouteType::Prohibit),
                Some(RouteTarget::Dev { index, .. }) => b = b.output_interface(index),
                None => {}
            }
            match self.h().route().del(b.build()).execute().await {
                Ok(()) => Ok(()),
                Err(e) if nl_errno(&e) == Some(libc::ESRCH) => Ok(()),
                Err(e) => Err(MeshError::Route {
                    op: "delete",
                    destination: route.destination,
                    link: link.to_string(),
                    source: nl_io(e),
                }),
            }
        })
    }

    fn delete_link<'a>(&'a self, name: &'a str, index: u32) -> BoxFuture<'a, Result<(), MeshError>> {
        Box::pin(async move {
            match self.h().link().del(index).execute().await {
                Ok(()) => Ok(()),
                Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(()),
                Err(e) => Err(MeshError::Link {
                    op: "delete",
                    link: name.to_string(),
                    source: nl_io(e),
                }),
            }
        })
    }
}

/// An in-memory link and routing table for unit tests.
#[derive(Default)]
pub struct FakeLink {
    pub link: Mutex<Option<LinkState>>,
    pub routes: Mutex<Vec<RouteState>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeLink {
    pub fn with_link(index: u32, mtu: u32) -> FakeLink {
        FakeLink {
            link: Mutex::new(Some(LinkState { index, mtu, up: false })),
            ..FakeLink::default()
        }
    }

    fn call(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
}

impl MeshLink for FakeLink {
    fn link<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<Option<LinkState>, MeshError>> {
        let l = *self.link.lock().unwrap();
        Box::pin(async move { Ok(l) })
    }

    fn set_mtu<'a>(&'a self, _name: &'a str, _index: u32, mtu: u32) -> BoxFuture<'a, Result<(), MeshError>> {
        self.call(format!("mtu {mtu}"));
        if let Some(l) = self.link.lock().unwrap().as_mut() {
            l.mtu = mtu;
        }
        Box::pin(async { Ok(()) })
    }

    fn set_up<'a>(&'a self, _name: &'a str, _index: u32) -> BoxFuture<'a, Result<(), MeshError>> {
        self.call("up".into());
        if let Some(l) = self.link.lock().unwrap().as_mut() {
            l.up = true;
        }
        Box::pin(async { Ok(()) })
    }

    fn routes(&self) -> BoxFuture<'_, Result<Vec<RouteState>, MeshError>> {
        let r = self.routes.lock().unwrap().clone();
        Box::pin(async move { Ok(r) })
    }

    fn replace_route<'a>(
        &'a self,
        _link: &'a str,
        destination: Ipv4Net,
        protocol: u8,
        target: RouteTarget,
    ) -> BoxFuture<'a, Result<(), MeshError>> {
        self.call(format!("route {destination} {target:?}"));
        let mut r = self.routes.lock().unwrap();
        r.retain(|x| x.destination != destination);
        r.push(RouteState {
            destination,
            protocol,
            target: Some(target),
        });
        Box::pin(async { Ok(()) })
    }

    fn delete_route<'a>(&'a self, _link: &'a str, route: RouteState) -> BoxFuture<'a, Result<(), MeshError>> {
        self.call(format!("delete route {}", route.destination));
        self.routes
            .lock()
            .unwrap()
            .retain(|x| x.destination != route.destination);
        Box::pin(async { Ok(()) })
    }

    fn delete_link<'a>(&'a self, _name: &'a str, _index: u32) -> BoxFuture<'a, Result<(), MeshError>> {
        self.call("delete link".into());
        *self.link.lock().unwrap() = None;
        Box::pin(async { Ok(()) })
    }
}
