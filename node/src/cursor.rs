//! Cursors: the opaque strings a socket gets with every message, and gives
//! back to `subscribe {pattern, since}` to resume where it was.
//!
//! A cursor is a [`Frontier`] (per origin incarnation, the last sequence
//! number the client is known to have seen; the mesh's history) or a
//! [`Stamp`] (a Redis Stream entry id; the Redis backend's history), plus
//! when it was minted, in bytes, authenticated and made printable:
//!
//! ```text
//! v=2 | pool (4) | minted_at ms (6) | n (1) | n × [boot (8), seq (varint)]
//!     | stamp? (1) [ms (varint), seq (varint)] | mac (12)
//! ```
//!
//! Every delivery carries one, so it is kept short (78 characters
//! with three origins, where format 1 took 140): an incarnation is named by
//! its boot number alone, a random `u64` drawn when the node starts, which
//! already tells apart two processes of one name; sequences are varints.
//!
//! The MAC is HMAC-SHA256 (truncated to 12 bytes, as IPsec truncates it)
//! under a key derived from the pool's secret, so a forged or altered cursor
//! is refused, and the pool id (also derived from it) tells a cursor of
//! another pool from a forged one. Decoding takes network input: it checks
//! length first and returns a typed [`CursorError`], never panics.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

/// The cursor format this build writes and reads.
const VERSION: u8 = 2;
const POOL_LEN: usize = 4;
const MINTED_LEN: usize = 6;
const MAC_LEN: usize = 12;
/// Longest varint of a `u64`.
const VARINT_MAX: usize = 10;
/// Most incarnations a cursor names; older ones are left out when minting
/// (see `History`: idle incarnations leave the frontier).
pub(crate) const MAX_STREAMS: usize = 64;
/// Longest cursor text accepted: the longest this build mints (every stream
/// with the longest sequence, a stamp), in base64.
pub(crate) const MAX_CURSOR_CHARS: usize =
    (1 + POOL_LEN + MINTED_LEN + 1 + MAX_STREAMS * (8 + VARINT_MAX) + 1 + 2 * VARINT_MAX + MAC_LEN)
        * 4
        / 3
        + 4;

/// Per origin incarnation (its boot number), the last sequence number seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frontier {
    streams: Vec<(u64, u64)>,
}

impl Frontier {
    /// The last sequence of incarnation `boot`, if it is named.
    pub(crate) fn get(&self, boot: u64) -> Option<u64> {
        self.streams
            .iter()
            .find(|(b, _)| *b == boot)
            .map(|(_, seq)| *seq)
    }

    /// Records that `seq` of incarnation `boot` was seen (never moves back).
    pub(crate) fn advance(&mut self, boot: u64, seq: u64) {
        match self.streams.iter_mut().find(|(b, _)| *b == boot) {
            Some((_, last)) => *last = (*last).max(seq),
            None => self.streams.push((boot, seq)),
        }
    }

    /// Whether `seq` of incarnation `boot` is at or before this frontier.
    pub(crate) fn covers(&self, boot: u64, seq: u64) -> bool {
        self.get(boot).is_some_and(|last| seq <= last)
    }

    /// Every position of `other` is covered by this frontier.
    pub(crate) fn dominates(&self, other: &Frontier) -> bool {
        other.streams.iter().all(|(b, seq)| self.covers(*b, *seq))
    }

    /// Takes, per incarnation, the later of the two positions.
    pub(crate) fn merge(&mut self, other: &Frontier) {
        for (boot, seq) in &other.streams {
            self.advance(*boot, *seq);
        }
    }

