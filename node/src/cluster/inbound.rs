//! The one path a publication from another node takes into this one,
//! whichever backend carried it: deduplicate, count, deliver locally.
//!
//! A backend decodes and checks its own transport (a mesh frame must come
//! from its sender, a Redis message from another process), then hands the
//! publication here. What happens next is the same for both, so it is
//! written once.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use stickyio_shared::message::Publication;

use super::dedup::{Dedup, Key};
use super::labels::OriginLabels;
use crate::cursor::Stamp;
use crate::history::Wanted;
use crate::topics::TopicService;

/// Relayed ids remembered per node; far above what one node relays between
/// a link failing and its redial.
pub(crate) const DEDUP_CAPACITY: usize = 100_000;
/// How long a relayed id is remembered at least: a resent frame arrives on
/// the next link, within `retry_interval` plus a dial.
pub(crate) const DEDUP_MIN_TTL: Duration = Duration::from_secs(120);

/// Where relayed publications go: this node's local subscribers only.
pub trait Deliver: Send + Sync + 'static {
    /// Delivers to local sockets and returns how many received it; `stamp`
    /// is its place in the Redis stream, when that is the history. Must not
    /// relay: that is what keeps the cluster one hop and loop-free.
    fn deliver(&self, publication: &Arc<Publication>, stamp: Option<Stamp>) -> usize;

    /// For a peer catching up (mesh): the held messages it wants (see
    /// `history::Wanted`), oldest first. A deliverer that keeps no history holds
    /// none.
    fn held_of(&self, _wanted: &Wanted<'_>) -> Vec<Arc<Publication>> {
        Vec::new()
    }

    /// When this node started, in ms since the Unix epoch (0: unknown).
    fn started_at(&self) -> u64 {
        0
    }
}

/// Relayed publications go to the node's topic service, held weakly: the
/// service holds the backend as its relay, and a strong reference back would
/// keep both alive after the node stops.
pub(crate) struct LocalDelivery(pub Weak<TopicService>);

impl Deliver for LocalDelivery {
    fn deliver(&self, publication: &Arc<Publication>, stamp: Option<Stamp>) -> usize {
        self.0
            .upgrade()
            .map_or(0, |topics| topics.deliver_relayed(publication, stamp))
    }

    fn held_of(&self, wanted: &Wanted<'_>) -> Vec<Arc<Publication>> {
        self.0
            .upgrade()
            .map_or_else(Vec::new, |topics| topics.held_of(wanted))
    }

    fn started_at(&self) -> u64 {
        self.0.upgrade().map_or(0, |topics| topics.started_at())
    }
}

/// The counters of the inbound path, registered by each backend under its
/// own names (`cluster_relayed_in`, `redis_relayed_in`, …).
#[derive(Debug, Default, Clone)]
pub(crate) struct InboundMetrics {
    /// Relayed publications delivered, by origin.
    pub relayed_in: Family<OriginLabels, Counter>,
    /// Relayed publications dropped as already delivered, by origin.
    pub deduplicated: Family<OriginLabels, Counter>,
}

pub(crate) struct Inbound {
    dedup: Mutex<Dedup>,
    deliver: Arc<dyn Deliver>,
    metrics: InboundMetrics,
}

impl Inbound {
    pub(crate) fn new(
        dedup_ttl: Duration,
        deliver: Arc<dyn Deliver>,
        metrics: InboundMetrics,
    ) -> Inbound {
        Inbound {
            dedup: Mutex::new(Dedup::new(DEDUP_CAPACITY, dedup_ttl.max(DEDUP_MIN_TTL))),
            deliver,
            metrics,
        }
    }

    /// Delivers `publication` from `origin` (incarnation `boot`) unless it
    /// was already delivered; false for a duplicate.
    pub(crate) fn receive(
        &self,
        origin: &str,
        boot: u64,
        publication: Publication,
        stamp: Option<Stamp>,
        now: Instant,
    ) -> bool {
        let labels = OriginLabels {
            origin: origin.to_owned(),
        };
        let key = Key {
            origin: origin.to_owned(),
            boot,
            id: publication.id.clone(),
        };
        let first = self
            .dedup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first_seen(key, now);
        if !first {
            self.metrics.deduplicated.get_or_create(&labels).inc();
            tracing::debug!(
                origin,
                id = publication.id,
                "dropped a duplicate relayed publication"
            );
            return false;
        }
        self.metrics.relayed_in.get_or_create(&labels).inc();
        self.deliver.deliver(&Arc::new(publication), stamp);
        true
    }

    /// Counts a publication of `origin` dropped as already delivered by a
    /// check before this one (the mesh's sequence order).
    pub(crate) fn duplicate(&self, origin: &str) {
        self.metrics
            .deduplicated
            .get_or_create(&OriginLabels {
                origin: origin.to_owned(),
            })
            .inc();
    }

    /// Delivers one of this node's own publications that came back through
    /// the cluster (Redis delivers them in stream order): no dedup, no count.
    pub(crate) fn own(&self, publication: Publication, stamp: Option<Stamp>) {
        self.deliver.deliver(&Arc::new(publication), stamp);
    }

    /// Relayed publications received from `origin` and delivered.
    pub(crate) fn messages_in(&self, origin: &str) -> u64 {
        self.metrics
            .relayed_in
            .get_or_create(&OriginLabels {
                origin: origin.to_owned(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Deliver for Count {
        fn deliver(&self, _: &Arc<Publication>, _: Option<Stamp>) -> usize {
            self.0.fetch_add(1, Ordering::Relaxed);
            1
        }
    }

    fn publication(id: &str) -> Publication {
        Publication {
            id: id.into(),
            topic: "a".into(),
            content: serde_json::Value::Null,
            sender_id: "s".into(),
            created_at: 1,
            node: "node-b".into(),
        }
    }

    #[test]
    fn delivers_once_and_counts_both_outcomes() {
        let count = Arc::new(Count::default());
        let inbound = Inbound::new(Duration::ZERO, count.clone(), InboundMetrics::default());
        let now = Instant::now();
        assert!(inbound.receive("node-b", 7, publication("node-b-7-1"), None, now));
        assert!(!inbound.receive("node-b", 7, publication("node-b-7-1"), None, now));
        assert!(inbound.receive("node-b", 8, publication("node-b-7-1"), None, now));
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert_eq!(inbound.messages_in("node-b"), 2);
        let dups = inbound.metrics.deduplicated.get_or_create(&OriginLabels {
            origin: "node-b".into(),
        });
        assert_eq!(dups.get(), 1);
    }
}
