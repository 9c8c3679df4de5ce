//! Engine.IO 4 and Socket.IO 5 packets as text: just what the workloads
//! send and read, on the main namespace.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Separates packets in a polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    EngineType(char),
    #[error("unknown Socket.IO packet type {0:?}")]
    SocketType(char),
    #[error("bad JSON in {what}: {text:.80}")]
    Json { what: &'static str, text: String },
}

/// An Engine.IO packet; `Message` carries a Socket.IO packet.
#[derive(Debug, PartialEq)]
pub enum EnginePacket<'a> {
    Open(&'a str),
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
}

pub fn parse_engine(text: &str) -> Result<EnginePacket<'_>, ProtocolError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(ProtocolError::Empty)?;
    let rest = chars.as_str();
    Ok(match kind {
        '0' => EnginePacket::Open(rest),
        '1' => EnginePacket::Close,
        '2' => EnginePacket::Ping(rest),
        '3' => EnginePacket::Pong(rest),
        '4' => EnginePacket::Message(rest),
        '5' => EnginePacket::Upgrade,
        '6' => EnginePacket::Noop,
        other => return Err(ProtocolError::EngineType(other)),
    })
}

/// The handshake an Engine.IO server sends in its open packet.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    pub sid: String,
    #[serde(default)]
    pub ping_interval: u64,
    #[serde(default)]
    pub ping_timeout: u64,
}

pub fn parse_handshake(open: &str) -> Result<Handshake, ProtocolError> {
    serde_json::from_str(open).map_err(|_| ProtocolError::Json {
        what: "open packet",
        text: open.to_owned(),
    })
}

/// A Socket.IO packet on the main namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketPacket {
    Connect(Value),
    Disconnect,
    Event { name: String, args: Vec<Value> },
    Ack { id: u64, args: Vec<Value> },
    ConnectError(Value),
}

/// A Socket.IO packet as received, kept as text (sharing the frame or
/// polling payload it came in) until the workload reads it: a hot receive
/// path deserializes only the fields it needs ([`parse_event`]) instead of
/// building a [`Value`] tree per packet.
#[derive(Debug, Clone)]
pub struct RawPacket {
    text: Utf8Bytes,
    start: usize,
    end: usize,
}

impl RawPacket {
    /// The packet `text[start..end]`; both must be char boundaries.
    pub fn new(text: Utf8Bytes, start: usize, end: usize) -> RawPacket {
        RawPacket { text, start, end }
    }

    pub fn as_str(&self) -> &str {
        &self.text.as_str()[self.start..self.end]
    }

    pub fn parse(&self) -> Result<SocketPacket, ProtocolError> {
        parse_socket(self.as_str())
    }
}

/// A Socket.IO packet split into its type, ack id and JSON body, past the
/// namespace (the workloads use "/").
fn split_socket(text: &str) -> Result<(char, Option<u64>, &str), ProtocolError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(ProtocolError::Empty)?;
    let mut rest = chars.as_str();
    if rest.starts_with('/')
        && let Some(comma) = rest.find(',')
    {
        rest = &rest[comma + 1..];
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = rest[..digits].parse::<u64>().ok();
    Ok((kind, id, &rest[digits..]))
}

pub fn parse_socket(text: &str) -> Result<SocketPacket, ProtocolError> {
    let (kind, id, body) = split_socket(text)?;
    let json = |what| {
        if body.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str::<Value>(body).map_err(|_| bad(what, body))
        }
    };
    Ok(match kind {
        '0' => SocketPacket::Connect(json("connect")?),
        '1' => SocketPacket::Disconnect,
        '2' => match json("event")? {
            Value::Array(mut args) if !args.is_empty() => match args.remove(0) {
                Value::String(name) => SocketPacket::Event { name, args },
                _ => return Err(bad("event", body)),
            },
            _ => return Err(bad("event", body)),
        },
        '3' => match (id, json("ack")?) {
            (Some(id), Value::Array(args)) => SocketPacket::Ack { id, args },
            _ => return Err(bad("ack", body)),
        },
        '4' => SocketPacket::ConnectError(json("connect error")?),
        other => return Err(ProtocolError::SocketType(other)),
    })
}

