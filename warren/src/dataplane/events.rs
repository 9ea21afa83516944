//! Turns the programs' `warren_event_v1` ring buffer into `tracing` records and
//! keeps the most recent ones for [`DataplaneStatus`](super::DataplaneStatus). One
//! reader thread per open data plane, stopped when it is dropped. Counting is not
//! done here (the per-CPU counter maps are exact; events may be lost when the
//! ring is full).

use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use aya::maps::{MapData, RingBuf};
use warren_common::{Event, DROP_REASON_NAMES, EVENT_DROP};

/// How many recent drop events the status keeps.
const RECENT: usize = 256;

/// A refused connection or dropped packet, as the programs reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    pub service_id: u32,
    /// `rate_limited`, `no_backend`, `ct_full`, `snat_exhausted`, `no_route`.
    pub reason: &'static str,
    /// The client's address (0.0.0.0 for an unbound local socket).
    pub client: Ipv4Addr,
    /// The service port the client used.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Seen on the tc path (from the wire) rather than at a local socket.
    pub from_wire: bool,
}

fn decode(bytes: &[u8]) -> Option<DropEvent> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the length is checked; Event is plain data valid for any bytes.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if ev.kind != EVENT_DROP {
        return None;
    }
    Some(DropEvent {
        service_id: ev.svc_id,
        reason: DROP_REASON_NAMES
            .get(usize::from(ev.reason))
            .copied()
            .unwrap_or("unknown"),
        client: ev.addr.ip(),
        port: ev.port.get(),
        proto: ev.proto,
        from_wire: ev.source == 1,
    })
}

fn log(node: &str, e: &DropEvent) {
    let path = if e.from_wire { "tc" } else { "socket" };
    // Rate-limit drops come in floods by nature; the rest are rare and worth seeing.
    if e.reason == "rate_limited" {
        tracing::debug!(node, service_id = e.service_id, reason = e.reason, client = %e.client, port = e.port, proto = e.proto, path, "data plane drop");
    } else {
        tracing::info!(node, service_id = e.service_id, reason = e.reason, client = %e.client, port = e.port, proto = e.proto, path, "data plane drop");
    }
}

/// The reader thread and what it collected.
pub(crate) struct EventReader {
    stop: Arc<AtomicBool>,
    recent: Arc<Mutex<VecDeque<DropEvent>>>,
    thread: Option<JoinHandle<()>>,
}

impl EventReader {
    pub(crate) fn start(node: String, mut ring: RingBuf<MapData>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let recent = Arc::new(Mutex::new(VecDeque::with_capacity(RECENT)));
        let thread = {
            let (stop, recent) = (stop.clone(), recent.clone());
            std::thread::Builder::new()
                .name("warren-dp-events".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut pfd = libc::pollfd {
                            fd: ring.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // A short timeout bounds how long a drop of the data plane waits.
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut pfd, 1, 100) };
                        while let Some(item) = ring.next() {
                            if let Some(e) = decode(&item) {
                                log(&node, &e);
                                let mut r = recent.lock().unwrap_or_else(|p| p.into_inner());
                                if r.len() == RECENT {
                                    r.pop_front();
                                }
                                r.push_back(e);
                            }
                        }
                    }
                })?
        };
        Ok(Self {
            stop,
            recent,
            thread: Some(thread),
        })
    }

    pub(crate) fn recent(&self) -> Vec<DropEvent> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use warren_common::{Be16, Be32};

    use super::*;

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) plain data.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), std::mem::size_of::<Event>()) }.to_vec()
    }

    #[test]
    fn drop_events_decode() {
        let ev = Event {
            kind: EVENT_DROP,
            svc_id: 7,
            addr: Be32::from_ip(Ipv4Addr::new(10, 0, 0, 9)),
            port: Be16::new(8080),
            proto: 6,
            reason: warren_common::DROP_RATE_LIMITED as u8,
            source: 1,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes(&ev)),
            Some(DropEvent {
                service_id: 7,
                reason: "rate_limited",
                client: Ipv4Addr::new(10, 0, 0, 9),
                port: 8080,
                proto: 6,
                from_wire: true,
            })
        );
        assert_eq!(decode(&bytes(&ev)[..10]), None, "short records are ignored");
        let other = Event { kind: 99, ..ev };
        assert_eq!(decode(&bytes(&other)), None, "unknown kinds are ignored");
    }
}
