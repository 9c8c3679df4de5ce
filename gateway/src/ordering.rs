//! Per-session order: the requests of one Engine.IO session reach its node in
//! the order their heads reached the gateway, across client connections.
//!
//! Engine.IO depends on that order: a long-poll `GET` followed by a `POST`
//! carrying the close packet must reach the node as `GET`, `POST`, or the node
//! answers the `GET` with 400 instead of a noop. A proxy that connects or
//! schedules each request independently can swap two requests sent
//! microseconds apart.
//!
//! Each request with a `sid` takes a [`Turn`] as soon as its head is parsed.
//! Turns of one `sid` run strictly in sequence: a turn ends when its request
//! head has been written to the node (not when its response arrives, since a
//! long poll is answered only much later). A relayed websocket of the session
//! registers a flush handle, and a later request of the session first has
//! the relay pass on every frame the client already sent.
//!
//! A session with no concurrent request pays one map insert and one removal
//! under an uncontended lock per request: an entry lives only while a request
//! of its session is between head and forwarding, or a websocket is relayed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ahash::AHashMap;
use tokio::sync::{mpsc, oneshot};

/// Longest a request waits for the ones before it of its session. Bounded so
/// a stuck earlier request (a node not accepting) delays, never blocks, the
/// next one; the node's connect timeout is the usual cause, and below it.
pub const MAX_WAIT: Duration = Duration::from_secs(3);
/// Longest a request waits for a websocket relay of its session to flush.
pub const MAX_FLUSH_WAIT: Duration = Duration::from_secs(1);

/// A relay asked to pass on what it has read; it answers on the sender.
pub type FlushRequest = oneshot::Sender<()>;

#[derive(Default)]
struct Line {
    /// The sequence number the next arriving request gets.
    next: u64,
    /// Every turn below this one has ended.
    done: u64,
    /// Turns waiting for `done` to reach them.
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
    /// Turns given up before their time: skipped when `done` reaches them.
    abandoned: BTreeSet<u64>,
    relay: Option<mpsc::Sender<FlushRequest>>,
}

impl Line {
    fn idle(&self) -> bool {
        self.done == self.next && self.relay.is_none()
    }

    /// Ends turn `seq` and wakes the next live one.
    fn finish(&mut self, seq: u64) {
        if seq != self.done {
            self.abandoned.insert(seq);
            self.waiting.remove(&seq);
            return;
        }
        self.done += 1;
        while self.abandoned.remove(&self.done) {
            self.done += 1;
        }
        if let Some(next) = self.waiting.remove(&self.done) {
            // A waiter that went away abandons its turn on drop.
            let _ = next.send(());
        }
    }
}

#[derive(Default)]
pub struct SessionOrder {
    lines: Mutex<AHashMap<String, Line>>,
}

/// One request's place in its session's line. Dropping it ends the turn.
pub struct Turn {
    order: Arc<SessionOrder>,
    sid: String,
    seq: u64,
    flush: Option<mpsc::Sender<FlushRequest>>,
    ended: bool,
}

impl SessionOrder {
    fn lock(&self) -> MutexGuard<'_, AHashMap<String, Line>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next turn of `sid` and waits (at most [`MAX_WAIT`]) until
    /// every earlier request of the session has been forwarded. If a
    /// websocket of the session is relayed, it is flushed first.
    pub async fn enter(self: &Arc<Self>, sid: &str) -> Turn {
        let (seq, wait, flush) = {
            let mut lines = self.lock();
            let line = lines.entry(sid.to_owned()).or_default();
            let seq = line.next;
            line.next += 1;
            let wait = (seq != line.done).then(|| {
                let (tx, rx) = oneshot::channel();
                line.waiting.insert(seq, tx);
                rx
            });
            (seq, wait, line.relay.clone())
        };
        let turn = Turn {
            order: self.clone(),
            sid: sid.to_owned(),
            seq,
            flush,
            ended: false,
        };
        if let Some(wait) = wait
            && tokio::time::timeout(MAX_WAIT, wait).await.is_err()
        {
            tracing::warn!(sid, waited = ?MAX_WAIT, "request forwarded before an earlier one of its session");
        }
        turn.flush_relay().await;
        turn
    }

