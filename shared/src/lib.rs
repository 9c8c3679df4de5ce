//! What the stickyio gateway, nodes and tests must agree on.
//!
//! - [`connection_limit`]: the cap on a listener's open connections.
//! - [`config`]: typed `gateway.toml` and `node.toml`, with `file:line:column` errors.
//! - [`logging`]: the log format every binary uses.
//! - [`message`]: a publication as delivered to sockets and relayed between nodes.
//! - [`placement`]: the portable rendezvous hash that maps a client address to a node.
//! - [`relay`]: the frame that carries a publication from one node to a peer.
//! - [`signals`]: the stop signals (Ctrl-C, SIGTERM) every binary obeys.
//! - [`secret`]: shared secrets, compared in constant time and never printed.
//! - [`topic`]: topic names and subscription patterns (`*`, `#`): validation and matching.

pub mod config;
pub mod connection_limit;
pub mod logging;
pub mod message;
pub mod placement;
pub mod relay;
pub mod secret;
pub mod signals;
pub mod topic;
