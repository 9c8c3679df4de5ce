//! The history a node keeps of the messages it delivered (its own and its
//! peers'), so a client that lost its node can resume on this one from a
//! cursor: what it missed is replayed, in the order this node received it
//! (per publisher, the order published).
//!
//! A pure data structure with time passed in, like `cluster/dedup.rs`:
//! bounded by `history.size` messages and `history.ttl`, the oldest
//! forgotten first. What it forgets it remembers having forgotten (per
//! origin incarnation, the last sequence evicted), so a resume from before
//! that point is answered "not recovered" instead of silently missing
//! messages.
//!
//! Positions are per origin incarnation: ids read `{node}-{boot}-{seq}` and
//! sequences of one incarnation only grow. The [`Frontier`] after a message
//! is its cursor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stickyio_shared::message::Publication;

use crate::cursor::{Cursor, Frontier};

/// How far before a cursor's mint time a message of an incarnation the
/// cursor does not name still counts as new: messages in flight when it was
/// minted. Far below the shortest `history.ttl`, so an incarnation that left
/// the frontier (idle for a whole ttl) is never replayed again.
pub(crate) const IN_FLIGHT_MS: u64 = 5_000;

/// The position of one message: origin, incarnation, sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub origin: Arc<str>,
    pub boot: u64,
    pub seq: u64,
}

impl Position {
    /// The position named by an id `{node}-{boot}-{seq}` of `node`.
    pub(crate) fn of(publication: &Publication) -> Option<Position> {
        let rest = publication
            .id
            .strip_prefix(&*publication.node)?
            .strip_prefix('-')?;
        let (boot, seq) = rest.split_once('-')?;
        Some(Position {
            origin: Arc::from(publication.node.as_str()),
            boot: boot.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// What a peer catching up wants of one origin: the held messages of
/// `origin` at or after `from` in an incarnation it names (its boot, and the
/// first sequence it lacks), or, in one it does not name, made at or after
/// `since` (ms since the Unix epoch: when the asker started, so it is never
/// handed what came before it existed). At most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub origin: &'a str,
    pub from: &'a [(u64, u64)],
    pub since: u64,
    pub limit: usize,
}

/// Why a resume cannot be complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotRecovered {
    /// Messages after the cursor were already forgotten (size or ttl).
    TooOld,
    /// This node started after the cursor was minted: what happened before
    /// it started is not here (a restarted node, or a restarted pool).
    Restarted,
}

impl NotRecovered {
    /// The ack's `reason`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotRecovered::TooOld => "too_old",
            NotRecovered::Restarted => "restarted",
        }
    }
}

#[derive(Debug)]
struct Entry {
    position: Position,
    at: Instant,
    publication: Arc<Publication>,
}

#[derive(Debug)]
struct Stream {
    origin: Arc<str>,
    boot: u64,
    last_at: Instant,
    /// Entries of this incarnation still held.
    held: usize,
    /// The last sequence forgotten, 0 if none.
    evicted_seq: u64,
    /// The latest `createdAt` forgotten, 0 if none.
    evicted_created_at: u64,
}

#[derive(Debug)]
pub(crate) struct History {
    size: usize,
    ttl: Duration,
    /// When this history started, in ms since the Unix epoch.
    started_at: u64,
    entries: VecDeque<Entry>,
    streams: Vec<Stream>,
    /// The last sequence held per incarnation: the cursor of the newest
    /// message.
    frontier: Frontier,
}

impl History {
    pub(crate) fn new(size: usize, ttl: Duration, started_at: u64) -> History {
        History {
            size: size.max(1),
            ttl,
            started_at,
            entries: VecDeque::new(),
            streams: Vec::new(),
            frontier: Frontier::default(),
        }
    }

