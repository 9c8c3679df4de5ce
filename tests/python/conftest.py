"""Starts the local launcher (gateway + three clustered nodes) for the Python tests."""

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("STICKYIO_BIN_DIR", ROOT / "target" / "debug"))
# Ports of their own, so a developer's `cargo run` on 8080 does not collide.
GATEWAY_PORT, ADMIN_PORT, NODE_PORT = 28080, 29090, 23001


@pytest.fixture(scope="session")
def gateway_url():
    binary = BIN_DIR / "stickyio"
    assert binary.exists(), f"{binary} missing: run `cargo build --workspace --bins`"
    proc = subprocess.Popen(
        [str(binary), "--port", str(GATEWAY_PORT), "--admin-port", str(ADMIN_PORT),
         "--node-port", str(NODE_PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RUST_LOG": "warn,stickyio=info"},
    )
    url = None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline and url is None:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"public\s+(http://\S+)", line)
        if m:
            url = m.group(1).rstrip("/")
    if url is None:
        proc.kill()
        pytest.fail("launcher did not print its public URL:\n" + "".join(lines))
    # Keep draining output so the launcher never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    yield url
    proc.terminate()
    try:
        assert proc.wait(timeout=20) == 0, "launcher did not exit cleanly on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
