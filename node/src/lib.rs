//! stickyio-node: a Socket.IO server with a topic publish/subscribe API that
//! forms a cluster with its peers.
//!
//! - [`mesh`]: the authenticated peer mesh that relays publications between nodes.

pub mod mesh;