    /// Keeps `publication` at `position`, received at `now`.
    pub(crate) fn record(
        &mut self,
        publication: Arc<Publication>,
        position: Position,
        now: Instant,
    ) {
        self.expire(now);
        while self.entries.len() >= self.size {
            self.forget_oldest();
        }
        self.frontier.advance(position.boot, position.seq);
        match self
            .streams
            .iter_mut()
            .find(|s| s.origin == position.origin && s.boot == position.boot)
        {
            Some(stream) => {
                stream.held += 1;
                stream.last_at = now;
            }
            None => self.streams.push(Stream {
                origin: position.origin.clone(),
                boot: position.boot,
                last_at: now,
                held: 1,
                evicted_seq: 0,
                evicted_created_at: 0,
            }),
        }
        self.entries.push_back(Entry {
            position,
            at: now,
            publication,
        });
    }

    /// The position after the newest message: what a live message carries.
    pub(crate) fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Messages after `cursor` that `wanted` accepts, oldest first, each
    /// with the cursor after it; or why the history cannot tell. `wall` is
    /// now in ms since the Unix epoch: a cursor minted longer than the ttl
    /// ago is too old, since what came after it may be forgotten with
    /// nothing left to say so.
    pub(crate) fn since(
        &mut self,
        cursor: &Cursor,
        now: Instant,
        wall: u64,
        mut wanted: impl FnMut(&Publication) -> bool,
    ) -> Result<Vec<(Arc<Publication>, Frontier)>, NotRecovered> {
        self.expire(now);
        if cursor.minted_at < self.started_at {
            return Err(NotRecovered::Restarted);
        }
        if wall.saturating_sub(cursor.minted_at) >= self.ttl.as_millis() as u64 {
            return Err(NotRecovered::TooOld);
        }
        let cutoff = cursor.minted_at.saturating_sub(IN_FLIGHT_MS);
        for stream in &self.streams {
            let lost = match cursor.frontier.get(stream.boot) {
                Some(seen) => stream.evicted_seq > seen,
                None => stream.evicted_created_at > cutoff,
            };
            if lost {
                return Err(NotRecovered::TooOld);
            }
        }
        let mut position = cursor.frontier.clone();
        let mut replay = Vec::new();
        for entry in &self.entries {
            let Position { boot, seq, .. } = &entry.position;
            let new = match cursor.frontier.get(*boot) {
                Some(seen) => *seq > seen,
                None => entry.publication.created_at > cutoff,
            };
            position.advance(*boot, *seq);
            if new && wanted(&entry.publication) {
                replay.push((entry.publication.clone(), position.clone()));
            }
        }
        Ok(replay)
    }

    /// What a peer that lost an origin's relays asks for (mesh catch-up),
    /// oldest first.
    pub(crate) fn of_origin(&mut self, wanted: &Wanted<'_>, now: Instant) -> Vec<Arc<Publication>> {
        self.expire(now);
        let Wanted {
            origin,
            from,
            since,
            limit,
        } = *wanted;
        self.entries
            .iter()
            .filter(|e| *e.position.origin == *origin)
            .filter(
                |e| match from.iter().find(|(boot, _)| *boot == e.position.boot) {
                    Some((_, first)) => e.position.seq >= *first,
                    None => e.publication.created_at >= since,
                },
            )
            .take(limit)
            .map(|e| e.publication.clone())
            .collect()
    }

