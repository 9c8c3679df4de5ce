"""A python-socketio client of the topic API, shared by the Python tests.

It is placed by the gateway either by its own source address (a
requests session bound to 127.x.y.z, polling only) or by an
X-Forwarded-For header, which a gateway that trusts loopback believes
and which every transport sends, the websocket included.
"""

import queue
import time
import uuid

import pytest
import requests
import socketio
from requests.adapters import HTTPAdapter

TIMEOUT = 10


def wait_for(what, check, timeout=TIMEOUT):
    """Polls `check` every 50 ms until it holds; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def without_cursor(ack):
    """A subscribe ack without its `cursor` (the position now), which must be there."""
    ack = dict(ack)
    assert isinstance(ack.pop("cursor", None), str), ack
    return ack


class SourceAddressAdapter(HTTPAdapter):
    """Binds every connection of a session to one 127.x.y.z source address."""

    def __init__(self, source, **kwargs):
        self.source = source
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


class Client:
    def __init__(self, url, source=None, forwarded_for=None, transports=("polling",),
                 reconnection=False):
        session = requests.Session()
        if source is not None:
            session.mount("http://", SourceAddressAdapter(source))
        self.inbox = queue.Queue()
        self.connects = queue.Queue()
        self.disconnects = queue.Queue()
        self.sio = socketio.Client(http_session=session, reconnection=reconnection,
                                   reconnection_delay=0.2, reconnection_delay_max=1)
        self.sio.on("message", self.inbox.put)
        self.sio.on("connect", lambda: self.connects.put(True))
        self.sio.on("disconnect", lambda *reason: self.disconnects.put(reason))
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        self.connect_args = (url, list(transports), headers)
        self.connect()

    def connect(self):
        """Connects (again, after a server-side disconnect) and finds its node."""
        url, transports, headers = self.connect_args
        self.sio.connect(url, transports=transports, headers=headers, wait_timeout=TIMEOUT)
        self.connects.get(timeout=TIMEOUT)
        self.node = self.whoami()

    def call(self, event, data):
        return self.sio.call(event, data, timeout=TIMEOUT)

    def whoami(self):
        """The node serving this session: the origin of its own publish."""
        topic = f"whoami.{uuid.uuid4().hex}"
        assert without_cursor(self.call("subscribe", topic)) == {"ok": True, "pattern": topic}
        ack = self.call("publish", {"topic": topic, "content": "ping"})
        assert ack["ok"] is True, ack
        msg = self.inbox.get(timeout=TIMEOUT)
        assert msg["id"] == ack["id"] and msg["topic"] == topic, msg
        assert self.call("unsubscribe", topic) == {"ok": True, "pattern": topic}
        return msg["node"]

    def expect_only(self, id_, timeout=TIMEOUT):
        msg = self.inbox.get(timeout=timeout)
        assert msg["id"] == id_, msg
        return msg

    def assert_inbox_empty(self):
        assert self.inbox.empty(), f"unexpected message: {self.inbox.get_nowait()}"
