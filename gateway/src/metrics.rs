//! Prometheus metrics of the gateway, labelled by node.
//!
//! Each node's counters and gauges are fetched once, when its
//! [`Upstream`](crate::upstream::Upstream) is created, so the request path
//! only touches atomics. Reload outcomes are here too ([`LastReload`]): they
//! are exported as series and shown whole on `/status`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::reload::LastReload;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<NodeLabel, Counter>,
    handshakes: Family<NodeLabel, Counter>,
    upstream_errors: Family<NodeLabel, Counter>,
    websockets: Family<NodeLabel, Gauge>,
    sessions: Family<NodeLabel, Gauge>,
    up: Family<NodeLabel, Gauge>,
    rejected: Family<ReasonLabel, Counter>,
    connections: Gauge,
    fail_open: Gauge,
    fail_open_requests: Counter,
    /// Outcomes of config reloads, the last one whole.
    pub reloads: LastReload,
}

/// The metric handles of one node.
#[derive(Clone, Default)]
pub struct NodeMetrics {
    pub requests: Counter,
    pub handshakes: Counter,
    pub upstream_errors: Counter,
    /// Live relayed websockets.
    pub websockets: Gauge,
    /// Sessions pinned to the node.
    pub sessions: Gauge,
    /// 1 while the node is in placement (healthy), else 0.
    pub up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stickyio_gateway");
        let (requests, handshakes, upstream_errors) =
            (Family::default(), Family::default(), Family::default());
        let (websockets, sessions, up) = (Family::default(), Family::default(), Family::default());
        let rejected = Family::default();
        let connections = Gauge::default();
        let (fail_open, fail_open_requests) = (Gauge::default(), Counter::default());
        registry.register("requests", "Requests proxied, by node", requests.clone());
        registry.register(
            "handshakes",
            "Engine.IO sessions opened, by node",
            handshakes.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests a node failed (connect, reset, timeout), by node",
            upstream_errors.clone(),
        );
        registry.register(
            "websockets",
            "Live websockets relayed, by node",
            websockets.clone(),
        );
        registry.register(
            "pinned_sessions",
            "Sessions opened through this gateway and still open, by node",
            sessions.clone(),
        );
        registry.register("node_up", "1 when the node takes new clients", up.clone());
        registry.register(
            "rejected",
            "Requests refused by the gateway itself, by reason",
            rejected.clone(),
        );
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "fail_open",
            "1 while too few nodes pass health checks and clients are placed on all of them",
            fail_open.clone(),
        );
        registry.register(
            "fail_open_requests",
            "Requests placed while failing open",
            fail_open_requests.clone(),
        );
        let reloads = LastReload::default();
        reloads.register(&mut registry);
        Metrics {
            registry,
            fail_open,
            fail_open_requests,
            requests,
            handshakes,
            upstream_errors,
            websockets,
            sessions,
            up,
            rejected,
            connections,
            reloads,
        }
    }
}

impl Metrics {
    pub fn node(&self, name: &str) -> NodeMetrics {
        let label = NodeLabel {
            node: name.to_owned(),
        };
        NodeMetrics {
            requests: self.requests.get_or_create_owned(&label),
            handshakes: self.handshakes.get_or_create_owned(&label),
            upstream_errors: self.upstream_errors.get_or_create_owned(&label),
            websockets: self.websockets.get_or_create_owned(&label),
            sessions: self.sessions.get_or_create_owned(&label),
            up: self.up.get_or_create_owned(&label),
        }
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    pub fn fail_open(&self) -> &Gauge {
        &self.fail_open
    }

    pub fn fail_open_requests(&self) -> &Counter {
        &self.fail_open_requests
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
