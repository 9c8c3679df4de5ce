//! The set of relayed publications already delivered, so a frame that arrives
//! twice (an origin resending after its mesh link broke mid-write, or a Redis
//! message seen again) is delivered once. Shared by both cluster backends.
//!
//! Bounded twice over: entries expire after `ttl`, and past `capacity` the
//! oldest entry is forgotten first, so a flood of ids cannot grow memory.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ahash::AHashSet;

/// What identifies one publication across the pool: its origin node, the
/// incarnation of that node (ids restart when a node restarts), and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub origin: String,
    pub boot: u64,
    pub id: String,
}

#[derive(Debug)]
pub(super) struct Dedup {
    capacity: usize,
    ttl: Duration,
    seen: AHashSet<Key>,
    /// Insertion order with insertion time: the front is the oldest entry.
    order: VecDeque<(Instant, Key)>,
}

impl Dedup {
    pub(super) fn new(capacity: usize, ttl: Duration) -> Self {
        Dedup {
            capacity: capacity.max(1),
            ttl,
            seen: AHashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `key` as seen at `now`; false when it was already seen within
    /// the window (the caller drops the duplicate).
    pub(super) fn first_seen(&mut self, key: Key, now: Instant) -> bool {
        self.expire(now);
        if self.seen.contains(&key) {
            return false;
        }
        while self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        self.seen.insert(key.clone());
        self.order.push_back((now, key));
        true
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.ttl)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(origin: &str, id: &str) -> Key {
        Key {
            origin: origin.into(),
            boot: 1,
            id: id.into(),
        }
    }

    #[test]
    fn a_repeat_is_refused_and_distinct_keys_are_not() {
        let mut d = Dedup::new(10, Duration::from_secs(60));
        let t = Instant::now();
        assert!(d.first_seen(key("a", "1"), t));
        assert!(!d.first_seen(key("a", "1"), t));
        assert!(
            d.first_seen(key("b", "1"), t),
            "same id from another origin is another message"
        );
        assert!(d.first_seen(key("a", "2"), t));
        let restarted = Key {
            boot: 2,
            ..key("a", "1")
        };
        assert!(
            d.first_seen(restarted, t),
            "a restarted origin reuses ids for new messages"
        );
        assert_eq!(d.order.len(), 4);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let mut d = Dedup::new(10, Duration::from_secs(60));
        let t = Instant::now();
        assert!(d.first_seen(key("a", "1"), t));
        assert!(!d.first_seen(key("a", "1"), t + Duration::from_secs(59)));
        assert!(d.first_seen(key("a", "1"), t + Duration::from_secs(60)));
        assert_eq!(d.order.len(), 1);
    }

    #[test]
    fn capacity_forgets_the_oldest_first() {
        let mut d = Dedup::new(3, Duration::from_secs(60));
        let t = Instant::now();
        for id in ["1", "2", "3", "4"] {
            assert!(d.first_seen(key("a", id), t));
        }
        assert_eq!(d.order.len(), 3);
        assert!(!d.first_seen(key("a", "4"), t));
        assert!(!d.first_seen(key("a", "2"), t));
        assert!(
            d.first_seen(key("a", "1"), t),
            "the oldest entry was evicted"
        );
        assert_eq!(d.order.len(), 3);
    }

    #[test]
    fn a_flood_stays_bounded() {
        let mut d = Dedup::new(1000, Duration::from_secs(60));
        let t = Instant::now();
        for i in 0..10_000 {
            d.first_seen(key("a", &i.to_string()), t);
        }
        assert_eq!(d.order.len(), 1000);
        assert_eq!(d.seen.len(), 1000);
    }
}
