"""Webhooks across a crash: the gateway as a real process, SIGKILLed while receipt webhooks are
being answered, restarted; every event reaches the receiver with a 2xx at least once, none is
left in the store, and none answered 2xx well before the kill is sent again."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import trio

from gateway.passwords import hash_password
from gateway.store import Store
from gateway.tokens import hash_token
from tests.procs import Proc, free_port

MESSAGES = 40
COMMIT_MAX = 1.0  # seconds an answered event may wait for its deletion commit (see durability)
SECRET = "durable-webhook-secret-0123456789"

_TOML = """\
[gateway]
node = "webhooks-kill"
shutdown_timeout = "5s"

[store]
path = "{store}"
synchronous = "normal"

[http]
host = "127.0.0.1"
port = {http_port}

[admin]
enabled = false

[[listener]]
host = "127.0.0.1"
port = 0

[[account]]
system_id = "demo"
password_hash = "{password_hash}"
throughput = 0
http_tokens = ["{token_hash}"]
webhook_url = "http://127.0.0.1:{receiver_port}/events"
webhook_secret = "{secret}"
webhook_concurrency = 2
webhook_retry_delay = "100ms"
webhook_retry_delay_max = "200ms"

[[smsc]]
name = "sim"
host = "127.0.0.1"
port = {sim_port}
system_id = "sim"
password = "simpass"
reconnect_delay = "100ms"

[[route]]
name = "default"
smscs = ["sim"]

[simulator]
host = "127.0.0.1"
port = {sim_port}
system_id = "sim"
password = "simpass"
control_host = "127.0.0.1"
control_port = {control_port}
receipt_delay = "50ms"
"""


class Receiver:
    """The application, on a thread: answers `status`, slowly (so that POSTs are in flight
    when the kill comes), and records (time, event id, status) per POST."""

    def __init__(self) -> None:
        self.status = 503
        self.hits: list[tuple[float, str, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.status
                time.sleep(0.02)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver.lock:
                    receiver.hits.append((time.monotonic(), json.loads(body)["event_id"],
                                          status))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ok_events(self) -> set[str]:
        with self.lock:
            return {e for _, e, s in self.hits if s == 204}

    def wait(self, condition: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; {len(self.hits)} hits"
            time.sleep(0.01)


def test_webhooks_are_delivered_at_least_once_across_a_sigkill(tmp_path: Path) -> None:
    receiver = Receiver()
    config = tmp_path / "gw.toml"
    store = tmp_path / "store" / "smsgw.sqlite3"
    http_port = free_port()
    config.write_text(_TOML.format(
        store=store, http_port=http_port, password_hash=hash_password("demopass"),
        token_hash=hash_token("demo-token"), receiver_port=receiver.port, secret=SECRET,
        sim_port=free_port(), control_port=free_port()))
    config.chmod(0o600)
    try:
        first = Proc("gateway-1", ["run", "--config", str(config)], tmp_path)
        first.wait_event("daemon.ready", timeout=30)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as client:
            resp = client.post("/v1/messages", headers={"Authorization": "Bearer demo-token"},
                               json={"messages": [{"to": f"336123456{i:02d}", "from": "ACME",
                                                   "text": f"m{i}"} for i in range(MESSAGES)]})
        assert resp.status_code == 202, resp.text
        # Every receipt's event is tried (and refused 503), then the application comes back.
        receiver.wait(lambda: len({e for _, e, _ in receiver.hits}) == MESSAGES)
        receiver.status = 204
        receiver.wait(lambda: len(receiver.ok_events()) >= MESSAGES // 2)
        first.kill()
        killed_at = time.monotonic()
        before = {e: t for t, e, s in receiver.hits if s == 204}
        assert len(before) < MESSAGES  # some are left for the next life

        second = Proc("gateway-2", ["run", "--config", str(config)], tmp_path)
        second.wait_event("daemon.ready", timeout=30)
        receiver.wait(lambda: len(receiver.ok_events()) == MESSAGES)
        code, clean = second.stop()
        assert (code, clean) == (0, True), second.tail()
    finally:
        receiver.server.shutdown()

    assert {e for t, e, s in receiver.hits if t > killed_at and s == 204} >= (
        {e for _, e, _ in receiver.hits} - set(before))  # the rest came from the second life
    again = [e for t, e, _ in receiver.hits if t > killed_at and e in before]
    assert all(before[e] > killed_at - COMMIT_MAX for e in again), (
        "an event answered 2xx well before the kill was sent again")

    async def left() -> int:
        async with Store.open(store) as s:
            return len(await s.pending_reports("demo", via="http"))
    assert trio.run(left) == 0
