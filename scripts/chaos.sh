#!/usr/bin/env bash
# Chaos under load at full size (see SECURITY.md): real stickyio-node and
# stickyio-gateway processes (release build), 1,000 load clients publishing
# and subscribing through the gateway over long-polling, a node killed with
# SIGKILL and restarted, another frozen with SIGSTOP for 30 s, and 20 gateway
# reloads of which 5 are invalid. It prints a report and fails on any
# duplicate, any error seen by a client of a healthy node, any acked message
# lost (the nodes ack `replicated`; a resume answered `recovered: false` is
# allowed, and counted with its reason), or a slow recovery.
#
#   scripts/chaos.sh
#   STICKYIO_CHAOS_CLIENTS=300 STICKYIO_CHAOS_FREEZE_SECS=10 scripts/chaos.sh
#   STICKYIO_CHAOS_FAIL_OPEN=1 scripts/chaos.sh    # every health check fails: the gateway fails open
#
# Bounded: every wait in the scenario has a deadline; a run takes about
# 1-2 minutes after the build. The same scenario runs small in
# `cargo test --test chaos` (150 clients, 6 s freeze), part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export STICKYIO_CHAOS_CLIENTS="${STICKYIO_CHAOS_CLIENTS:-1000}"
export STICKYIO_CHAOS_FREEZE_SECS="${STICKYIO_CHAOS_FREEZE_SECS:-30}"
export STICKYIO_CHAOS_PUBLISH_MS="${STICKYIO_CHAOS_PUBLISH_MS:-2000}"
export STICKYIO_CHAOS_TOPICS="${STICKYIO_CHAOS_TOPICS:-200}"
# 1,000 polling clients keep 2 cores busy: a ping timeout of 5 s keeps a
# client of a healthy node from losing its session to a scheduling stall.
export STICKYIO_CHAOS_PING_INTERVAL_MS="${STICKYIO_CHAOS_PING_INTERVAL_MS:-2000}"
export STICKYIO_CHAOS_PING_TIMEOUT_MS="${STICKYIO_CHAOS_PING_TIMEOUT_MS:-5000}"
# Each client holds two connections; the gateway two per client as well.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== building release binaries"
cargo build --release --workspace --bins
echo "== chaos: ${STICKYIO_CHAOS_CLIENTS} clients, ${STICKYIO_CHAOS_FREEZE_SECS}s freeze"
timeout 600 cargo test --release --test chaos -- --nocapture --test-threads=1
