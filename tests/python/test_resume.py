"""The python-socketio resume recipe of the README, against a pool of three
mesh nodes and a gateway as separate processes: a subscriber keeps the last
cursor per pattern (from messages and from subscribe acks) and, on every
connect, subscribes with `since`; its node is killed (SIGKILL) mid-stream,
python-socketio reconnects through the gateway to another node on its own,
and the subscriber ends with every acked message exactly once, in publish
order.
"""

import threading
import time

import socketio

from sioclient import TIMEOUT, Client, wait_for

PATTERN = "py.resume.#"
COUNT = 150
KILL_AT = 50


class Resuming:
    """The README's recipe, as an app would write it."""

    def __init__(self, url, patterns, headers):
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.2,
                                   reconnection_delay_max=1)
        self.cursors = {}
        self.patterns = patterns
        self.received = []
        self.acks = []
        self.sio.on("message", self.on_message)
        self.sio.on("connect", self.on_connect)
        self.sio.connect(url, transports=["websocket"], headers=headers, wait_timeout=TIMEOUT)

    # --- the recipe -------------------------------------------------------
    def on_message(self, m):
        for p in m["patterns"]:
            self.cursors[p] = m["cursor"]
        self.received.append(m)

    def on_connect(self):
        for pattern in self.patterns:
            since = self.cursors.get(pattern)
            arg = {"pattern": pattern, "since": since} if since else pattern
            # Handlers run on the client's reader thread: emit with a
            # callback, never a blocking call, from here.
            self.sio.emit("subscribe", arg, callback=lambda ack, p=pattern: self.on_ack(p, ack))

    def on_ack(self, pattern, ack):
        if ack.get("cursor"):
            self.cursors[pattern] = ack["cursor"]
        self.acks.append(ack)
    # ----------------------------------------------------------------------


def test_the_recipe_ends_with_every_message_once_after_a_node_is_killed(pool):
    sub = Resuming(pool.url, [PATTERN], {"X-Forwarded-For": "198.51.100.200"})
    victim = None
    publisher = None
    try:
        wait_for("the first subscribe ack", lambda: len(sub.acks) == 1, 3 * TIMEOUT)
        assert sub.acks[0]["ok"] is True and isinstance(sub.acks[0]["cursor"], str), sub.acks
        # The subscriber's node: the one its gateway session is pinned to.
        whoami = Client(pool.url, forwarded_for="198.51.100.200", transports=("websocket",))
        victim = whoami.node
        whoami.sio.disconnect()
        for i in range(1, 60):
            c = Client(pool.url, forwarded_for=f"198.51.100.{i}", transports=("websocket",))
            if c.node != victim:
                publisher = c
                break
            c.sio.disconnect()
        assert publisher is not None, "no client placed off the subscriber's node"

        acked = []
        killed = threading.Event()
        for n in range(COUNT):
            if n == KILL_AT:
                pool.nodes[victim].kill()
                killed.set()
            ack = publisher.call("publish", {"topic": f"py.resume.t{n % 3}", "content": n})
            assert ack["ok"] is True, ack
            acked.append(ack["id"])
            time.sleep(0.02)
        ids = lambda: [m["id"] for m in sub.received]
        wait_for("every acked message at the subscriber", lambda: set(acked) <= set(ids()), 3 * TIMEOUT)
        time.sleep(0.5)
        got = ids()
        assert len(got) == len(set(got)), f"a message twice: {sorted(i for i in got if got.count(i) > 1)}"
        assert got == acked, "in publish order"
        resumes = [a for a in sub.acks[1:] if "recovered" in a]
        assert resumes and all(a["recovered"] is True for a in resumes), sub.acks
        assert any(m.get("replayed") for m in sub.received), "the outage was replayed"
        assert killed.is_set()
    finally:
        sub.sio.disconnect()
        if publisher is not None:
            publisher.sio.disconnect()
        if victim is not None and pool.nodes[victim].proc.poll() is not None:
            # The pool stops every node at the end: start the killed one again.
            pool.nodes[victim] = pool.start_node(victim)
