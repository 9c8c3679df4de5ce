//! Cursors: the opaque strings a socket gets with every message, and gives
//! back to `subscribe {pattern, since}` to resume where it was.
//!
//! A cursor is a [`Frontier`] (per origin incarnation, the last sequence
//! number the client is known to have seen; the mesh's history) or a
//! [`Stamp`] (a Redis Stream entry id; the Redis backend's history), plus
//! when it was minted, in bytes, authenticated and made printable:
//!
//! ```text
//! v=1 | pool (8) | minted_at ms (8) | n (2) | n × [name len (1), name, boot (8), seq (8)]
//!     | stamp? (1) [ms (8), seq (8)] | mac (16)
//! ```
//!
//! The MAC is HMAC-SHA256 (truncated to 16 bytes) under a key derived from
//! the pool's secret, so a forged or altered cursor is refused, and the pool
//! id (also derived from it) tells a cursor of another pool from a forged
//! one. Decoding takes network input: it checks length first and returns a
//! typed [`CursorError`], never panics.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

/// The cursor format this build writes and reads.
const VERSION: u8 = 1;
const POOL_LEN: usize = 8;
const MAC_LEN: usize = 16;
/// Most incarnations a cursor names; older ones are left out when minting
/// (see `History`: idle incarnations leave the frontier).
pub(crate) const MAX_STREAMS: usize = 64;
/// Longest cursor text accepted: the longest this build mints (every stream
/// with a 255-byte name), in base64.
pub(crate) const MAX_CURSOR_CHARS: usize =
    (1 + POOL_LEN + 8 + 2 + MAX_STREAMS * (1 + 255 + 16) + MAC_LEN) * 4 / 3 + 4;

/// Per origin incarnation, the last sequence number seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frontier {
    streams: Vec<(Arc<str>, u64, u64)>,
}

impl Frontier {
    /// The last sequence of `origin`'s incarnation `boot`, if it is named.
    pub(crate) fn get(&self, origin: &str, boot: u64) -> Option<u64> {
        self.streams
            .iter()
            .find(|(o, b, _)| **o == *origin && *b == boot)
            .map(|(_, _, seq)| *seq)
    }

    /// Records that `seq` of `origin`/`boot` was seen (never moves back).
    pub(crate) fn advance(&mut self, origin: &Arc<str>, boot: u64, seq: u64) {
        match self
            .streams
            .iter_mut()
            .find(|(o, b, _)| **o == **origin && *b == boot)
        {
            Some((_, _, last)) => *last = (*last).max(seq),
            None => self.streams.push((origin.clone(), boot, seq)),
        }
    }

    /// Whether `seq` of `origin`/`boot` is at or before this frontier.
    pub(crate) fn covers(&self, origin: &str, boot: u64, seq: u64) -> bool {
        self.get(origin, boot).is_some_and(|last| seq <= last)
    }

    /// Every position of `other` is covered by this frontier.
    pub(crate) fn dominates(&self, other: &Frontier) -> bool {
        other
            .streams
            .iter()
            .all(|(o, b, seq)| self.covers(o, *b, *seq))
    }

    /// Takes, per incarnation, the later of the two positions.
    pub(crate) fn merge(&mut self, other: &Frontier) {
        for (origin, boot, seq) in &other.streams {
            self.advance(origin, *boot, *seq);
        }
    }

    /// Forgets `origin`/`boot` (an incarnation idle for longer than the
    /// history keeps anything).
    pub(crate) fn remove(&mut self, origin: &str, boot: u64) {
        self.streams
            .retain(|(o, b, _)| !(**o == *origin && *b == boot));
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.streams.iter().map(|(o, b, s)| (&**o, *b, *s))
    }
}

/// A Redis Stream entry id, `{ms}-{seq}`: the position of a message in the
/// Redis backend's history. Ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub ms: u64,
    pub seq: u64,
}

