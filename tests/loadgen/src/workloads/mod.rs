//! The benchmark workloads. Each opens its sessions first, then runs a
//! warm-up and a measured window, both bounded in time, and returns a
//! [`Report`](crate::report::Report).
//!
//! - [`roundtrip`]: W1/W2, publish to your own topic and receive it back.
//! - [`churn`]: W3, new sessions per second (handshake, connect, close).
//! - [`idle`]: W4, many idle sessions held; memory of the processes holding them.
//! - [`fanout`]: W5, publishers and subscribers of one topic over a cluster.

pub mod churn;
pub mod fanout;
pub mod idle;
pub mod roundtrip;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::report::Errors;
use crate::session::Target;
use crate::source::Sources;

/// Settings every workload shares.
#[derive(Debug, Clone)]
pub struct Run {
    /// One or more addresses; clients are spread over them round-robin.
    pub targets: Vec<SocketAddr>,
    pub path: String,
    pub timeout: Duration,
    pub sources: Sources,
    pub label: String,
    pub warmup: Duration,
    pub duration: Duration,
    /// Sessions being opened at once while setting up.
    pub open_concurrency: usize,
    /// Processes under test, whose CPU (and for W4 memory) is reported.
    pub pids: Vec<u32>,
}

impl Run {
    /// The target of client `index`.
    pub fn target(&self, index: usize) -> Target {
        Target {
            addr: self.targets[index % self.targets.len().max(1)],
            path: self.path.clone(),
            timeout: self.timeout,
        }
    }

    pub fn targets_text(&self) -> String {
        let list: Vec<String> = self.targets.iter().map(|a| a.to_string()).collect();
        list.join(",")
    }
}

/// The warm-up and measured window, fixed once every client is set up.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn after_warmup(run: &Run) -> Window {
        let start = Instant::now() + run.warmup;
        Window {
            start,
            end: start + run.duration,
        }
    }

    pub fn measures(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// Runs `open(i)` for `count` clients, at most `concurrency` at once,
/// counting failures; returns the results in client order.
pub async fn open_all<T, F, Fut>(
    count: usize,
    concurrency: usize,
    errors: &Errors,
    open: F,
) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, crate::report::Failure>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let permits = permits.clone();
        let future = open(i);
        let errors = errors.clone();
        handles.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            match future.await {
                Ok(value) => Some(value),
                Err(failure) => {
                    errors.count(&failure);
                    None
                }
            }
        }));
    }
    let mut out = Vec::with_capacity(count);
    for handle in handles {
        out.push(handle.await.ok().flatten());
    }
    out
}

/// Microseconds since the Unix epoch: the publish timestamp carried in
/// message content, comparable across processes on this machine.
pub fn epoch_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
