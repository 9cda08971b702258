"""Recipient normalisation (rule ``recipient``): E.164 with the account's region, invalid
numbers refused with a clear status, number type recorded, duplicates of a submit_multi found
on the normalised number; end to end through SMPP (smpplib, our ESME) and HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.config import HttpConfig
from gateway.model import Message, new_message_id
from rules.core import ESME_RINVDSTADR, Context, Outcome
from rules.recipient import RecipientRule
from rules.settings import parse_rules
from smpp.connection import Connection
from smpp.pdu import BindTransmitter, Pdu, SmeDest, SubmitMulti
from smpp.session import Side
from tests.stack import SmpplibEsme, running_stack, wait_for

T0 = 1_780_000_000.0


def message(dest: str, ton: int) -> Message:
    return Message(
        id=new_message_id(), account="demo", source_addr="ACME", source_ton=5, source_npi=0,
        dest_addr=dest, dest_ton=ton, dest_npi=1 if ton == 1 else 0, data_coding=0,
        esm_class=0, protocol_id=0, priority=0, registered_delivery=1, body=b"Hi",
        created_at=T0, expires_at=T0 + 86400, not_before=T0,
    )  # fmt: skip


@pytest.mark.parametrize(("dest", "ton", "region", "e164", "kind"), [
    ("0612345678", 0, "FR", "33612345678", "mobile"),  # national, TON unknown
    ("0612345678", 1, "FR", "33612345678", "mobile"),  # a trunk 0 is never international
    ("612345678", 2, "FR", "33612345678", "mobile"),  # TON national, without the trunk 0
    ("0033612345678", 0, "FR", "33612345678", "mobile"),  # the international call prefix
    ("33612345678", 1, None, "33612345678", "mobile"),  # already E.164: unchanged
    ("+33612345678", 0, None, "33612345678", "mobile"),
    ("33612345678", 0, "FR", "33612345678", "mobile"),  # country code without '+'
    ("0112345678", 0, "FR", "33112345678", "fixed_line"),
    ("41791234567", 1, "FR", "41791234567", "mobile"),
    ("079 123 45 67", 0, "CH", "41791234567", "mobile"),
])
def test_recipients_are_normalised_to_e164_with_their_type(
        dest: str, ton: int, region: str | None, e164: str, kind: str) -> None:
    msg = message(dest, ton)
    decision = RecipientRule({}).apply(msg, Context(T0, "demo", settings={"region": region}))
    assert decision.outcome in (Outcome.ACCEPT, Outcome.MODIFY)
    new = {c.field: c.new for c in decision.changes}
    assert (new.get("dest_addr", dest), new.get("dest_ton", ton)) == (e164, 1)
    assert decision.facts["number_type"] == kind
    if dest == e164 and ton == 1:
        assert decision.outcome is Outcome.ACCEPT


@pytest.mark.parametrize(("dest", "ton", "region", "why"), [
    ("3361234", 1, "FR", "too short"),
    ("336123456789012", 1, "FR", "too long"),
    ("99912345678", 1, "FR", "country code does not exist"),
    ("0612345678", 0, None, "national number and the account has no region"),
    ("0000000000", 0, "FR", "not a valid number"),
])
def test_invalid_recipients_are_refused_with_rinvdstadr_and_a_reason(
        dest: str, ton: int, region: str | None, why: str) -> None:
    decision = RecipientRule({}).apply(message(dest, ton),
                                       Context(T0, "demo", settings={"region": region}))
    assert decision.outcome is Outcome.REJECT and decision.reason == "invalid-recipient"
    assert (decision.smpp_status, decision.http_status) == (ESME_RINVDSTADR, 422)
    assert why in decision.detail and dest not in decision.detail  # the number is not quoted


def test_an_account_may_send_only_to_the_number_types_it_names() -> None:
    rule = RecipientRule({"types": ["mobile"]})
    ctx = Context(T0, "demo", settings={"region": "FR"})
    assert rule.apply(message("0612345678", 0), ctx).outcome is Outcome.MODIFY
    refused = rule.apply(message("0112345678", 0), ctx)
    assert refused.reason == "recipient-type" and "fixed_line" in refused.detail
    with pytest.raises(ValueError, match="types"):
        RecipientRule({"types": "mobile"})


def recipient_rules() -> Any:
    return parse_rules({"pipeline": ["recipient"], "region": "FR"}, ["demo", "other"])


async def test_a_national_number_over_smpp_reaches_the_operator_in_e164_ton1_npi1(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path, rules=recipient_rules()) as (gw, sim):
        esme = SmpplibEsme(gw.smpp_port)

        def session() -> None:
            esme.bind()
            esme.submit("0612345678", b"Hello", dest_addr_ton=0, dest_addr_npi=0)
            esme.submit("0699", b"Hello", dest_addr_ton=0, dest_addr_npi=0)
            esme.read_until(lambda: len(esme.resps) >= 2)
            esme.close()

        with trio.fail_after(20):
            await trio.to_thread.run_sync(session)
        # (the refusal is answered at once, the acceptance after its commit)
        assert sorted(r.status for r in esme.resps) == [0, ESME_RINVDSTADR]
        [ok] = [r for r in esme.resps if r.status == 0]
        await wait_for(lambda: len(sim.submitted) == 1)
        record = sim.submitted[0]
        assert (record.destination_addr, record.dest_ton, record.dest_npi) == ("33612345678",
                                                                               1, 1)
        stored = await gw.store.get_message(ok.message_id.decode())
        assert stored is not None and stored.dest_addr == "33612345678"
        [event] = [e for e in await gw.store.events_of(stored.id) if e.kind == "rule"]
        assert event.detail["facts"] == {"number_type": "mobile", "country": "FR"}


async def _ignore(_conn: Connection, _pdu: Pdu) -> None:
    return None


async def test_submit_multi_sends_once_to_a_number_written_three_ways(tmp_path: Path) -> None:
    async with running_stack(tmp_path, rules=recipient_rules()) as (gw, sim), \
            trio.open_nursery() as nursery:
        conn = Connection(await trio.open_tcp_stream("127.0.0.1", gw.smpp_port), Side.ESME)
        nursery.start_soon(conn.run, _ignore)
        assert (await conn.request(BindTransmitter(system_id="demo",
                                                   password="demopass"))).status == 0
        multi = SubmitMulti(source_addr="ACME", source_addr_ton=5, short_message=b"hi",
                            dests=[SmeDest(1, 1, "33612345678"), SmeDest(0, 0, "0033612345678"),
                                   SmeDest(0, 0, "0612345678"), SmeDest(0, 0, "123"),
                                   SmeDest(0, 0, "0612345679")])
        resp = await conn.request(multi)
        assert resp.status == 0
        assert [(u.addr, u.error) for u in resp.unsuccess] == [("123", ESME_RINVDSTADR)]
        await wait_for(lambda: len(sim.submitted) == 2)
        assert sorted(r.destination_addr for r in sim.submitted) == ["33612345678",
                                                                     "33612345679"]
        second = await gw.store.get_message(f"{resp.message_id}:2")
        assert second is not None and second.dest_addr == "33612345679"
        await conn.unbind()
        nursery.cancel_scope.cancel()


async def test_http_messages_are_normalised_and_a_bad_number_is_a_422_on_to(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path, http=HttpConfig(port=0), rules=recipient_rules()) as (
            gw, sim), httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                        timeout=10) as client:
        headers = {"Authorization": "Bearer demo-token"}
        resp = await client.post("/v1/messages", headers=headers,
                                 json={"to": "0612345678", "from": "ACME", "text": "Hi"})
        assert resp.status_code == 202 and resp.json()["messages"][0]["to"] == "33612345678"
        resp = await client.post("/v1/messages", headers=headers,
                                 json={"to": "3361234", "from": "ACME", "text": "Hi"})
        assert resp.status_code == 422
        [error] = resp.json()["errors"]
        assert error["pointer"] == "/to" and error["reason"] == "invalid-recipient"
        assert "too short" in error["detail"]
        await wait_for(lambda: len(sim.submitted) == 1)
