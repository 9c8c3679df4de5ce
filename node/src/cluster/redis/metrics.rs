//! Prometheus series of the Redis backend: the link's state, live members,
//! what was published, refused, received, deduplicated, and name conflicts.
//!
//! Labels reuse the mesh's (`origin`, `reason`) so dashboards read the same.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::inbound::InboundMetrics;
use crate::cluster::labels::ReasonLabels;

/// A live member of the pool, by node name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MemberLabels {
    pub member: String,
}

/// Why a publish was refused: `disconnected` (this node has no Redis link),
/// `member_unsubscribed` (a live member is not subscribed, so it would miss
/// the message), `error` (Redis answered with an error or the link broke),
/// `timeout`, `too_large` (over `max_payload`), `queue_full` (more than
/// `link_queue` publishes already waiting for Redis).
pub(super) const REFUSAL_REASONS: [&str; 6] = [
    "disconnected",
    "member_unsubscribed",
    "error",
    "timeout",
    "too_large",
    "queue_full",
];

#[derive(Debug, Default)]
pub(super) struct RedisMetrics {
    pub up: Gauge,
    pub members: Gauge,
    pub member: Family<MemberLabels, Gauge>,
    pub published: Counter,
    pub refused: Family<ReasonLabels, Counter>,
    pub inbound: InboundMetrics,
    pub rejected_frames: Family<ReasonLabels, Counter>,
    pub reconnects: Counter,
    pub name_conflict: Gauge,
    pub name_conflicts: Counter,
}

impl RedisMetrics {
    /// Registers every series under `registry` (names gain its prefix).
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "redis_up",
            "1 while this node is connected and subscribed to Redis",
            self.up.clone(),
        );
        registry.register(
            "redis_members",
            "Live members of the pool, this node included",
            self.members.clone(),
        );
        registry.register(
            "redis_member",
            "1 for each live member of the pool, by name",
            self.member.clone(),
        );
        registry.register(
            "redis_published",
            "Local publications Redis took for every live member",
            self.published.clone(),
        );
        registry.register(
            "redis_refused",
            "Local publishes refused (delivered nowhere), by reason",
            self.refused.clone(),
        );
        registry.register(
            "redis_relayed_in",
            "Publications of other nodes received from Redis and delivered locally",
            self.inbound.relayed_in.clone(),
        );
        registry.register(
            "redis_deduplicated",
            "Publications received again and dropped",
            self.inbound.deduplicated.clone(),
        );
        registry.register(
            "redis_rejected_frames",
            "Frames received from Redis refused as invalid, by reason",
            self.rejected_frames.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Times an established Redis link was lost",
            self.reconnects.clone(),
        );
        registry.register(
            "redis_name_conflict",
            "1 while another process uses this node's name",
            self.name_conflict.clone(),
        );
        registry.register(
            "redis_name_conflicts",
            "Times another process was seen using this node's name",
            self.name_conflicts.clone(),
        );
        // Every reason shows from the start, at 0, rather than on first use.
        for reason in REFUSAL_REASONS {
            drop(self.refused.get_or_create(&ReasonLabels { reason }));
        }
    }

    pub(super) fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(super) fn reject_frame(&self, reason: &'static str) {
        self.rejected_frames
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
