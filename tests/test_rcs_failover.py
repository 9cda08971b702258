"""RCS first with SMS fallback, never both, end to end: smpplib as the upstream ESME of an
account that prefers RCS; the built-in simulator as the RBM platform (HTTP) and the SMSC
(SMPP) on 127.0.0.1; the gateway's POST /v1/rcs/events takes the platform's pushes.

Rules protected: an RCS-capable phone gets RCS only; a phone without RCS gets SMS only; a
failing RCS send falls back to SMS; SMS fallbacks go out under the sender mapped to the
agent; an RCS message not delivered within the account's wait is revoked, then sent as SMS;
a revoke that finds it delivered sends no SMS; a delivered event after the fallback gives no
second receipt. Every message gets exactly one receipt upstream.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import trio

from gateway.rbm_simulator import CAPABLE, FAILING, NOT_CAPABLE, OFFLINE, SILENT
from tests.omni import PHONE, omni_stack, receipt_stat
from tests.stack import SmpplibEsme, wait_for


async def test_an_rcs_capable_phone_gets_rcs_only(tmp_path: Path) -> None:
    async with omni_stack(tmp_path) as omni:
        omni.phone(CAPABLE)
        esme = await omni.send()
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        assert omni.sms() == []
        assert [m.phone for m in omni.rbm.messages.values()] == ["+" + PHONE]
        assert ("attempt", "rcs") in await omni.history(esme)
        # the RCS billing class is recorded for the CDR (a short text: "basic")
        page = await omni.gw.store.cdr_page(0.0, 2e9)
        assert [(r["channel"], r["billing"]) for r in page.records] == [("rcs", "basic")]


async def test_a_phone_without_rcs_gets_sms_only_under_the_agents_sender(
        tmp_path: Path) -> None:
    async with omni_stack(tmp_path) as omni:
        omni.phone(NOT_CAPABLE)
        esme = await omni.send()
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        assert omni.sms() == [("ACME", PHONE)]
        assert omni.rbm.messages == {}  # not sent: the capability check said no
        kinds = await omni.history(esme)
        assert kinds.index(("not_capable", None)) < kinds.index(("attempt", "sms"))


async def test_a_failing_rcs_send_falls_back_to_sms_under_the_agents_sender(
        tmp_path: Path) -> None:
    async with omni_stack(tmp_path) as omni:
        omni.phone(FAILING)
        esme = await omni.send()
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        assert omni.sms() == [("ACME", PHONE)]


async def test_rcs_not_delivered_within_the_wait_is_revoked_then_sent_as_sms(
        tmp_path: Path) -> None:
    async with omni_stack(tmp_path) as omni:
        omni.phone(OFFLINE)
        with trio.fail_after(20):
            esme = await omni.send()
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        assert omni.sms() == [("ACME", PHONE)]
        (held,) = omni.rbm.messages.values()
        assert held.state == "REVOKED"  # it will never reach the phone: no duplicate
        # RBM was given little more than the wait as the message's ttl, not the validity: a
        # revoke that failed would leave nothing for long
        assert held.expires_at < trio.current_time() + 31
        omni.phone(CAPABLE)  # back online: nothing is delivered any more
        await trio.sleep(0.5)
        assert held.state == "REVOKED"


async def test_a_revoke_that_finds_the_message_delivered_sends_no_sms(tmp_path: Path) -> None:
    async with omni_stack(tmp_path) as omni:
        omni.phone(CAPABLE)
        omni.rbm.config.webhook_url = "http://127.0.0.1:9/lost"  # its events never arrive
        esme = await omni.send()
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        assert omni.sms() == []
        (sent,) = omni.rbm.messages.values()
        assert sent.state == "DELIVERED"


async def test_an_unanswered_rcs_send_that_reached_the_phone_sends_no_sms(
        tmp_path: Path) -> None:
    """The platform takes the message and delivers it, but its answer to the send is lost:
    the channel's revoke finds it delivered (404), so the send counts as taken, its
    DELIVERED event completes the message, and no SMS goes."""
    async with omni_stack(tmp_path) as omni:
        omni.phone(SILENT)
        esme = SmpplibEsme(omni.gw.smpp_port, system_id="omni", password="omnipass")
        await trio.to_thread.run_sync(esme.bind)
        await trio.to_thread.run_sync(
            functools.partial(esme.submit, PHONE, b"hello", source_addr="SHOP"))
        await wait_for(lambda: bool(omni.rbm.messages))
        omni.phone(CAPABLE)  # delivered now; the send's answer never comes
        await trio.to_thread.run_sync(
            functools.partial(esme.read_until, lambda: bool(esme.delivered), 20))
        assert receipt_stat(esme) == "DELIVRD"
        (sent,) = omni.rbm.messages.values()
        assert sent.state == "DELIVERED"
        assert omni.sms() == [] and len(esme.delivered) == 1  # a fallback's SMS goes first
        esme.client.disconnect()


async def test_a_delivered_event_after_the_sms_fallback_gives_no_second_receipt(
        tmp_path: Path) -> None:
    """The revoke fails (the platform is failing for the phone), so the SMS goes (the
    duplicate risk is recorded); the RCS message then reaches the phone and its delivered
    event arrives: recorded, but the upstream has had its one receipt."""
    async with omni_stack(tmp_path) as omni:
        omni.phone(OFFLINE)
        esme = SmpplibEsme(omni.gw.smpp_port, system_id="omni", password="omnipass")
        await trio.to_thread.run_sync(esme.bind)
        await trio.to_thread.run_sync(
            functools.partial(esme.submit, PHONE, b"hello", source_addr="SHOP"))
        await wait_for(lambda: bool(omni.rbm.messages))
        omni.phone(FAILING)  # the revoke at the end of the wait gets 503
        await trio.to_thread.run_sync(
            functools.partial(esme.read_until, lambda: bool(esme.delivered), 20))
        assert omni.sms() == [("ACME", PHONE)]
        message_id = esme.resps[0].message_id.decode()
        (timeout,) = [e for e in await omni.gw.store.events_of(message_id)
                      if e.kind == "timeout"]
        assert timeout.detail["revoked"] == ["failed"] and "duplicate_risk" in timeout.detail
        pushed = len(omni.rbm.pushed)
        omni.phone(CAPABLE)  # the held RCS message is delivered now: a late event
        await wait_for(lambda: len(omni.rbm.pushed) > pushed)

        def no_second_receipt() -> None:
            with contextlib.suppress(TimeoutError, OSError):
                esme.read_until(lambda: len(esme.delivered) > 1, timeout=1.5)

        await trio.to_thread.run_sync(no_second_receipt)
        assert len(esme.delivered) == 1
        late = [(e.detail["connector"], e.detail["word"])
                for e in await omni.gw.store.events_of(message_id) if e.kind == "late_receipt"]
        assert ("rbm", "DELIVERED") in late
        esme.client.disconnect()


async def test_an_rcs_only_message_never_delivered_expires_at_its_deadline_with_one_receipt(
        tmp_path: Path) -> None:
    """Validity drives every channel: an account without SMS fallback, a phone that stays
    offline: RBM is given the time left as the message's ttl, and at the deadline the
    message is EXPIRED with one receipt upstream."""
    async with omni_stack(tmp_path, channels=("rcs",)) as omni:
        omni.phone(OFFLINE)
        with trio.fail_after(20):
            esme = await omni.send(validity_period="000000000004000R")  # 4 s, relative
        assert receipt_stat(esme) == "EXPIRED" and len(esme.delivered) == 1
        (held,) = omni.rbm.messages.values()
        assert held.expires_at < trio.current_time() + 1.0  # its ttl was the validity left
        assert omni.sms() == []


async def test_an_rcs_user_reply_reaches_the_agents_account_as_mo(tmp_path: Path) -> None:
    """A phone writes to the agent: the reply becomes an MO for the agent's mo_account,
    addressed to its sms_sender (like an SMS reply to a short code)."""
    async with omni_stack(tmp_path) as omni:
        esme = SmpplibEsme(omni.gw.smpp_port, system_id="omni", password="omnipass")
        await trio.to_thread.run_sync(esme.bind)
        await omni.rbm.push(omni.rbm.user_message("+" + PHONE, "Merci !"))

        def read_mo() -> None:
            esme.read_until(lambda: bool(esme.delivered), timeout=10)

        await trio.to_thread.run_sync(read_mo)
        (mo,) = esme.delivered
        assert mo.source_addr.decode() == PHONE and mo.destination_addr.decode() == "ACME"
        assert mo.short_message == b"Merci !"
        esme.client.disconnect()


async def test_a_message_rcs_cannot_carry_goes_as_sms(tmp_path: Path) -> None:
    """A part the upstream segmented itself (UDH) has no text RCS could send: the plan's
    SMS attempt takes it, under the agent's sender; its history says why."""
    async with omni_stack(tmp_path) as omni:
        omni.phone(CAPABLE)
        udh = bytes([5, 0, 3, 0x42, 2, 1])  # concatenated message 0x42, part 1 of 2
        esme = await omni.send(udh + b"first half", esm_class=0x40)
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        assert omni.sms() == [("ACME", PHONE)] and omni.rbm.messages == {}
        assert ("unsendable", None) in await omni.history(esme)


async def test_after_an_sms_attempt_started_rcs_is_never_tried_again(tmp_path: Path) -> None:
    """RCS times out and is revoked, the SMS goes, the SMSC drops the connection with it
    unanswered: the next attempt is SMS again, never a second RCS message (never both)."""
    async with omni_stack(tmp_path, disconnect=1.0) as omni:
        omni.phone(OFFLINE)
        with trio.fail_after(30):
            esme = await omni.send(validity_period="000000000008000R")  # 8 s, relative
        assert receipt_stat(esme) == "EXPIRED" and len(esme.delivered) == 1
        assert len(omni.rbm.messages) == 1  # one RCS message, revoked
        assert omni.sim.stats.disconnects >= 2  # SMS tried again, and again
        attempts = [c for k, c in await omni.history(esme) if k == "attempt"]
        assert attempts[0] == "rcs" and set(attempts[1:]) == {"sms"}, attempts
