//! Who is in the pool, as this node sees it, and whether another process
//! uses this node's name.
//!
//! Members are the nodes whose heartbeat key is alive. A publish must reach
//! every one of them, so the publish script is told whom to expect. One case
//! needs memory of our own: a Redis restart wipes every key, and for a while
//! after it the nodes still resubscribing have no key. So the members known
//! when Redis was lost are *remembered*, and expected, for a grace period
//! after this node is back, or until they show up again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Another process that refreshes this node's heartbeat key or publishes
/// under its name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    /// That process's incarnation, as it wrote it.
    pub other_boot: String,
    /// When it was first seen, in ms since the Unix epoch.
    pub since: u64,
    #[serde(skip)]
    last_seen: Option<Instant>,
}

/// One live member as `/readyz` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub name: String,
    pub boot: String,
}

#[derive(Debug)]
pub(super) struct Membership {
    own: String,
    /// How long a conflict stays reported after it was last seen.
    conflict_hold: Duration,
    /// Name → incarnation, from the latest heartbeat.
    live: BTreeMap<String, String>,
    remembered: Vec<String>,
    /// End of the grace period for `remembered`; `None` while Redis is lost.
    remember_until: Option<Instant>,
    conflict: Option<Conflict>,
}

/// Whom a publish must reach: member names, the first `remembered` of which
/// count even without a heartbeat key.
#[derive(Debug, PartialEq)]
pub(super) struct Expected {
    pub names: Vec<String>,
    pub remembered: usize,
}

impl Membership {
    pub(super) fn new(own: &str, conflict_hold: Duration) -> Membership {
        Membership {
            own: own.to_owned(),
            conflict_hold,
            live: BTreeMap::new(),
            remembered: Vec::new(),
            remember_until: None,
            conflict: None,
        }
    }

    /// The heartbeat found these members alive.
    pub(super) fn update(&mut self, live: BTreeMap<String, String>) {
        self.remembered.retain(|name| !live.contains_key(name));
        self.live = live;
    }

    /// Redis is lost: remember everyone we knew, this node aside.
    pub(super) fn lost(&mut self, now: Instant) {
        if self.remember_until.is_none_or(|until| now >= until) {
            self.remembered.clear();
        }
        for name in std::mem::take(&mut self.live).into_keys() {
            if name != self.own && !self.remembered.contains(&name) {
                self.remembered.push(name);
            }
        }
        self.remember_until = None;
    }

    /// Redis is back: remembered members are expected for `grace` more.
    pub(super) fn regained(&mut self, now: Instant, grace: Duration) {
        self.remember_until = Some(now + grace);
    }

    pub(super) fn expected(&self, now: Instant) -> Expected {
        let remembered: &[String] = match self.remember_until {
            Some(until) if now < until => &self.remembered,
            _ => &[],
        };
        let mut names = remembered.to_vec();
        for name in self
            .live
            .keys()
            .chain(std::iter::once(&self.own))
            .filter(|name| !remembered.contains(name))
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        Expected {
            names,
            remembered: remembered.len(),
        }
    }

    pub(super) fn members(&self) -> Vec<Member> {
        self.live
            .iter()
            .map(|(name, boot)| Member {
                name: name.clone(),
                boot: boot.clone(),
            })
            .collect()
    }

    /// Another incarnation `other_boot` uses our name. True when this starts
    /// a conflict (rather than continuing one), so it is logged once.
    pub(super) fn conflict_seen(&mut self, other_boot: &str, now: Instant) -> bool {
        let starts = self.conflict(now).is_none();
        match &mut self.conflict {
            Some(conflict) if !starts => {
                conflict.other_boot = other_boot.to_owned();
                conflict.last_seen = Some(now);
            }
            _ => {
                self.conflict = Some(Conflict {
                    other_boot: other_boot.to_owned(),
                    since: crate::cluster::millis(SystemTime::now()),
                    last_seen: Some(now),
                });
            }
        }
        starts
    }

    /// The conflict, while it was seen within the hold time. Both processes
    /// overwrite the key in turn, so it is seen every heartbeat or two.
    pub(super) fn conflict(&self, now: Instant) -> Option<&Conflict> {
        self.conflict.as_ref().filter(|c| {
            c.last_seen
                .is_some_and(|seen| now.saturating_duration_since(seen) < self.conflict_hold)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| (n.to_string(), "1".to_owned()))
            .collect()
    }

    fn names(expected: &Expected) -> Vec<&str> {
        expected.names.iter().map(String::as_str).collect()
    }

    #[test]
    fn live_members_and_self_are_expected() {
        let mut m = Membership::new("a", Duration::from_secs(6));
        let now = Instant::now();
        assert_eq!(names(&m.expected(now)), ["a"]);
        m.update(live(&["a", "b", "c"]));
        let expected = m.expected(now);
        assert_eq!(
            (names(&expected), expected.remembered),
            (vec!["a", "b", "c"], 0)
        );
    }

    #[test]
    fn members_known_before_a_redis_restart_are_expected_for_the_grace() {
        let mut m = Membership::new("a", Duration::from_secs(6));
        let t = Instant::now();
        m.update(live(&["a", "b", "c"]));
        m.lost(t);
        m.regained(t, Duration::from_secs(5));
        m.update(live(&["a"]));
        let expected = m.expected(t + Duration::from_secs(1));
        assert_eq!(
            (names(&expected), expected.remembered),
            (vec!["b", "c", "a"], 2)
        );

        m.update(live(&["a", "b"]));
        let expected = m.expected(t + Duration::from_secs(2));
        assert_eq!(
            (names(&expected), expected.remembered),
            (vec!["c", "a", "b"], 1),
            "b is back: its key decides from now on"
        );
        let expected = m.expected(t + Duration::from_secs(5));
        assert_eq!(
            (names(&expected), expected.remembered),
            (vec!["a", "b"], 0),
            "c never came back within the grace"
        );
    }

    #[test]
    fn a_second_loss_within_the_grace_keeps_what_was_remembered() {
        let mut m = Membership::new("a", Duration::from_secs(6));
        let t = Instant::now();
        m.update(live(&["a", "b"]));
        m.lost(t);
        m.regained(t, Duration::from_secs(5));
        m.update(live(&["a"]));
        m.lost(t + Duration::from_secs(1));
        m.regained(t + Duration::from_secs(2), Duration::from_secs(5));
        assert_eq!(m.expected(t + Duration::from_secs(3)).remembered, 1);
    }

    #[test]
    fn a_conflict_is_reported_while_it_recurs() {
        let mut m = Membership::new("a", Duration::from_secs(2));
        let t = Instant::now();
        assert!(m.conflict(t).is_none());
        assert!(m.conflict_seen("42", t), "a new conflict");
        assert!(
            !m.conflict_seen("42", t + Duration::from_secs(1)),
            "the same one"
        );
        assert_eq!(
            m.conflict(t + Duration::from_secs(2)).unwrap().other_boot,
            "42"
        );
        assert!(
            m.conflict(t + Duration::from_secs(3)).is_none(),
            "it went away"
        );
        assert!(
            m.conflict_seen("43", t + Duration::from_secs(4)),
            "a new one again"
        );
    }
}
