//! Heap allocations per polling echo cycle, counted by a counting global
//! allocator (`stats_alloc`), through an in-process gateway in front of an
//! in-process node, and the same cycles straight to the node.
//!
//! ```sh
//! cargo run -p stickyio-loadgen --example alloc_per_cycle [CYCLES]
//! ```
//!
//! One cycle is one emit with an ack over long-polling: the client's POST
//! of the event and the answer to its waiting GET (then the next GET), the
//! same exchange the polling benchmark (W1) repeats. The counter sees the
//! whole process (client, gateway, node, runtime), so the gateway's share is
//! the difference between the two runs: same client, same node, one with
//! the gateway between them.

// A measuring tool: a panic with its message is report enough.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use stickyio_gateway::Gateway;
use stickyio_loadgen::session::{Session, Target, Transport};
use stickyio_node::Node;
use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::config::node::NodeConfig;

#[global_allocator]
static COUNTING: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Cycles before counting starts: buffers, maps and caches reach their size.
const WARMUP: usize = 500;

/// Allocations and allocated bytes per cycle of `cycles` echo cycles to `addr`.
async fn per_cycle(addr: SocketAddr, cycles: usize) -> anyhow::Result<(f64, f64)> {
    let target = Target {
        addr,
        path: "/socket.io/".into(),
        timeout: Duration::from_secs(5),
    };
    let mut session = open(&target).await?;
    for _ in 0..WARMUP {
        session.request("subscriptions", &Value::Null).await?;
    }
    let region = Region::new(COUNTING);
    for _ in 0..cycles {
        session.request("subscriptions", &Value::Null).await?;
    }
    let stats = region.change();
    let _ = session.close().await;
    let n = cycles as f64;
    Ok((
        (stats.allocations + stats.reallocations) as f64 / n,
        stats.bytes_allocated as f64 / n,
    ))
}

/// A polling session, retried until the gateway's health checks let it in.
async fn open(target: &Target) -> anyhow::Result<Session> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Session::open(target, "127.0.0.1".parse()?, Transport::Polling).await {
            Ok(session) => return Ok(session),
            Err(e) if Instant::now() > deadline => anyhow::bail!("no session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cycles: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 5000,
    };
    let node = Node::bind(NodeConfig::standalone("node-a", "127.0.0.1:0".parse()?)).await?;
    // One worker thread and slow health checks: the gateway's own work per
    // cycle, not its background, is what is counted.
    let config: GatewayConfig = stickyio_shared::config::parse(
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 1\n\
             [health]\ninterval = \"60s\"\n\n[[nodes]]\nname = \"node-a\"\naddr = \"{}\"\n",
            node.local_addr()
        ),
        "gateway.toml",
    )?;
    let gateway = Gateway::start(config).await?;

    let (direct, direct_bytes) = per_cycle(node.local_addr(), cycles).await?;
    let (through, through_bytes) = per_cycle(gateway.local_addr(), cycles).await?;
    println!("{cycles} polling echo cycles (POST + GET) each, after {WARMUP} to warm up");
    println!(
        "straight to the node:  {direct:7.1} allocations/cycle  {direct_bytes:9.0} bytes/cycle"
    );
    println!(
        "through the gateway:   {through:7.1} allocations/cycle  {through_bytes:9.0} bytes/cycle"
    );
    println!(
        "the gateway's share:   {:7.1} allocations/cycle  {:9.0} bytes/cycle",
        through - direct,
        through_bytes - direct_bytes
    );
    gateway.shutdown().await;
    node.shutdown().await?;
    Ok(())
}
