//! The topic API on the main namespace: Socket.IO events and their acks.
//!
//! | event | argument | ack |
//! |---|---|---|
//! | `subscribe` | pattern, or `{pattern, since}` | `{ok:true, pattern, cursor}` (with `since`: `recovered`, and `replayed` when recovered, `reason` when not) or `{ok:false, error:{code, message}}` |
//! | `unsubscribe` | pattern | same |
//! | `subscriptions` | none | `{ok:true, patterns:[…]}` |
//! | `publish` | `{topic, content, ack?}` (`ack`: `"local"` or `"replicated"`) | `{ok:true, id}` or an error |
//!
//! Arguments are taken as raw JSON and checked here, not by a typed
//! extractor: socketioxide skips the handler when its extractor fails, and a
//! client that sent the wrong shape would then wait for an ack that never
//! comes. Every request with an ack callback gets an answer.
//!
//! The handlers do their work in the function body and return a ready
//! future: socketioxide calls the body in the order events arrive but spawns
//! the returned future, and spawned tasks may run out of order, which would
//! reorder one socket's publishes. A publish the cluster backend must confirm
//! (Redis) is acked from the backend's continuation, which runs in order too.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;

use stickyio_shared::config::node::PublishAck;

use crate::metrics::Metrics;
use crate::topics::{Resumed, Subscribed, TopicError, TopicService};

/// What the handlers share, as socketioxide state.
#[derive(Clone)]
pub(crate) struct Api {
    pub topics: Arc<TopicService>,
    pub metrics: Arc<Metrics>,
}

/// Registers the main namespace and its event handlers.
pub(crate) fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(add_handlers));
}

/// Adds the event handlers in a connect middleware, which socketioxide runs
/// before it tells the client it is connected. The connect handler itself is
/// spawned after that, so a client emitting right away could beat it and
/// have its first request dropped without an ack.
async fn add_handlers(socket: SocketRef) -> Result<(), Infallible> {
    socket.on("subscribe", pattern_request);
    socket.on("unsubscribe", pattern_request);
    socket.on("subscriptions", subscriptions);
    socket.on("publish", publish);
    socket.on_disconnect(on_disconnect);
    Ok(())
}

async fn on_connect(socket: SocketRef, State(api): State<Api>) {
    api.metrics.connected_sockets.inc();
    tracing::debug!(sid = %socket.id, "socket connected");
}

fn on_disconnect(socket: SocketRef, reason: DisconnectReason, State(api): State<Api>) -> Ready<()> {
    api.topics.remove_socket(socket.id);
    api.metrics.connected_sockets.dec();
    tracing::debug!(sid = %socket.id, ?reason, "socket disconnected");
    ready(())
}

/// `subscribe` and `unsubscribe`: same argument, same ack.
fn pattern_request(
    socket: SocketRef,
    Event(event): Event,
    State(api): State<Api>,
    TryData(arg): TryData<Value>,
    ack: AckSender,
) -> Ready<()> {
    match pattern_argument(&event, arg) {
        Err(e) => reply(&api, ack, Err(e)),
        Ok((pattern, Some(since))) => {
            let topics = api.topics.clone();
            topics.subscribe_since(&socket, &pattern, &since, move |result| {
                reply(&api, ack, result.map(subscribed));
            });
        }
        Ok((pattern, None)) if event == "subscribe" => {
            let result = api.topics.subscribe(&socket, &pattern).map(subscribed);
            reply(&api, ack, result);
        }
        Ok((pattern, None)) => {
            let result = api
                .topics
                .unsubscribe(socket.id, &pattern)
                .map(|pattern| json!({ "ok": true, "pattern": pattern.as_str() }));
            reply(&api, ack, result);
        }
    }
    ready(())
}

/// The ack of a `subscribe`: `{ok, pattern, cursor?}`, and after a resume
/// `recovered` with `replayed` or the `reason` it was not.
fn subscribed(done: Subscribed) -> Value {
    let mut body = json!({ "ok": true, "pattern": done.pattern.as_str() });
    if let Some(cursor) = done.cursor {
        body["cursor"] = json!(cursor);
    }
    match done.resumed {
        None => {}
        Some(Resumed::Recovered(replayed)) => {
            body["recovered"] = json!(true);
            body["replayed"] = json!(replayed);
        }
        Some(Resumed::NotRecovered(reason)) => {
            body["recovered"] = json!(false);
            body["reason"] = json!(reason);
        }
    }
    body
}

