//! Route tags: the Engine.IO `sid` a client sees names the node that holds
//! the session, so any gateway replica can route it with no shared state.
//!
//! A node's `sid` `S` of a session on node `name` at `addr` is shown to the
//! client as `P.M.S`: `P` is the node (name and address, base64url), `M` a
//! MAC over `P` and `S` under the replicas' shared `route_key` (HMAC-SHA256,
//! 128 bits kept). The address is in the tag because a replica may not list
//! the node yet (a rolling config push reaches replicas one by one), and the
//! MAC is why a client cannot aim a session at a node of its choosing: a
//! tag is only ever made by a gateway, for the session it names.
//!
//! Keys rotate without breaking live sessions: tags are made with the
//! current key and accepted under the previous one too.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use stickyio_shared::config::gateway::NodeAddr;

/// Bytes of MAC kept in a tag.
const MAC_BYTES: usize = 16;
/// Longest tagged sid accepted: a node name and address, a MAC and a sid.
pub const MAX_TAGGED: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("the sid is not one this gateway gave out (expected node.mac.sid)")]
    Malformed,
    #[error("the sid's route tag does not verify: forged, or made with another route_key")]
    Forged,
    #[error("the sid is longer than {MAX_TAGGED} bytes")]
    TooLong,
}

/// Where a tagged session lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub name: String,
    pub addr: NodeAddr,
    /// The sid as the node knows it.
    pub node_sid: String,
}

/// The current key, and the previous one during a rotation.
pub struct RouteKeys {
    current: hmac::Key,
    previous: Option<hmac::Key>,
}

impl RouteKeys {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Self {
        RouteKeys {
            current: hmac::Key::new(hmac::HMAC_SHA256, current),
            previous: previous.map(|p| hmac::Key::new(hmac::HMAC_SHA256, p)),
        }
    }

    /// The sid to show the client for `node_sid` on node `name` at `addr`.
    pub fn seal(&self, name: &str, addr: &str, node_sid: &str) -> String {
        let payload = payload(name, addr);
        let mac = mac(&self.current, &payload, node_sid);
        format!(
            "{}.{}.{node_sid}",
            B64.encode(&payload),
            B64.encode(&mac.as_ref()[..MAC_BYTES])
        )
    }

    /// The node and node sid of a tagged sid.
    pub fn open(&self, tagged: &str) -> Result<Tagged, TagError> {
        if tagged.len() > MAX_TAGGED {
            return Err(TagError::TooLong);
        }
        let mut parts = tagged.splitn(3, '.');
        let (Some(p), Some(m), Some(node_sid)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TagError::Malformed);
        };
        let payload = B64.decode(p).map_err(|_| TagError::Malformed)?;
        let presented = B64.decode(m).map_err(|_| TagError::Malformed)?;
        if presented.len() != MAC_BYTES || node_sid.is_empty() {
            return Err(TagError::Malformed);
        }
        let verifies = |key: &hmac::Key| {
            let expected = mac(key, &payload, node_sid);
            stickyio_shared::secret::Secret::bytes_match(
                &expected.as_ref()[..MAC_BYTES],
                &presented,
            )
        };
        if !verifies(&self.current) && !self.previous.as_ref().is_some_and(verifies) {
            return Err(TagError::Forged);
        }
        let (name, addr) = split_payload(&payload).ok_or(TagError::Malformed)?;
        Ok(Tagged {
            name,
            addr,
            node_sid: node_sid.to_owned(),
        })
    }
}

/// `[name length][name][addr]`: names are at most 255 bytes (the config
/// checks), addresses take the rest.
fn payload(name: &str, addr: &str) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(255)];
    let mut out = Vec::with_capacity(1 + name.len() + addr.len());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(addr.as_bytes());
    out
}

fn split_payload(payload: &[u8]) -> Option<(String, NodeAddr)> {
    let (&len, rest) = payload.split_first()?;
    let (name, addr) = rest.split_at_checked(usize::from(len))?;
    let name = std::str::from_utf8(name).ok()?;
    let addr = std::str::from_utf8(addr).ok()?.parse().ok()?;
    (!name.is_empty()).then(|| (name.to_owned(), addr))
}

fn mac(key: &hmac::Key, payload: &[u8], node_sid: &str) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(payload);
    ctx.update(&[0]);
    ctx.update(node_sid.as_bytes());
    ctx.sign()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> RouteKeys {
        RouteKeys::new(b"a route key shared by replicas", None)
    }

    #[test]
    fn a_sealed_sid_opens_to_its_node_and_sid() {
        let tagged = keys().seal("node-a", "127.0.0.1:3001", "lv_VI97HAXpY6yYWAAAC");
        assert!(tagged.ends_with(".lv_VI97HAXpY6yYWAAAC"), "{tagged}");
        assert!(
            tagged
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "URL-safe: {tagged}"
        );
        assert_eq!(
            keys().open(&tagged),
            Ok(Tagged {
                name: "node-a".into(),
                addr: "127.0.0.1:3001".parse().unwrap(),
                node_sid: "lv_VI97HAXpY6yYWAAAC".into()
            })
        );
    }

    /// Pinned (and checked with Python's hmac module), so every build and
    /// replica makes the same tag for a key.
    #[test]
    fn tags_are_stable_across_builds() {
        assert_eq!(
            keys().seal("node-a", "127.0.0.1:3001", "sid"),
            "Bm5vZGUtYTEyNy4wLjAuMTozMDAx.VqZCAtWsaHHPCwS6qOSdyQ.sid"
        );
    }

    #[test]
    fn a_changed_byte_anywhere_fails() {
        let tagged = keys().seal("node-a", "127.0.0.1:3001", "abc");
        let forged_node = tagged.replacen("Bm5vZGUtYT", "Bm5vZGUtYj", 1);
        assert_eq!(keys().open(&forged_node), Err(TagError::Forged));
        let other_sid = format!("{}d", tagged);
        assert_eq!(
            keys().open(&other_sid),
            Err(TagError::Forged),
            "bound to its sid"
        );
        let other_key = RouteKeys::new(b"another pool's key", None);
        assert_eq!(other_key.open(&tagged), Err(TagError::Forged));
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        for bad in [
            "",
            "plain-sid",
            "a.b",
            "..",
            "a.b.",
            "!!.!!.sid",
            "AA.AA.sid",
            &"x".repeat(600),
        ] {
            assert!(keys().open(bad).is_err(), "{bad:?}");
        }
        assert_eq!(keys().open(&"x".repeat(600)), Err(TagError::TooLong));
        assert_eq!(keys().open("plain-sid"), Err(TagError::Malformed));
    }

    #[test]
    fn the_previous_key_is_accepted_during_a_rotation() {
        let old = RouteKeys::new(b"old key", None);
        let tagged = old.seal("n", "h:1", "s");
        let rotated = RouteKeys::new(b"new key", Some(b"old key"));
        assert_eq!(rotated.open(&tagged).map(|t| t.node_sid), Ok("s".into()));
        let fresh = rotated.seal("n", "h:1", "s");
        assert_ne!(fresh, tagged, "new tags use the new key");
        assert_eq!(
            RouteKeys::new(b"new key", None)
                .open(&fresh)
                .map(|t| t.name),
            Ok("n".into())
        );
        assert_eq!(
            RouteKeys::new(b"new key", None).open(&tagged),
            Err(TagError::Forged)
        );
    }
}
