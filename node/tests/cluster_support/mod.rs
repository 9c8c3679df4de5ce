//! Helpers shared by the cluster tests.

pub mod forwarder;
