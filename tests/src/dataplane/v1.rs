//! A node data plane as the release with map layout v1 left it, for upgrade
//! tests: the v1 object (`warren_ebpf::fixtures::v1_object`) loaded with its maps
//! pinned and its cgroup programs attached through pinned links of the same names
//! the v1 daemon used, and one service written into the v1 maps the way the v1
//! daemon wrote them (a 256-slot table, round robin). Test code, not a loader.

use std::{net::Ipv4Addr, path::Path};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr},
    EbpfLoader,
};
use warren_common::{Backend, Be16, Be32, SvcKey, SvcValue, BE_F_ACTIVE, BE_F_LOCAL, SVC_F_WILDCARD};

/// `struct warren_svc_state` of layout v1.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SvcStateV1 {
    table_all: u32,
    table_local: u32,
    backends_all: u16,
    backends_local: u16,
    rate_per_sec: u32,
    rate_burst: u32,
}

// SAFETY: repr(C) integers, no padding.
unsafe impl aya::Pod for SvcStateV1 {}

/// Loads the v1 programs with their maps pinned in `bpffs_dir`, attaches the four
/// cgroup programs at `cgroup` through links pinned as the v1 daemon did, and
/// writes service `svc_id` at `vip` (every port, TCP and UDP, plus `port`/tcp)
/// with `backends` (all local) into the v1 maps. Everything stays pinned when
/// this returns, as after the v1 daemon exited.
pub fn install(bpffs_dir: &Path, cgroup: &Path, svc_id: u32, vip: Ipv4Addr, port: u16, backends: &[Ipv4Addr]) {
    std::fs::create_dir_all(bpffs_dir).expect("create pin directory");
    let neigh = 1u32;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(bpffs_dir)
        .override_global("warren_redirect_neigh", &neigh, true)
        .load(warren_ebpf::fixtures::v1_object())
        .expect("load the v1 object");
    let cg = std::fs::File::open(cgroup).expect("open cgroup");
    for (name, pin) in [
        ("warren_connect4", "link_connect4"),
        ("warren_sendmsg4", "link_sendmsg4"),
        ("warren_recvmsg4", "link_recvmsg4"),
        ("warren_getpeer4", "link_getpeer4"),
    ] {
        let prog: &mut CgroupSockAddr = ebpf.program_mut(name).expect(name).try_into().expect(name);
        prog.load().unwrap_or_else(|e| panic!("load v1 {name}: {e}"));
        let id = prog.attach(&cg, CgroupAttachMode::Single).expect("attach");
        let link = FdLink::try_from(prog.take_link(id).expect("take link")).expect("fd link");
        link.pin(bpffs_dir.join(pin)).expect("pin link");
    }

    let mut svc: HashMap<MapData, SvcKey, SvcValue> =
        HashMap::try_from(ebpf.take_map("warren_svc_v1").expect("svc map")).expect("svc map");
    let mut state: Array<MapData, SvcStateV1> =
        Array::try_from(ebpf.take_map("warren_state_v1").expect("state map")).expect("state map");
    let mut slot: Array<MapData, u32> =
        Array::try_from(ebpf.take_map("warren_slot_v1").expect("slot map")).expect("slot map");
    let mut be: Array<MapData, Backend> =
        Array::try_from(ebpf.take_map("warren_be_v1").expect("backend map")).expect("backend map");

    // As the v1 reconciler: backends, then the table, then the state, then the
    // service addresses.
    for (i, addr) in backends.iter().enumerate() {
        let value = Backend {
            addr: Be32::from_ip(*addr),
            svc_id,
            flags: BE_F_ACTIVE | BE_F_LOCAL,
            pad: [0; 3],
        };
        be.set(i as u32 + 1, value, 0).expect("write backend");
    }
    let table = 1u32;
    for s in 0..256u32 {
        slot.set(table * 256 + s, s % backends.len() as u32 + 1, 0)
            .expect("write slot");
    }
    let n = backends.len() as u16;
    let st = SvcStateV1 {
        table_all: table,
        table_local: 0,
        backends_all: n,
        backends_local: n,
        rate_per_sec: 0,
        rate_burst: 0,
    };
    state.set(svc_id, st, 0).expect("write state");
    let key = |port: u16, proto: u8| SvcKey {
        addr: Be32::from_ip(vip),
        port: Be16::new(port),
        proto,
        pad: 0,
    };
    let value = |target: u16, flags: u8| SvcValue {
        svc_id,
        target_port: Be16::new(target),
        flags,
        pad: 0,
    };
    svc.insert(key(0, 6), value(0, SVC_F_WILDCARD), 0).expect("write svc");
    svc.insert(key(0, 17), value(0, SVC_F_WILDCARD), 0).expect("write svc");
    svc.insert(key(port, 6), value(port, 0), 0).expect("write svc");
}
