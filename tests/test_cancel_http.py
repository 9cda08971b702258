"""DELETE /v1/messages/{id} on a running gateway: a message not sent yet is cancelled for good
(200 with the message once stored, never sent), another account's or an unknown one is 404, a
message with the operator already is 409 naming its state, a store failure is 503 with
Retry-After and changes nothing; every answer as the OpenAPI document says."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import trio

from gateway.model import State
from gateway.store import StoreError
from tests.openapi_check import check_response
from tests.stack import wait_for
from tests.test_http_api import DEMO, HELLO, MESSAGES, ONE, OTHER, api, post


def _later(hours: float = 1) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    return when.isoformat().replace("+00:00", "Z")


async def delete(client: httpx.AsyncClient, message_id: str,
                 headers: dict[str, str] = DEMO) -> tuple[httpx.Response, Any]:
    resp = await client.delete(f"{MESSAGES}/{message_id}", headers=headers)
    return resp, check_response(resp, ONE)


async def test_delete_cancels_a_scheduled_message_for_good(tmp_path: Path) -> None:
    async with api(tmp_path) as (gw, sim, client):
        _, answer = await post(client, {**HELLO, "send_at": _later()})
        message_id = answer["messages"][0]["id"]
        resp, problem = await delete(client, message_id, OTHER)
        assert resp.status_code == 404 and problem["type"] == "urn:smsgw:problem:message-not-found"
        resp, _ = await delete(client, "f" * 32)
        assert resp.status_code == 404
        resp, view = await delete(client, message_id)
        assert resp.status_code == 200 and view["state"] == "CANCELLED" and view["done_at"]
        assert [(h["kind"], h["from_state"], h["to_state"], h["detail"])
                for h in view["history"]][-1] == ("cancelled", "SCHEDULED", "CANCELLED",
                                                  {"by": "http"})
        stored = await gw.store.get_message(message_id)
        assert stored is not None and stored.state is State.CANCELLED
        resp, again = await delete(client, message_id)  # idempotent: the same answer
        assert resp.status_code == 200 and again["state"] == "CANCELLED"
        resp = await client.get(f"{MESSAGES}/{message_id}", headers=DEMO)
        assert check_response(resp, ONE)["state"] == "CANCELLED"
        assert sim.submitted == []


async def test_delete_of_a_message_with_the_operator_is_409_naming_its_state(
        tmp_path: Path) -> None:
    async with api(tmp_path) as (gw, sim, client):
        _, answer = await post(client, HELLO)
        message_id = answer["messages"][0]["id"]
        await wait_for(lambda: message_id not in gw.dispatcher.live)  # DELIVERED
        resp, problem = await delete(client, message_id)
        assert resp.status_code == 409 and problem["state"] == "DELIVERED"
        assert "DELIVERED" in problem["detail"] and "too late" in problem["detail"]
        assert len(sim.submitted) == 1


async def test_delete_when_the_store_fails_is_503_and_changes_nothing(tmp_path: Path) -> None:
    async with api(tmp_path) as (gw, _sim, client):
        _, answer = await post(client, {**HELLO, "send_at": _later()})
        message_id = answer["messages"][0]["id"]
        real = gw.store.save_messages_nowait

        def disk_full(*args: object, **kwargs: object) -> object:
            raise StoreError("database or disk is full")

        gw.store.save_messages_nowait = disk_full  # type: ignore[assignment]
        try:
            resp, problem = await delete(client, message_id)
        finally:
            gw.store.save_messages_nowait = real  # type: ignore[method-assign]
        assert resp.status_code == 503 and int(resp.headers["retry-after"]) >= 1
        assert "not cancelled" in problem["detail"]
        assert gw.dispatcher.live[message_id].msg.state is State.SCHEDULED
        stored = await gw.store.get_message(message_id)
        assert stored is not None and stored.state is State.SCHEDULED
        resp, view = await delete(client, message_id)  # the same request again: done
        assert resp.status_code == 200 and view["state"] == "CANCELLED"


async def test_deletes_racing_the_dispatcher_either_cancel_or_are_too_late_never_both(
        tmp_path: Path) -> None:
    """Messages due in a second, DELETEd from before to after that moment over real sockets:
    each answer is 200 and the operator never gets the message, or 409 and it gets it once."""
    async with api(tmp_path) as (gw, sim, client):
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        body = {"messages": [{**HELLO, "to": f"3361{i:07d}",
                              "send_at": due.isoformat().replace("+00:00", "Z")}
                             for i in range(40)]}
        _, answer = await post(client, body)
        ids = {m["id"]: m["to"] for m in answer["messages"]}
        outcome: dict[str, int] = {}
        start = trio.current_time()

        async def cancel(message_id: str, delay: float) -> None:
            await trio.sleep_until(start + delay)
            resp, _ = await delete(client, message_id)
            outcome[message_id] = resp.status_code

        async with trio.open_nursery() as nursery:
            for i, message_id in enumerate(ids):
                nursery.start_soon(cancel, message_id, 1.6 * i / len(ids))
        await wait_for(lambda: all(m not in gw.dispatcher.live or
                                   gw.dispatcher.live[m].msg.state is not State.SCHEDULED
                                   for m in ids))
        await trio.sleep(0.5)
        sent = [r.destination_addr for r in sim.submitted]
        assert len(sent) == len(set(sent))
        for message_id, to in ids.items():
            assert outcome[message_id] in (200, 409)
            assert (to in sent) == (outcome[message_id] == 409), (message_id, outcome)
            stored = await gw.store.get_message(message_id)
            assert stored is not None
            assert (stored.state is State.CANCELLED) == (outcome[message_id] == 200)
        assert 200 in outcome.values()  # the early ones at least
