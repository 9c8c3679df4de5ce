//! Prometheus metrics of a node, served as text on `/metrics`.
//!
//! Every metric is named `stickyio_node_*` and labelled with the node's name,
//! so several nodes scraped into one Prometheus stay apart. Other parts of the
//! node (the cluster mesh) register theirs in the same [`Registry`] through
//! [`crate::Node::with_registry`].

use std::borrow::Cow;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::topics::ErrorCode;

/// Prefix of every metric name a node exports.
pub const PREFIX: &str = "stickyio_node";

/// Content type of [`render`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The topic service's counters and gauges; cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sockets connected to the main namespace.
    pub connected_sockets: Gauge,
    /// Patterns held, summed over all sockets.
    pub subscriptions: Gauge,
    /// Publishes accepted from local sockets.
    pub published: Counter,
    /// `message` events handed to sockets (one per message per socket).
    pub delivered: Counter,
    /// Deliveries lost because a socket's send buffer was full or closed.
    pub dropped: Counter,
    /// Requests refused, by error code.
    pub rejected: Family<[(&'static str, &'static str); 1], Counter>,
    /// Engine.IO requests carrying a `sid` answered 400, mostly
    /// `Session ID unknown`: a request that reached a node without its session.
    pub session_unknown: Counter,
}

/// Registers each named field of `metrics` under the field's own name.
macro_rules! register_fields {
    ($registry:ident, $metrics:ident, { $($field:ident: $help:literal,)* }) => {
        $($registry.register(stringify!($field), $help, $metrics.$field.clone());)*
    };
}

impl Metrics {
    /// A registry for a node named `node`, with the node's metrics in it.
    pub fn registry(node: &str) -> (Registry, Metrics) {
        let label = (Cow::Borrowed("node"), Cow::Owned(node.to_owned()));
        let mut registry = Registry::with_prefix_and_labels(PREFIX, std::iter::once(label));
        let metrics = Metrics::default();
        register_fields!(registry, metrics, {
            connected_sockets: "Sockets connected to the main namespace",
            subscriptions: "Subscription patterns held, summed over all sockets",
            published: "Publishes accepted from this node's sockets",
            delivered: "Message events handed to sockets, one per message per socket",
            dropped: "Deliveries lost because a socket's send buffer was full or closed",
            rejected: "Topic API requests refused, by error code",
            session_unknown: "Engine.IO requests with a sid answered 400 (mostly Session ID unknown: routed to a node without that session)",
        });
        // Every code shows from the start, at 0, rather than on first use.
        for code in ErrorCode::ALL {
            drop(metrics.rejected.get_or_create(&[("code", code.as_str())]));
        }
        (registry, metrics)
    }

    pub fn reject(&self, code: ErrorCode) {
        self.rejected
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }
}

/// The registry as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    encode(&mut text, registry)?;
    Ok(text)
}
