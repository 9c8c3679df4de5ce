//! What a run measured: latency percentiles from an HDR histogram, errors
//! counted by kind (a `400 Session ID unknown` on its own line, since it is
//! the signature of a broken sticky route), and the JSON report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

/// Why a client operation failed; [`Failure::kind`] is the counting key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    #[error("connect: {0}")]
    Connect(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("400 Session ID unknown")]
    SessionIdUnknown,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error("session closed by the server")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

impl Failure {
    pub fn kind(&self) -> String {
        match self {
            Failure::Connect(_) => "connect".into(),
            Failure::Timeout(what) => format!("timeout_{}", what.replace(' ', "_")),
            Failure::SessionIdUnknown => "session_id_unknown".into(),
            Failure::Status(code) => format!("http_{code}"),
            Failure::Http(_) => "http".into(),
            Failure::WebSocket(_) => "websocket".into(),
            Failure::Closed => "closed".into(),
            Failure::Protocol(_) => "protocol".into(),
            Failure::Refused(_) => "refused".into(),
            Failure::Unexpected(_) => "unexpected_message".into(),
        }
    }
}

/// Errors by kind, shared by every client of a run, with the first message
/// of each kind kept so a report says what went wrong.
#[derive(Clone, Default)]
pub struct Errors {
    inner: Arc<Mutex<BTreeMap<String, (u64, String)>>>,
}

impl Errors {
    pub fn count(&self, failure: &Failure) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(failure.kind())
            .or_insert_with(|| (0, failure.to_string()));
        entry.0 += 1;
    }

    pub fn summary(&self) -> ErrorSummary {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        ErrorSummary {
            total: map.values().map(|(n, _)| n).sum(),
            session_id_unknown: map.get("session_id_unknown").map_or(0, |(n, _)| *n),
            by_kind: map.iter().map(|(k, (n, _))| (k.clone(), *n)).collect(),
            first: map
                .iter()
                .map(|(k, (_, m))| (k.clone(), m.clone()))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorSummary {
    pub total: u64,
    pub session_id_unknown: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub first: BTreeMap<String, String>,
}

/// Latencies in microseconds, 1 µs to 10 min at 3 significant figures.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(
            Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
                unreachable!("1..600e6 at 3 significant figures is a valid histogram")
            }),
        )
    }
}

impl Latency {
    pub fn record(&mut self, elapsed: Duration) {
        self.record_micros(elapsed.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let q = |q| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        LatencySummary {
            samples: h.len(),
            mean: if h.is_empty() { 0.0 } else { h.mean() },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The JSON report every workload prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub workload: &'static str,
    pub label: String,
    pub transport: String,
    pub target: String,
    pub clients: usize,
    pub warmup_s: f64,
    /// The measured window.
    pub duration_s: f64,
    /// Operations completed in the measured window (round trips, sessions,
    /// deliveries; see `unit`).
    pub ops: u64,
    pub unit: &'static str,
    pub rate_per_s: f64,
    pub latency_us: LatencySummary,
    pub errors: ErrorSummary,
    /// Workload-specific numbers (memory, loss, duplicates, ...).
    pub extra: BTreeMap<&'static str, Value>,
}
