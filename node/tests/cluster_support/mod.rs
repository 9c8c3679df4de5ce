//! Helpers of the cluster tests: in-process nodes, topic clients, raw
//! `/cluster` peers, and a forwarder to cut links with.

pub mod client;
pub mod forwarder;
pub mod nodes;
pub mod peer;
pub mod redis_server;
