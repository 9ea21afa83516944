//! Warren's eBPF objects, compiled from C by this crate's build script and embedded
//! as byte arrays for `aya` to load. The programs themselves live in `src/*.bpf.c`
//! and their shared structs in `include/`; loading and attaching is
//! `warren::dataplane`, not this crate.
