"""Marketing traffic: the STOP mention for alphanumeric senders (segments counted after it),
and marketing hours (France: Mon-Sat 08:00-20:00 Europe/Paris, never on public holidays):
deferred to the next allowed time with the validity counted from then; alerts never wait.
End to end with the gateway's clock set: Saturday 21:30, a Sunday and 14 July are deferred,
then sent when the gateway runs at the next slot (after a restart: the deferral is stored)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio

import gateway.clock
from gateway.config import load_config
from gateway.model import Message, State, new_message_id
from gateway.screening import CODEC
from rules.core import ESME_RINVMSGLEN, Context, Outcome, Pipeline
from rules.hours import HoursRule
from rules.mention import MentionRule
from rules.settings import RulesConfigError, parse_rules
from smpp.connection import Connection
from smpp.pdu import BindTransceiver, DeliverSm, Pdu, SubmitSm
from smpp.session import Side
from smpp.text import decode_text, encode_text
from tests.stack import running_stack

PARIS = ZoneInfo("Europe/Paris")
CONF = Path(__file__).resolve().parent.parent / "conf"


def paris(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=PARIS).timestamp()


def message(text: str = "Promo", *, traffic: str = "marketing", ton: int = 5,
            at: float | None = None, dest: str = "33612345678") -> Message:
    now = paris("2026-12-07T12:00") if at is None else at
    dc, body = encode_text(text)
    return Message(
        id=new_message_id(), account="demo", source_addr="ACME" if ton == 5 else "36111",
        source_ton=ton, source_npi=0, dest_addr=dest, dest_ton=1, dest_npi=1,
        data_coding=dc, esm_class=0, protocol_id=0, priority=0, registered_delivery=1,
        body=body, created_at=now, expires_at=now + 86400, not_before=now,
        next_attempt_at=now, traffic=traffic,
    )  # fmt: skip


def ctx(now: float | None = None) -> Context:
    return Context(paris("2026-12-07T12:00") if now is None else now, "demo", codec=CODEC)


# --- the STOP mention --------------------------------------------------------------------------

@pytest.mark.parametrize(("length", "segments"), [(146, 1), (147, 2)])
def test_the_stop_mention_is_appended_and_segments_are_counted_after_it(
        length: int, segments: int) -> None:
    msg = message("a" * length)
    decision = MentionRule({}).apply(msg, ctx())
    assert decision.outcome is Outcome.MODIFY
    new = {c.field: c.new for c in decision.changes}
    assert decode_text(new["body"], 0) == "a" * length + "\nSTOP au 36111"
    assert decision.facts["segments"] == segments  # 160 GSM characters in one SMS, then 153


def test_a_ucs2_text_counts_70_then_67_characters_a_segment() -> None:
    one = MentionRule({}).apply(message("Я" * 56), ctx())  # 56 + 14 = 70
    two = MentionRule({}).apply(message("Я" * 57), ctx())
    assert (one.facts["segments"], two.facts["segments"]) == (1, 2)


def test_a_template_outside_gsm_switches_the_message_to_ucs2() -> None:
    rule = MentionRule({"templates": {"FR": "STOP au 36111 — merci"}})
    decision = rule.apply(message("Promo"), ctx())
    assert {c.field: c.new for c in decision.changes}["data_coding"] == 8


@pytest.mark.parametrize(("msg", "why"), [
    (message(traffic="alert"), "alerts need no mention"),
    (message(ton=3), "a short code takes the replies itself"),
    (message("Promo\nSTOP au 36111"), "already there"),
    (message(dest="12025550123"), "no template toward US"),
])
def test_no_mention_where_none_is_needed(msg: Message, why: str) -> None:
    assert MentionRule({}).apply(msg, ctx()).outcome is Outcome.ACCEPT, why


def test_marketing_already_segmented_by_the_upstream_cannot_get_the_mention() -> None:
    msg = message()
    msg.esm_class = 0x40
    decision = MentionRule({}).apply(msg, ctx())
    assert decision.reason == "mention-impossible" and decision.smpp_status == ESME_RINVMSGLEN


# --- marketing hours ---------------------------------------------------------------------------

@pytest.mark.parametrize(("at", "opens"), [
    ("2026-12-05T21:30", "2026-12-07T08:00"),  # Saturday evening: Monday (Sunday closed)
    ("2026-12-06T10:00", "2026-12-07T08:00"),  # a Sunday
    ("2026-07-14T10:00", "2026-07-15T08:00"),  # 14 July, a Tuesday: national holiday
    ("2026-12-24T20:00", "2026-12-26T08:00"),  # 20:00 is closed; 25 December a holiday
    ("2026-12-07T07:59", "2026-12-07T08:00"),
    ("2026-03-28T22:00", "2026-03-30T08:00"),  # across the change to summer time
])
def test_marketing_outside_french_hours_is_deferred_to_the_next_allowed_time(
        at: str, opens: str) -> None:
    msg = message(at=paris(at))
    verdict = Pipeline([("hours", HoursRule({}))]).run(msg, ctx(paris(at)))
    [decision] = verdict.decisions
    assert decision.outcome is Outcome.DEFER and decision.until == paris(opens)
    assert f"deferred to {opens.replace('T', ' ')} Europe/Paris" in decision.detail
    assert msg.state is State.SCHEDULED and msg.not_before == paris(opens)
    assert msg.expires_at == paris(opens) + 86400  # the validity counts from then


@pytest.mark.parametrize("at", ["2026-12-07T08:00", "2026-12-05T19:59", "2026-07-13T12:00"])
def test_marketing_inside_the_hours_goes_at_once(at: str) -> None:
    assert HoursRule({}).apply(message(at=paris(at)), ctx(paris(at))).outcome is Outcome.ACCEPT


def test_alerts_are_never_deferred_and_other_countries_follow_their_own_table() -> None:
    sunday = paris("2026-12-06T10:00")
    assert HoursRule({}).apply(message(traffic="alert", at=sunday),
                               ctx(sunday)).outcome is Outcome.ACCEPT
    rule = HoursRule({"BE": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00",
                             "end": "18:00", "timezone": "Europe/Brussels"}})
    belgian = message(at=sunday, dest="32470123456")
    assert rule.apply(belgian, ctx(sunday)).until == paris("2026-12-07T09:00")
    assert rule.apply(message(at=sunday), ctx(sunday)).outcome is Outcome.ACCEPT  # FR: none


def test_a_message_scheduled_by_the_upstream_is_judged_at_its_send_time() -> None:
    now = paris("2026-12-07T12:00")
    msg = message(at=now)
    msg.not_before = msg.next_attempt_at = paris("2026-12-06T10:00") + 7 * 86400  # Sunday
    assert HoursRule({}).apply(msg, ctx(now)).until == paris("2026-12-14T08:00")


@pytest.mark.parametrize(("options", "error"), [
    ({"FR": {"start": "8h"}}, 'hours.FR.start: expected a time "HH:MM"'),
    ({"FR": {"start": "20:00", "end": "08:00"}}, "hours.FR.end: expected a time after start"),
    ({"FR": {"timezone": "Paris"}}, "hours.FR.timezone: expected an IANA time zone"),
    ({"FR": {"days": ["sunday"]}}, "hours.FR.days: expected an array of mon"),
    ({"FR": {"colour": 1}}, "hours.FR.colour: unknown key"),
])
def test_a_bad_hours_table_names_its_key(options: dict[str, Any], error: str) -> None:
    with pytest.raises(RulesConfigError) as err:
        parse_rules({"pipeline": ["hours"], "options": {"hours": options}}, ["demo"])
    assert error in err.value.message


# --- end to end: the gateway's wall clock set to the moment (it follows trio's clock) -------

class Moment:
    """What time.time() says when the daemon makes its WallClock: set before each start."""

    def __init__(self) -> None:
        self.at = 0.0

    def time(self) -> float:
        return self.at


@pytest.fixture
def moment(monkeypatch: pytest.MonkeyPatch) -> Moment:
    m = Moment()
    monkeypatch.setattr(gateway.clock, "time", m)
    monkeypatch.chdir(CONF.parent)  # the demo's sender table path is relative
    return m


async def _ignore(_conn: Connection, _pdu: Pdu) -> None:
    return None


async def _bind(nursery: trio.Nursery, port: int, handler: Any = _ignore) -> Connection:
    conn = Connection(await trio.open_tcp_stream("127.0.0.1", port), Side.ESME)
    nursery.start_soon(conn.run, handler)
    assert (await conn.request(BindTransceiver(system_id="demo",
                                               password="demopass"))).status == 0
    return conn


@pytest.mark.parametrize(("start", "opens"), [
    ("2026-12-05T21:30", "2026-12-07T08:00"),  # Saturday 21:30
    ("2026-12-06T15:00", "2026-12-07T08:00"),  # a Sunday
    ("2026-07-14T09:00", "2026-07-15T08:00"),  # 14 July
])
async def test_demo_marketing_outside_hours_waits_for_the_next_slot_then_goes_out(
        tmp_path: Path, moment: Moment, start: str, opens: str) -> None:
    rules = load_config(CONF / "demo.toml").rules
    moment.at = paris(start)
    async with running_stack(tmp_path, rules=rules) as (gw, sim), \
            trio.open_nursery() as nursery:
        conn = await _bind(nursery, gw.smpp_port)
        promo = await conn.request(SubmitSm(
            service_type="MKT", source_addr="Promo-Été!!", source_addr_ton=5,
            destination_addr="0612345678", short_message=b"Soldes -50%"))
        alert = await conn.request(SubmitSm(
            source_addr="ACME", source_addr_ton=5, destination_addr="0612345678",
            short_message=b"Code 1234"))
        assert promo.status == 0 and alert.status == 0
        with trio.fail_after(10):
            while not sim.submitted:
                await trio.sleep(0.01)
        assert [decode_text(r.short_message, r.data_coding) for r in sim.submitted] == [
            "Code 1234"]  # the alert at once, the promotion waits
        stored = await gw.store.get_message(promo.message_id)
        assert stored is not None and stored.state is State.SCHEDULED
        assert stored.not_before == paris(opens)
        assert stored.expires_at == paris(opens) + 86400  # validity from the deferred time
        history = [e.detail for e in await gw.store.events_of(stored.id) if e.kind == "rule"]
        assert [(d["rule"], d["outcome"]) for d in history] == [
            ("recipient", "modify"), ("sender", "modify"), ("optout", "accept"),
            ("urls", "accept"), ("mention", "modify"), ("hours", "defer")]
        await conn.unbind()
        nursery.cancel_scope.cancel()
    moment.at = paris(opens) - 0.3  # the gateway starts again just before the slot opens
    async with running_stack(tmp_path, rules=rules) as (gw, sim):
        with trio.fail_after(10):
            while not sim.submitted:
                await trio.sleep(0.01)
        [sent] = sim.submitted
        assert sent.text == "Soldes -50%\nSTOP au 36111"
        assert (sent.source_addr, sent.source_ton, sent.source_npi) == ("PromoEte", 5, 0)
        assert (sent.destination_addr, sent.dest_ton, sent.dest_npi) == ("33612345678", 1, 1)
        with trio.fail_after(10):  # the submit's result is committed after the answer
            while not (parts := await gw.store.get_parts(promo.message_id)) \
                    or parts[0].submitted_at is None:
                await trio.sleep(0.01)
        assert parts[0].submitted_at is not None and parts[0].submitted_at >= paris(opens)


async def test_an_optout_while_deferred_wins_when_the_message_falls_due(
        tmp_path: Path, moment: Moment) -> None:
    rules = load_config(CONF / "demo.toml").rules
    moment.at = paris("2026-12-05T21:30")
    async with running_stack(tmp_path, rules=rules) as (gw, sim), \
            trio.open_nursery() as nursery:
        conn = await _bind(nursery, gw.smpp_port)
        promo = await conn.request(SubmitSm(
            service_type="MKT", source_addr="ACME", source_addr_ton=5,
            destination_addr="33612345678", short_message=b"Soldes", registered_delivery=1))
        assert promo.status == 0
        await sim.inject_mo("33612345678", "36111", "STOP")  # Saturday night
        with trio.fail_after(10):
            while not await gw.store.optouts("demo"):
                await trio.sleep(0.01)
        await conn.unbind()
        nursery.cancel_scope.cancel()
    moment.at = paris("2026-12-07T08:00") - 0.3
    async with running_stack(tmp_path, rules=rules) as (gw, sim), \
            trio.open_nursery() as nursery:
        reports: list[Pdu] = []

        async def collect(conn: Connection, pdu: Pdu) -> None:
            reports.append(pdu)
            conn.respond(pdu.response())

        conn = await _bind(nursery, gw.smpp_port, collect)
        with trio.fail_after(10):
            while not any(r.short_message.startswith(b"id:") for r in reports
                          if isinstance(r, DeliverSm)):
                await trio.sleep(0.01)
        [receipt] = [r for r in reports if isinstance(r, DeliverSm)
                     and r.short_message.startswith(b"id:")]
        assert b"stat:REJECTD" in receipt.short_message
        assert b"err:102" in receipt.short_message  # 0x66, ESME_RX_R_APPN
        final = await gw.store.get_message(promo.message_id)
        assert final is not None and final.state is State.REJECTED and final.error == 0x66
        assert sim.submitted == []  # the promotion never went out
        await conn.unbind()
        nursery.cancel_scope.cancel()
