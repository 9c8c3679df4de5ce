//! Heap allocations per polling echo cycle, counted by a counting global
//! allocator (`stats_alloc`), through an in-process gateway in front of an
//! in-process node, and the same cycles straight to the node.
//!
//! ```sh
//! cargo run --release -p stickyio-loadgen --example alloc_per_cycle -- [--only direct|gateway] [CYCLES]
//! ```
//!
//! One cycle is one emit with an ack over long-polling: the client's POST
//! of the event and the answer to its waiting GET (then the next GET), the
//! same exchange the polling benchmark (W1) repeats. The counter sees the
//! whole process (client, gateway, node, runtime), so the gateway's share is
//! the difference between the two runs: same client, same node, one with
//! the gateway between them.
//!
//! `--only direct` or `--only gateway` runs one leg alone (the other is
//! not even started), for counting **instructions per cycle** with
//! callgrind, which load on the machine does not move. A run counts its
//! start-up too, so each leg runs at two cycle counts, N and 2N, and the
//! difference is N cycles' worth; the gateway's share is then the
//! difference of the two legs' differences:
//!
//! ```sh
//! cargo build --release -p stickyio-loadgen --example alloc_per_cycle
//! ex=${CARGO_TARGET_DIR:-target}/release/examples/alloc_per_cycle
//! for leg in direct gateway; do for n in 1000 2000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$leg.$n "$ex" --only $leg $n
//! done; done
//! ir() { awk '/^summary:/ {print $2}' "$1"; }
//! echo "gateway instructions per cycle:" $(( \
//!   ( ($(ir /tmp/cg.gateway.2000) - $(ir /tmp/cg.gateway.1000)) \
//!   - ($(ir /tmp/cg.direct.2000) - $(ir /tmp/cg.direct.1000)) ) / 1000 ))
//! callgrind_annotate /tmp/cg.gateway.2000 | head -60   # where they go
//! ```
//!
//! The counts are of every thread of the process (client, gateway, node,
//! runtime); valgrind runs them one at a time, so a run takes about a
//! minute per 1,000 cycles.

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

/// Which legs a run measures.
#[derive(Clone, Copy, PartialEq)]
enum Legs {
    Both,
    Direct,
    Gateway,
}

/// `[--only direct|gateway] [CYCLES]`.
fn args() -> anyhow::Result<(Legs, usize)> {
    let mut legs = Legs::Both;
    let mut cycles = 5000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => {
                legs = match args.next().as_deref() {
                    Some("direct") => Legs::Direct,
                    Some("gateway") => Legs::Gateway,
                    other => anyhow::bail!("--only takes direct or gateway, not {other:?}"),
                }
            }
            n => cycles = n.parse()?,
        }
    }
    Ok((legs, cycles))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let (legs, cycles) = args()?;
    let node = Node::bind(NodeConfig::standalone("node-a", "127.0.0.1:0".parse()?)).await?;
    println!("{cycles} polling echo cycles (POST + GET) each, after {WARMUP} to warm up");
    if legs == Legs::Direct {
        let (direct, direct_bytes) = per_cycle(node.local_addr(), cycles).await?;
        println!(
            "straight to the node:  {direct:7.1} allocations/cycle  {direct_bytes:9.0} bytes/cycle"
        );
        node.shutdown().await?;
        return Ok(());
    }
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

    if legs == Legs::Gateway {
        let (through, through_bytes) = per_cycle(gateway.local_addr(), cycles).await?;
        println!(
            "through the gateway:   {through:7.1} allocations/cycle  {through_bytes:9.0} bytes/cycle"
        );
    } else {
        let (direct, direct_bytes) = per_cycle(node.local_addr(), cycles).await?;
        let (through, through_bytes) = per_cycle(gateway.local_addr(), cycles).await?;
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
    }
    gateway.shutdown().await;
    node.shutdown().await?;
    Ok(())
}
