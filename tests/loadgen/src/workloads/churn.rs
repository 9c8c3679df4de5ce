//! W3: session churn. Each worker repeatedly opens a session (Engine.IO
//! handshake and Socket.IO connect) and closes it, from its own source
//! address. The rate is completed sessions; the latency is open + close.

use std::collections::BTreeMap;

use serde_json::json;
use tokio::time::Instant;

use super::{Run, Window};
use crate::procfs;
use crate::report::{Errors, Latency, Report};
use crate::session::{Session, Transport};

pub async fn run(run: &Run, workers: usize, transport: Transport) -> Report {
    let errors = Errors::default();
    let window = Window::after_warmup(run);
    let cpu = procfs::cpu_over(window, run.pids.clone());
    let handles: Vec<_> = (0..workers)
        .map(|i| tokio::spawn(worker(run.clone(), i, transport, window, errors.clone())))
        .collect();
    let mut latency = Latency::default();
    for handle in handles {
        if let Ok(mine) = handle.await {
            latency.merge(&mine);
        }
    }
    let ops = latency.count();
    Report {
        workload: "churn",
        label: run.label.clone(),
        transport: transport.to_string(),
        target: run.targets_text(),
        clients: workers,
        warmup_s: run.warmup.as_secs_f64(),
        duration_s: run.duration.as_secs_f64(),
        ops,
        unit: "sessions",
        rate_per_s: ops as f64 / run.duration.as_secs_f64(),
        latency_us: latency.summary(),
        errors: errors.summary(),
        extra: BTreeMap::from([
            ("workers", json!(workers)),
            ("cpu", json!(cpu.await.unwrap_or_default())),
        ]),
    }
}

async fn worker(
    run: Run,
    i: usize,
    transport: Transport,
    window: Window,
    errors: Errors,
) -> Latency {
    let mut latency = Latency::default();
    let target = run.target(i);
    let source = run.sources.addr(i as u32);
    while Instant::now() < window.end {
        let started = Instant::now();
        let cycle = async {
            let session = Session::open(&target, source, transport).await?;
            session.close().await
        };
        match tokio::time::timeout_at(window.end + run.timeout, cycle).await {
            Ok(Ok(())) => {
                let done = Instant::now();
                if window.measures(started) && done < window.end {
                    latency.record(done - started);
                }
            }
            Ok(Err(failure)) => errors.count(&failure),
            Err(_) => break,
        }
    }
    latency
}
