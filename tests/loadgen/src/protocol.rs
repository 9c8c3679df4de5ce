//! Engine.IO 4 and Socket.IO 5 packets as text: just what the workloads
//! send and read, on the main namespace.

use serde::Deserialize;
use serde_json::Value;

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

pub fn parse_socket(text: &str) -> Result<SocketPacket, ProtocolError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(ProtocolError::Empty)?;
    let mut rest = chars.as_str();
    // A namespace other than "/" would come first; the workloads use "/".
    if rest.starts_with('/')
        && let Some(comma) = rest.find(',')
    {
        rest = &rest[comma + 1..];
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = rest[..digits].parse::<u64>().ok();
    let body = &rest[digits..];
    let json = |what| {
        if body.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str::<Value>(body).map_err(|_| ProtocolError::Json {
                what,
                text: body.to_owned(),
            })
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
    fn event_text() {
        assert_eq!(
            event("subscribe", &json!("a.b"), Some(7)),
            r#"427["subscribe","a.b"]"#
        );
        assert_eq!(event("x", &json!(1), None), r#"42["x",1]"#);
    }
}
