//! The sessions opened through this gateway, by client-visible `sid`: a
//! cache for counting sessions per node (`/nodes`, metrics) and for knowing when a
//! removed node has drained. It no longer routes: a session's route travels
//! in its sid ([`crate::route_tag`]), so replicas need no shared table.
//!
//! An entry ends when the session closes (close packet, websocket closed,
//! the node answers 400) or after `pingInterval + pingTimeout` of silence,
//! the time after which the node itself has given up on it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::upstream::Upstream;

struct Pin {
    upstream: Arc<Upstream>,
    silence_limit: Duration,
    last_seen: Instant,
    /// Relayed websockets of the session; a pin never expires under one.
    websockets: u32,
}

#[derive(Default)]
pub struct Pins {
    map: Mutex<AHashMap<String, Pin>>,
}

impl Pins {
    pub fn new() -> Self {
        Pins::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AHashMap<String, Pin>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `sid` to `upstream`.
    pub fn learn(&self, sid: &str, upstream: Arc<Upstream>, silence_limit: Duration) {
        upstream.metrics.sessions.inc();
        upstream.metrics.handshakes.inc();
        let pin = Pin {
            upstream,
            silence_limit,
            last_seen: Instant::now(),
            websockets: 0,
        };
        if let Some(old) = self.lock().insert(sid.to_owned(), pin) {
            old.upstream.metrics.sessions.dec();
        }
    }

    /// The node of `sid`, marking the session as alive.
    pub fn get(&self, sid: &str) -> Option<Arc<Upstream>> {
        let mut map = self.lock();
        let pin = map.get_mut(sid)?;
        pin.last_seen = Instant::now();
        Some(pin.upstream.clone())
    }

    /// Marks the session alive (a response arrived for it). A session
    /// opened through another replica is not adopted: a late answer to a
    /// closed session would bring it back.
    pub fn touch(&self, sid: &str) {
        if let Some(pin) = self.lock().get_mut(sid) {
            pin.last_seen = Instant::now();
        }
    }

    /// Ends the pin of `sid`.
    pub fn forget(&self, sid: &str) {
        if let Some(pin) = self.lock().remove(sid) {
            pin.upstream.metrics.sessions.dec();
        }
    }

    /// A websocket of `sid` opened (`true`) or closed (`false`).
    pub fn websocket(&self, sid: &str, open: bool) {
        if let Some(pin) = self.lock().get_mut(sid) {
            pin.last_seen = Instant::now();
            pin.websockets = if open {
                pin.websockets.saturating_add(1)
            } else {
                pin.websockets.saturating_sub(1)
            };
        }
    }

    /// Drops pins silent for longer than their limit; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, pin| {
            let alive = pin.websockets > 0
                || now.saturating_duration_since(pin.last_seen) <= pin.silence_limit;
            if !alive {
                pin.upstream.metrics.sessions.dec();
            }
            alive
        });
        before - map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::Registry;

    fn nodes() -> Vec<Arc<Upstream>> {
        let text =
            "[[nodes]]\nname = \"a\"\naddr = \"h:1\"\n[[nodes]]\nname = \"b\"\naddr = \"h:2\"\n";
        let config = Arc::new(stickyio_shared::config::parse(text, "t").unwrap());
        Registry::default()
            .initial(config, &Metrics::default())
            .nodes
    }

    #[test]
    fn pins_route_until_forgotten() {
        let [a, b]: [Arc<Upstream>; 2] = nodes().try_into().ok().unwrap();
        let pins = Pins::new();
        pins.learn("s1", a.clone(), Duration::from_secs(45));
        pins.learn("s2", b.clone(), Duration::from_secs(45));
        assert!(Arc::ptr_eq(&pins.get("s1").unwrap(), &a));
        assert!(pins.get("unknown").is_none());
        assert_eq!(
            (a.metrics.sessions.get(), a.metrics.handshakes.get()),
            (1, 1)
        );
        pins.forget("s1");
        pins.forget("s1");
        assert!(pins.get("s1").is_none());
        assert_eq!(a.metrics.sessions.get(), 0);
        assert!(pins.get("s2").is_some());
    }

    #[test]
    fn silence_expires_pins_but_not_under_a_websocket() {
        let [a, _]: [Arc<Upstream>; 2] = nodes().try_into().ok().unwrap();
        let pins = Pins::new();
        pins.learn("quiet", a.clone(), Duration::from_secs(30));
        pins.learn("ws", a.clone(), Duration::from_secs(30));
        pins.websocket("ws", true);
        let later = Instant::now() + Duration::from_secs(31);
        assert_eq!(pins.expire(Instant::now()), 0);
        assert_eq!(pins.expire(later), 1);
        assert!(pins.get("quiet").is_none());
        assert!(pins.get("ws").is_some());
        pins.websocket("ws", false);
        assert_eq!(pins.expire(Instant::now() + Duration::from_secs(31)), 1);
        assert_eq!(a.metrics.sessions.get(), 0);
    }

    #[test]
    fn a_relearned_sid_moves_its_count() {
        let [a, b]: [Arc<Upstream>; 2] = nodes().try_into().ok().unwrap();
        let pins = Pins::new();
        pins.learn("s", a.clone(), Duration::from_secs(1));
        pins.learn("s", b.clone(), Duration::from_secs(1));
        assert_eq!((a.metrics.sessions.get(), b.metrics.sessions.get()), (0, 1));
    }
}
