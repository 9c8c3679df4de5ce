//! W4: idle sessions. Opens websocket and polling sessions, each from its
//! own source address, holds them, and reads the resident memory of the
//! processes in between (the gateway or proxy under test): memory per
//! session is `(held − before) / sessions`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{Run, Window, open_all};
use crate::procfs::{self, rss_kib};
use crate::report::{Errors, Failure, Latency, Report};
use crate::session::{Session, Transport};

/// Time for the processes to settle after the last session opened.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(run: &Run, websockets: usize, polling: usize) -> Report {
    let errors = Errors::default();
    let pids = &run.pids;
    let before = rss_kib(pids);
    let total = websockets + polling;
    let opening = Instant::now();
    let sessions = open_all(total, run.open_concurrency, &errors, |i| {
        let run = run.clone();
        let transport = if i < websockets {
            Transport::Websocket
        } else {
            Transport::Polling
        };
        async move {
            let started = Instant::now();
            let session =
                Session::open(&run.target(i), run.sources.addr(i as u32), transport).await?;
            Ok::<_, Failure>((session, started.elapsed()))
        }
    })
    .await;
    let open_time = opening.elapsed();
    let mut latency = Latency::default();
    let mut held: Vec<Session> = Vec::with_capacity(total);
    for (session, took) in sessions.into_iter().flatten() {
        latency.record(took);
        held.push(session);
    }
    tokio::time::sleep(SETTLE).await;
    let settled = rss_kib(pids);
    let hold = Window::after_warmup(&Run {
        warmup: Duration::ZERO,
        ..run.clone()
    });
    let cpu = procfs::cpu_over(hold, pids.clone())
        .await
        .unwrap_or_default();
    let after_hold = rss_kib(pids);
    // A session the server dropped while held has a failure queued.
    let mut alive = 0usize;
    for session in &mut held {
        match session.recv_within(Duration::ZERO).await {
            Err(Failure::Timeout(_)) => alive += 1,
            Err(failure) => errors.count(&failure),
            Ok(_) => alive += 1,
        }
    }
    let opened = held.len();
    drop(held);
    let held_kib = settled.max(after_hold);
    let per_session = if opened > 0 {
        (held_kib.saturating_sub(before) * 1024) as f64 / opened as f64
    } else {
        0.0
    };
    let extra = BTreeMap::from([
        ("websocket_sessions", json!(websockets)),
        ("polling_sessions", json!(polling)),
        ("sessions_opened", json!(opened)),
        ("sessions_alive_after_hold", json!(alive)),
        ("open_seconds", json!(open_time.as_secs_f64())),
        ("pids", json!(pids)),
        ("rss_before_kib", json!(before)),
        ("rss_held_kib", json!(held_kib)),
        ("bytes_per_session", json!(per_session)),
        ("cpu", json!(cpu)),
    ]);
    Report {
        workload: "idle",
        label: run.label.clone(),
        transport: "websocket+polling".into(),
        target: run.targets_text(),
        clients: total,
        warmup_s: 0.0,
        duration_s: run.duration.as_secs_f64(),
        ops: opened as u64,
        unit: "sessions held",
        rate_per_s: opened as f64 / open_time.as_secs_f64().max(f64::EPSILON),
        latency_us: latency.summary(),
        errors: errors.summary(),
        extra,
    }
}
