"""python-socketio over websocket, and polling upgraded to websocket, through
the gateway in front of three mesh nodes that run as separate processes:
the topic API, delivery across nodes exactly once, and a client that
reconnects (and resubscribes) after its node is restarted.

Clients are placed by X-Forwarded-For (the pool's gateway trusts loopback),
since a websocket client cannot pick its source address here.
"""

import queue
import time

import pytest
import requests

from sioclient import TIMEOUT, Client, wait_for, without_cursor

TRANSPORTS = {"websocket": ("websocket",), "upgrade": ("polling", "websocket")}


def one_per_node(pool, transports, base):
    """Clients until every node of the pool has one, keyed by node."""
    by_node = {}
    for i in range(1, 60):
        c = Client(pool.url, forwarded_for=f"198.51.100.{base + i}", transports=transports)
        if c.node in by_node:
            c.sio.disconnect()
            continue
        by_node[c.node] = c
        if len(by_node) == len(pool.NAMES):
            return by_node
    pytest.fail(f"clients landed on {sorted(by_node)} only")


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_topic_api_across_nodes(pool, transport):
    clients = one_per_node(pool, TRANSPORTS[transport], base=0 if transport == "upgrade" else 100)
    try:
        for c in clients.values():
            wait_for(f"{transport} in use", lambda c=c: c.sio.transport() == "websocket")
            assert without_cursor(c.call("subscribe", "py.*.news")) == {"ok": True, "pattern": "py.*.news"}
            assert without_cursor(c.call("subscribe", "py.#")) == {"ok": True, "pattern": "py.#"}
            assert c.call("subscriptions", None) == {"ok": True, "patterns": ["py.*.news", "py.#"]}

        for publisher in clients.values():
            ack = publisher.call("publish", {"topic": "py.eu.news", "content": {"from": publisher.node}})
            assert ack["ok"] is True, ack
            for c in clients.values():
                got = c.expect_only(ack["id"])
                assert got["node"] == publisher.node
                assert got["content"] == {"from": publisher.node}
                # Both patterns match; the message still comes once, naming both.
                assert sorted(got["patterns"]) == ["py.#", "py.*.news"]

        a = next(iter(clients.values()))
        assert a.call("unsubscribe", "py.#") == {"ok": True, "pattern": "py.#"}
        bad = a.call("subscribe", "py..x")
        assert bad["ok"] is False and bad["error"]["code"] == "invalid_topic", bad
        bad = a.call("publish", {"topic": "py.*", "content": 1})
        assert bad["ok"] is False and bad["error"]["code"] == "invalid_topic", bad

        time.sleep(0.5)
        for c in clients.values():
            c.assert_inbox_empty()
    finally:
        for c in clients.values():
            c.sio.disconnect()


def placed_on(pool, node, base):
    """An address the gateway places on `node`, asked of its /route."""
    for i in range(1, 200):
        ip = f"198.51.{base}.{i}"
        if requests.get(f"{pool.admin}/route?ip={ip}", timeout=TIMEOUT).json()["node"] == node:
            return ip
    pytest.fail(f"no address placed on {node}")


@pytest.mark.parametrize("how", ["graceful", "crash"])
def test_a_client_reconnects_after_its_node_restarts(pool, how):
    victim = "node-b"
    base = 101 if how == "graceful" else 103
    c = Client(pool.url, forwarded_for=placed_on(pool, victim, base),
               transports=TRANSPORTS["websocket"], reconnection=True)
    publishers = [Client(pool.url, forwarded_for=placed_on(pool, n, base + 1), transports=TRANSPORTS["websocket"])
                  for n in pool.NAMES if n != victim]
    try:
        assert c.node == victim
        assert c.call("subscribe", "py.restart")["ok"] is True
        pool.restart(victim, crash=how == "crash")
        c.disconnects.get(timeout=TIMEOUT)
        if how == "graceful":
            # A node that shuts down disconnects its sockets; Socket.IO
            # clients do not retry a server-side disconnect, the app does.
            c.connect()
        else:
            # A lost connection is retried by the client on its own.
            c.connects.get(timeout=3 * TIMEOUT)
            c.node = c.whoami()
        # The restarted node, or while it is down its failover.
        assert c.node in pool.NAMES
        assert c.sio.transport() == "websocket"
        # Subscriptions belong to a socket: the new one subscribes again.
        assert without_cursor(c.call("subscribe", "py.restart")) == {"ok": True, "pattern": "py.restart"}
        publisher = next(p for p in publishers if p.node != c.node)
        # The restarted node redials its mesh links within retry_interval; a
        # publish before that reaches only its own node, so publish until one
        # arrives (a late one counts too).
        sent = set()
        got = None
        for _ in range(20):
            ack = publisher.call("publish", {"topic": "py.restart", "content": "after the restart"})
            assert ack["ok"] is True, ack
            sent.add(ack["id"])
            try:
                got = c.inbox.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        assert got is not None, f"no publish from {publisher.node} reached the client on {c.node}"
        assert got["id"] in sent, got
        assert got["node"] == publisher.node != c.node
        assert got["content"] == "after the restart"
    finally:
        c.sio.disconnect()
        for p in publishers:
            p.sio.disconnect()
