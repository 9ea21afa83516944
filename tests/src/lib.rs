//! Harness for the end-to-end tests.

pub mod containerd;
pub mod images;
pub mod registry;
