#!/usr/bin/env bash
# Every check CI runs, in one command. It installs what the tests need
# (npm packages, a Python venv, Chromium from apt) so it passes on a fresh
# machine that has only the Rust toolchain, Node.js, Python and apt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
step() { printf '\n== %s\n' "$*"; }

step "Chromium for the browser test (Debian package)"
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
/usr/bin/chromium --version

step "redis-server for the Redis backend tests (Debian package)"
if ! command -v redis-server >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
redis-server --version

step "npm packages for the JS tests (official socket.io-client, playwright-core)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

step "Python venv for the python-socketio tests"
[ -x tests/python/.venv/bin/python ] || python3 -m venv tests/python/.venv
tests/python/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests"
cargo build --workspace --bins
cargo test --workspace

step "JS tests (official socket.io-client, and the demo page in Chromium)"
(cd tests/js && STICKYIO_BIN_DIR="$bin_dir" node --test --test-concurrency=1 ./*.test.mjs)

step "Python tests (python-socketio, polling only)"
STICKYIO_BIN_DIR="$bin_dir" tests/python/.venv/bin/python -m pytest -q tests/python
