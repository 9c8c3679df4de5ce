//! A published message: what a node delivers to its sockets and relays to peers.

use serde::{Deserialize, Serialize};

/// One publish, created on its origin node and never changed afterwards.
/// Clients receive it as the `message` event with the matching `patterns`
/// added; peers receive it in a relay frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Publication {
    /// Unique across the pool: the origin node's name plus a per-node sequence.
    pub id: String,
    /// A concrete topic (no wildcards), already validated.
    pub topic: String,
    pub content: serde_json::Value,
    /// The Socket.IO id of the publishing socket.
    pub sender_id: String,
    /// Milliseconds since the Unix epoch, on the origin node's clock.
    pub created_at: u64,
    /// Name of the origin node.
    pub node: String,
}