fn subscriptions(socket: SocketRef, State(api): State<Api>, ack: AckSender) -> Ready<()> {
    let patterns = api.topics.subscriptions(socket.id);
    reply(&api, ack, Ok(json!({ "ok": true, "patterns": patterns })));
    ready(())
}

fn publish(
    socket: SocketRef,
    State(api): State<Api>,
    TryData(arg): TryData<Value>,
    ack: AckSender,
) -> Ready<()> {
    match publish_argument(arg) {
        Ok((topic, content, mode)) => {
            let topics = api.topics.clone();
            topics.publish(socket.id.as_str(), &topic, content, mode, move |result| {
                let result = result.map(|publication| json!({ "ok": true, "id": publication.id }));
                reply(&api, ack, result);
            });
        }
        Err(e) => reply(&api, ack, Err(e)),
    }
    ready(())
}

/// Sends the ack: the success body, or `{ok:false, error:{code, message}}`.
fn reply(api: &Api, ack: AckSender, result: Result<Value, TopicError>) {
    let body = result.unwrap_or_else(|e| {
        api.metrics.reject(e.code());
        json!({ "ok": false, "error": { "code": e.code(), "message": e.to_string() } })
    });
    if let Err(e) = ack.send(&body) {
        tracing::debug!(error = %e, "ack not sent");
    }
}

/// The pattern string that `subscribe` and `unsubscribe` take, or the
/// `{pattern, since}` object `subscribe` also takes.
fn pattern_argument<E>(
    event: &str,
    arg: Result<Value, E>,
) -> Result<(String, Option<String>), TopicError> {
    let shape = if event == "subscribe" {
        "a pattern string such as \"news.*\", or {pattern, since}"
    } else {
        "a pattern string such as \"news.*\""
    };
    let invalid = |why: String| TopicError::InvalidPayload(format!("{event} takes {shape}{why}"));
    match arg {
        Ok(Value::String(pattern)) => Ok((pattern, None)),
        Ok(Value::Object(mut object)) if event == "subscribe" => {
            if let Some(unknown) = object
                .keys()
                .find(|k| !matches!(k.as_str(), "pattern" | "since"))
            {
                return Err(invalid(format!("; unknown field {unknown:?}")));
            }
            let pattern = match object.remove("pattern") {
                Some(Value::String(pattern)) => pattern,
                Some(other) => {
                    return Err(invalid(format!(
                        "; `pattern` must be a string, not {}",
                        describe(&other)
                    )));
                }
                None => return Err(invalid("; `pattern` is missing".to_owned())),
            };
            match object.remove("since") {
                None | Some(Value::Null) => Ok((pattern, None)),
                Some(Value::String(since)) => Ok((pattern, Some(since))),
                Some(other) => Err(TopicError::InvalidCursor(
                    crate::cursor::CursorError::Malformed(if other.is_object() {
                        "a cursor is a string, not an object"
                    } else {
                        "a cursor is a string"
                    }),
                )),
            }
        }
        Ok(other) => Err(invalid(format!(", not {}", describe(&other)))),
        Err(_) => Err(invalid(" as its argument; none was sent".to_owned())),
    }
}

/// The `{topic, content, ack?}` object that `publish` takes.
fn publish_argument<E>(
    arg: Result<Value, E>,
) -> Result<(String, Value, Option<PublishAck>), TopicError> {
    const SHAPE: &str = "publish takes an object {topic, content}";
    let invalid = |why: String| TopicError::InvalidPayload(format!("{SHAPE}; {why}"));
    let mut object: Map<String, Value> = match arg {
        Ok(Value::Object(object)) => object,
        Ok(other) => return Err(invalid(format!("got {}", describe(&other)))),
        Err(_) => return Err(invalid("no argument was sent".to_owned())),
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "topic" | "content" | "ack"))
    {
        return Err(invalid(format!("unknown field {unknown:?}")));
    }
    let topic = match object.remove("topic") {
        Some(Value::String(topic)) => topic,
        Some(other) => {
            return Err(invalid(format!(
                "`topic` must be a string, not {}",
                describe(&other)
            )));
        }
        None => return Err(invalid("`topic` is missing".to_owned())),
    };
    let Some(content) = object.remove("content") else {
        return Err(invalid("`content` is missing".to_owned()));
    };
    let mode = match object.remove("ack") {
        None | Some(Value::Null) => None,
        Some(Value::String(mode)) if mode == "local" => Some(PublishAck::Local),
        Some(Value::String(mode)) if mode == "replicated" => Some(PublishAck::Replicated),
        Some(other) => {
            return Err(invalid(format!(
                "`ack` is \"local\" or \"replicated\", not {other}"
            )));
        }
    };
    Ok((topic, content, mode))
}

