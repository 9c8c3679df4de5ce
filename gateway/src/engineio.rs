//! The little of Engine.IO the gateway must understand to pin sessions: the
//! query parameters, the polling handshake body (`0{"sid":…}`) and the close
//! packet (`1`).
//!
//! Everything else is relayed untouched.

use std::time::Duration;

use http::Method;

/// Packet separator of Engine.IO v4 polling payloads.
const RECORD_SEPARATOR: u8 = 0x1e;

/// What a request says about its Engine.IO session.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineQuery {
    /// `EIO=` present: an Engine.IO request.
    pub engine_io: bool,
    pub sid: Option<String>,
    pub transport: Option<String>,
}

impl EngineQuery {
    /// From a request target as sent (`/path?query`).
    pub fn of_target(target: &str) -> Self {
        Self::of_query(target.split_once('?').map_or("", |(_, q)| q))
    }

    fn of_query(query: &str) -> Self {
        let mut q = EngineQuery::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "EIO" => q.engine_io = true,
                "sid" if !value.is_empty() => q.sid = Some(value.to_owned()),
                "transport" => q.transport = Some(value.to_owned()),
                _ => {}
            }
        }
        q
    }

    /// A polling handshake: its response names the new session's `sid`.
    pub fn is_polling_handshake(&self, method: &Method) -> bool {
        self.engine_io
            && self.sid.is_none()
            && method == Method::GET
            && self.transport.as_deref().is_none_or(|t| t == "polling")
    }
}

/// The open packet of a handshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub sid: String,
    /// `pingInterval + pingTimeout`: silence longer than this ends the session.
    pub silence_limit: Duration,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenPacket {
    sid: String,
    ping_interval: Option<u64>,
    ping_timeout: Option<u64>,
}

/// Used when the open packet has no ping settings: socket.io's defaults.
pub const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_millis(25_000 + 20_000);

/// What the start of a handshake response body says so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Open(Handshake),
    /// The open packet is not complete yet.
    NeedMore,
    /// Not an open packet.
    NotHandshake,
}

/// Parses the open packet at the start of a polling handshake body:
/// `0{…}` (v4), or `<len>:0{…}` (v3).
pub fn sniff_handshake(body: &[u8]) -> Sniffed {
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == body.len() {
        // Only digits so far: a v3 length or a v4 `0`, not yet telling.
        return Sniffed::NeedMore;
    }
    let rest = match body.get(digits) {
        Some(b':') if digits > 0 => &body[digits + 1..],
        _ => body,
    };
    let Some(rest) = rest.strip_prefix(b"0") else {
        return if rest.is_empty() {
            Sniffed::NeedMore
        } else {
            Sniffed::NotHandshake
        };
    };
    let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<OpenPacket>();
    match stream.next() {
        Some(Ok(open)) => {
            let silence = match (open.ping_interval, open.ping_timeout) {
                (Some(i), Some(t)) => Duration::from_millis(i.saturating_add(t)),
                _ => DEFAULT_SILENCE_LIMIT,
            };
            Sniffed::Open(Handshake {
                sid: open.sid,
                silence_limit: silence,
            })
        }
        Some(Err(e)) if e.is_eof() || cut_inside_a_number(rest, &e) => Sniffed::NeedMore,
        None => Sniffed::NeedMore,
        Some(Err(_)) => Sniffed::NotHandshake,
    }
}

/// Whether `text` fails only because it was cut inside a number: serde_json
/// reports a number ending in `.`, `e` or `-` inside a skipped field as a
/// syntax error rather than EOF. One more digit then turns it into EOF.
fn cut_inside_a_number(text: &[u8], e: &serde_json::Error) -> bool {
    if e.classify() != serde_json::error::Category::Syntax {
        return false;
    }
    let mut longer = text.to_vec();
    longer.push(b'0');
    let mut stream = serde_json::Deserializer::from_slice(&longer).into_iter::<OpenPacket>();
    matches!(stream.next(), Some(Err(e)) if e.is_eof())
}

