//! Harness for Warren's end-to-end tests (`tests/tests/*.rs`): real `warren`
//! processes and, as the features need them, real containerd, a local OCI registry,
//! eBPF and network namespaces. Everything a test starts is torn down when its
//! guard drops, also on panic.

pub mod cgroups;
pub mod cluster;
pub mod containerd;
pub mod dataplane;
pub mod dnsutil;
pub mod env;
pub mod images;
pub mod ingress;
pub mod lab;
pub mod linearize;
pub mod mesh;
pub mod netns;
pub mod registry;
