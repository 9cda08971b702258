"""The HTTP API on a running gateway: POST /v1/messages and GET /v1/messages/{id}, auth,
idempotency, admission (429, 503), problem+json errors, and the OpenAPI document they obey."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import smpplib.consts
import trio
from openapi_spec_validator import validate

from gateway import daemon
from gateway.config import HttpConfig, StoreConfig
from gateway.model import State
from gateway.simulator import SmscSimulator
from tests.openapi_check import DOC, check_request, check_response
from tests.stack import SmpplibEsme, gateway_config, running_stack, wait_for

MESSAGES = "/v1/messages"
ONE = "/v1/messages/{message_id}"
DEMO = {"Authorization": "Bearer demo-token"}
OTHER = {"Authorization": "Bearer other-token"}
HELLO = {"to": "33612345678", "from": "ACME", "text": "Hello"}


@contextlib.asynccontextmanager
async def api(tmp_path: Path, **changes: Any
              ) -> AsyncIterator[tuple[daemon.Running, SmscSimulator, httpx.AsyncClient]]:
    async with running_stack(tmp_path, http=HttpConfig(port=0), **changes) as (gw, sim):
        base = f"http://127.0.0.1:{gw.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            yield gw, sim, client


async def post(client: httpx.AsyncClient, body: object, headers: dict[str, str] | None = None
               ) -> tuple[httpx.Response, Any]:
    resp = await client.post(MESSAGES, json=body, headers={**DEMO, **(headers or {})})
    return resp, check_response(resp, MESSAGES)


async def stored(gw: daemon.Running) -> int:
    """Messages in the store, whatever their state."""
    stats = await gw.store.stats()
    return sum(stats[s.value] for s in State)


def test_the_openapi_document_is_a_valid_openapi_3_1_document() -> None:
    validate(DOC)  # raises on an invalid document
    assert DOC["openapi"] == "3.1.0"


async def test_a_message_posted_over_http_reaches_the_simulator_and_get_shows_it_delivered(
        tmp_path: Path) -> None:
    async with api(tmp_path) as (_gw, sim, client):
        body = {**HELLO, "client_ref": "order-17", "traffic": "alert"}
        check_request(MESSAGES, "POST", body)
        resp, answer = await post(client, body)
        assert resp.status_code == 202
        [accepted] = answer["messages"]
        assert accepted["state"] == "QUEUED" and accepted["client_ref"] == "order-17"
        message_id = accepted["id"]
        await wait_for(lambda: any(r.destination_addr == "33612345678" for r in sim.submitted))
        [record] = sim.submitted
        assert record.text == "Hello" and record.source_addr == "ACME"
        control = await client.get(f"http://127.0.0.1:{sim.control_port}/messages")
        assert [m["destination_addr"] for m in control.json()["messages"]] == ["33612345678"]

        async def delivered() -> Any:
            resp = await client.get(f"{MESSAGES}/{message_id}", headers=DEMO)
            return check_response(resp, ONE)

        with trio.fail_after(10):
            while (view := await delivered())["state"] != "DELIVERED":
                await trio.sleep(0.05)
        assert view["id"] == message_id and view["origin"] == "http"
        assert (view["to"], view["from"], view["text"]) == ("33612345678", "ACME", "Hello")
        assert view["client_ref"] == "order-17"
        [part] = view["parts"]
        assert part["state"] == "DELIVERED" and part["connector"] == "sim"
        assert part["operator_message_id"] == record.message_id
        assert [r["state"] for r in view["receipts"]] == ["DELIVERED"]
        assert view["attempts"][0]["connector"] == "sim"
        assert view["history"][0]["kind"] == "accepted"
        assert view["history"][0]["detail"] == {"interface": "http"}


async def test_the_202_comes_after_the_commit_and_the_text_is_stored_gsm_or_ucs2(
        tmp_path: Path) -> None:
    async with api(tmp_path) as (gw, _sim, client):
        batch = {"messages": [HELLO, {**HELLO, "to": "+33612345679", "text": "Привет"}]}
        check_request(MESSAGES, "POST", batch)
        resp, answer = await post(client, batch)
        assert resp.status_code == 202
        gsm, ucs2 = [await gw.store.get_message(m["id"]) for m in answer["messages"]]
        assert gsm is not None and ucs2 is not None  # readable from the store once answered
        assert (gsm.data_coding, gsm.body) == (0, b"Hello")
        assert (ucs2.data_coding, ucs2.body) == (8, "Привет".encode("utf-16-be"))
        assert ucs2.dest_addr == "33612345679" and ucs2.origin == "http"
        # No callback_url and no webhook_url for the account: no receipt owed (it polls GET).
        assert gsm.source_ton == 5 and gsm.registered_delivery == 0
        event = (await gw.store.events_of(gsm.id))[0]
        assert (event.kind, event.to_state) == ("accepted", State.QUEUED)


async def test_send_at_schedules_and_validity_is_capped_by_the_configured_validity(
        tmp_path: Path) -> None:
    async with api(tmp_path) as (gw, _sim, client):
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        body = {**HELLO, "send_at": later.isoformat().replace("+00:00", "Z"),
                "validity": "P3D", "traffic": "marketing", "channel": "sms",
                "callback_url": "https://app.example/receipts"}
        check_request(MESSAGES, "POST", body)
        resp, answer = await post(client, body)
        assert resp.status_code == 202 and answer["messages"][0]["state"] == "SCHEDULED"
        msg = await gw.store.get_message(answer["messages"][0]["id"])
        assert msg is not None and msg.state is State.SCHEDULED
        assert msg.not_before == pytest.approx(later.timestamp(), abs=0.01)
        assert msg.expires_at == pytest.approx(msg.created_at + 86400)  # [gateway] validity
        assert (msg.traffic, msg.callback_url) == ("marketing", "https://app.example/receipts")
        resp, _ = await post(client, {**HELLO, "validity": 60})
        msg = await gw.store.get_message(resp.json()["messages"][0]["id"])
        assert msg is not None and msg.expires_at == pytest.approx(msg.created_at + 60)
        resp, problem = await post(client, {**body, "validity": "PT30M"})
        assert resp.status_code == 422 and problem["errors"][0]["pointer"] == "/send_at"
        assert "send_at is after the validity" in problem["detail"]


async def test_missing_or_unknown_token_gets_401_with_a_bearer_challenge(tmp_path: Path) -> None:
    async with api(tmp_path) as (_gw, _sim, client):
        for headers in ({}, {"Authorization": "Bearer nope-nope"},
                        {"Authorization": "Basic ZGVtbzpkZW1v"}):
            resp = await client.post(MESSAGES, json=HELLO, headers=headers)
            problem = check_response(resp, MESSAGES)
            assert resp.status_code == 401 and problem["status"] == 401
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in problem["detail"] or "token" in problem["detail"]
            resp = await client.get(f"{MESSAGES}/abc", headers=headers)
            assert check_response(resp, ONE)["status"] == 401


async def test_bad_bodies_are_problems_naming_the_field_and_what_to_send(tmp_path: Path) -> None:
    async with api(tmp_path) as (gw, _sim, client):
        cases: list[tuple[object, int, str, str]] = [
            ({**HELLO, "priority": 1}, 422, "/priority", "unknown field 'priority'"),
            ({"to": "33612345678", "text": "x"}, 422, "/from", "from: required field missing"),
            ({**HELLO, "to": "00-33"}, 422, "/to", "international form"),
            ({**HELLO, "from": "A VERY LONG NAME"}, 422, "/from", "1 to 11 printable"),
            ({**HELLO, "traffic": "spam"}, 422, "/traffic", '"alert"'),
            ({**HELLO, "validity": "P1M"}, 422, "/validity", "ISO 8601 duration"),
            ({**HELLO, "send_at": "tomorrow"}, 422, "/send_at", "RFC 3339"),
            ({**HELLO, "callback_url": "ftp://x"}, 422, "/callback_url", "http"),
            ({**HELLO, "text": "x" * 2000}, 422, "/text", "max_parts"),
            ({"messages": []}, 422, "/messages", "1 to 100"),
            ({"messages": [HELLO, {**HELLO, "to": ""}]}, 422, "/messages/1/to", "to:"),
            ([HELLO], 422, "", "JSON object"),
        ]
        for body, status, pointer, detail in cases:
            resp, problem = await post(client, body)
            assert resp.status_code == status, (body, problem)
            assert resp.headers["content-type"] == "application/problem+json"
            assert problem["type"].startswith("urn:smsgw:problem:")
            assert problem["errors"][0]["pointer"] == pointer, problem
            assert detail in problem["errors"][0]["detail"], problem
            assert problem["detail"].startswith(problem["errors"][0]["detail"])
        resp = await client.post(MESSAGES, content=b"{not json", headers=DEMO)
        assert resp.status_code == 400 and "not JSON" in check_response(resp, MESSAGES)["detail"]
        resp = await client.post(MESSAGES, json=HELLO, headers={**DEMO, "Idempotency-Key": ""})
        assert resp.status_code == 400 and "Idempotency-Key" in check_response(
            resp, MESSAGES)["detail"]
        assert await stored(gw) == 0  # nothing refused was stored
        resp = await client.put(f"{MESSAGES}/x", headers=DEMO)
        assert resp.status_code == 405
        assert set(resp.headers["allow"].split(", ")) == {"GET", "DELETE", "HEAD"}
        assert resp.headers["content-type"] == "application/problem+json"
        resp = await client.get("/v2/nothing", headers=DEMO)
        assert resp.status_code == 404 and resp.json()["detail"].startswith("no resource")


async def test_another_accounts_message_is_not_found(tmp_path: Path) -> None:
    async with api(tmp_path) as (_gw, _sim, client):
        _, answer = await post(client, HELLO)
        message_id = answer["messages"][0]["id"]
        resp = await client.get(f"{MESSAGES}/{message_id}", headers=OTHER)
        problem = check_response(resp, ONE)
        assert resp.status_code == 404 and "for your account" in problem["detail"]
        resp = await client.get(f"{MESSAGES}/{message_id}", headers=DEMO)
        assert check_response(resp, ONE)["id"] == message_id


async def test_same_idempotency_key_and_body_gives_the_first_answer_even_after_a_restart(
        tmp_path: Path) -> None:
    key = {"Idempotency-Key": "order-17-attempt"}
    async with api(tmp_path) as (gw, _sim, client):
        first, answer = await post(client, HELLO, key)
        again, replay = await post(client, dict(reversed(list(HELLO.items()))), key)
        assert first.status_code == again.status_code == 202 and replay == answer
        assert again.headers["idempotent-replayed"] == "true"
        other, problem = await post(client, {**HELLO, "text": "Bye"}, key)
        assert other.status_code == 409 and "another body" in problem["detail"]
        assert await stored(gw) == 1
        # Concurrent requests with one key: one message, both get its answer.
        answers: list[Any] = []

        async def send() -> None:
            answers.append((await post(client, HELLO, {"Idempotency-Key": "concurrent"}))[1])

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(send)
        assert answers[0] == answers[1] == answers[2]
        assert await stored(gw) == 2
    async with api(tmp_path) as (gw, _sim, client):
        again, replay = await post(client, HELLO, key)
        assert again.status_code == 202 and replay == answer
        assert await stored(gw) == 2
        assert await gw.store.purge_idempotency(dt.datetime.now(dt.UTC).timestamp() + 1) == 2
        fresh, answer2 = await post(client, HELLO, key)  # forgotten: a new message
        assert fresh.status_code == 202 and answer2 != answer


async def test_over_the_accounts_throughput_http_and_smpp_together_get_429(
        tmp_path: Path) -> None:
    base = gateway_config(tmp_path, 0)
    slow = dataclasses.replace(base.accounts["other"], throughput=0.2)  # one per 5 s
    accounts = {**base.accounts, "other": slow}
    async with api(tmp_path, accounts=accounts) as (gw, _sim, client):
        esme = SmpplibEsme(gw.smpp_port, "other", "otherpw")
        await trio.to_thread.run_sync(esme.bind)
        await trio.to_thread.run_sync(esme.submit, "33612345678", b"over SMPP")
        await trio.to_thread.run_sync(esme.read_until, lambda: bool(esme.resps))
        assert esme.resps[0].status == 0
        resp = await client.post(MESSAGES, json=HELLO, headers=OTHER)
        problem = check_response(resp, MESSAGES)
        assert resp.status_code == 429 and "SMPP and HTTP together" in problem["detail"]
        assert 1 <= int(resp.headers["retry-after"]) <= 5
        await trio.to_thread.run_sync(esme.submit, "33612345678", b"again")
        await trio.to_thread.run_sync(esme.read_until, lambda: len(esme.resps) >= 2)
        assert esme.resps[1].status == smpplib.consts.SMPP_ESME_RTHROTTLED
        await trio.to_thread.run_sync(esme.close)


async def test_a_lagging_store_answers_503_with_retry_after_and_stores_nothing(
        tmp_path: Path) -> None:
    store = StoreConfig(path=tmp_path / "smsgw.sqlite3", unfinished_max=2)
    async with api(tmp_path, store=store) as (gw, _sim, client):
        resp, problem = await post(client, {"messages": [HELLO] * 3})
        assert resp.status_code == 503 and int(resp.headers["retry-after"]) >= 1
        assert "send the same request again" in problem["detail"]
        assert await stored(gw) == 0


async def test_metrics_are_served_on_the_same_listener(tmp_path: Path) -> None:
    async with api(tmp_path) as (_gw, _sim, client):
        await post(client, HELLO)
        text = (await client.get("/metrics")).text
        assert 'smsgw_messages_accepted_total{account="demo",interface="http"}' in text
        doc = (await client.get("/openapi.json")).json()
        assert doc == DOC


async def test_posts_during_the_graceful_drain_get_503_and_store_nothing(tmp_path: Path) -> None:
    async with api(tmp_path) as (gw, _sim, client):
        gw.stopping.set()  # what lifecycle.stop does first
        resp, problem = await post(client, HELLO)
        assert resp.status_code == 503 and resp.headers["Retry-After"]
        assert "stopping" in problem["detail"]
        assert await stored(gw) == 0
        assert (await client.get("/metrics")).status_code == 200  # still scrapable
