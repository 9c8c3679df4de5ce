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
//!
//! The same script appends the frame to the pool's history, the stream
//! `{prefix}:history` (`XADD … MAXLEN ~ history.size`), and publishes it
//! prefixed with its entry id, so every node (the origin too: it delivers
//! its own publications when they come back) delivers in stream order and
//! every cursor is a stream position. The publisher's ack waits until its
//! own node delivered it ([`Shared::await_own`]).
//!
//! One task ([`run`]) sends the node's publishes to Redis in the order they
//! were made and answers them in that order, so one socket's publishes stay
//! in order. Whatever queued up while Redis answered the last batch goes out
//! as the next pipeline: one round trip for many publishes under load.

use std::sync::Arc;
use std::time::Instant;

use redis::{RedisResult, Value};
use stickyio_shared::message::Publication;
use stickyio_shared::relay;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{REDIS_TIMEOUT, Shared};
use crate::topics::{Handed, Then};

/// Most publishes sent in one pipeline.
const MAX_BATCH: usize = 256;

/// A local publication waiting for Redis, and what to do with the answer.
pub(super) struct Job {
    pub publication: Arc<Publication>,
    pub then: Then,
}

/// Publishes `jobs` in order, batch by batch, and answers each in order,
/// until the node's relay (the sender) is dropped.
pub(super) async fn run(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (publications, thens): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|job| (job.publication, job.then))
            .unzip();
        let outcomes = shared.publish(&publications).await;
        for ((then, publication), taken) in thens.into_iter().zip(&publications).zip(outcomes) {
            match taken {
                Ok(()) => shared.await_own(&publication.id, then),
                Err(why) => then(Handed::Refused(why)),
            }
        }
    }
}

/// KEYS: the expected members' heartbeat keys (also their presence
/// channels), the first ARGV[3] of which count even without a key.
/// ARGV[1]: the relay channel, ARGV[2]: the frame, ARGV[4]: the history
/// stream, ARGV[5]: its length (0: no history).
/// Returns the stream entry id ("" without history), or the keys of
/// unsubscribed members.
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
local id = ''
if ARGV[5] ~= '0' then
  id = redis.call('XADD', ARGV[4], 'MAXLEN', '~', ARGV[5], '*', 'f', ARGV[2])
end
redis.call('PUBLISH', ARGV[1], id .. '\n' .. ARGV[2])
return id
";

pub(super) fn script() -> redis::Script {
    redis::Script::new(SCRIPT)
}

impl Shared {
    /// Publishes each of `publications` to every live member, in order, and
    /// tells for each whether Redis took it or why not.
    async fn publish(&self, publications: &[Arc<Publication>]) -> Vec<Result<(), String>> {
        let Some(mut current) = self.connection() else {
            let why = self.status().last_error.unwrap_or_default();
            let message = format!("this node is not connected to Redis at {}: {why}", self.url);
            return publications
                .iter()
                .map(|_| Err(self.refuse("disconnected", message.clone())))
                .collect();
        };
        let expected = self.membership().expected(Instant::now());
        let keys: Vec<String> = expected
            .names
            .iter()
            .map(|n| self.names.member(n))
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut outcomes: Vec<Option<Result<(), String>>> = publications
            .iter()
            .map(|publication| match self.frame(publication) {
                Ok(frame) => {
                    pipe.cmd("EVALSHA")
                        .arg(self.script.get_hash())
                        .arg(keys.len())
                        .arg(&keys)
                        .arg(&self.names.relay)
                        .arg(frame)
                        .arg(expected.remembered)
                        .arg(&self.names.history)
                        .arg(self.history_size);
                    None
                }
                Err(refused) => Some(Err(refused)),
            })
            .collect();
        let sent = outcomes.iter().filter(|o| o.is_none()).count();
        if sent > 0 {
            let replies = timeout(
                REDIS_TIMEOUT,
                pipe.query_async::<Vec<RedisResult<Value>>>(&mut current.commands),
            )
            .await;
            let mut replies: Box<dyn Iterator<Item = Result<(), String>>> = match replies {
                Ok(Ok(replies)) if replies.len() == sent => {
                    Box::new(replies.into_iter().map(|reply| self.taken(reply)))
                }
                Ok(Ok(replies)) => self.refuse_all(
                    "error",
                    format!("Redis answered {} of {sent} publishes", replies.len()),
                ),
                Ok(Err(e)) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                        current.broken.cancel();
                    }
                    self.refuse_all("error", format!("Redis did not take it: {e}"))
                }
                Err(_) => {
                    current.broken.cancel();
                    self.refuse_all(
                        "timeout",
                        format!("Redis did not answer within {REDIS_TIMEOUT:?}"),
                    )
                }
            };
            for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                *outcome = replies.next();
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err("no answer".to_owned())))
            .collect()
    }

    /// The relay frame of a publication, or why it cannot be sent.
    fn frame(&self, publication: &Publication) -> Result<Vec<u8>, String> {
        let frame = relay::encode(publication)
            .map_err(|e| self.refuse("error", format!("cannot encode it: {e}")))?;
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
        Ok(frame)
    }

    /// What the publish script answered for one publication.
    fn taken(&self, reply: RedisResult<Value>) -> Result<(), String> {
        match reply {
            Ok(Value::BulkString(_) | Value::SimpleString(_)) => {
                self.metrics.published.inc();
                Ok(())
            }
            Ok(Value::Array(missing)) => {
                let names: Vec<&str> = missing
                    .iter()
                    .filter_map(|key| match key {
                        Value::BulkString(key) => std::str::from_utf8(key).ok(),
                        _ => None,
                    })
                    .map(|key| self.names.name_of(key))
                    .collect();
                Err(self.refuse(
                    "member_unsubscribed",
                    format!(
                        "{} not subscribed to Redis (reconnecting, or gone and not yet expired); no node received it, retry shortly",
                        describe(&names)
                    ),
                ))
            }
            Ok(other) => Err(self.refuse("error", format!("Redis answered {other:?}"))),
            Err(e) => Err(self.refuse("error", format!("Redis did not take it: {e}"))),
        }
    }

    /// Refusals of the same reason, each counted as it is taken.
    fn refuse_all<'a>(
        &'a self,
        reason: &'static str,
        message: String,
    ) -> Box<dyn Iterator<Item = Result<(), String>> + 'a> {
        Box::new(std::iter::repeat_with(move || {
            Err(self.refuse(reason, message.clone()))
        }))
    }

    /// Counts a refusal and returns its message.
    pub(super) fn refuse(&self, reason: &'static str, message: String) -> String {
        self.metrics.refuse(reason);
        tracing::debug!(reason, %message, "publish refused");
        message
    }
}

fn describe(names: &[&str]) -> String {
    match names {
        [one] => format!("node {one} is"),
        many => format!("nodes {} are", many.join(", ")),
    }
}
