//! `stickyio-gateway`: one public address in front of a pool of Socket.IO
//! nodes, pinning every Engine.IO session to one node.
//!
//! - Placement: weighted rendezvous hashing of the client address
//!   ([`client_ip`], [`router`], `stickyio_shared::placement`).
//! - Pinning: `sid → node` learned from polling handshakes ([`pinning`],
//!   [`engineio`], [`sniff`]).
//! - Proxying: the gateway's own HTTP/1 on both sides ([`client_conn`],
//!   [`client_wire`] towards clients; [`node_conn`], [`wire`] towards
//!   nodes), one forwarding path for streamed HTTP and relayed websockets
//!   ([`proxy`], [`relay`], [`forwarding`]), in per-session order
//!   ([`ordering`]), behind [`limits`], optionally over [`tls`].
//! - Threads: client connections on single-threaded [`workers`], one per
//!   client address.
//! - Operations: [`health_check`], [`reload`], [`admin`] (with its
//!   [`status_page`]), [`metrics`].
//!
//! Start one with [`Gateway::start`].

pub mod admin;
pub mod body;
pub mod cli;
pub mod client_conn;
pub mod client_ip;
pub mod client_wire;
pub mod engineio;
pub mod forwarding;
pub mod gateway;
pub mod health_check;
pub mod limits;
pub mod metrics;
pub mod node_conn;
pub mod open_packet;
pub mod ordering;
pub mod pinning;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod route_tag;
pub mod router;
pub mod server;
pub mod sniff;
pub mod state;
pub mod status_page;
pub mod tls;
pub mod upstream;
pub mod wire;
pub mod workers;

pub use forwarding::NODE_HEADER;
pub use gateway::{ConfigSource, Gateway, RunningGateway, StartError};
pub use reload::{ReloadError, ReloadReport};
