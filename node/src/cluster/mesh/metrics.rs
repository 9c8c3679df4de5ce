//! Prometheus counters of the mesh: what was relayed, deduplicated, dropped,
//! refused, and how often links flapped.
//!
//! One set per node, shared by its links and its `/cluster` listener; each link
//! keeps handles to its own labelled series and reads them back for `/readyz`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::inbound::InboundMetrics;
use crate::cluster::labels::{OriginLabels, ReasonLabels};

/// A peer link, named by the URL this node dials.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerLabels {
    pub peer: String,
}

/// A relayed publication not sent to a peer, and why.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DropLabels {
    pub peer: String,
    /// `queue_full`: the peer reads slower than this node publishes;
    /// `link_down`: no link to the peer; `too_large`: over `max_payload`.
    pub reason: &'static str,
}

#[derive(Debug, Default)]
pub(crate) struct MeshMetrics {
    pub relayed_out: Family<PeerLabels, Counter>,
    pub inbound: InboundMetrics,
    pub dropped: Family<DropLabels, Counter>,
    pub rejected_frames: Family<ReasonLabels, Counter>,
    pub refused_peers: Family<ReasonLabels, Counter>,
    pub link_flaps: Family<PeerLabels, Counter>,
    pub link_up: Family<PeerLabels, Gauge>,
    pub catch_up_requests: Family<PeerLabels, Counter>,
    pub catch_up_received: Family<OriginLabels, Counter>,
    pub catch_up_delivered: Family<OriginLabels, Counter>,
    pub catch_up_served: Counter,
    pub catch_up_skipped: Counter,
}

impl MeshMetrics {
    /// Registers every series under `registry` (names gain the registry's prefix).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_relayed_out",
            "Publications written to a peer link",
            self.relayed_out.clone(),
        );
        registry.register(
            "cluster_relayed_in",
            "Relayed publications received from a peer and delivered locally",
            self.inbound.relayed_in.clone(),
        );
        registry.register(
            "cluster_deduplicated",
            "Relayed publications dropped because they had already been delivered",
            self.inbound.deduplicated.clone(),
        );
        registry.register(
            "cluster_dropped",
            "Publications not relayed to a peer, by reason",
            self.dropped.clone(),
        );
        registry.register(
            "cluster_rejected_frames",
            "Relay frames from authenticated peers refused as invalid, by reason",
            self.rejected_frames.clone(),
        );
        registry.register(
            "cluster_refused_peers",
            "Connections to /cluster refused, by reason",
            self.refused_peers.clone(),
        );
        registry.register(
            "cluster_link_flaps",
            "Times an established peer link was lost",
            self.link_flaps.clone(),
        );
        registry.register(
            "cluster_catch_up_requests",
            "Catch-up requests sent to a peer (for an origin whose relays this node may have missed)",
            self.catch_up_requests.clone(),
        );
        registry.register(
            "cluster_catch_up_received",
            "Publications received in catch-up answers, by origin",
            self.catch_up_received.clone(),
        );
        registry.register(
            "cluster_catch_up_delivered",
            "Publications received in catch-up answers that were new here and delivered, by origin",
            self.catch_up_delivered.clone(),
        );
        registry.register(
            "cluster_catch_up_served",
            "Publications sent to peers in catch-up answers",
            self.catch_up_served.clone(),
        );
        registry.register(
            "cluster_catch_up_skipped",
            "Sequence numbers of peers given up: a gap no catch-up filled in time",
            self.catch_up_skipped.clone(),
        );
        registry.register(
            "cluster_link_up",
            "1 while the link to a peer is up, else 0",
            self.link_up.clone(),
        );
    }

    pub(crate) fn reject_frame(&self, reason: &'static str) {
        self.rejected_frames
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn refuse_peer(&self, reason: &'static str) {
        self.refused_peers
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn series_are_exposed_with_their_labels() {
        let metrics = MeshMetrics::default();
        let mut registry = Registry::with_prefix("stickyio");
        metrics.register(&mut registry);
        metrics
            .relayed_out
            .get_or_create(&PeerLabels {
                peer: "http://b".into(),
            })
            .inc();
        metrics
            .dropped
            .get_or_create(&DropLabels {
                peer: "http://b".into(),
                reason: "queue_full",
            })
            .inc_by(3);
        metrics.reject_frame("malformed");
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("stickyio_cluster_relayed_out_total{peer=\"http://b\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "stickyio_cluster_dropped_total{peer=\"http://b\",reason=\"queue_full\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("stickyio_cluster_rejected_frames_total{reason=\"malformed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE stickyio_cluster_relayed_out counter"),
            "{text}"
        );
    }
}
