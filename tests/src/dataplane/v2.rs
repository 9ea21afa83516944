//! A node data plane as the release with map layout v2 left it, for upgrade
//! tests: the v2 object (`warren_ebpf::fixtures::v2_object`) loaded with its maps
//! pinned, its tc programs attached to the given interfaces through links pinned
//! as the v2 daemon pinned them (`link_tc_in_<iface>`, `link_tc_out_<iface>`),
//! and one published port written into the v2 maps the way the v2 daemon wrote
//! it (a Maglev table of one remote backend). Test code, not a loader.

use std::{net::Ipv4Addr, path::Path};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{
        links::FdLink,
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    EbpfLoader,
};
use warren_common::{Backend, Be16, Be32, NodeAddr, SvcKey, SvcState, SvcValue, BE_F_ACTIVE, SVC_F_NODEPORT};

/// Loads the v2 programs with their maps pinned in `bpffs_dir`, attaches the tc
/// programs to `ifaces` (of the calling thread's network namespace), and
/// publishes `port`/tcp on `node_addrs` as service `svc_id`, to `target` on the
/// remote backend `backend` (reached with SNAT). Everything stays pinned (or,
/// before tcx, attached as netlink filters) when this returns, as after the v2
/// daemon exited.
pub fn install(
    bpffs_dir: &Path,
    ifaces: &[&str],
    node_addrs: &[Ipv4Addr],
    svc_id: u32,
    port: u16,
    target: u16,
    backend: Ipv4Addr,
) {
    std::fs::create_dir_all(bpffs_dir).expect("create pin directory");
    let kernel = warren::dataplane::check_kernel().expect("kernel check");
    let one = 1u32;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(bpffs_dir)
        .override_global("warren_redirect_neigh", &one, true)
        .override_global("warren_atomics", &one, true)
        .load(warren_ebpf::fixtures::v2_object())
        .expect("load the v2 object");
    for (name, dir, t) in [
        ("warren_tc_in", "in", TcAttachType::Ingress),
        ("warren_tc_out", "out", TcAttachType::Egress),
    ] {
        let prog: &mut SchedClassifier = ebpf.program_mut(name).expect(name).try_into().expect(name);
        prog.load().unwrap_or_else(|e| panic!("load v2 {name}: {e}"));
        for iface in ifaces {
            if kernel.tcx {
                let id = prog
                    .attach_with_options(iface, t, TcAttachOptions::TcxOrder(LinkOrder::default()))
                    .unwrap_or_else(|e| panic!("attach v2 {name} to {iface}: {e}"));
                let link = FdLink::try_from(prog.take_link(id).expect("take link")).expect("fd link");
                link.pin(bpffs_dir.join(format!("link_tc_{dir}_{iface}")))
                    .expect("pin link");
            } else {
                let _ = tc::qdisc_add_clsact(iface);
                let id = prog
                    .attach_with_options(iface, t, TcAttachOptions::Netlink(NlOptions::default()))
                    .unwrap_or_else(|e| panic!("attach v2 {name} to {iface}: {e}"));
                std::mem::forget(prog.take_link(id).expect("take link"));
            }
        }
    }

    let mut svc: HashMap<MapData, SvcKey, SvcValue> =
        HashMap::try_from(ebpf.take_map("warren_svc_v1").expect("svc map")).expect("svc map");
    let mut state: Array<MapData, SvcState> =
        Array::try_from(ebpf.take_map("warren_state_v2").expect("state map")).expect("state map");
    let mut slot: Array<MapData, u32> =
        Array::try_from(ebpf.take_map("warren_slot_v2").expect("slot map")).expect("slot map");
    let mut be: Array<MapData, Backend> =
        Array::try_from(ebpf.take_map("warren_be_v1").expect("backend map")).expect("backend map");
    let mut naddr: HashMap<MapData, Be32, NodeAddr> =
        HashMap::try_from(ebpf.take_map("warren_naddr_v1").expect("node address map")).expect("node address map");

    for a in node_addrs {
        naddr
            .insert(Be32::from_ip(*a), NodeAddr::default(), 0)
            .expect("write node address");
    }
    // As the v2 reconciler: backend, table, state, then the address.
    let value = Backend {
        addr: Be32::from_ip(backend),
        svc_id,
        flags: BE_F_ACTIVE,
        pad: [0; 3],
    };
    be.set(1, value, 0).expect("write backend");
    slot.set(1, 1, 0).expect("write slot");
    let st = SvcState {
        table_all: 1,
        size_all: 1,
        backends_all: 1,
        ..Default::default()
    };
    state.set(svc_id, st, 0).expect("write state");
    let key = SvcKey {
        addr: Be32::default(),
        port: Be16::new(port),
        proto: 6,
        pad: 0,
    };
    let value = SvcValue {
        svc_id,
        target_port: Be16::new(target),
        flags: SVC_F_NODEPORT,
        pad: 0,
    };
    svc.insert(key, value, 0).expect("write svc");
}
