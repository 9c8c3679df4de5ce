//! Rewriting the `sid` of an Engine.IO open packet (`0{"sid":…}`) on its
//! way to the client, as pure functions: in a polling handshake body (v4
//! `0{…}`, or v3 `<len>:0{…}`) and in the first frame a node sends on a
//! websocket-only session. The new sid is the route-tagged one
//! ([`crate::route_tag`]); everything else in the packet is kept.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::engineio::DEFAULT_SILENCE_LIMIT;

/// An open packet with its sid replaced.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub bytes: Vec<u8>,
    /// The node's own sid.
    pub node_sid: String,
    /// The sid the client now has.
    pub client_sid: String,
    /// `pingInterval + pingTimeout` of the session.
    pub silence_limit: Duration,
}

/// Replaces the sid in the JSON of an open packet (`{…}` after the `0`).
fn rewrite_json(
    json: &[u8],
    tag: impl FnOnce(&str) -> String,
) -> Option<(Vec<u8>, String, String, Duration)> {
    let mut open: Map<String, Value> = serde_json::from_slice(json).ok()?;
    let node_sid = open.get("sid")?.as_str()?.to_owned();
    let limit = match (
        open.get("pingInterval").and_then(Value::as_u64),
        open.get("pingTimeout").and_then(Value::as_u64),
    ) {
        (Some(i), Some(t)) => Duration::from_millis(i.saturating_add(t)),
        _ => DEFAULT_SILENCE_LIMIT,
    };
    let client_sid = tag(&node_sid);
    // In place, so the packet stays byte for byte what the node sent; a
    // node that writes its JSON differently gets it re-serialized.
    let (from, to) = (
        format!("\"sid\":\"{node_sid}\""),
        format!("\"sid\":\"{client_sid}\""),
    );
    let text = std::str::from_utf8(json).ok()?;
    let bytes = if text.contains(&from) {
        text.replacen(&from, &to, 1).into_bytes()
    } else {
        open.insert("sid".into(), Value::String(client_sid.clone()));
        serde_json::to_vec(&open).ok()?
    };
    Some((bytes, node_sid, client_sid, limit))
}

/// The whole body of a polling handshake response, with the open packet's
/// sid replaced; `None` when it holds no open packet (left as it is).
pub fn rewrite_polling(body: &[u8], tag: impl FnOnce(&str) -> String) -> Option<Rewritten> {
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 0 && body.get(digits) == Some(&b':') {
        // v3: `<len>:<packet>…`, the length counting the packet's characters.
        let len: usize = std::str::from_utf8(&body[..digits]).ok()?.parse().ok()?;
        let start = digits + 1;
        let packet = body.get(start..start.checked_add(len)?)?;
        let (json, node_sid, client_sid, silence_limit) =
            rewrite_json(packet.strip_prefix(b"0")?, tag)?;
        let mut bytes = format!("{}:0", json.len() + 1).into_bytes();
        bytes.extend_from_slice(&json);
        bytes.extend_from_slice(&body[start + len..]);
        return Some(Rewritten {
            bytes,
            node_sid,
            client_sid,
            silence_limit,
        });
    }
    let rest = body.strip_prefix(b"0")?;
    // v4: packets are separated by 0x1e; the open packet comes first.
    let end = rest.iter().position(|b| *b == 0x1e).unwrap_or(rest.len());
    let (json, node_sid, client_sid, silence_limit) = rewrite_json(&rest[..end], tag)?;
    let mut bytes = Vec::with_capacity(body.len() + 64);
    bytes.push(b'0');
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(&rest[end..]);
    Some(Rewritten {
        bytes,
        node_sid,
        client_sid,
        silence_limit,
    })
}

/// What the start of a node's websocket stream holds.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstFrame {
    /// Not all of the first frame yet.
    NeedMore,
    /// The first frame was an open packet: the rewritten frame, and how
    /// many input bytes it replaces.
    Open(Rewritten, usize),
    /// Anything else: relay untouched.
    Other,
}