    /// A websocket of `sid` is relayed: later requests of the session flush
    /// it first. The returned receiver gets those requests; dropping it
    /// unregisters the relay.
    pub fn relay(self: &Arc<Self>, sid: &str) -> RelayHandle {
        let (tx, rx) = mpsc::channel(4);
        self.lock().entry(sid.to_owned()).or_default().relay = Some(tx);
        RelayHandle {
            order: self.clone(),
            sid: sid.to_owned(),
            requests: rx,
        }
    }

    /// Sessions with a request in line or a relay (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn end(&self, sid: &str, seq: u64) {
        let mut lines = self.lock();
        if let Some(line) = lines.get_mut(sid) {
            line.finish(seq);
            if line.idle() {
                lines.remove(sid);
            }
        }
    }
}

impl Turn {
    async fn flush_relay(&self) {
        let Some(relay) = &self.flush else { return };
        let (tx, rx) = oneshot::channel();
        if relay.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(MAX_FLUSH_WAIT, rx).await;
        }
    }

    /// The request head is on its way to the node: the next request of the
    /// session may go.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if !self.ended {
            self.ended = true;
            self.order.end(&self.sid, self.seq);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Held by a websocket relay for as long as it runs.
pub struct RelayHandle {
    order: Arc<SessionOrder>,
    sid: String,
    pub requests: mpsc::Receiver<FlushRequest>,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        let mut lines = self.order.lock();
        if let Some(line) = lines.get_mut(&self.sid) {
            line.relay = None;
            if line.idle() {
                lines.remove(&self.sid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_lone_request_goes_at_once_and_leaves_nothing_behind() {
        let order = Arc::new(SessionOrder::default());
        let turn = order.enter("s").await;
        assert_eq!(order.len(), 1);
        turn.end();
        assert!(order.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn later_requests_wait_for_earlier_ones_to_be_forwarded() {
        let order = Arc::new(SessionOrder::default());
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let first = order.enter("s").await;
        let mut waiters = Vec::new();
        for i in 1..=3 {
            let (order, forwarded) = (order.clone(), forwarded.clone());
            waiters.push(tokio::spawn(async move {
                let turn = order.enter("s").await;
                forwarded.lock().unwrap().push(i);
                turn.end();
            }));
            // Arrival order is spawn order.
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            forwarded.lock().unwrap().is_empty(),
            "all wait for the first"
        );
        forwarded.lock().unwrap().push(0);
        first.end();
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*forwarded.lock().unwrap(), [0, 1, 2, 3]);
        assert!(order.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_wait_does_not_block_the_line() {
        let order = Arc::new(SessionOrder::default());
        let first = order.enter("s").await;
        let o = order.clone();
        let gave_up = tokio::spawn(async move { o.enter("s").await });
        tokio::task::yield_now().await;
        gave_up.abort();
        let _ = gave_up.await;
        let o = order.clone();
        let third = tokio::spawn(async move { o.enter("s").await.end() });
        tokio::task::yield_now().await;
        first.end();
        tokio::time::timeout(Duration::from_millis(10), third)
            .await
            .expect("the third went once the first ended")
            .unwrap();
        assert!(order.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_request_delays_the_next_one_by_at_most_max_wait() {
        let order = Arc::new(SessionOrder::default());
        let _stuck = order.enter("s").await;
        let started = tokio::time::Instant::now();
        order.enter("s").await.end();
        assert_eq!(started.elapsed(), MAX_WAIT);
    }

    #[tokio::test]
    async fn requests_flush_the_sessions_relay_first() {
        let order = Arc::new(SessionOrder::default());
        let mut relay = order.relay("s");
        let flushed = Arc::new(AtomicU32::new(0));
        let f = flushed.clone();
        let relay_task = tokio::spawn(async move {
            while let Some(ack) = relay.requests.recv().await {
                f.fetch_add(1, Ordering::SeqCst);
                let _ = ack.send(());
            }
        });
        let turn = order.enter("s").await;
        assert_eq!(
            flushed.load(Ordering::SeqCst),
            1,
            "flushed before the turn began"
        );
        turn.end();
        assert_eq!(order.len(), 1, "the relay keeps its entry");
        order.enter("other").await.end();
        assert_eq!(
            flushed.load(Ordering::SeqCst),
            1,
            "other sessions do not flush it"
        );
        relay_task.abort();
    }
}
