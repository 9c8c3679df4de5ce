//! The relay frame: how one node hands a publication to a peer over the mesh.
//!
//! A frame is one compact JSON object, sent as the single binary attachment of
//! a Socket.IO `relay` event (so the content is never escaped twice):
//!
//! ```json
//! {"v":1,"id":"node-a-17","node":"node-a","topic":"chat.room1","content":"hi","senderId":"x","createdAt":1700000000000}
//! ```
//!
//! `v` is the frame version; a receiver refuses versions it does not know
//! rather than guessing. Frames come from the network, so [`decode`] checks
//! size, shape and values and returns a typed [`FrameError`]; it never panics.

use serde::{Deserialize, Serialize};

use crate::message::Publication;
use crate::topic::{Topic, TopicError};

/// The frame version this build writes and reads.
pub const FRAME_VERSION: u64 = 1;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("relay frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("relay frame version {0} is not supported (this node reads version {FRAME_VERSION})")]
    UnsupportedVersion(u64),
    #[error("relay frame is not valid: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("relay frame field `{field}` {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("relay frame topic: {0}")]
    Topic(#[from] TopicError),
}

impl FrameError {
    /// A short, stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::UnsupportedVersion(_) => "unsupported_version",
            FrameError::Malformed(_) => "malformed",
            FrameError::Invalid { .. } => "invalid",
            FrameError::Topic(_) => "invalid_topic",
        }
    }
}

/// The frame as written: borrows the publication, so encoding copies nothing
/// but the bytes of the output.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FrameOut<'a> {
    v: u64,
    id: &'a str,
    node: &'a str,
    topic: &'a str,
    content: &'a serde_json::Value,
    sender_id: &'a str,
    created_at: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FrameIn {
    v: u64,
    id: String,
    node: String,
    topic: String,
    content: serde_json::Value,
    sender_id: String,
    created_at: u64,
}

/// Only the version, read when a frame fails to decode so that a frame from
/// a newer peer is reported as such rather than as garbage.
#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

/// Encodes `publication` as a compact frame.
pub fn encode(publication: &Publication) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&FrameOut {
        v: FRAME_VERSION,
        id: &publication.id,
        node: &publication.node,
        topic: &publication.topic,
        content: &publication.content,
        sender_id: &publication.sender_id,
        created_at: publication.created_at,
    })
}

/// Decodes and validates a frame of at most `max_len` bytes.
pub fn decode(bytes: &[u8], max_len: usize) -> Result<Publication, FrameError> {
    if bytes.len() > max_len {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            max: max_len,
        });
    }
    let frame: FrameIn =
        serde_json::from_slice(bytes).map_err(|e| {
            match serde_json::from_slice::<VersionOnly>(bytes) {
                Ok(VersionOnly { v }) if v != FRAME_VERSION => FrameError::UnsupportedVersion(v),
                _ => FrameError::Malformed(e),
            }
        })?;
    if frame.v != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(frame.v));
    }
    require_text("id", &frame.id)?;
    require_text("node", &frame.node)?;
    require_text("senderId", &frame.sender_id)?;
    // The origin validated the topic; checked again so a peer's frame can
    // never reach subscribers as a wildcard or malformed topic.
    Topic::parse(&frame.topic)?;
    Ok(Publication {
        id: frame.id,
        topic: frame.topic,
        content: frame.content,
        sender_id: frame.sender_id,
        created_at: frame.created_at,
        node: frame.node,
    })
}

