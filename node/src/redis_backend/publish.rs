//! Handing a local publication to Redis, all or nothing.
//!
//! Redis pub/sub drops a message for a subscriber that is not connected at
//! that moment. So one script checks, atomically with the `PUBLISH`, that
//! every member this node expects is subscribed (each node subscribes to a
//! presence channel named like its heartbeat key) and refuses otherwise.
//! The publisher's ack waits for the answer: `ok` means every live member's
//! Redis subscription got the frame; a refusal means nobody did, and the
//! origin does not deliver it locally either. A publish is never retried, so
//! it is never delivered twice.

use std::time::Instant;

use redis::{Script, Value};
use stickyio_shared::message::Publication;
use stickyio_shared::relay;
use tokio::time::timeout;

use super::{REDIS_TIMEOUT, Shared};

/// KEYS: the expected members' heartbeat keys (also their presence
/// channels), the first ARGV[3] of which count even without a key.
/// ARGV[1]: the relay channel, ARGV[2]: the frame.
/// Returns the number of receivers, or the keys of unsubscribed members.
const SCRIPT: &str = r"
local remembered = tonumber(ARGV[3])
local counts = redis.call('PUBSUB', 'NUMSUB', unpack(KEYS))
local missing = {}
for i = 1, #KEYS do
  if counts[2 * i] == 0 and (i <= remembered or redis.call('EXISTS', KEYS[i]) == 1) then
    table.insert(missing, KEYS[i])
  end
end
if #missing > 0 then
  return missing
end
return redis.call('PUBLISH', ARGV[1], ARGV[2])
";

pub fn script() -> Script {
    Script::new(SCRIPT)
}

impl Shared {
    /// Publishes `publication` to every live member, or tells why not.
    pub async fn publish(&self, publication: &Publication) -> Result<(), String> {
        let frame = match relay::encode(publication) {
            Ok(frame) => frame,
            Err(e) => return Err(self.refuse("error", format!("cannot encode it: {e}"))),
        };
        if frame.len() > self.max_frame {
            return Err(self.refuse(
                "too_large",
                format!(
                    "its relay frame is {} bytes, over max_payload ({})",
                    frame.len(),
                    self.max_frame
                ),
            ));
        }
        let Some(mut current) = self.connection() else {
            let why = self.status().last_error.unwrap_or_default();
            return Err(self.refuse(
                "disconnected",
                format!("this node is not connected to Redis at {}: {why}", self.url),
            ));
        };
        let expected = self.membership().expected(Instant::now());
        let mut invocation = self.script.prepare_invoke();
        for name in &expected.names {
            invocation.key(self.names.member(name));
        }
        invocation
            .arg(&self.names.relay)
            .arg(frame)
            .arg(expected.remembered);
        match timeout(
            REDIS_TIMEOUT,
            invocation.invoke_async(&mut current.commands),
        )
        .await
        {
            Ok(Ok(Value::Int(_))) => {
                self.metrics.published.inc();
                Ok(())
            }
            Ok(Ok(Value::Array(missing))) => {
                let names: Vec<String> = missing
                    .iter()
                    .filter_map(|key| match key {
                        Value::BulkString(key) => String::from_utf8(key.clone()).ok(),
                        _ => None,
                    })
                    .map(|key| self.names.name_of(&key).to_owned())
                    .collect();
                Err(self.refuse(
                    "member_unsubscribed",
                    format!(
                        "{} not subscribed to Redis (reconnecting, or gone and not yet expired); no node received it, retry shortly",
                        describe(&names)
                    ),
                ))
            }
            Ok(Ok(other)) => Err(self.refuse("error", format!("Redis answered {other:?}"))),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    current.broken.cancel();
                }
                Err(self.refuse("error", format!("Redis did not take it: {e}")))
            }
            Err(_) => {
                current.broken.cancel();
                Err(self.refuse(
                    "timeout",
                    format!("Redis did not answer within {REDIS_TIMEOUT:?}"),
                ))
            }
        }
    }

    /// Counts a refusal and returns its message.
    fn refuse(&self, reason: &'static str, message: String) -> String {
        self.metrics.refuse(reason);
        tracing::debug!(reason, "publish refused: {message}");
        message
    }
}

fn describe(names: &[String]) -> String {
    match names {
        [one] => format!("node {one} is"),
        many => format!("nodes {} are", many.join(", ")),
    }
}
