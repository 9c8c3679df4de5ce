//! W5: cluster fan-out. Subscribers spread over the targets all subscribe
//! to one topic; one publisher per target publishes to it. Every message
//! carries its publisher, sequence number and publish time, so each
//! subscriber measures publish → deliver latency and counts what it got
//! twice (duplicates) and, after a drain, what it never got (loss).
//!
//! Publishers are subscribed too and keep at most `window` of their own
//! messages in flight (published, not yet delivered back to them), so the
//! publish rate follows what the cluster delivers instead of flooding it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Run, Window, epoch_micros, open_all};
use crate::procfs;
use crate::protocol::{self, RawPacket, SocketPacket};
use crate::report::{Errors, Failure, Latency, Report};
use crate::session::{Session, Transport};

const TOPIC: &str = "bench.fanout";
/// How long subscribers may take to catch up after the publishers stop.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub subscribers: usize,
    pub publishers: usize,
    pub window: u64,
    pub transport: Transport,
}

/// The measured window in publish-time (epoch) microseconds.
#[derive(Debug, Clone, Copy)]
struct EpochWindow {
    start: u64,
    end: u64,
}

impl EpochWindow {
    fn of(window: &Window) -> EpochWindow {
        let now = Instant::now();
        let base = epoch_micros();
        EpochWindow {
            start: base + window.start.saturating_duration_since(now).as_micros() as u64,
            end: base + window.end.saturating_duration_since(now).as_micros() as u64,
        }
    }

    fn measures(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }
}

pub async fn run(run: &Run, shape: Shape) -> Report {
    let errors = Errors::default();
    // Publishers first and one at a time, so a least-connection balancer
    // (the Node.js baseline's primary) puts one on each worker.
    let mut publishers = Vec::with_capacity(shape.publishers);
    for p in 0..shape.publishers {
        match open_subscribed(run.clone(), p, p, shape.transport).await {
            Ok(s) => publishers.push(Some(s)),
            Err(failure) => {
                errors.count(&failure);
                publishers.push(None);
            }
        }
    }
    let first_subscriber = shape.publishers;
    let sessions = open_all(shape.subscribers, run.open_concurrency, &errors, |j| {
        open_subscribed(run.clone(), j, first_subscriber + j, shape.transport)
    })
    .await;

    let window = Window::after_warmup(run);
    let epoch = EpochWindow::of(&window);
    let cpu = procfs::cpu_over(window, run.pids.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut subscribers = Vec::new();
    let mut progress = Vec::new();
    for session in sessions.into_iter().flatten() {
        let distinct = Arc::new(AtomicU64::new(0));
        progress.push(distinct.clone());
        subscribers.push(tokio::spawn(subscriber(
            session,
            shape.publishers,
            epoch,
            distinct,
            stop_rx.clone(),
            errors.clone(),
        )));
    }
    let publishing: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, session)| {
            tokio::spawn(publisher(session, p, shape.window, window, errors.clone()))
        })
        .collect();
    let mut published = Vec::with_capacity(publishing.len());
    for handle in publishing {
        published.push(handle.await.unwrap_or(0));
    }
    let expected: u64 = published.iter().sum();
    let drain_until = Instant::now() + DRAIN;
    while Instant::now() < drain_until
        && progress
            .iter()
            .any(|d| d.load(Ordering::Relaxed) < expected)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);

    let mut latency = Latency::default();
    let mut duplicates = 0u64;
    let mut received = 0u64;
    for handle in subscribers {
        if let Ok(result) = handle.await {
            latency.merge(&result.latency);
            duplicates += result.duplicates;
            received += result.distinct;
        }
    }
    // A subscriber that never connected is a counted error, not loss: loss
    // is what connected subscribers should have received and did not.
    let listening = progress.len() as u64;
    let loss = (expected * listening).saturating_sub(received);
    let ops = latency.count();
    let extra = BTreeMap::from([
        ("subscribers", json!(shape.subscribers)),
        ("subscribers_connected", json!(listening)),
        ("publishers", json!(shape.publishers)),
        ("window", json!(shape.window)),
        ("published", json!(published)),
        (
            "publishes_per_s",
            json!(expected as f64 / run.duration.as_secs_f64()),
        ),
        ("expected_deliveries", json!(expected * listening)),
        ("received_deliveries", json!(received)),
        ("loss", json!(loss)),
        ("duplicates", json!(duplicates)),
        ("cpu", json!(cpu.await.unwrap_or_default())),
    ]);
    Report {
        workload: "fanout",
        label: run.label.clone(),
        transport: shape.transport.to_string(),
        target: run.targets_text(),
        clients: shape.subscribers + shape.publishers,
        warmup_s: run.warmup.as_secs_f64(),
        duration_s: run.duration.as_secs_f64(),
        ops,
        unit: "deliveries",
        rate_per_s: ops as f64 / run.duration.as_secs_f64(),
        latency_us: latency.summary(),
        errors: errors.summary(),
        extra,
    }
}

