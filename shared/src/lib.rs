//! What the stickyio gateway, nodes and tests must agree on.
//!
//! - [`config`]: typed `gateway.toml` and `node.toml`, with `file:line:column` errors.
//! - [`logging`]: the log format every binary uses.
//! - [`message`]: a publication as delivered to sockets and relayed between nodes.
//! - [`placement`]: the portable rendezvous hash that maps a client address to a node.
//! - [`relay`]: the frame that carries a publication from one node to a peer.
//! - [`topic`]: topic names and subscription patterns (`*`, `#`): validation and matching.

pub mod config;
pub mod logging;
pub mod message;
pub mod placement;
pub mod relay;
pub mod topic;
