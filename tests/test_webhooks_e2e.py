"""Webhooks on a running gateway: a message posted over HTTP reaches the simulator and its
signed receipt reaches a receiver the test runs (hypercorn on 127.0.0.1), verified with the
README's snippet; receipts go where their message came from, MO per the account's mo_via."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import daemon
from gateway.config import HttpConfig, SimulatorConfig
from gateway.http_api import serve_http
from gateway.simulator import SmscSimulator, post_mo
from gateway.store import Store
from tests.openapi_check import check_response, check_webhook
from tests.stack import DEMO_WEBHOOK_SECRET, SmpplibEsme, gateway_config

README = Path(__file__).resolve().parent.parent / "README.md"
DEMO = {"Authorization": "Bearer demo-token"}


def readme_verifier() -> Callable[[str, str, bytes], bool]:
    """verify_smsgw_signature as the README shows it (the snippet an application copies)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Webhooks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None and "def verify_smsgw_signature" in code.group(1)
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # our own README's snippet, as an application copies it
    verify: Callable[[str, str, bytes], bool] = namespace["verify_smsgw_signature"]
    return verify


class Receiver:
    """The account's application on 127.0.0.1: records each POST (path, headers, body), and
    answers 204 after `delay` seconds."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, dict[str, str], bytes]] = []
        self.answered = 0
        self.port = 0
        self.delay = 0.0

    async def handle(self, request: Request) -> Response:
        self.hits.append((request.url.path, dict(request.headers), await request.body()))
        await trio.sleep(self.delay)
        self.answered += 1
        return Response(status_code=204)

    def events(self, kind: str) -> list[tuple[str, dict[str, str], bytes, dict[str, Any]]]:
        return [(p, h, b, e) for p, h, b in self.hits if (e := json.loads(b))["type"] == kind]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def gateway_with_receiver(tmp_path: Path, **account: Any) -> AsyncIterator[
        tuple[daemon.Running, SmscSimulator, Receiver, httpx.AsyncClient]]:
    """The receiver, the simulator and a gateway whose account demo has these changes
    ("{receiver}" in a value: the receiver's base URL). Leaving stops the gateway as SIGTERM
    does (the graceful drain runs to its end), then the rest."""
    receiver = Receiver()
    app = Starlette(routes=[Route("/{path:path}", receiver.handle, methods=["POST"])])
    async with trio.open_nursery() as nursery:
        receiver.port = await nursery.start(serve_http, app, "127.0.0.1", 0)
        sim_config = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7)
        sim = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(sim.serve)
        base = gateway_config(tmp_path, sim.port)

        def at_receiver(value: Any) -> Any:
            if isinstance(value, tuple):
                return tuple(at_receiver(v) for v in value)
            return value.replace("{receiver}", receiver.url) if isinstance(value, str) else value

        changes = {k: at_receiver(v) for k, v in account.items()}
        config = dataclasses.replace(base, http=HttpConfig(port=0), accounts={
            **base.accounts, "demo": dataclasses.replace(base.accounts["demo"], **changes)})
        stop, stopped = trio.Event(), trio.Event()

        async def gateway(*, task_status: trio.TaskStatus[daemon.Running]) -> None:
            await daemon.run(config, stop.wait, task_status=task_status)
            stopped.set()

        gw: daemon.Running = await nursery.start(gateway)
        await wait(lambda: all(c.is_up() for c in gw.connectors.values()))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                     timeout=10) as client:
            yield gw, sim, receiver, client
        stop.set()
        with trio.fail_after(20):
            await stopped.wait()
        nursery.cancel_scope.cancel()


async def wait(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_a_message_posted_over_http_gets_its_signed_receipt_at_the_receiver(
        tmp_path: Path) -> None:
    verify = readme_verifier()
    async with gateway_with_receiver(tmp_path, webhook_url="{receiver}/default") as (
            gw, sim, receiver, client):
        posted = await client.post("/v1/messages", headers=DEMO, json={"messages": [
            {"to": "33612345678", "from": "ACME", "text": "Hello", "client_ref": "order-17"},
            {"to": "33612345679", "from": "ACME", "text": "Hi",
             "callback_url": f"{receiver.url}/mine"}]})
        assert posted.status_code == 202, posted.text
        ids = [m["id"] for m in posted.json()["messages"]]
        await wait(lambda: len(receiver.events("receipt")) == 2)
        assert len(sim.submitted) == 2  # both reached the operator (the simulator)
        hooks = gw.webhooks
        assert hooks is not None
        await wait(lambda: hooks.pending_total() == 0)  # the 2xx answers handled
        await hooks.flush_deletes()
        assert await gw.store.pending_reports("demo", via="http") == []
        assert await gw.store.pending_reports("demo") == []  # nothing went the SMPP way
        view = check_response(await client.get(f"/v1/messages/{ids[0]}", headers=DEMO),
                              "/v1/messages/{message_id}")
        assert [(h["kind"], h["detail"]["outcome"], h["detail"]["status"])
                for h in view["history"] if h["kind"] == "webhook"] == [
            ("webhook", "delivered", 204)]
    by_message = {e["message_id"]: (path, headers, body, e)
                  for path, headers, body, e in receiver.events("receipt")}
    assert set(by_message) == set(ids)
    for _path, headers, _body, event in by_message.values():
        check_webhook("receipt", headers, event)  # as the OpenAPI document describes it
    path, headers, body, event = by_message[ids[0]]
    assert path == "/default"  # the account's webhook_url
    assert verify(DEMO_WEBHOOK_SECRET, headers["smsgw-signature"], body)
    assert not verify("not-the-secret-0123456789", headers["smsgw-signature"], body)
    assert headers["smsgw-event-id"] == event["event_id"]
    assert (event["account"], event["client_ref"], event["to"], event["from"]) == (
        "demo", "order-17", "33612345678", "ACME")
    sim_stat = {"DELIVERED": "DELIVRD", "UNDELIVERABLE": "UNDELIV", "EXPIRED": "EXPIRED"}
    assert sim_stat[event["state"]] == event["stat"]
    assert event["submitted_at"] <= event["done_at"]
    path, headers, body, event = by_message[ids[1]]
    assert path == "/mine"  # its own callback_url
    assert verify(DEMO_WEBHOOK_SECRET, headers["smsgw-signature"], body)
    assert event["client_ref"] is None


async def test_a_graceful_stop_lets_the_webhook_in_flight_be_answered_and_deletes_it(
        tmp_path: Path) -> None:
    async with gateway_with_receiver(tmp_path, webhook_url="{receiver}/slow") as (
            _gw, _sim, receiver, client):
        receiver.delay = 1.0
        posted = await client.post("/v1/messages", headers=DEMO, json={
            "to": "33612345678", "from": "ACME", "text": "Hello"})
        assert posted.status_code == 202
        await wait(lambda: len(receiver.hits) == 1)  # in flight: now stop the gateway
        assert receiver.answered == 0
    assert receiver.answered == 1 and len(receiver.hits) == 1
    async with Store.open(tmp_path / "smsgw.sqlite3") as store:
        assert await store.pending_reports("demo", via="http") == []  # not sent again


async def test_one_account_smpp_receipts_stay_on_smpp_and_its_mo_go_by_webhook(
        tmp_path: Path) -> None:
    async with gateway_with_receiver(tmp_path, webhook_url="{receiver}/events") as (
            gw, sim, receiver, _client):
        esme = SmpplibEsme(gw.smpp_port)
        await trio.to_thread.run_sync(esme.submit_one, "33612345678", b"Hello")
        assert b"stat:" in esme.delivered[0].short_message  # its receipt, over SMPP
        await trio.to_thread.run_sync(
            post_mo, f"http://127.0.0.1:{sim.control_port}", "33612345678", "36111", "STOP")
        await wait(lambda: len(receiver.events("mo")) == 1)
    assert receiver.events("receipt") == []  # the SMPP message's receipt did not go by webhook
    _, headers, body, event = receiver.events("mo")[0]
    check_webhook("mo", headers, event)
    assert readme_verifier()(DEMO_WEBHOOK_SECRET, headers["smsgw-signature"], body)
    assert (event["from"], event["to"], event["text"]) == ("33612345678", "36111", "STOP")


async def test_mo_via_smpp_keeps_the_mo_on_the_binds_despite_a_webhook_url(
        tmp_path: Path) -> None:
    async with gateway_with_receiver(tmp_path, webhook_url="{receiver}/events",
                                     mo_via="smpp") as (gw, sim, receiver, _client):
        await trio.to_thread.run_sync(
            post_mo, f"http://127.0.0.1:{sim.control_port}", "33612345678", "36111", "STOP")
        with trio.fail_after(10):
            while not await gw.store.pending_reports("demo"):
                await trio.sleep(0.02)  # owed over SMPP (no bind here: kept for one)
        assert receiver.hits == []


async def test_callback_url_is_refused_for_an_account_without_a_webhook_secret(
        tmp_path: Path) -> None:
    async with gateway_with_receiver(tmp_path) as (gw, _sim, receiver, client):
        resp = await client.post("/v1/messages", headers={"Authorization": "Bearer other-token"},
                                 json={"to": "33612345678", "from": "ACME", "text": "Hi",
                                       "callback_url": f"{receiver.url}/x"})
        assert resp.status_code == 422
        problem = resp.json()
        assert problem["errors"][0]["pointer"] == "/callback_url"
        assert "webhook_secret" in problem["detail"]
        assert (await gw.store.stats())["QUEUED"] == 0  # nothing stored


async def test_a_callback_url_outside_the_account_prefixes_is_refused(tmp_path: Path) -> None:
    async with gateway_with_receiver(
            tmp_path, callback_url_prefixes=("{receiver}/allowed/",)) as (
                _gw, _sim, receiver, client):
        refused = await client.post("/v1/messages", headers=DEMO, json={
            "to": "33612345678", "from": "ACME", "text": "Hi",
            "callback_url": "http://169.254.169.254/latest/meta-data/"})
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["pointer"] == "/callback_url"
        assert f"{receiver.url}/allowed/" in refused.json()["detail"]
        accepted = await client.post("/v1/messages", headers=DEMO, json={
            "to": "33612345678", "from": "ACME", "text": "Hi",
            "callback_url": f"{receiver.url}/allowed/x"})
        assert accepted.status_code == 202
        await wait(lambda: len(receiver.hits) == 1)
    assert receiver.hits[0][0] == "/allowed/x"
