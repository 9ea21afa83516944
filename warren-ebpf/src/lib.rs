//! Warren's eBPF objects, compiled from C by this crate's build script and embedded
//! as byte arrays for `aya` to load. The programs themselves live in `src/*.bpf.c`
//! and their shared structs in `include/`; loading and attaching is
//! `warren::dataplane`, not this crate. Also here: reading struct layouts from an
//! object's BTF (for the C/Rust layout test), patching the kfunc call of the
//! socket-destroy programs, and the programs' helper-free arithmetic compiled for
//! the host ([`host`], for unit tests).

pub mod btf;
pub mod host;

/// Objects of earlier releases, for upgrade tests only.
pub mod fixtures {
    static V1_OBJ: &super::Aligned<[u8]> = &super::Aligned {
        bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/warren_v1.bpf.o")),
    };

    /// The main object of map layout v1 as released (`fixtures/v1`): maps
    /// `warren_*_v1`, programs `warren_connect4`, `warren_sendmsg4`,
    /// `warren_recvmsg4`, `warren_getpeer4`, `warren_tc_in`, `warren_tc_out`.
    pub fn v1_object() -> &'static [u8] {
        &V1_OBJ.bytes
    }

    static V2_OBJ: &super::Aligned<[u8]> = &super::Aligned {
        bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/warren_v2.bpf.o")),
    };

    /// The main object of map layout v2 as released (`fixtures/v2`): Maglev
    /// tables, the LRU connection tracking `warren_ct_v1`, counters
    /// `warren_svcc_v1`; every program of today's object.
    pub fn v2_object() -> &'static [u8] {
        &V2_OBJ.bytes
    }
}

/// Keeps an embedded object 8-byte aligned, as the ELF parser expects.
#[repr(C, align(8))]
struct Aligned<B: ?Sized> {
    bytes: B,
}

static WARREN_OBJ: &Aligned<[u8]> = &Aligned {
    bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/warren.bpf.o")),
};

static SOCK_DESTROY_OBJ: &Aligned<[u8]> = &Aligned {
    bytes: *include_bytes!(concat!(env!("OUT_DIR"), "/sock_destroy.bpf.o")),
};

/// The main object: socket load balancing (`warren_connect4`, `warren_sendmsg4`,
/// `warren_recvmsg4`, `warren_getpeer4` and their `6` twins for IPv4-mapped
/// addresses), the published-port bind guard (`warren_post_bind4`,
/// `warren_post_bind6`) and tc (`warren_tc_in`, `warren_tc_out`).
pub fn warren_object() -> &'static [u8] {
    &WARREN_OBJ.bytes
}

/// The socket-destroy object (`warren_kill_tcp`, `warren_kill_udp`) as compiled,
/// with the kfunc placeholder still in place; see [`sock_destroy_object`].
pub fn sock_destroy_object_raw() -> &'static [u8] {
    &SOCK_DESTROY_OBJ.bytes
}

/// Names of the programs in [`warren_object`].
pub mod programs {
    /// `cgroup/connect4`
    pub const CONNECT4: &str = "warren_connect4";
    /// `cgroup/sendmsg4`
    pub const SENDMSG4: &str = "warren_sendmsg4";
    /// `cgroup/recvmsg4`
    pub const RECVMSG4: &str = "warren_recvmsg4";
    /// `cgroup/getpeername4`
    pub const GETPEERNAME4: &str = "warren_getpeer4";
    /// `cgroup/connect6` (IPv4-mapped destinations)
    pub const CONNECT6: &str = "warren_connect6";
    /// `cgroup/sendmsg6`
    pub const SENDMSG6: &str = "warren_sendmsg6";
    /// `cgroup/recvmsg6`
    pub const RECVMSG6: &str = "warren_recvmsg6";
    /// `cgroup/getpeername6`
    pub const GETPEERNAME6: &str = "warren_getpeer6";
    /// `cgroup/post_bind4`
    pub const POST_BIND4: &str = "warren_post_bind4";
    /// `cgroup/post_bind6`
    pub const POST_BIND6: &str = "warren_post_bind6";
    /// `sockops`: connection outcomes per backend
    pub const SOCKOPS: &str = "warren_sockops";
    /// tc ingress
    pub const TC_INGRESS: &str = "warren_tc_in";
    /// tc egress
    pub const TC_EGRESS: &str = "warren_tc_out";
    /// `iter/tcp` in the socket-destroy object
    pub const KILL_TCP: &str = "warren_kill_tcp";
    /// `iter/udp` in the socket-destroy object
    pub const KILL_UDP: &str = "warren_kill_udp";
}

/// The immediate of the placeholder kfunc call in `sock_destroy.bpf.c`
/// (`WARREN_KFUNC_MAGIC`).
pub const SOCK_DESTROY_KFUNC_MAGIC: u32 = 0x0bad_c0de;

/// The placeholder instruction: `call` (0x85) with src_reg = BPF_PSEUDO_KFUNC_CALL.
fn kfunc_placeholder() -> [u8; 8] {
    let mut insn = [0x85, 0x20, 0, 0, 0, 0, 0, 0];
    insn[4..].copy_from_slice(&SOCK_DESTROY_KFUNC_MAGIC.to_le_bytes());
    insn
}

/// The socket-destroy object with every placeholder kfunc call pointed at
/// `bpf_sock_destroy`'s id in the running kernel's BTF (`btf_id`), and how many
/// calls were patched. The aya version in use does not resolve `__ksym` externs,
/// so the call is emitted as raw bytes and fixed up here.
pub fn sock_destroy_object(btf_id: u32) -> (Vec<u8>, usize) {
    let mut obj = sock_destroy_object_raw().to_vec();
    let pattern = kfunc_placeholder();
    let mut patched = 0;
    let mut i = 0;
    while i + 8 <= obj.len() {
        if obj[i..i + 8] == pattern {
            obj[i + 4..i + 8].copy_from_slice(&btf_id.to_le_bytes());
            patched += 1;
            i += 8;
        } else {
            i += 1;
        }
    }
    (obj, patched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_embedded_elf() {
        for obj in [warren_object(), sock_destroy_object_raw()] {
            assert_eq!(&obj[..4], b"\x7fELF");
            assert_eq!(obj.as_ptr() as usize % 8, 0);
        }
    }

    #[test]
    fn kfunc_placeholders_are_patched() {
        let (obj, n) = sock_destroy_object(4242);
        assert_eq!(n, 2, "one bpf_sock_destroy call per iterator program");
        let pattern = kfunc_placeholder();
        assert!(!obj.windows(8).any(|w| w == pattern));
        let mut patched = pattern;
        patched[4..].copy_from_slice(&4242u32.to_le_bytes());
        assert_eq!(obj.windows(8).filter(|w| *w == patched).count(), 2);
    }
}
