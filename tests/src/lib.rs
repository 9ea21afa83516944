//! Harness for the end-to-end tests.

pub mod dataplane;
