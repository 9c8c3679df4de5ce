//! Which node a request goes to, and why.
//!
//! A request of a session goes to the node its route tag names
//! ([`crate::route_tag`]), whatever placement says after a reload or a
//! failover, and whichever replica it reaches. Anything else is placed by
//! its client key on the rendezvous ranking of the current
//! config, skipping nodes that are down: their clients go to their next
//! choice and come back when the node recovers.
//!
//! When fewer than `health.panic_threshold` percent of the nodes pass their
//! checks, the gateway *fails open* (Envoy's panic mode): it places by the
//! ranking of every node that has not refused a connection, as if all were
//! healthy. A pool whose checks all fail at once more likely has a wrong
//! check than no live node, and refusing everyone would make that an outage.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use stickyio_shared::placement::{self, ClientKey};

use crate::upstream::{Snapshot, Upstream};

/// A route borrows the nodes of the snapshot it was made from: placing a
/// client then costs no reference-count traffic for each node. A session's
/// node may be outside the snapshot (draining, unlisted), so it is owned.
pub struct Route<'s> {
    pub key: ClientKey,
    session: Option<Arc<Upstream>>,
    ranked: Vec<&'s Arc<Upstream>>,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The request's `sid` carries the route tag of its session's node.
    Session,
    /// The node ranks first for the client key.
    FirstChoice,
    /// The nodes ranking higher are down.
    Failover { down: Vec<String> },
    /// Too few nodes pass their checks: placed on every node not ejected.
    FailOpen { healthy: usize, total: usize },
    /// Every node of the config is down.
    NoHealthyNode { down: Vec<String> },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Session => f.write_str("session: the sid's route tag names this node"),
            Reason::FirstChoice => {
                f.write_str("placement: first rendezvous choice for the client key")
            }
            Reason::Failover { down } => write!(
                f,
                "failover: choice {} for the client key, because {} is down",
                down.len() + 1,
                down.join(", ")
            ),
            Reason::FailOpen { healthy, total } => write!(
                f,
                "fail open: only {healthy} of {total} nodes pass health checks, \
                 so the client is placed as if all did"
            ),
            Reason::NoHealthyNode { down } => {
                write!(f, "no healthy node: {} down", down.join(", "))
            }
        }
    }
}

impl Route<'_> {
    /// Nodes to try, best first: the session's node alone, or the healthy
    /// nodes in rendezvous order. None when no node can take the request.
    pub fn candidates(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.session.iter().chain(self.ranked.iter().copied())
    }

    pub fn node(&self) -> Option<&Arc<Upstream>> {
        self.candidates().next()
    }
}

/// The rendezvous ranking of every node of `snapshot` for `key`.
pub fn ranking<'s>(snapshot: &'s Snapshot, key: &ClientKey) -> Vec<&'s Arc<Upstream>> {
    placement::rank(key, &snapshot.nodes, |n| (n.name.as_str(), n.weight()))
}

pub fn client_key(snapshot: &Snapshot, ip: IpAddr) -> ClientKey {
    ClientKey::new(ip, snapshot.config.ipv4_prefix, snapshot.config.ipv6_prefix)
}

/// Whether the gateway fails open for `snapshot`: `Some((healthy, total))`
/// when fewer than `health.panic_threshold` percent of the nodes pass.
pub fn fail_open(snapshot: &Snapshot) -> Option<(usize, usize)> {
    let threshold = usize::from(snapshot.config.health.panic_threshold);
    let total = snapshot.nodes.len();
    let healthy = snapshot.nodes.iter().filter(|n| n.is_healthy()).count();
    (threshold > 0 && healthy * 100 < threshold * total).then_some((healthy, total))
}

/// A request of a session on `node`: it goes there and nowhere else.
pub fn session(snapshot: &Snapshot, ip: IpAddr, node: Arc<Upstream>) -> Route<'static> {
    Route {
        key: client_key(snapshot, ip),
        session: Some(node),
        ranked: Vec::new(),
        reason: Reason::Session,
    }
}

