//! The node's link to Redis: connect, subscribe, heartbeat, receive, and
//! reconnect with backoff when any of it fails.
//!
//! One task owns both connections: a multiplexed one for commands (publish
//! script, heartbeat) shared with publishers, and a subscriber. It is also
//! where resumes read the history stream: between two deliveries, so a
//! resumed socket misses nothing delivered meanwhile. The node
//! counts as up only once it is subscribed and its heartbeat key is written,
//! in that order, so a member with a key is always one that hears the relay
//! channel. Anything wrong ends the session: both connections are dropped,
//! publishes are refused while down, and the task retries after a backoff
//! that doubles from [`FIRST_BACKOFF`] up to `retry_interval`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, Msg, RedisResult, Script, Value};
use stickyio_shared::message::Publication;
use stickyio_shared::relay;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::MemberLabels;
use super::{Current, REDIS_TIMEOUT, ResumeJob, Shared};
use crate::cluster::LinkState;
use crate::cursor::Stamp;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Deletes this node's heartbeat key and membership when it still holds our
/// incarnation (never a same-named other process's).
const LEAVE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0
";

/// How a session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// Connects, serves, and reconnects until `shutdown`.
pub(super) async fn run(
    shared: Arc<Shared>,
    client: Client,
    mut resumes: mpsc::Receiver<ResumeJob>,
    shutdown: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        // The dial, the wait and the connect keep the URL in their text too,
        // as the mesh's "Trying to connect to …" does: operators grep them.
        tracing::info!(node = %shared.node, redis = %shared.url, "Trying to connect to Redis at {}", shared.url);
        let session = Session::open(&shared, &client);
        let end = tokio::select! {
            () = shutdown.cancelled() => End::Shutdown,
            opened = session => match opened {
                Ok(session) => {
                    backoff = FIRST_BACKOFF;
                    session.serve(&shared, &mut resumes, &shutdown).await
                }
                Err(e) => End::Lost(e),
            },
        };
        let was_up = shared.status().state == LinkState::Up;
        shared.set_connection(None);
        shared.fail_own();
        // Without Redis no history can be read: those resumes go live.
        while let Ok(job) = resumes.try_recv() {
            (job.then)(None);
        }
        match end {
            End::Shutdown => {
                shared.set_state(LinkState::Down, Some("shutting down".to_owned()));
                return;
            }
            End::Lost(why) => {
                if was_up {
                    shared.metrics.reconnects.inc();
                    shared.membership().lost(Instant::now());
                    shared.metrics.members.set(0);
                    shared.metrics.member.clear();
                    tracing::warn!(node = %shared.node, redis = %shared.url, error = %why, "lost Redis");
                } else {
                    tracing::warn!(node = %shared.node, redis = %shared.url, error = %why, "cannot use Redis");
                }
                shared.set_state(LinkState::Down, Some(why));
            }
        }
        let retry_in = stickyio_shared::config::Duration(backoff);
        tracing::info!(node = %shared.node, %retry_in, "Waiting {retry_in} before retrying");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(shared.retry_interval);
    }
}

struct Session {
    commands: MultiplexedConnection,
    broken: CancellationToken,
    /// Kept so the subscriber connection stays open; pinged on heartbeats.
    sink: PubSubSink,
    messages: PubSubStream,
}

