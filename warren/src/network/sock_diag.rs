//! Counting a network namespace's accepted TCP connections with sock_diag
//! (NETLINK_SOCK_DIAG, inet_diag dumps of IPv4 and IPv6): the established
//! connections whose local port has a listening socket, i.e. the clients a task is
//! serving, wherever they come from (this node, other nodes, the ingress). The
//! task's own outgoing connections are not counted. Not what to do with the count
//! (see `worker::drain`).

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::error::NetworkError;
use super::netns::{in_netns, Ns};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, inet_diag_sockid.
const REQ_LEN: usize = 8 + 48;
/// Offset of `idiag_state` and of `id.idiag_sport` in `struct inet_diag_msg`.
const MSG_STATE: usize = 1;
const MSG_SPORT: usize = 4;

/// Established connections to a listening port inside the namespace at `netns`.
pub async fn accepted_connections(netns: &Path) -> Result<usize, NetworkError> {
    let path = netns.to_path_buf();
    in_netns(Ns::Path(path.clone()), move || {
        let (listening, established) = tally_here().map_err(|source| NetworkError::Netns {
            path,
            op: "count connections (sock_diag)",
            source,
        })?;
        Ok(established.iter().filter(|p| listening.contains(*p)).count())
    })
    .await
}

/// The calling thread's namespace: the listening ports, and the local port of
/// every established connection.
fn tally_here() -> io::Result<(BTreeSet<u16>, Vec<u16>)> {
    let mut listening = BTreeSet::new();
    let mut established = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        dump(family, |state, sport| match state {
            TCP_LISTEN => {
                listening.insert(sport);
            }
            TCP_ESTABLISHED => established.push(sport),
            _ => {}
        })?;
    }
    Ok((listening, established))
}

/// One inet_diag dump of listening and established TCP sockets of `family`;
/// `each(state, local_port)` per socket.
fn dump(family: u8, mut each: impl FnMut(u32, u16)) -> io::Result<()> {
    // SAFETY: a plain socket call; the descriptor is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut req = [0u8; NLMSG_HDR + REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let body = &mut req[NLMSG_HDR..];
    body[0] = family;
    body[1] = libc::IPPROTO_TCP as u8;
    let states: u32 = (1 << TCP_ESTABLISHED) | (1 << TCP_LISTEN);
    body[4..8].copy_from_slice(&states.to_ne_bytes());
    // SAFETY: sending a buffer we own to an open netlink socket (the kernel is the
    // default destination of an unbound netlink socket).
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, at most its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + NLMSG_HDR <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            if len < NLMSG_HDR || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated sock_diag message",
                ));
            }
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => {
                    let code =
                        i32::from_ne_bytes(buf[off + NLMSG_HDR..off + NLMSG_HDR + 4].try_into().expect("4 bytes"));
                    return Err(io::Error::from_raw_os_error(-code));
                }
                _ if kind == SOCK_DIAG_BY_FAMILY => {
                    let msg = &buf[off + NLMSG_HDR..off + len];
                    if msg.len() >= MSG_SPORT + 2 {
                        let sport = u16::from_be_bytes([msg[MSG_SPORT], msg[MSG_SPORT + 1]]);
                        each(u32::from(msg[MSG_STATE]), sport);
                    }
                }
                _ => {}
            }
            // Messages are 4-byte aligned.
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accepted_connections_but_not_outgoing_ones() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c1 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let c2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // One accepted, one still in the accept queue: both are the server's.
        let (a1, _) = l.accept().unwrap();
        let (listening, established) = tally_here().unwrap();
        assert!(listening.contains(&port));
        // Other tests of this process may hold connections too: only this port
        // counts here. The two client ends have ephemeral local ports.
        assert_eq!(established.iter().filter(|p| **p == port).count(), 2);
        let client_ports = [c1.local_addr().unwrap().port(), c2.local_addr().unwrap().port()];
        assert!(client_ports.iter().all(|p| !listening.contains(p)));
        drop((a1, c1, c2));
    }
}