/// Places a new client from `ip`.
pub fn route(snapshot: &Snapshot, ip: IpAddr) -> Route<'_> {
    let key = client_key(snapshot, ip);
    let mut ranked = ranking(snapshot, &key);
    if let Some((healthy, total)) = fail_open(snapshot) {
        let live: Vec<_> = ranked.iter().filter(|n| !n.is_ejected()).copied().collect();
        return Route {
            key,
            session: None,
            // Every node refused a connection: try them all once more.
            ranked: if live.is_empty() { ranked } else { live },
            reason: Reason::FailOpen { healthy, total },
        };
    }
    let down: Vec<String> = ranked
        .iter()
        .take_while(|n| !n.is_healthy())
        .map(|n| n.name.clone())
        .collect();
    ranked.retain(|n| n.is_healthy());
    let reason = match (ranked.is_empty(), down.is_empty()) {
        (true, _) => Reason::NoHealthyNode { down },
        (false, true) => Reason::FirstChoice,
        (false, false) => Reason::Failover { down },
    };
    Route {
        key,
        session: None,
        ranked,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::Registry;

    fn snapshot(prefix: u8) -> Snapshot {
        let text = format!(
            "ipv4_prefix = {prefix}\n[[nodes]]\nname = \"node-a\"\naddr = \"h:1\"\n[[nodes]]\nname = \"node-b\"\naddr = \"h:2\"\n[[nodes]]\nname = \"node-c\"\naddr = \"h:3\"\n"
        );
        let config = Arc::new(stickyio_shared::config::parse(&text, "t").unwrap());
        Registry::default().initial(config, &Metrics::default())
    }

    fn names<'a>(route: &'a Route<'_>) -> Vec<&'a str> {
        route.candidates().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn placement_follows_the_golden_ranking() {
        let snap = snapshot(32);
        let route = route(&snap, "127.0.0.2".parse().unwrap());
        assert_eq!(names(&route), ["node-b", "node-a", "node-c"]);
        assert_eq!(route.reason, Reason::FirstChoice);
        assert_eq!(route.key.to_string(), "127.0.0.2/32");
    }

    #[test]
    fn down_nodes_hand_their_clients_to_the_next_choice_and_get_them_back() {
        let snap = snapshot(32);
        let ip = "127.0.0.2".parse().unwrap();
        snap.nodes[1].eject();
        let r = route(&snap, ip);
        assert_eq!(names(&r), ["node-a", "node-c"]);
        assert_eq!(
            r.reason.to_string(),
            "failover: choice 2 for the client key, because node-b is down"
        );
        for _ in 0..2 {
            snap.nodes[1].observe(true, 2, 2);
        }
        assert_eq!(names(&route(&snap, ip))[0], "node-b");
    }

    #[test]
    fn too_few_passing_nodes_fail_open_but_skip_ejected_ones() {
        let snap = snapshot(32);
        let ip = "127.0.0.2".parse().unwrap();
        for n in &snap.nodes[..2] {
            for _ in 0..2 {
                n.observe(false, 2, 2);
            }
        }
        assert_eq!(fail_open(&snap), Some((1, 3)));
        let r = route(&snap, ip);
        assert_eq!(
            names(&r),
            ["node-b", "node-a", "node-c"],
            "the whole ranking"
        );
        assert_eq!(
            r.reason.to_string(),
            "fail open: only 1 of 3 nodes pass health checks, so the client is placed as if all did"
        );
        snap.nodes[1].eject();
        assert_eq!(names(&route(&snap, ip)), ["node-a", "node-c"]);
    }

    #[test]
    fn one_node_down_of_three_does_not_fail_open_and_zero_turns_it_off() {
        let snap = snapshot(32);
        snap.nodes[0].eject();
        assert_eq!(fail_open(&snap), None);
        let text = "[health]\npanic_threshold = 0\n[[nodes]]\nname = \"a\"\naddr = \"h:1\"\n";
        let config = Arc::new(stickyio_shared::config::parse(text, "t").unwrap());
        let snap = Registry::default().initial(config, &Metrics::default());
        snap.nodes[0].eject();
        assert_eq!(fail_open(&snap), None);
        let r = route(&snap, "10.0.0.1".parse().unwrap());
        assert!(r.node().is_none());
    }

    #[test]
    fn no_healthy_node_gives_no_candidate_and_says_why() {
        let text = "[health]\npanic_threshold = 0\n[[nodes]]\nname = \"node-a\"\naddr = \"h:1\"\n[[nodes]]\nname = \"node-b\"\naddr = \"h:2\"\n[[nodes]]\nname = \"node-c\"\naddr = \"h:3\"\n";
        let config = Arc::new(stickyio_shared::config::parse(text, "t").unwrap());
        let snap = Registry::default().initial(config, &Metrics::default());
        for n in &snap.nodes {
            n.eject();
        }
        let r = route(&snap, "10.0.0.1".parse().unwrap());
        assert!(r.node().is_none());
        assert!(
            r.reason
                .to_string()
                .starts_with("no healthy node: node-c, node-a, node-b down"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn a_session_goes_to_its_node_whatever_placement_says() {
        let snap = snapshot(32);
        let ip = "127.0.0.2".parse().unwrap();
        snap.nodes[2].eject();
        let r = session(&snap, ip, snap.nodes[2].clone());
        assert_eq!(
            (names(&r), r.reason.clone()),
            (vec!["node-c"], Reason::Session)
        );
        assert_eq!(names(&route(&snap, ip))[0], "node-b");
    }

    #[test]
    fn prefix_groups_clients() {
        let snap = snapshot(8);
        let first = names(&route(&snap, "127.1.2.3".parse().unwrap()))[0].to_owned();
        for ip in ["127.0.0.1", "127.200.9.9", "127.255.255.254"] {
            assert_eq!(names(&route(&snap, ip.parse().unwrap()))[0], first);
        }
    }
}