fn require_text(field: &'static str, value: &str) -> Result<(), FrameError> {
    if value.is_empty() {
        return Err(FrameError::Invalid {
            field,
            reason: "is empty",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(FrameError::Invalid {
            field,
            reason: "contains control characters",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn publication() -> Publication {
        Publication {
            id: "node-a-17".into(),
            topic: "chat.room1".into(),
            content: json!({"text": "hé \"quoted\"", "n": [1, 2.5, null]}),
            sender_id: "abc123".into(),
            created_at: 1_700_000_000_000,
            node: "node-a".into(),
        }
    }

    fn frame(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn round_trips_a_publication() {
        let p = publication();
        let bytes = encode(&p).unwrap();
        assert_eq!(decode(&bytes, 1024).unwrap(), p);
    }

    #[test]
    fn encoding_is_compact_and_versioned() {
        let text = String::from_utf8(encode(&publication()).unwrap()).unwrap();
        assert!(
            text.starts_with(r#"{"v":1,"id":"node-a-17","node":"node-a","topic":"chat.room1","#),
            "{text}"
        );
        assert!(
            text.ends_with(r#""senderId":"abc123","createdAt":1700000000000}"#),
            "{text}"
        );
        assert!(!text.contains(": "), "{text}");
    }

    #[test]
    fn refuses_oversized_frames_before_parsing() {
        let bytes = encode(&publication()).unwrap();
        let err = decode(&bytes, bytes.len() - 1).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "relay frame of {} bytes exceeds the {}-byte limit",
                bytes.len(),
                bytes.len() - 1
            )
        );
        assert!(decode(&bytes, bytes.len()).is_ok());
    }

    #[test]
    fn refuses_garbage() {
        let garbage: [&[u8]; 8] = [
            b"",
            b"not json",
            b"\xff\xfe\x00garbage",
            b"[1,2,3]",
            b"null",
            b"{\"v\":1",
            b"\"a string\"",
            b"{}",
        ];
        for bytes in garbage {
            let err = decode(bytes, 1024).unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "{bytes:?}: {err}");
            assert_eq!(err.kind(), "malformed");
        }
    }

    #[test]
    fn names_a_missing_or_mistyped_field() {
        let mut v = serde_json::to_value(publication()).unwrap();
        v["v"] = json!(1);
        v.as_object_mut().unwrap().remove("topic");
        let err = decode(&frame(v.clone()), 1024).unwrap_err().to_string();
        assert!(err.contains("missing field `topic`"), "{err}");
        v["topic"] = json!("a.b");
        v["createdAt"] = json!("yesterday");
        let err = decode(&frame(v.clone()), 1024).unwrap_err().to_string();
        assert!(err.contains("invalid type: string \"yesterday\""), "{err}");
        v["createdAt"] = json!(1);
        v["extra"] = json!(true);
        let err = decode(&frame(v), 1024).unwrap_err().to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn refuses_other_versions_by_name() {
        let mut v = serde_json::to_value(publication()).unwrap();
        v["v"] = json!(2);
        let err = decode(&frame(v.clone()), 1024).unwrap_err();
        assert!(matches!(err, FrameError::UnsupportedVersion(2)), "{err}");
        v["future"] = json!("field");
        let err = decode(&frame(v), 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "relay frame version 2 is not supported (this node reads version 1)"
        );
    }

    #[test]
    fn refuses_bad_values() {
        let cases = [
            ("id", json!(""), "relay frame field `id` is empty"),
            (
                "node",
                json!("a\u{0}b"),
                "relay frame field `node` contains control characters",
            ),
            (
                "senderId",
                json!(""),
                "relay frame field `senderId` is empty",
            ),
        ];
        for (field, value, expected) in cases {
            let mut v = serde_json::to_value(publication()).unwrap();
            v["v"] = json!(1);
            v[field] = value;
            let err = decode(&frame(v), 1024).unwrap_err();
            assert_eq!(err.to_string(), expected);
            assert_eq!(err.kind(), "invalid");
        }
    }

    #[test]
    fn refuses_topics_that_are_not_concrete() {
        let cases = [
            ("", "relay frame topic: topic is empty"),
            (
                "a..b",
                "relay frame topic: segment 2 of topic \"a..b\" is empty",
            ),
            (
                "news.*",
                "relay frame topic: segment 2 of topic \"news.*\" contains the wildcard '*'",
            ),
            (
                "news.#",
                "relay frame topic: segment 2 of topic \"news.#\" contains the wildcard '#'",
            ),
        ];
        for (topic, expected) in cases {
            let bytes = serde_json::to_vec(&json!({
                "v": 1, "id": "a-1", "node": "a", "topic": topic,
                "content": null, "senderId": "s", "createdAt": 1
            }))
            .unwrap();
            let err = decode(&bytes, 1024).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err}");
            assert_eq!(err.kind(), "invalid_topic");
        }
    }
}