    /// Messages held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets what is older than the ttl, then incarnations idle for a
    /// whole ttl with nothing left here (they leave the frontier).
    fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) >= self.ttl)
        {
            self.forget_oldest();
        }
        let ttl = self.ttl;
        let frontier = &mut self.frontier;
        self.streams.retain(|s| {
            let idle = s.held == 0 && now.saturating_duration_since(s.last_at) >= ttl;
            if idle {
                frontier.remove(s.boot);
            }
            !idle
        });
    }

    fn forget_oldest(&mut self) {
        let Some(entry) = self.entries.pop_front() else {
            return;
        };
        let Position { origin, boot, seq } = &entry.position;
        if let Some(stream) = self
            .streams
            .iter_mut()
            .find(|s| s.origin == *origin && s.boot == *boot)
        {
            stream.held -= 1;
            stream.evicted_seq = stream.evicted_seq.max(*seq);
            stream.evicted_created_at = stream.evicted_created_at.max(entry.publication.created_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;
    /// "Now" on the wall clock: just after the test cursors were minted.
    const WALL: u64 = T0 + 1_000;

    fn publication(node: &str, boot: u64, seq: u64, topic: &str) -> Arc<Publication> {
        Arc::new(Publication {
            id: format!("{node}-{boot}-{seq}"),
            topic: topic.into(),
            content: serde_json::Value::Null,
            sender_id: "s".into(),
            created_at: T0 + seq,
            node: node.into(),
        })
    }

    /// Boots are random per process; here node-a is 1, node-b 2, and so on.
    fn boot(node: &str) -> u64 {
        u64::from(node.as_bytes()[node.len() - 1] - b'a' + 1)
    }

    fn record(h: &mut History, node: &str, seq: u64, at: Instant) {
        let p = publication(node, boot(node), seq, "chat.a");
        let position = Position::of(&p).unwrap();
        h.record(p, position, at);
    }

    fn cursor(h: &History) -> Cursor {
        Cursor {
            minted_at: T0 + 100,
            frontier: h.frontier().clone(),
            stamp: None,
        }
    }

    fn ids(replay: &[(Arc<Publication>, Frontier)]) -> Vec<&str> {
        replay.iter().map(|(p, _)| p.id.as_str()).collect()
    }

    #[test]
    fn positions_come_from_ids() {
        let p = publication("node-a", 42, 7, "t");
        assert_eq!(
            Position::of(&p),
            Some(Position {
                origin: Arc::from("node-a"),
                boot: 42,
                seq: 7
            })
        );
        let mut foreign = (*p).clone();
        foreign.id = "node-b-42-7".into();
        assert_eq!(Position::of(&foreign), None);
        foreign.id = "node-a-x-7".into();
        assert_eq!(Position::of(&foreign), None);
    }

    #[test]
    fn replays_what_came_after_the_cursor_in_order_with_cursors() {
        let t = Instant::now();
        let mut h = History::new(100, Duration::from_secs(60), T0);
        record(&mut h, "node-a", 1, t);
        record(&mut h, "node-b", 1, t);
        let seen = cursor(&h);
        record(&mut h, "node-a", 2, t);
        record(&mut h, "node-b", 2, t);
        record(&mut h, "node-a", 3, t);
        let replay = h.since(&seen, t, WALL, |_| true).unwrap();
        assert_eq!(ids(&replay), ["node-a-1-2", "node-b-2-2", "node-a-1-3"]);
        let (_, last) = replay.last().unwrap();
        assert_eq!(last, h.frontier(), "the last cursor is the live one");
        let after_first = &replay[0].1;
        assert!(after_first.covers(1, 2) && !after_first.covers(2, 2));
        assert_eq!(
            ids(&h.since(&seen, t, WALL, |p| p.node == "node-b").unwrap()),
            ["node-b-2-2"]
        );
        assert!(h.since(&cursor(&h), t, WALL, |_| true).unwrap().is_empty());
    }

    #[test]
    fn an_incarnation_the_cursor_does_not_name_counts_from_its_mint_time() {
        let t = Instant::now();
        let mut h = History::new(100, Duration::from_secs(60), T0);
        record(&mut h, "node-a", 1, t);
        let seen = cursor(&h);
        let late = publication("node-c", 9, 1, "chat.a");
        h.record(late.clone(), Position::of(&late).unwrap(), t);
        assert_eq!(
            ids(&h.since(&seen, t, WALL, |_| true).unwrap()),
            ["node-c-9-1"]
        );
        let old = Cursor {
            minted_at: T0 + 1 + IN_FLIGHT_MS + 1,
            ..seen
        };
        assert!(h.since(&old, t, WALL, |_| true).unwrap().is_empty());
    }

    #[test]
    fn overflow_and_ttl_are_not_recovered() {
        let t = Instant::now();
        let mut h = History::new(3, Duration::from_secs(60), T0);
        record(&mut h, "node-a", 1, t);
        let seen = cursor(&h);
        for seq in 2..=4 {
            record(&mut h, "node-a", seq, t);
        }
        assert_eq!(h.len(), 3);
        assert_eq!(
            ids(&h.since(&seen, t, WALL, |_| true).unwrap()),
            ["node-a-1-2", "node-a-1-3", "node-a-1-4"],
            "1 was forgotten, but the cursor had seen it"
        );
        let mut h = History::new(3, Duration::from_secs(60), T0);
        record(&mut h, "node-a", 1, t);
        let seen = cursor(&h);
        for seq in 2..=5 {
            record(&mut h, "node-a", seq, t);
        }
        assert_eq!(h.since(&seen, t, WALL, |_| true), Err(NotRecovered::TooOld));

        let mut h = History::new(100, Duration::from_secs(60), T0);
        record(&mut h, "node-a", 1, t);
        let seen = cursor(&h);
        record(&mut h, "node-a", 2, t);
        assert_eq!(
            ids(&h
                .since(&seen, t + Duration::from_secs(59), WALL, |_| true)
                .unwrap()),
            ["node-a-1-2"]
        );
        assert_eq!(
            h.since(&seen, t + Duration::from_secs(60), WALL + 60_000, |_| true),
            Err(NotRecovered::TooOld)
        );
        assert_eq!(h.len(), 0);
        let mut quiet = History::new(100, Duration::from_secs(60), T0);
        record(&mut quiet, "node-a", 1, t);
        let seen = cursor(&quiet);
        assert_eq!(
            quiet.since(&seen, t, seen.minted_at + 60_000, |_| true),
            Err(NotRecovered::TooOld),
            "a cursor older than the ttl, even with nothing forgotten since"
        );
    }

    #[test]
    fn a_cursor_from_before_this_history_started_is_not_recovered() {
        let t = Instant::now();
        let mut h = History::new(100, Duration::from_secs(60), T0 + 1_000);
        record(&mut h, "node-a", 1, t);
        let before = Cursor {
            minted_at: T0,
            frontier: Frontier::default(),
            stamp: None,
        };
        assert_eq!(
            h.since(&before, t, WALL, |_| true),
            Err(NotRecovered::Restarted)
        );
    }

    #[test]
    fn idle_incarnations_leave_the_frontier_and_memory_stays_bounded() {
        let t = Instant::now();
        let mut h = History::new(1000, Duration::from_secs(60), T0);
        for boot in 0..100 {
            let p = publication("node-a", boot, 1, "chat.a");
            h.record(p.clone(), Position::of(&p).unwrap(), t);
        }
        assert_eq!(h.frontier().iter().count(), 100);
        record(&mut h, "node-b", 1, t + Duration::from_secs(120));
        assert_eq!(h.len(), 1);
        assert_eq!(h.frontier().iter().count(), 1);
        for seq in 2..10_000 {
            record(&mut h, "node-b", seq, t + Duration::from_secs(120));
        }
        assert_eq!(h.len(), 1000);
    }

    #[test]
    fn a_peer_gets_an_origin_from_where_it_stands() {
        let t = Instant::now();
        let mut h = History::new(100, Duration::from_secs(60), T0);
        for seq in 1..=5 {
            record(&mut h, "node-a", seq, t);
            record(&mut h, "node-b", seq, t);
        }
        let late = publication("node-a", 9, 1, "chat.a");
        h.record(late.clone(), Position::of(&late).unwrap(), t);
        let got = |h: &mut History, from: &[(u64, u64)], since: u64, limit: usize| {
            let wanted = Wanted {
                origin: "node-a",
                from,
                since,
                limit,
            };
            h.of_origin(&wanted, t)
                .iter()
                .map(|p| p.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got(&mut h, &[(1, 4), (9, 1)], 0, 100),
            ["node-a-1-4", "node-a-1-5", "node-a-9-1"]
        );
        assert_eq!(got(&mut h, &[(1, 4)], 0, 2), ["node-a-1-4", "node-a-1-5"]);
        assert_eq!(
            got(&mut h, &[(1, 6)], 0, 100),
            ["node-a-9-1"],
            "an incarnation not named counts from `since`"
        );
        assert!(
            got(&mut h, &[(1, 6)], T0 + 2, 100).is_empty(),
            "made before the asker started"
        );
        let elsewhere = Wanted {
            origin: "node-z",
            from: &[],
            since: 0,
            limit: 100,
        };
        assert!(h.of_origin(&elsewhere, t).is_empty());
    }
}