    /// Forgets incarnation `boot` (idle for longer than the history keeps
    /// anything).
    pub(crate) fn remove(&mut self, boot: u64) {
        self.streams.retain(|(b, _)| *b != boot);
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.streams.iter().copied()
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

    /// The cursor of these parts as text (taken apart, so minting copies no
    /// frontier). At most [`MAX_STREAMS`] incarnations are written (the
    /// latest entries of the frontier).
    pub(crate) fn encode(
        &self,
        minted_at: u64,
        frontier: &Frontier,
        stamp: Option<Stamp>,
    ) -> String {
        let streams = &frontier.streams;
        let kept = &streams[streams.len().saturating_sub(MAX_STREAMS)..];
        let mut bytes = Vec::with_capacity(1 + POOL_LEN + MINTED_LEN + 2 + kept.len() * 11 + 24);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.pool);
        bytes.extend_from_slice(&minted_at.to_be_bytes()[8 - MINTED_LEN..]);
        bytes.push(kept.len() as u8);
        for (boot, seq) in kept {
            bytes.extend_from_slice(&boot.to_be_bytes());
            put_varint(&mut bytes, *seq);
        }
        match stamp {
            None => bytes.push(0),
            Some(stamp) => {
                bytes.push(1);
                put_varint(&mut bytes, stamp.ms);
                put_varint(&mut bytes, stamp.seq);
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
        if signed_len < 1 + POOL_LEN {
            return Err(CursorError::Malformed("no signature"));
        }
        let (signed, mac) = bytes.split_at(signed_len);
        // A full-length MAC is checked in constant time; the cursor carries
        // a truncated one, so compare it the same way.
        let expected = hmac::sign(&self.key, signed);
        if !stickyio_shared::secret::Secret::bytes_match(&expected.as_ref()[..MAC_LEN], mac) {
            return Err(CursorError::Forged);
        }
        let mut reader = Reader(&signed[1 + POOL_LEN..]);
        let mut minted = [0; 8];
        minted[8 - MINTED_LEN..].copy_from_slice(&reader.take::<MINTED_LEN>("no mint time")?);
        let minted_at = u64::from_be_bytes(minted);
        let count = reader.take::<1>("no stream count")?[0];
        if usize::from(count) > MAX_STREAMS {
            return Err(CursorError::Malformed("more streams than a cursor names"));
        }
        let mut frontier = Frontier::default();
        for _ in 0..count {
            let boot = u64::from_be_bytes(reader.take("a stream without its incarnation")?);
            let seq = reader.varint("a stream without its sequence")?;
            frontier.advance(boot, seq);
        }
        let stamp = match reader.take::<1>("no stamp flag")?[0] {
            0 => None,
            1 => Some(Stamp {
                ms: reader.varint("a stamp without its time")?,
                seq: reader.varint("a stamp without its sequence")?,
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

/// Appends `value` as an unsigned LEB128 varint (7 bits a byte, low first).
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
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

    /// An unsigned LEB128 varint of at most [`VARINT_MAX`] bytes that fits
    /// a `u64`.
    fn varint(&mut self, missing: &'static str) -> Result<u64, CursorError> {
        let mut value: u64 = 0;
        for i in 0..VARINT_MAX {
            let [byte] = self.take::<1>(missing)?;
            let bits = u64::from(byte & 0x7f);
            let shift = 7 * i as u32;
            if shift == 63 && bits > 1 {
                return Err(CursorError::Malformed("a number too large for 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CursorError::Malformed("a number too large for 64 bits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(key: &CursorKey, cursor: &Cursor) -> String {
        key.encode(cursor.minted_at, &cursor.frontier, cursor.stamp)
    }

    fn cursor() -> Cursor {
        let mut frontier = Frontier::default();
        frontier.advance(7, 17);
        frontier.advance(u64::MAX, u64::MAX);
        frontier.advance(0x1234_5678_9abc_def0, 300);
        Cursor {
            minted_at: 1_700_000_000_000,
            frontier,
            stamp: None,
        }
    }

    #[test]
    fn round_trips_and_is_url_safe_and_short() {
        let key = CursorKey::new(b"s3cret");
        let text = encode(&key, &cursor());
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{text}"
        );
        assert_eq!(key.decode(&text), Ok(cursor()));
        // Three origins at realistic sequences: what W5 carries per message.
        let mut three = Frontier::default();
        for boot in [rand::random(), rand::random(), rand::random()] {
            three.advance(boot, 120_000);
        }
        let typical = key.encode(1_700_000_000_000, &three, None);
        assert!(typical.len() <= 80, "{} chars: {typical}", typical.len());
        let stamped = Cursor {
            minted_at: 0,
            frontier: Frontier::default(),
            stamp: Stamp::parse("1700000000000-3"),
        };
        assert_eq!(key.decode(&encode(&key, &stamped)), Ok(stamped.clone()));
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
    fn varints_round_trip_at_every_width() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut bytes = Vec::new();
            put_varint(&mut bytes, value);
            assert!(bytes.len() <= VARINT_MAX);
            let mut reader = Reader(&bytes);
            assert_eq!(reader.varint("x"), Ok(value));
            assert!(reader.0.is_empty());
        }
        let overflow = [0xff; VARINT_MAX];
        assert_eq!(
            Reader(&overflow).varint("x"),
            Err(CursorError::Malformed("a number too large for 64 bits"))
        );
        let mut too_big = [0xff; VARINT_MAX];
        too_big[VARINT_MAX - 1] = 0x02;
        assert_eq!(
            Reader(&too_big).varint("x"),
            Err(CursorError::Malformed("a number too large for 64 bits"))
        );
        assert_eq!(
            Reader(&[0x80]).varint("cut"),
            Err(CursorError::Malformed("cut"))
        );
    }

    #[test]
    fn another_pool_and_forgeries_are_told_apart() {
        let key = CursorKey::new(b"s3cret");
        let text = encode(&key, &cursor());
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

    /// Signs `body` (after version and pool) as the pool would.
    fn signed(key: &CursorKey, body: &[u8]) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&key.pool);
        bytes.extend_from_slice(body);
        let mac = hmac::sign(&key.key, &bytes);
        bytes.extend_from_slice(&mac.as_ref()[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(&bytes)
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let key = CursorKey::new(b"s3cret");
        assert_eq!(key.decode("not a cursor!"), Err(CursorError::NotBase64));
        assert_eq!(key.decode(""), Err(CursorError::Malformed("no version")));
        assert_eq!(key.decode("Ag"), Err(CursorError::Malformed("no pool id")));
        assert_eq!(key.decode("AQ"), Err(CursorError::Version(1)));
        let long = "A".repeat(MAX_CURSOR_CHARS + 1);
        assert_eq!(
            key.decode(&long),
            Err(CursorError::TooLong {
                len: MAX_CURSOR_CHARS + 1
            })
        );
        // The pool id, then too few bytes for a signature.
        let mut short = vec![VERSION];
        short.extend_from_slice(&key.pool);
        short.extend_from_slice(&[0; MAC_LEN - 2]);
        assert_eq!(
            key.decode(&URL_SAFE_NO_PAD.encode(&short)),
            Err(CursorError::Malformed("no signature"))
        );
        // Signed correctly but inconsistent inside.
        let mut body = vec![0; MINTED_LEN];
        body.push(5);
        assert_eq!(
            key.decode(&signed(&key, &body)),
            Err(CursorError::Malformed("a stream without its incarnation"))
        );
        let mut body = vec![0; MINTED_LEN];
        body.push(MAX_STREAMS as u8 + 1);
        assert_eq!(
            key.decode(&signed(&key, &body)),
            Err(CursorError::Malformed("more streams than a cursor names"))
        );
        let mut body = vec![0; MINTED_LEN];
        body.extend_from_slice(&[0, 7]);
        assert_eq!(
            key.decode(&signed(&key, &body)),
            Err(CursorError::Malformed(
                "a stamp flag that is neither 0 nor 1"
            ))
        );
        let mut body = vec![0; MINTED_LEN];
        body.extend_from_slice(&[0, 0, 9]);
        assert_eq!(
            key.decode(&signed(&key, &body)),
            Err(CursorError::Malformed("bytes after the last field"))
        );
    }

    #[test]
    fn frontiers_advance_merge_and_compare() {
        let mut f = Frontier::default();
        f.advance(1, 5);
        f.advance(1, 3);
        assert_eq!(f.get(1), Some(5), "never moves back");
        assert!(f.covers(1, 5) && !f.covers(1, 6));
        assert!(!f.covers(2, 1), "another incarnation");
        let mut g = Frontier::default();
        g.advance(2, 9);
        assert!(!f.dominates(&g));
        f.merge(&g);
        assert!(f.dominates(&g));
        f.remove(1);
        assert_eq!(f.get(1), None);
    }

    #[test]
    fn only_the_latest_streams_are_written() {
        let key = CursorKey::new(b"s");
        let mut frontier = Frontier::default();
        for i in 0..(MAX_STREAMS as u64 + 10) {
            frontier.advance(i, 1);
        }
        let stamp = Some(Stamp {
            ms: u64::MAX,
            seq: u64::MAX,
        });
        let text = key.encode(1, &frontier, stamp);
        assert!(text.len() <= MAX_CURSOR_CHARS);
        let decoded = key.decode(&text).unwrap();
        assert_eq!(decoded.frontier.iter().count(), MAX_STREAMS);
        assert_eq!(decoded.frontier.get(MAX_STREAMS as u64 + 9), Some(1));
        assert_eq!(decoded.frontier.get(0), None);
    }
}
