//! `stickyio-node`: a Socket.IO server (socketioxide on hyper 1) with a topic
//! publish/subscribe API, plus health, readiness, metrics and a demo page.
//!
//! - [`server`]: bind, plug in, serve, shut down ([`Node`], [`RunningNode`]).
//! - [`topics`]: subscriptions and delivery ([`TopicService`], [`Relay`]).
//! - `history`, `cursor`: what a node remembers for clients that resume, and
//!   the authenticated cursors they resume from.
//! - `index`: the pattern trie that makes a publish cost what it delivers.
//! - `api`: the Socket.IO events of the topic API and their acks.
//! - `routes`, `demo`: the client port's HTTP side (demo page, bare `/healthz`).
//! - `accept`: the accept loop and drain both listeners share.
//! - `admin`, `readiness`, [`metrics`]: the admin listener (`/healthz`,
//!   `/readyz`, `/metrics`), loopback by default.
//! - `deadline`: the whole-body read deadline against slow-body clients.
//! - [`cli`]: the `stickyio-node` command line.
//! - [`cluster`]: how publications reach the other nodes ([`Cluster`]): the
//!   authenticated peer mesh, or Redis; one inbound path for both.
//!
//! Tests and the launcher run nodes in-process:
//!
//! ```no_run
//! # async fn run() -> Result<(), stickyio_node::NodeError> {
//! use stickyio_shared::config::node::NodeConfig;
//! let config = NodeConfig::standalone("node-a", "127.0.0.1:0".parse().unwrap());
//! let node = stickyio_node::Node::bind(config).await?;
//! println!("serving on {}, admin on {}", node.local_addr(), node.admin_addr());
//! node.shutdown().await
//! # }
//! ```

mod accept;
mod admin;
mod api;
pub mod cli;
pub mod cluster;
mod cursor;
mod deadline;
mod demo;
mod history;
mod index;
pub mod metrics;
mod readiness;
mod routes;
pub mod server;
pub mod topics;

pub use cluster::{Cluster, ClusterError};
pub use cursor::Stamp;
pub use readiness::{Check, Readiness};
pub use server::{Node, NodeError, RunningNode};
pub use topics::{ErrorCode, Handed, Relay, Resumed, Subscribed, Then, TopicError, TopicService};