/// Whether a complete polling payload holds a close packet (`1`).
pub fn has_close_packet(payload: &[u8]) -> bool {
    payload.split(|b| *b == RECORD_SEPARATOR).any(|p| p == b"1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_read() {
        let q = EngineQuery::of_target("/socket.io/?EIO=4&transport=polling&t=abc");
        assert!(q.engine_io && q.sid.is_none());
        assert!(q.is_polling_handshake(&Method::GET));
        assert!(!q.is_polling_handshake(&Method::POST));
        let q = EngineQuery::of_target("/socket.io/?EIO=4&transport=websocket&sid=Ab-_1");
        assert_eq!(q.sid.as_deref(), Some("Ab-_1"));
        assert!(!q.is_polling_handshake(&Method::GET));
        assert_eq!(EngineQuery::of_target("/demo"), EngineQuery::default());
        let q = EngineQuery::of_target("/socket.io/?EIO=4&transport=websocket&sid=Ab-_1&t=1");
        assert_eq!(q.sid.as_deref(), Some("Ab-_1"));
        assert_eq!(q.transport.as_deref(), Some("websocket"));
        assert!(!EngineQuery::of_target("/x?sid=&&=&EIO").is_polling_handshake(&Method::PUT));
    }

    #[test]
    fn v4_and_v3_open_packets_are_read() {
        let body = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}"#;
        let want = Handshake {
            sid: "lv_VI97HAXpY6yYWAAAC".into(),
            silence_limit: Duration::from_secs(30),
        };
        assert_eq!(sniff_handshake(body), Sniffed::Open(want.clone()));
        let mut batched = body.to_vec();
        batched.extend_from_slice(b"\x1e40{\"sid\":\"x\"}");
        assert_eq!(sniff_handshake(&batched), Sniffed::Open(want.clone()));
        let v3 = br#"97:0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":5000}2:40"#;
        assert_eq!(sniff_handshake(v3), Sniffed::Open(want));
    }

    #[test]
    fn partial_and_foreign_bodies_are_told_apart() {
        assert_eq!(sniff_handshake(b""), Sniffed::NeedMore);
        assert_eq!(sniff_handshake(b"12"), Sniffed::NeedMore);
        assert_eq!(
            sniff_handshake(br#"0{"sid":"abc","pingIn"#),
            Sniffed::NeedMore
        );
        assert_eq!(sniff_handshake(b"<html>"), Sniffed::NotHandshake);
        assert_eq!(sniff_handshake(br#"0{"nosid":1}"#), Sniffed::NotHandshake);
        assert_eq!(sniff_handshake(b"0[1,2]"), Sniffed::NotHandshake);
        let no_ping = sniff_handshake(br#"0{"sid":"s"}"#);
        assert_eq!(
            no_ping,
            Sniffed::Open(Handshake {
                sid: "s".into(),
                silence_limit: DEFAULT_SILENCE_LIMIT
            })
        );
    }

    /// Found by the `handshake_sniff` fuzzer: a body cut right after the `.`
    /// of a number in an unknown field was judged foreign, so the session
    /// would not have been pinned.
    #[test]
    fn a_body_cut_inside_a_number_needs_more() {
        let body =
            br#"0{"sid":"a","pingInterv;l":18446744073.09551615,"pingTymeout":184409551615}"#;
        assert!(matches!(sniff_handshake(body), Sniffed::Open(_)));
        for end in 0..body.len() {
            assert_ne!(
                sniff_handshake(&body[..end]),
                Sniffed::NotHandshake,
                "{:?}",
                String::from_utf8_lossy(&body[..end])
            );
        }
        assert_eq!(
            sniff_handshake(br#"0{"sid":"a","x":1.}"#),
            Sniffed::NotHandshake
        );
        assert_eq!(sniff_handshake(br#"0{"sid":"a","x":1e"#), Sniffed::NeedMore);
    }

    #[test]
    fn close_packets_are_found_only_whole() {
        assert!(has_close_packet(b"1"));
        assert!(has_close_packet(b"42[\"x\"]\x1e1"));
        assert!(!has_close_packet(b"10"));
        assert!(!has_close_packet(b"421[\"publish\"]"));
        assert!(!has_close_packet(b""));
    }
}
