//! A hand-driven `/cluster` client, to play a well-behaved or hostile peer.
//! Its callbacks only forward `(event, payload)` into a channel.

use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::Event;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::timeout;

pub type Events = mpsc::UnboundedReceiver<(String, String)>;

/// Connects to `url`'s `/cluster` with `auth`; refusals arrive as `error`.
pub async fn raw_peer(url: &str, auth: Value) -> (Client, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let any = tx.clone();
    let client = ClientBuilder::new(url)
        .namespace("/cluster")
        .auth(auth)
        .reconnect(false)
        .on(Event::Error, move |p, _| {
            let _ = tx.send(("error".into(), format!("{p:?}")));
            async {}.boxed()
        })
        .on_any(move |event, p, _| {
            let _ = any.send((String::from(event), format!("{p:?}")));
            async {}.boxed()
        })
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}/cluster: {e}"));
    (client, rx)
}

pub async fn next_event(events: &mut Events) -> (String, String) {
    timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("client open")
}

/// Asserts that no event arrives within `grace`.
pub async fn no_event(events: &mut Events, grace: Duration) {
    if let Ok(Some(event)) = timeout(grace, events.recv()).await {
        panic!("unexpected event {event:?}");
    }
}
