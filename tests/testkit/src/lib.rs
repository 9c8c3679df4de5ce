//! Test support for every stickyio crate that tests: bounded waits, temp
//! dirs, child processes killed on drop, a throwaway Redis, loopback clients
//! from chosen 127.x.y.z source addresses (raw HTTP, Engine.IO polling,
//! websocket, Socket.IO topic and `/cluster` clients) and a cluster of
//! in-process nodes.
//!
//! The Engine.IO clients here are written from the protocol, not from the
//! gateway's or the node's code, so they are a second opinion on both.

// Test support: a panic is how a failing test reports, so unwrap and
// expect are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod http_conn;
pub mod metrics;
pub mod net;
pub mod node_cluster;
pub mod peer;
pub mod polling;
pub mod process;
pub mod redis_server;
pub mod temp;
pub mod topic_client;
pub mod wait;
pub mod websocket;

pub use http_conn::{HttpConn, Reply};
pub use metrics::metric_sum;
pub use net::{client_ip, connect_from, free_port, free_ports, free_run};
pub use polling::{PollingSession, run_session};
pub use process::ChildProcess;
pub use redis_server::RedisServer;
pub use temp::TempDir;
pub use wait::{TIMEOUT, eventually};
