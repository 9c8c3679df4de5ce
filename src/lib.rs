//! The local launcher behind `cargo run --release`: a stickyio gateway and
//! its clustered nodes in one process, for trying stickyio and for the
//! end-to-end tests.
//!
//! - [`topology`]: which nodes and gateway to run, from `deploy/local/` and the flags.
//! - [`launcher`]: starting them in-process, the summary it prints, and stopping them.

pub mod launcher;
pub mod topology;

pub use launcher::{LaunchError, LocalCluster};
pub use topology::{Options, Topology, TopologyError};
