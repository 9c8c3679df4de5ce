"""Fixtures of the Python tests: the local launcher (gateway + three
clustered nodes in one process), and a pool of separate node and gateway
processes for the tests that restart a node."""

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("STICKYIO_BIN_DIR", ROOT / "target" / "debug"))


def free_run(count):
    """The first of `count` consecutive loopback ports free at the time of
    asking: the launcher puts node i on `--node-port` + i."""
    for _ in range(100):
        held = [socket.socket()]
        try:
            held[0].bind(("127.0.0.1", 0))
            base = held[0].getsockname()[1]
            if base + count > 65536:
                continue
            for port in range(base + 1, base + count):
                held.append(socket.socket())
                held[-1].bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


@pytest.fixture(scope="session")
def gateway_url():
    binary = BIN_DIR / "stickyio"
    assert binary.exists(), f"{binary} missing: run `cargo build --workspace --bins`"
    # Free ports, so neither a developer's `cargo run` nor another test collides.
    proc = subprocess.Popen(
        [str(binary), "--port", str(free_port()), "--admin-port", str(free_port()),
         "--node-port", str(free_run(3))],
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


class Proc:
    """A stickyio binary logging JSON; ready once it logs `ready`."""

    def __init__(self, binary, config, ready):
        path = BIN_DIR / binary
        assert path.exists(), f"{path} missing: run `cargo build --workspace --bins`"
        self.proc = subprocess.Popen(
            [str(path), "--log-json", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "RUST_LOG": "info"},
        )
        self.lines = []
        self.fields = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == ready:
                self.fields = fields
                break
        if self.fields is None:
            self.proc.kill()
            pytest.fail(f"{binary} did not log {ready!r}:\n" + "".join(self.lines))
        # Keep draining output so the process never blocks on a full pipe.
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=20)

    def stop(self):
        self.proc.terminate()
        try:
            assert self.proc.wait(timeout=20) == 0, f"exit {self.proc.returncode} on SIGTERM"
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pool:
    """Three mesh nodes and a gateway, each its own process, so one node can
    be restarted. The gateway trusts loopback's X-Forwarded-For, so a client
    picks its placement address with that header on every transport."""

    NAMES = ("node-a", "node-b", "node-c")

    def __init__(self, tmp):
        self.dir = tmp
        self.ports = {name: free_port() for name in self.NAMES}
        urls = [f"http://127.0.0.1:{p}" for p in self.ports.values()]
        (tmp / "mesh.secret").write_text("python-tests-mesh-secret-0123456789\n")
        for name, port in self.ports.items():
            (tmp / f"{name}.toml").write_text(
                f'listen = "127.0.0.1:{port}"\nadmin = "127.0.0.1:0"\nname = "{name}"\n'
                f'[cluster]\nhost = "http://127.0.0.1:{port}"\nstandalone = false\n'
                f"cluster_nodes = {json.dumps(urls)}\n"
                'secret_file = "mesh.secret"\nretry_interval = "500ms"\n'
            )
        self.nodes = {name: self.start_node(name) for name in self.NAMES}
        nodes = "".join(
            f'\n[[nodes]]\nname = "{n}"\naddr = "127.0.0.1:{p}"\n' for n, p in self.ports.items()
        )
        (tmp / "gateway.toml").write_text(
            'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\ntrusted_proxies = ["127.0.0.1/32"]\n'
            '[health]\ninterval = "250ms"\ntimeout = "500ms"\nrise = 2\nfall = 2\n' + nodes
        )
        self.gateway = Proc("stickyio-gateway", tmp / "gateway.toml", "gateway listening")
        self.url = "http://" + self.gateway.fields["local_addr"]
        self.admin = "http://" + self.gateway.fields["admin_addr"]

    def start_node(self, name):
        return Proc("stickyio-node", self.dir / f"{name}.toml", "listening")

    def restart(self, name, crash=False):
        """SIGTERM (a graceful restart) or SIGKILL (a crash), then start again."""
        if crash:
            self.nodes[name].kill()
        else:
            self.nodes[name].stop()
        self.nodes[name] = self.start_node(name)

    def stop(self):
        self.gateway.stop()
        for node in self.nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = Pool(tmp_path_factory.mktemp("pool"))
    yield p
    p.stop()