impl Stamp {
    /// Parses `{ms}-{seq}`, as XADD returns it.
    pub fn parse(text: &str) -> Option<Stamp> {
        let (ms, seq) = text.split_once('-')?;
        Some(Stamp {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A decoded cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// When it was minted, in ms since the Unix epoch (the minting node's clock).
    pub minted_at: u64,
    pub frontier: Frontier,
    /// With the Redis backend: the stream entry of the message.
    pub stamp: Option<Stamp>,
}

/// Why a cursor was refused; `Display` is the reason sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("the cursor is {len} characters; the longest accepted is {MAX_CURSOR_CHARS}")]
    TooLong { len: usize },
    #[error("the cursor is not one this pool issued: it is not base64url text")]
    NotBase64,
    #[error("the cursor is truncated or malformed: {0}")]
    Malformed(&'static str),
    #[error("cursor format {0} is not supported (this node reads format {VERSION})")]
    Version(u8),
    #[error("the cursor comes from another pool (another cluster secret)")]
    ForeignPool,
    #[error("the cursor was altered or forged: its signature does not match")]
    Forged,
}

/// Mints and checks the cursors of one pool.
pub(crate) struct CursorKey {
    pool: [u8; POOL_LEN],
    key: hmac::Key,
}

impl CursorKey {
    /// The key of the pool that shares `secret` (the cluster secret, or for
    /// a pool without one, a name that only identifies it).
    pub(crate) fn new(secret: &[u8]) -> CursorKey {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |label: &[u8]| hmac::sign(&root, label);
        let mut pool = [0; POOL_LEN];
        pool.copy_from_slice(&derive(b"stickyio cursor pool id").as_ref()[..POOL_LEN]);
        let key = hmac::Key::new(
            hmac::HMAC_SHA256,
            derive(b"stickyio cursor mac key").as_ref(),
        );
        CursorKey { pool, key }
    }

    /// The cursor as text. At most [`MAX_STREAMS`] incarnations are written
    /// (the latest entries of the frontier).
    pub(crate) fn encode(&self, cursor: &Cursor) -> String {
        let streams = &cursor.frontier.streams;
        let kept = &streams[streams.len().saturating_sub(MAX_STREAMS)..];
        let mut bytes = Vec::with_capacity(32 + kept.len() * 32);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.pool);
        bytes.extend_from_slice(&cursor.minted_at.to_be_bytes());
        bytes.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        for (origin, boot, seq) in kept {
            // Node names are validated config values; a longer one is cut,
            // which only makes its messages look new to a resume.
            let name = &origin.as_bytes()[..origin.len().min(255)];
            bytes.push(name.len() as u8);
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(&boot.to_be_bytes());
            bytes.extend_from_slice(&seq.to_be_bytes());
        }
        match cursor.stamp {
            None => bytes.push(0),
            Some(stamp) => {
                bytes.push(1);
                bytes.extend_from_slice(&stamp.ms.to_be_bytes());
                bytes.extend_from_slice(&stamp.seq.to_be_bytes());
            }
        }
        let mac = hmac::sign(&self.key, &bytes);
        bytes.extend_from_slice(&mac.as_ref()[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(crate) fn decode(&self, text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_CHARS {
            return Err(CursorError::TooLong { len: text.len() });
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::NotBase64)?;
        let mut reader = Reader(&bytes);
        let version = reader.take::<1>("no version")?[0];
        if version != VERSION {
            return Err(CursorError::Version(version));
        }
        if reader.take::<POOL_LEN>("no pool id")? != self.pool {
            return Err(CursorError::ForeignPool);
        }
        let Some(signed_len) = bytes.len().checked_sub(MAC_LEN) else {
            return Err(CursorError::Malformed("no signature"));
        };
        let (signed, mac) = bytes.split_at(signed_len);
        // A full-length MAC is checked in constant time; the cursor carries
        // a truncated one, so compare it the same way.
        let expected = hmac::sign(&self.key, signed);
        if !stickyio_shared::secret::Secret::bytes_match(&expected.as_ref()[..MAC_LEN], mac) {
            return Err(CursorError::Forged);
        }
        let mut reader = Reader(&signed[1 + POOL_LEN..]);
        let minted_at = u64::from_be_bytes(reader.take("no mint time")?);
        let count = u16::from_be_bytes(reader.take("no stream count")?);
        let mut frontier = Frontier::default();
        for _ in 0..count {
            let len = reader.take::<1>("a stream without its name")?[0] as usize;
            let name = reader.bytes(len)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| CursorError::Malformed("a node name that is not UTF-8"))?;
            let boot = u64::from_be_bytes(reader.take("a stream without its incarnation")?);
            let seq = u64::from_be_bytes(reader.take("a stream without its sequence")?);
            frontier.advance(&Arc::from(name), boot, seq);
        }
        let stamp = match reader.take::<1>("no stamp flag")?[0] {
            0 => None,
            1 => Some(Stamp {
                ms: u64::from_be_bytes(reader.take("a stamp without its time")?),
                seq: u64::from_be_bytes(reader.take("a stamp without its sequence")?),
            }),
            _ => {
                return Err(CursorError::Malformed(
                    "a stamp flag that is neither 0 nor 1",
                ));
            }
        };
        if !reader.0.is_empty() {
            return Err(CursorError::Malformed("bytes after the last field"));
        }
        Ok(Cursor {
            minted_at,
            frontier,
            stamp,
        })
    }
}

/// Reads fixed-size fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        if self.0.len() < n {
            return Err(CursorError::Malformed("it ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn take<const N: usize>(&mut self, missing: &'static str) -> Result<[u8; N], CursorError> {
        let head = self.bytes(N).map_err(|_| CursorError::Malformed(missing))?;
        let mut out = [0; N];
        out.copy_from_slice(head);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        let mut frontier = Frontier::default();
        frontier.advance(&Arc::from("node-a"), 7, 17);
        frontier.advance(&Arc::from("node-b"), u64::MAX, 1);
        Cursor {
            minted_at: 1_700_000_000_000,
            frontier,
            stamp: None,
        }
    }

    #[test]
    fn round_trips_and_is_url_safe() {
        let key = CursorKey::new(b"s3cret");
        let text = key.encode(&cursor());
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{text}"
        );
        assert_eq!(key.decode(&text), Ok(cursor()));
        let stamped = Cursor {
            minted_at: 0,
            frontier: Frontier::default(),
            stamp: Stamp::parse("1700000000000-3"),
        };
        assert_eq!(key.decode(&key.encode(&stamped)), Ok(stamped.clone()));
        assert!(stamped.frontier.is_empty());
        assert_eq!(
            stamped.stamp.map(|s| s.to_string()).as_deref(),
            Some("1700000000000-3")
        );
        assert!(Stamp::parse("1-2") < Stamp::parse("1-10"));
        assert!(Stamp::parse("2-0") > Stamp::parse("1-10"));
        assert_eq!(Stamp::parse("1-x"), None);
    }

    #[test]
    fn another_pool_and_forgeries_are_told_apart() {
        let key = CursorKey::new(b"s3cret");
        let text = key.encode(&cursor());
        assert_eq!(
            CursorKey::new(b"other").decode(&text),
            Err(CursorError::ForeignPool)
        );
        // Every single-byte change of the signed part or the MAC is refused.
        let bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        for i in 1 + POOL_LEN..bytes.len() {
            let mut forged = bytes.clone();
            forged[i] ^= 0x01;
            assert_eq!(
                key.decode(&URL_SAFE_NO_PAD.encode(&forged)),
                Err(CursorError::Forged),
                "byte {i}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let key = CursorKey::new(b"s3cret");
        assert_eq!(key.decode("not a cursor!"), Err(CursorError::NotBase64));
        assert_eq!(key.decode(""), Err(CursorError::Malformed("no version")));
        assert_eq!(key.decode("AQ"), Err(CursorError::Malformed("no pool id")));
        assert_eq!(key.decode("Ag"), Err(CursorError::Version(2)));
        let long = "A".repeat(MAX_CURSOR_CHARS + 1);
        assert_eq!(
            key.decode(&long),
            Err(CursorError::TooLong {
                len: MAX_CURSOR_CHARS + 1
            })
        );
        // Signed correctly but inconsistent inside: a count past the end.
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&key.pool);
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&5u16.to_be_bytes());
        let mac = hmac::sign(&key.key, &bytes);
        bytes.extend_from_slice(&mac.as_ref()[..MAC_LEN]);
        assert_eq!(
            key.decode(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(CursorError::Malformed("a stream without its name"))
        );
    }

    #[test]
    fn frontiers_advance_merge_and_compare() {
        let a: Arc<str> = Arc::from("node-a");
        let mut f = Frontier::default();
        f.advance(&a, 1, 5);
        f.advance(&a, 1, 3);
        assert_eq!(f.get("node-a", 1), Some(5), "never moves back");
        assert!(f.covers("node-a", 1, 5) && !f.covers("node-a", 1, 6));
        assert!(!f.covers("node-a", 2, 1), "another incarnation");
        let mut g = Frontier::default();
        g.advance(&a, 2, 9);
        assert!(!f.dominates(&g));
        f.merge(&g);
        assert!(f.dominates(&g));
        f.remove("node-a", 1);
        assert_eq!(f.get("node-a", 1), None);
    }

    #[test]
    fn only_the_latest_streams_are_written() {
        let key = CursorKey::new(b"s");
        let mut frontier = Frontier::default();
        for i in 0..(MAX_STREAMS as u64 + 10) {
            frontier.advance(&Arc::from("n"), i, 1);
        }
        let decoded = key
            .decode(&key.encode(&Cursor {
                minted_at: 1,
                frontier,
                stamp: None,
            }))
            .unwrap();
        assert_eq!(decoded.frontier.iter().count(), MAX_STREAMS);
        assert_eq!(decoded.frontier.get("n", MAX_STREAMS as u64 + 9), Some(1));
        assert_eq!(decoded.frontier.get("n", 0), None);
    }
}
