//! An Engine.IO 4 / Socket.IO 5 load generator for the stickyio benchmarks.
//!
//! It speaks the protocol itself over hyper (polling) and tungstenite
//! (websocket), so a virtual client costs a few tasks and sockets, and every
//! client binds its own `127.x.y.z` source address so an IP-hashing proxy
//! sees distinct clients.
//!
//! - [`source`]: source addresses and bound connects.
//! - [`protocol`]: Engine.IO and Socket.IO packet text.
//! - [`session`]: one client session over polling, websocket or polling
//!   with upgrade.
//! - [`procfs`]: memory and CPU of the processes under test.
//! - [`report`]: latency histograms, errors by kind, the JSON report.
//! - [`workloads`]: round trip (W1/W2), churn (W3), idle (W4), fan-out (W5).
//! - [`cli`]: the command line.

pub mod cli;
pub mod procfs;
pub mod protocol;
pub mod report;
pub mod session;
pub mod source;
pub mod workloads;