impl Session {
    async fn open(shared: &Shared, client: &Client) -> Result<Session, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let commands = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| format!("no subscriber connection within {REDIS_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot open the subscriber connection: {e}"))?;
        // Loaded up front (a restarted Redis has none), so no publish meets
        // NOSCRIPT and is resent out of order.
        shared
            .script
            .load_async(&mut commands.clone())
            .await
            .map_err(|e| format!("cannot load the publish script: {e}"))?;
        let (mut sink, messages) = pubsub.split();
        let channels = [shared.names.relay.clone(), shared.names.own.clone()];
        tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(&channels))
            .await
            .map_err(|_| format!("SUBSCRIBE not answered within {REDIS_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot subscribe: {e}"))?;
        let mut session = Session {
            commands,
            broken: CancellationToken::new(),
            sink,
            messages,
        };
        session.heartbeat(shared, true).await?;
        // Remembered members count before the first publish can go out.
        shared
            .membership()
            .regained(Instant::now(), shared.ttl + shared.retry_interval);
        shared.set_connection(Some(Current {
            commands: session.commands.clone(),
            broken: session.broken.clone(),
        }));
        shared.set_state(LinkState::Up, None);
        tracing::info!(node = %shared.node, redis = %shared.url, "Connected to Redis at {}", shared.url);
        Ok(session)
    }

    async fn serve(
        mut self,
        shared: &Shared,
        resumes: &mut mpsc::Receiver<ResumeJob>,
        shutdown: &CancellationToken,
    ) -> End {
        let mut ticks = tokio::time::interval(shared.ttl / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.reset();
        let why = loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.leave(shared).await;
                    return End::Shutdown;
                }
                message = self.messages.next() => match message {
                    Some(message) => receive(shared, &message),
                    None => return End::Lost("Redis closed the subscriber connection".to_owned()),
                },
                Some(job) = resumes.recv() => {
                    let entries = self.read_since(shared, job.since, job.limit).await;
                    (job.then)(entries);
                }
                _ = ticks.tick() => {
                    if let Err(e) = self.heartbeat(shared, false).await {
                        break e;
                    }
                }
                () = self.broken.cancelled() => {
                    break "a publish found the connection broken".to_owned();
                }
            }
        };
        self.drain(shared).await;
        End::Lost(why)
    }

    /// Unsubscribes and delivers what the subscriber connection still
    /// holds: publications Redis took (and acked to their origin) while
    /// this node was subscribed must not be lost here. Once the unsubscribe
    /// is confirmed, every message sent before it is queued; a connection
    /// that cannot confirm is read until it ends, or for [`REDIS_TIMEOUT`].
    async fn drain(&mut self, shared: &Shared) {
        let channels = [shared.names.relay.clone(), shared.names.own.clone()];
        let unsubscribed =
            tokio::time::timeout(REDIS_TIMEOUT, self.sink.unsubscribe(&channels)).await;
        if let Ok(Ok(())) = unsubscribed {
            while let Some(Some(message)) = self.messages.next().now_or_never() {
                receive(shared, &message);
            }
            return;
        }
        let deadline = tokio::time::Instant::now() + REDIS_TIMEOUT;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, self.messages.next()).await
        {
            receive(shared, &message);
        }
    }

    /// Refreshes this node's key (noticing another process that wrote it),
    /// lists the live members, and checks the subscriber connection. On the
    /// `first` heartbeat of a session the key may still hold this node's
    /// previous incarnation (a restart after a crash): not a conflict.
    async fn heartbeat(&mut self, shared: &Shared, first: bool) -> Result<(), String> {
        let work = async {
            let boot = shared.boot.to_string();
            let ttl = u64::try_from(shared.ttl.as_millis()).unwrap_or(u64::MAX);
            let mut pipe = redis::pipe();
            if shared.history_size > 0 {
                // Age-trim the history too, so nothing older than history.ttl
                // is replayed (MAXLEN in the publish script bounds its length).
                let horizon = crate::cluster::millis(std::time::SystemTime::now()).saturating_sub(
                    u64::try_from(shared.history_ttl.as_millis()).unwrap_or(u64::MAX),
                );
                pipe.cmd("XTRIM")
                    .arg(&shared.names.history)
                    .arg("MINID")
                    .arg("~")
                    .arg(horizon)
                    .ignore();
            }
            let (previous, names): (Option<String>, Vec<String>) = pipe
                .cmd("SET")
                .arg(&shared.names.own)
                .arg(&boot)
                .arg("PX")
                .arg(ttl)
                .arg("GET")
                .cmd("SADD")
                .arg(&shared.names.members)
                .arg(&shared.node)
                .ignore()
                .cmd("SMEMBERS")
                .arg(&shared.names.members)
                .query_async(&mut self.commands)
                .await?;
            if let Some(other) = previous.filter(|p| *p != boot && !first) {
                shared.conflict_seen(&other);
            }
            let keys: Vec<String> = names.iter().map(|n| shared.names.member(n)).collect();
            let boots: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.commands)
                .await?;
            let mut live = BTreeMap::new();
            let mut gone = Vec::new();
            for (name, boot) in names.into_iter().zip(boots) {
                match boot {
                    Some(boot) => drop(live.insert(name, boot)),
                    None => gone.push(name),
                }
            }
            if !gone.is_empty() {
                // Members whose key expired: a node that died without leaving.
                redis::cmd("SREM")
                    .arg(&shared.names.members)
                    .arg(&gone)
                    .exec_async(&mut self.commands)
                    .await?;
            }
            self.sink.ping::<redis::Value>().await?;
            RedisResult::Ok(live)
        };
        let live = tokio::time::timeout(REDIS_TIMEOUT * 2, work)
            .await
            .map_err(|_| format!("heartbeat not answered within {:?}", REDIS_TIMEOUT * 2))?
            .map_err(|e| format!("heartbeat failed: {e}"))?;
        shared.members_seen(live);
        Ok(())
    }

    /// The history after `since` (at most `limit` entries), or `None` when
    /// the stream no longer holds `since` itself (trimmed, or Redis lost
    /// it), holds more than `limit` after it, or cannot be read.
    async fn read_since(
        &mut self,
        shared: &Shared,
        since: Stamp,
        limit: usize,
    ) -> Option<Vec<(Stamp, Publication)>> {
        let mut xrange = redis::cmd("XRANGE");
        xrange
            .arg(&shared.names.history)
            .arg(since.to_string())
            .arg("+")
            .arg("COUNT")
            .arg(limit.saturating_add(2));
        let read = xrange.query_async::<Value>(&mut self.commands);
        let entries = match tokio::time::timeout(REDIS_TIMEOUT, read).await {
            Ok(Ok(Value::Array(entries))) => entries,
            Ok(Ok(other)) => {
                tracing::warn!(node = %shared.node, reply = ?other, "XRANGE answered something else than entries");
                return None;
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %shared.node, error = %e, "cannot read the history stream");
                return None;
            }
            Err(_) => {
                tracing::warn!(node = %shared.node, timeout = ?REDIS_TIMEOUT, "the history stream was not read in time");
                return None;
            }
        };
        if entries.len() > limit.saturating_add(1) {
            return None;
        }
        let mut entries = entries
            .into_iter()
            .filter_map(|entry| stream_entry(shared, entry));
        match entries.next() {
            Some((first, _)) if first == since => {}
            _ => return None,
        }
        Some(entries.collect())
    }

    /// Removes this node from the pool before it stops, so others stop
    /// expecting it at once rather than when its key expires.
    async fn leave(&mut self, shared: &Shared) {
        let script = Script::new(LEAVE);
        let mut leave = script.prepare_invoke();
        leave
            .key(&shared.names.own)
            .key(&shared.names.members)
            .arg(shared.boot.to_string())
            .arg(&shared.node);
        match tokio::time::timeout(REDIS_TIMEOUT, leave.invoke_async::<i64>(&mut self.commands))
            .await
        {
            Ok(Ok(_)) => tracing::info!(node = %shared.node, "Left the Redis pool"),
            Ok(Err(e)) => {
                tracing::warn!(node = %shared.node, error = %e, "could not leave the Redis pool")
            }
            Err(_) => tracing::warn!(node = %shared.node, "Could not leave the Redis pool in time"),
        }
    }
}

