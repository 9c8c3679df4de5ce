//! W1/W2: each client subscribes to its own topic, then publishes to it and
//! waits for both the ack and the delivered `message`, one at a time. The
//! latency is publish → delivery; the rate is completed round trips.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Run, Window, open_all};
use crate::procfs;
use crate::protocol::{self, SocketPacket};
use crate::report::{Errors, Failure, Latency, Report};
use crate::session::{Session, Transport};

/// Pause before reopening a session that failed, so a broken setup does
/// not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

pub async fn run(run: &Run, clients: usize, transport: Transport) -> Report {
    let errors = Errors::default();
    let sessions = open_all(clients, run.open_concurrency, &errors, |i| {
        open_subscribed(run.clone(), i, transport)
    })
    .await;
    let opened = sessions.iter().filter(|s| s.is_some()).count();
    let window = Window::after_warmup(run);
    let cpu = procfs::cpu_over(window, run.pids.clone());
    let mut handles = Vec::with_capacity(clients);
    for (i, session) in sessions.into_iter().enumerate() {
        handles.push(tokio::spawn(client(
            run.clone(),
            i,
            transport,
            session,
            window,
            errors.clone(),
        )));
    }
    let mut latency = Latency::default();
    for handle in handles {
        if let Ok(mine) = handle.await {
            latency.merge(&mine);
        }
    }
    let ops = latency.count();
    let mut extra = BTreeMap::new();
    extra.insert("sessions_opened", json!(opened));
    extra.insert("cpu", json!(cpu.await.unwrap_or_default()));
    Report {
        workload: "roundtrip",
        label: run.label.clone(),
        transport: transport.to_string(),
        target: run.targets_text(),
        clients,
        warmup_s: run.warmup.as_secs_f64(),
        duration_s: run.duration.as_secs_f64(),
        ops,
        unit: "round trips",
        rate_per_s: ops as f64 / run.duration.as_secs_f64(),
        latency_us: latency.summary(),
        errors: errors.summary(),
        extra,
    }
}

fn topic(i: usize) -> String {
    format!("bench.rt.c{i}")
}

async fn open_subscribed(run: Run, i: usize, transport: Transport) -> Result<Session, Failure> {
    let mut session = Session::open(&run.target(i), run.sources.addr(i as u32), transport).await?;
    session.request("subscribe", &json!(topic(i))).await?;
    Ok(session)
}

async fn client(
    run: Run,
    i: usize,
    transport: Transport,
    mut session: Option<Session>,
    window: Window,
    errors: Errors,
) -> Latency {
    let mut latency = Latency::default();
    let topic = topic(i);
    let mut seq: u64 = 0;
    while Instant::now() < window.end {
        let Some(current) = session.as_mut() else {
            tokio::time::sleep(RETRY_PAUSE).await;
            match tokio::time::timeout_at(window.end, open_subscribed(run.clone(), i, transport))
                .await
            {
                Ok(Ok(s)) => session = Some(s),
                Ok(Err(failure)) => errors.count(&failure),
                Err(_) => break,
            }
            continue;
        };
        seq += 1;
        let sent = Instant::now();
        let publish = json!({ "topic": topic, "content": { "c": i, "s": seq } });
        let outcome = match current.send(protocol::event("publish", &publish, Some(seq))) {
            Ok(()) => round_trip(current, seq).await,
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok(delivered) => {
                if window.measures(sent) && delivered < window.end {
                    latency.record(delivered - sent);
                }
            }
            Err(failure) => {
                errors.count(&failure);
                session = None;
            }
        }
    }
    latency
}

/// Waits for the ack of publish `seq` and its delivery; returns when the
/// delivery arrived.
async fn round_trip(session: &mut Session, seq: u64) -> Result<Instant, Failure> {
    let mut acked = false;
    let mut delivered = None;
    while !acked || delivered.is_none() {
        match session.recv().await? {
            SocketPacket::Ack { id, args } if id == seq => {
                if args.first().and_then(|a| a.get("ok")) != Some(&Value::Bool(true)) {
                    return Err(Failure::Refused(format!("publish: {args:?}")));
                }
                acked = true;
            }
            SocketPacket::Event { name, args } if name == "message" => {
                let s = args
                    .first()
                    .and_then(|m| m.pointer("/content/s"))
                    .and_then(Value::as_u64);
                if s != Some(seq) {
                    return Err(Failure::Unexpected(format!(
                        "message {args:?} while waiting for {seq}"
                    )));
                }
                delivered = Some(Instant::now());
            }
            other => return Err(Failure::Unexpected(format!("{other:?}"))),
        }
    }
    delivered.ok_or(Failure::Timeout("delivery"))
}