/// A JSON value's kind, for error messages.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<impl std::fmt::Debug, TopicError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn pattern_argument_must_be_a_string() {
        assert_eq!(
            pattern_argument::<()>("subscribe", Ok(json!("a.*"))).unwrap(),
            ("a.*".to_owned(), None)
        );
        assert_eq!(
            message(pattern_argument::<()>("unsubscribe", Ok(json!(5)))),
            "unsubscribe takes a pattern string such as \"news.*\", not a number"
        );
        assert_eq!(
            message(pattern_argument::<()>("subscribe", Ok(json!(5)))),
            "subscribe takes a pattern string such as \"news.*\", or {pattern, since}, not a number"
        );
        assert_eq!(
            message(pattern_argument("unsubscribe", Err(()))),
            "unsubscribe takes a pattern string such as \"news.*\" as its argument; none was sent"
        );
    }

    #[test]
    fn subscribe_takes_a_pattern_and_a_cursor() {
        assert_eq!(
            pattern_argument::<()>("subscribe", Ok(json!({"pattern": "a.*", "since": "c"})))
                .unwrap(),
            ("a.*".to_owned(), Some("c".to_owned()))
        );
        assert_eq!(
            pattern_argument::<()>("subscribe", Ok(json!({"pattern": "a.*", "since": null})))
                .unwrap(),
            ("a.*".to_owned(), None)
        );
        assert_eq!(
            message(pattern_argument::<()>(
                "subscribe",
                Ok(json!({"pattern": "a", "snice": "c"}))
            )),
            "subscribe takes a pattern string such as \"news.*\", or {pattern, since}; unknown field \"snice\""
        );
        let err = pattern_argument::<()>("subscribe", Ok(json!({"pattern": "a", "since": 5})))
            .unwrap_err();
        assert_eq!(err.code(), crate::topics::ErrorCode::InvalidCursor);
        assert!(
            pattern_argument::<()>("unsubscribe", Ok(json!({"pattern": "a"}))).is_err(),
            "unsubscribe takes a string only"
        );
    }

    #[test]
    fn publish_argument_checks_the_object_shape() {
        let (topic, content, mode) =
            publish_argument::<()>(Ok(json!({"topic": "a", "content": null}))).unwrap();
        assert_eq!((topic.as_str(), content, mode), ("a", Value::Null, None));
        let (_, _, mode) =
            publish_argument::<()>(Ok(json!({"topic": "a", "content": 1, "ack": "replicated"})))
                .unwrap();
        assert_eq!(mode, Some(PublishAck::Replicated));
        assert_eq!(
            message(publish_argument::<()>(Ok(
                json!({"topic": "a", "content": 1, "ack": "eventually"})
            ))),
            "publish takes an object {topic, content}; `ack` is \"local\" or \"replicated\", not \"eventually\""
        );
        assert_eq!(
            message(publish_argument::<()>(Ok(json!(42)))),
            "publish takes an object {topic, content}; got a number"
        );
        assert_eq!(
            message(publish_argument::<()>(Ok(json!({"content": 1})))),
            "publish takes an object {topic, content}; `topic` is missing"
        );
        assert_eq!(
            message(publish_argument::<()>(Ok(
                json!({"topic": ["a"], "content": 1})
            ))),
            "publish takes an object {topic, content}; `topic` must be a string, not an array"
        );
        assert_eq!(
            message(publish_argument::<()>(Ok(json!({"topic": "a"})))),
            "publish takes an object {topic, content}; `content` is missing"
        );
        assert_eq!(
            message(publish_argument::<()>(Ok(
                json!({"topic": "a", "content": 1, "tpoic": 2})
            ))),
            "publish takes an object {topic, content}; unknown field \"tpoic\""
        );
        assert_eq!(
            message(publish_argument(Err(()))),
            "publish takes an object {topic, content}; no argument was sent"
        );
    }
}