/// A message on a subscribed channel: `{entry id}\n{relay frame}`. A frame
/// of another node is delivered locally, once; our own is delivered too (in
/// the stream's order) and its publish acked; nothing is published again.
fn receive(shared: &Shared, message: &Msg) {
    if message.get_channel_name() != shared.names.relay {
        return;
    }
    let payload = message.get_payload_bytes();
    let Some(newline) = payload.iter().position(|b| *b == b'\n') else {
        shared.metrics.reject_frame("no_entry_id");
        tracing::warn!(node = %shared.node, "relay message from Redis without its entry id refused");
        return;
    };
    let stamp = std::str::from_utf8(&payload[..newline])
        .ok()
        .and_then(Stamp::parse);
    let publication = match relay::decode(&payload[newline + 1..], shared.max_frame) {
        Ok(publication) => publication,
        Err(e) => {
            shared.metrics.reject_frame(e.kind());
            tracing::warn!(node = %shared.node, error = %e, "relay frame from Redis refused");
            return;
        }
    };
    if publication.node == shared.node {
        // Ids read `{node}-{incarnation}-{sequence}`.
        let rest = &publication.id[publication.id.len().min(shared.node.len() + 1)..];
        let boot = rest.split('-').next().unwrap_or(rest);
        if boot == shared.boot.to_string() {
            let id = publication.id.clone();
            shared.received.own(publication, stamp);
            shared.delivered_own(&id);
            return;
        }
        shared.conflict_seen(boot);
    }
    // The id already names the origin's incarnation.
    shared.received.receive(
        &publication.node.clone(),
        0,
        publication,
        stamp,
        Instant::now(),
    );
}

/// One `XRANGE` entry, `[id, [field, value, …]]`, as a publication; `None`
/// (with a warning) when it is not one this backend wrote.
fn stream_entry(shared: &Shared, entry: Value) -> Option<(Stamp, Publication)> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let mut parts = parts.into_iter();
    let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (parts.next(), parts.next())
    else {
        return None;
    };
    let stamp = std::str::from_utf8(&id).ok().and_then(Stamp::parse)?;
    let frame = fields.chunks(2).find_map(|pair| match pair {
        [Value::BulkString(name), Value::BulkString(value)] if name == b"f" => Some(value),
        _ => None,
    })?;
    match relay::decode(frame, shared.max_frame) {
        Ok(publication) => Some((stamp, publication)),
        Err(e) => {
            tracing::warn!(node = %shared.node, entry = %stamp, error = %e, "history entry refused");
            None
        }
    }
}

impl Shared {
    fn members_seen(&self, live: BTreeMap<String, String>) {
        let metrics = &self.metrics;
        metrics.members.set(live.len() as i64);
        let mut membership = self.membership();
        for gone in membership
            .members()
            .into_iter()
            .filter(|m| !live.contains_key(&m.name))
        {
            metrics.member.remove(&MemberLabels { member: gone.name });
        }
        for name in live.keys() {
            metrics
                .member
                .get_or_create(&MemberLabels {
                    member: name.clone(),
                })
                .set(1);
        }
        membership.update(live);
        let conflict = membership.conflict(Instant::now()).is_some();
        metrics.name_conflict.set(i64::from(conflict));
    }
}
