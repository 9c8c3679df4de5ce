//! W6 of the benchmarks: what routing one request and swapping in a new
//! config cost, for 3, 10 and 100 nodes.
//!
//! - `rank`: the rendezvous ranking alone (`stickyio_shared::placement`).
//! - `route`: the gateway's whole decision for a new client (client key,
//!   ranking, health filter), as a request handler makes it.
//! - `route_session`: a request of a session: its `sid`'s route tag
//!   verified (HMAC-SHA256) and its node found, the common case.
//! - `config_swap`: `reload::apply` of a changed config (node registry diff
//!   and the atomic snapshot store), what a reload costs the serving path.
//! - `session_order`: a request's turn in its session's line
//!   (`ordering::SessionOrder`) when no other request of the session is in
//!   flight, the common case: what per-session order costs every request
//!   with a `sid`.
//!
//! Run with `cargo bench -p stickyio-gateway --bench routing`.

// A benchmark: a panic with its message is report enough.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use stickyio_gateway::route_tag::RouteKeys;
use stickyio_gateway::state::State;
use stickyio_gateway::{reload, router};
use stickyio_shared::config::gateway::GatewayConfig;
use stickyio_shared::placement::{self, ClientKey};

const SIZES: [usize; 3] = [3, 10, 100];

/// A config with `nodes` nodes of weight `weight`.
fn config(nodes: usize, weight: u32) -> GatewayConfig {
    let mut text = String::from("listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n");
    for i in 0..nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"node-{i}\"\naddr = \"127.0.0.1:{}\"\nweight = {weight}\n",
            3001 + i
        ));
    }
    stickyio_shared::config::parse(&text, "bench.toml").expect("bench config is valid")
}

/// Distinct client addresses, so no lookup is a cache hit.
fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x7f01_0101 + i))
}

fn rank(c: &mut Criterion) {
    let mut group = c.benchmark_group("rank");
    for n in SIZES {
        let names: Vec<(String, u32)> = (0..n).map(|i| (format!("node-{i}"), 1)).collect();
        let mut i = 0u32;
        group.bench_with_input(BenchmarkId::from_parameter(n), &names, |b, names| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let key = ClientKey::new(client(i), 32, 64);
                black_box(placement::rank(&key, names, |(name, w)| (name.as_str(), *w)).len())
            })
        });
    }
    group.finish();
}

fn route(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("route");
    for n in SIZES {
        let state = State::new(
            config(n, 1),
            None,
            None,
            RouteKeys::new(b"bench route key 0123", None),
        );
        let mut i = 0u32;
        group.bench_with_input(BenchmarkId::from_parameter(n), &state, |b, state| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let snapshot = state.snapshot();
                black_box(router::route(&snapshot, client(i)).candidates().count())
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("route_session");
    for n in SIZES {
        let state = State::new(
            config(n, 1),
            None,
            None,
            RouteKeys::new(b"bench route key 0123", None),
        );
        let snapshot = state.snapshot();
        let node = Arc::clone(&snapshot.nodes[n / 2]);
        let sid = state
            .route_keys
            .seal(&node.name, node.addr.as_str(), "lv_VI97HAXpY6yYWAAAC");
        group.bench_with_input(BenchmarkId::from_parameter(n), &state, |b, state| {
            b.iter(|| {
                let snapshot = state.snapshot();
                let Ok(tagged) = state.route_keys.open(black_box(&sid)) else {
                    panic!("the bench's own tag opens");
                };
                black_box(
                    router::session(&snapshot, client(7), state.session_node(&snapshot, &tagged))
                        .reason,
                )
            })
        });
    }
    group.finish();
}

fn config_swap(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("config_swap");
    for n in SIZES {
        let state = State::new(
            config(n, 1),
            None,
            None,
            RouteKeys::new(b"bench route key 0123", None),
        );
        // Alternate two configs that differ in every weight, so each apply
        // is a real change (an unchanged config returns early).
        let variants = [config(n, 2), config(n, 1)];
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(n), &state, |b, state| {
            b.iter_batched(
                || {
                    k += 1;
                    variants[k % 2].clone()
                },
                |next| black_box(reload::apply(state, next)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn session_order(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let order = Arc::new(stickyio_gateway::ordering::SessionOrder::default());
    let sids: Vec<String> = (0..1024).map(|i| format!("sid-{i:016x}")).collect();
    let mut i = 0;
    c.bench_function("session_order/lone_request", |b| {
        b.iter(|| {
            i = (i + 1) % sids.len();
            let turn = runtime.block_on(order.enter(black_box(&sids[i])));
            turn.end();
        })
    });
    // What `block_on` itself costs, to subtract from the line above.
    c.bench_function("session_order/block_on_alone", |b| {
        b.iter(|| runtime.block_on(async { black_box(&sids[0]).len() }))
    });
}

criterion_group!(benches, rank, route, config_swap, session_order);
criterion_main!(benches);
