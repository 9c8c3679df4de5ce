"""python-socketio, polling only, through the gateway: many clients from
distinct loopback addresses, each pair chatting across two different nodes.

A second client implementation (besides the official JS one) keeps the
gateway and nodes honest about Engine.IO: any 400 `Session ID unknown` from
a mis-routed poll fails the connect or a call here.
"""

import itertools
import time

from sioclient import Client, without_cursor

CLIENTS = 24


def test_pairs_on_different_nodes_chat_over_polling(gateway_url):
    clients = [Client(gateway_url, source=f"127.0.7.{i + 1}") for i in range(CLIENTS)]
    try:
        by_node = {}
        for c in clients:
            by_node.setdefault(c.node, []).append(c)
        assert len(by_node) == 3, f"clients landed on {sorted(by_node)} only"

        # Pair clients of two different nodes, round-robin over node pairs.
        pairs = []
        for a_node, b_node in itertools.cycle(itertools.combinations(sorted(by_node), 2)):
            if not by_node[a_node] or not by_node[b_node]:
                break
            pairs.append((by_node[a_node].pop(), by_node[b_node].pop()))
        assert len(pairs) >= 6, f"only {len(pairs)} cross-node pairs"

        for k, (a, b) in enumerate(pairs):
            topic = f"chat.py.{k}"
            for c in (a, b):
                assert without_cursor(c.call("subscribe", topic)) == {"ok": True, "pattern": topic}

        for k, (a, b) in enumerate(pairs):
            topic = f"chat.py.{k}"
            hello = a.call("publish", {"topic": topic, "content": {"text": f"hi {k}"}})
            assert hello["ok"] is True, hello
            got = b.expect_only(hello["id"])
            assert got["node"] == a.node != b.node
            assert got["content"] == {"text": f"hi {k}"}
            assert got["senderId"] == a.sio.get_sid("/")
            assert got["patterns"] == [topic]
            a.expect_only(hello["id"])  # the sender is subscribed too

            reply = b.call("publish", {"topic": topic, "content": f"re {k}"})
            assert a.expect_only(reply["id"])["node"] == b.node
            b.expect_only(reply["id"])

        # Exactly once: after a settle, nothing else arrived: no duplicate, no cross-talk.
        time.sleep(0.5)
        for a, b in pairs:
            a.assert_inbox_empty()
            b.assert_inbox_empty()
    finally:
        for c in clients:
            c.sio.disconnect()


def test_errors_come_back_as_acks(gateway_url):
    c = Client(gateway_url, source="127.0.8.1")
    try:
        bad = c.call("subscribe", "news..eu")
        assert bad["ok"] is False and bad["error"]["code"] == "invalid_topic", bad
        bad = c.call("publish", {"topic": "news.*", "content": 1})
        assert bad["ok"] is False and bad["error"]["code"] == "invalid_topic", bad
        bad = c.call("publish", 42)
        assert bad["ok"] is False and bad["error"]["code"] == "invalid_payload", bad
    finally:
        c.sio.disconnect()