/// Reads the first frame of a server-to-client websocket stream (RFC 6455
/// §5.2: unmasked) and rewrites it when it is a text frame holding an open
/// packet. A compressed frame (RSV1) is `Other`: the gateway removes the
/// extension offer from websocket-only handshakes so this does not happen.
pub fn rewrite_first_frame(buf: &[u8], max: usize, tag: impl FnOnce(&str) -> String) -> FirstFrame {
    let Some(&[b0, b1]) = buf.get(..2).and_then(|h| <&[u8; 2]>::try_from(h).ok()) else {
        return FirstFrame::NeedMore;
    };
    let (fin, rsv, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f, b1 & 0x80 != 0);
    if !fin || rsv != 0 || opcode != 1 || masked {
        return FirstFrame::Other;
    }
    let (len, header) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(l) => (usize::from(u16::from_be_bytes([l[0], l[1]])), 4),
            None => return FirstFrame::NeedMore,
        },
        127 => return FirstFrame::Other,
        n => (usize::from(n), 2),
    };
    if header + len > max {
        return FirstFrame::Other;
    }
    let Some(payload) = buf.get(header..header + len) else {
        return FirstFrame::NeedMore;
    };
    let Some((json, node_sid, client_sid, silence_limit)) = payload
        .strip_prefix(b"0")
        .and_then(|j| rewrite_json(j, tag))
    else {
        return FirstFrame::Other;
    };
    let new_len = json.len() + 1;
    let mut bytes = Vec::with_capacity(new_len + 4);
    bytes.push(0x81);
    if new_len < 126 {
        bytes.push(new_len as u8);
    } else if let Ok(len16) = u16::try_from(new_len) {
        bytes.push(126);
        bytes.extend_from_slice(&len16.to_be_bytes());
    } else {
        return FirstFrame::Other;
    }
    bytes.push(b'0');
    bytes.extend_from_slice(&json);
    FirstFrame::Open(
        Rewritten {
            bytes,
            node_sid,
            client_sid,
            silence_limit,
        },
        header + len,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(sid: &str) -> String {
        format!("T.M.{sid}")
    }

    fn json_of(bytes: &[u8], skip: usize) -> Value {
        serde_json::from_slice(&bytes[skip..]).unwrap()
    }

    #[test]
    fn a_v4_handshake_body_gets_the_tagged_sid_and_keeps_the_rest() {
        let body = b"0{\"sid\":\"abc\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}\x1e40";
        let r = rewrite_polling(body, tag).unwrap();
        assert_eq!(
            (r.node_sid.as_str(), r.client_sid.as_str()),
            ("abc", "T.M.abc")
        );
        assert_eq!(r.silence_limit, Duration::from_secs(45));
        let end = r.bytes.iter().position(|b| *b == 0x1e).unwrap();
        assert!(
            r.bytes.starts_with(b"0{\"sid\":\"T.M.abc\",\"upgrades\""),
            "in place"
        );
        let open: Value = serde_json::from_slice(&r.bytes[1..end]).unwrap();
        assert_eq!(open["sid"], "T.M.abc");
        assert_eq!(open["upgrades"][0], "websocket");
        assert_eq!(open["maxPayload"], 1000000);
        assert_eq!(&r.bytes[end..], b"\x1e40", "later packets untouched");
    }

    #[test]
    fn a_v3_body_gets_its_length_prefix_recomputed() {
        let packet = "0{\"sid\":\"abc\",\"pingInterval\":1,\"pingTimeout\":2}";
        let body = format!("{}:{packet}2:40", packet.len());
        let r = rewrite_polling(body.as_bytes(), tag).unwrap();
        let text = String::from_utf8(r.bytes).unwrap();
        let (len, rest) = text.split_once(':').unwrap();
        let len: usize = len.parse().unwrap();
        assert_eq!(&rest[len..], "2:40");
        assert_eq!(json_of(&rest.as_bytes()[..len], 1)["sid"], "T.M.abc");
    }

    #[test]
    fn bodies_without_an_open_packet_are_left_alone() {
        for body in [
            &b"{\"code\":1,\"message\":\"Session ID unknown\"}"[..],
            b"0{\"nosid\":1}",
            b"0{",
            b"",
            b"99:0{}",
        ] {
            assert_eq!(rewrite_polling(body, tag), None, "{body:?}");
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_first_websocket_frame_is_rewritten_and_reframed() {
        let open =
            b"0{\"sid\":\"abc\",\"upgrades\":[],\"pingInterval\":25000,\"pingTimeout\":20000}";
        let mut stream = frame(open);
        let first = stream.len();
        stream.extend_from_slice(&frame(b"40"));
        for cut in 0..first {
            assert_eq!(
                rewrite_first_frame(&stream[..cut], 4096, tag),
                FirstFrame::NeedMore,
                "cut at {cut}"
            );
        }
        let FirstFrame::Open(r, used) = rewrite_first_frame(&stream, 4096, tag) else {
            panic!("an open frame")
        };
        assert_eq!(used, first);
        assert_eq!(usize::from(r.bytes[1]), r.bytes.len() - 2);
        assert_eq!(json_of(&r.bytes, 3)["sid"], "T.M.abc");
        // Past 125 bytes the length takes two more bytes.
        let long = format!(
            "0{{\"sid\":\"{}\",\"pingInterval\":1,\"pingTimeout\":1}}",
            "s".repeat(120)
        );
        let FirstFrame::Open(r, _) = rewrite_first_frame(&frame(long.as_bytes()), 4096, tag) else {
            panic!()
        };
        assert_eq!(
            (
                r.bytes[1],
                usize::from(u16::from_be_bytes([r.bytes[2], r.bytes[3]]))
            ),
            (126, r.bytes.len() - 4)
        );
    }

    #[test]
    fn other_first_frames_pass_untouched() {
        let mut compressed = frame(b"0{\"sid\":\"a\"}");
        compressed[0] |= 0x40;
        let mut binary = frame(b"0{\"sid\":\"a\"}");
        binary[0] = 0x82;
        for f in [compressed, binary, frame(b"3probe"), frame(&[0xff; 10])] {
            assert_eq!(
                rewrite_first_frame(&f, 4096, tag),
                FirstFrame::Other,
                "{f:?}"
            );
        }
        assert_eq!(
            rewrite_first_frame(&frame(b"0{\"sid\":\"a\"}"), 4, tag),
            FirstFrame::Other,
            "over the cap"
        );
    }
}
