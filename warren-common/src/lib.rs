//! Types and constants shared with the eBPF programs in `warren-ebpf`: map keys and
//! values, map names and limits. Every type here mirrors a C struct in
//! `warren-ebpf/include/` byte for byte; nothing here does I/O.

#![no_std]

/// Version of the map layouts; it is part of every pinned map's name so that a
/// daemon never reads a map written with another layout.
pub const LAYOUT_VERSION: u32 = 1;