/// The name and argument of a one-argument event (`2["name",arg]`),
/// deserialized straight from the text: `T` borrows from it and skips
/// fields it does not name, so nothing is allocated for them.
pub fn parse_event<'a, T: Deserialize<'a>>(
    text: &'a str,
) -> Result<(Cow<'a, str>, T), ProtocolError> {
    /// `["name",arg]`; the name borrowed unless it holds escapes.
    #[derive(Deserialize)]
    struct Event<'a, T>(#[serde(borrow)] Cow<'a, str>, T);
    match split_socket(text)? {
        ('2', _, body) => serde_json::from_str(body)
            .map(|Event(name, arg)| (name, arg))
            .map_err(|_| bad("event", body)),
        (other, _, _) => Err(ProtocolError::SocketType(other)),
    }
}

fn bad(what: &'static str, text: &str) -> ProtocolError {
    ProtocolError::Json {
        what,
        text: text.to_owned(),
    }
}

/// `42<ack>["name",arg]` as an Engine.IO message: the text to send.
pub fn event(name: &str, arg: &Value, ack: Option<u64>) -> String {
    let ack = ack.map(|id| id.to_string()).unwrap_or_default();
    let args = Value::Array(vec![Value::String(name.to_owned()), arg.clone()]);
    format!("42{ack}{args}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engine_packets() {
        assert_eq!(parse_engine("2"), Ok(EnginePacket::Ping("")));
        assert_eq!(parse_engine("3probe"), Ok(EnginePacket::Pong("probe")));
        assert_eq!(parse_engine("40"), Ok(EnginePacket::Message("0")));
        assert_eq!(parse_engine("9"), Err(ProtocolError::EngineType('9')));
        assert_eq!(parse_engine(""), Err(ProtocolError::Empty));
    }

    #[test]
    fn handshake_fields() {
        let h = parse_handshake(r#"{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#).unwrap();
        assert_eq!(h.sid, "abc");
        assert_eq!(h.ping_interval, 25000);
        assert!(parse_handshake("nope").is_err());
    }

    #[test]
    fn socket_packets() {
        assert_eq!(
            parse_socket(r#"0{"sid":"x"}"#),
            Ok(SocketPacket::Connect(json!({"sid":"x"})))
        );
        assert_eq!(
            parse_socket(r#"2["message",{"a":1}]"#),
            Ok(SocketPacket::Event {
                name: "message".into(),
                args: vec![json!({"a":1})]
            })
        );
        assert_eq!(
            parse_socket(r#"312[{"ok":true}]"#),
            Ok(SocketPacket::Ack {
                id: 12,
                args: vec![json!({"ok":true})]
            })
        );
        assert_eq!(
            parse_socket("3/admin,5[1]"),
            Ok(SocketPacket::Ack {
                id: 5,
                args: vec![json!(1)]
            })
        );
        assert!(matches!(
            parse_socket("2{}"),
            Err(ProtocolError::Json { .. })
        ));
    }

    #[test]
    fn events_parse_into_borrowed_types() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Arg<'a> {
            a: u64,
            #[serde(borrow)]
            b: Cow<'a, str>,
        }
        let (name, arg) =
            parse_event::<Arg>(r#"2["message",{"a":1,"skipped":[{"x":"y"}],"b":"z"}]"#).unwrap();
        assert_eq!(name, "message");
        assert_eq!(
            arg,
            Arg {
                a: 1,
                b: "z".into()
            }
        );
        assert!(matches!(
            parse_event::<Arg>(r#"2["message",{"a":1}]"#),
            Err(ProtocolError::Json { .. })
        ));
        assert_eq!(
            parse_event::<Value>(r#"312[{"ok":true}]"#).unwrap_err(),
            ProtocolError::SocketType('3')
        );
    }

    #[test]
    fn raw_packets_are_their_slice_of_the_payload() {
        let payload = Utf8Bytes::from(format!("42[\"a\",1]{RECORD_SEPARATOR}3"));
        let raw = RawPacket::new(payload, 1, 9);
        assert_eq!(raw.as_str(), r#"2["a",1]"#);
        assert_eq!(
            raw.parse(),
            Ok(SocketPacket::Event {
                name: "a".into(),
                args: vec![json!(1)]
            })
        );
    }

    #[test]
    fn event_text() {
        assert_eq!(
            event("subscribe", &json!("a.b"), Some(7)),
            r#"427["subscribe","a.b"]"#
        );
        assert_eq!(event("x", &json!(1), None), r#"42["x",1]"#);
    }
}