/// Client `index` on target `index % targets`, from source `source`.
async fn open_subscribed(
    run: Run,
    index: usize,
    source: usize,
    transport: Transport,
) -> Result<Session, Failure> {
    let mut session = Session::open(
        &run.target(index),
        run.sources.addr(source as u32),
        transport,
    )
    .await?;
    session.request("subscribe", &json!(TOPIC)).await?;
    Ok(session)
}

/// The part of a delivered `message` the workload reads; every other field
/// is skipped while parsing, never allocated.
#[derive(Deserialize)]
struct Delivered {
    content: Stamp,
}

/// What a publisher puts in each message's content.
#[derive(Deserialize)]
struct Stamp {
    /// Publisher.
    p: usize,
    /// Its sequence number.
    s: u64,
    /// Publish time, epoch microseconds.
    t: u64,
}

/// The stamp of a `message` event; `None` for any other packet.
fn stamp(raw: &RawPacket) -> Option<Stamp> {
    match protocol::parse_event::<Delivered>(raw.as_str()) {
        Ok((name, delivered)) if name == "message" => Some(delivered.content),
        _ => None,
    }
}

/// Publishes until the window ends, then waits (at most [`DRAIN`]) until
/// its own messages have come back, so none is still queued in the session
/// when it closes. Returns how many it published.
async fn publisher(
    session: Option<Session>,
    p: usize,
    window_size: u64,
    window: Window,
    errors: Errors,
) -> u64 {
    let Some(mut session) = session else {
        return 0;
    };
    let drain_end = window.end + DRAIN;
    let mut sent = 0u64;
    let mut delivered_back = 0u64;
    loop {
        let now = Instant::now();
        let publishing = now < window.end;
        if publishing && sent - delivered_back < window_size {
            sent += 1;
            let publish = json!({
                "topic": TOPIC,
                "content": { "p": p, "s": sent, "t": epoch_micros() },
            });
            if let Err(failure) = session.send(protocol::event("publish", &publish, Some(sent))) {
                errors.count(&failure);
                return sent - 1;
            }
            continue;
        }
        if (!publishing && delivered_back >= sent) || now >= drain_end {
            break;
        }
        let until = if publishing { window.end } else { drain_end };
        let raw = match session.recv_raw_within(until - now).await {
            Ok(raw) => raw,
            Err(Failure::Timeout(_)) => continue,
            Err(failure) => {
                errors.count(&failure);
                break;
            }
        };
        if let Some(stamp) = stamp(&raw) {
            if stamp.p == p {
                delivered_back += 1;
            }
            continue;
        }
        match raw.parse() {
            Ok(SocketPacket::Ack { args, .. }) => {
                if args.first().and_then(|a| a.get("ok")) != Some(&Value::Bool(true)) {
                    errors.count(&Failure::Refused(format!("publish: {args:?}")));
                }
            }
            Ok(other) => errors.count(&Failure::Unexpected(format!("{other:?}"))),
            Err(e) => {
                errors.count(&Failure::Protocol(e.to_string()));
                break;
            }
        }
    }
    sent
}

struct Received {
    latency: Latency,
    duplicates: u64,
    distinct: u64,
}

async fn subscriber(
    mut session: Session,
    publishers: usize,
    epoch: EpochWindow,
    distinct: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    errors: Errors,
) -> Received {
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); publishers];
    let mut result = Received {
        latency: Latency::default(),
        duplicates: 0,
        distinct: 0,
    };
    let mut batch = Vec::new();
    'receiving: loop {
        let received = tokio::select! {
            _ = stop.changed() => break,
            received = session.recv_raw_many(&mut batch, DRAIN * 10) => received,
        };
        if let Err(failure) = received {
            errors.count(&failure);
            break;
        }
        // The whole batch was queued by now: one clock read for all of it.
        let now = epoch_micros();
        for item in batch.drain(..) {
            let raw = match item {
                Ok(raw) => raw,
                Err(failure) => {
                    errors.count(&failure);
                    break 'receiving;
                }
            };
            let Some(Stamp { p, s, t }) = stamp(&raw).filter(|stamp| stamp.p < publishers) else {
                errors.count(&Failure::Unexpected(raw.as_str().to_owned()));
                continue;
            };
            let bits = &mut seen[p];
            let (word, bit) = ((s / 64) as usize, s % 64);
            if bits.len() <= word {
                bits.resize(word + 1, 0);
            }
            if bits[word] & (1 << bit) != 0 {
                result.duplicates += 1;
                continue;
            }
            bits[word] |= 1 << bit;
            result.distinct += 1;
            distinct.fetch_add(1, Ordering::Relaxed);
            if epoch.measures(t) {
                result.latency.record_micros(now.saturating_sub(t));
            }
        }
    }
    result
}
