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
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import trio

from gateway import daemon
from gateway.config import (
    AccountConfig,
    HttpConfig,
    RcsConfig,
    RouterConfig,
    SimulatorConfig,
)
from gateway.rbm_simulator import CAPABLE, FAILING, NOT_CAPABLE, OFFLINE
from gateway.simulator import SmscSimulator
from tests.stack import SmpplibEsme, gateway_config, password_hash, wait_for

AGENT = "smsgw-demo-agent"
PHONE = "33612345678"
WAIT = 1.5  # the account's rcs_wait, seconds


@dataclass
class Omni:
    gw: daemon.Running
    sim: SmscSimulator

    @property
    def rbm(self):  # type: ignore[no-untyped-def]
        assert self.sim.rcs is not None
        return self.sim.rcs.rbm

    def phone(self, state: str, number: str = PHONE) -> None:
        self.rbm.set_state("+" + number, state)

    def sms(self) -> list[tuple[str, str]]:
        """(sender, destination) of each SMS the SMSC took."""
        return [(r.source_addr, r.destination_addr) for r in self.sim.submitted]

    async def send(self, text: bytes = b"Your parcel arrives today") -> SmpplibEsme:
        """Submit one message as account omni (sender SHOP) and wait for its receipt."""
        esme = SmpplibEsme(self.gw.smpp_port, system_id="omni", password="omnipass")

        def session() -> None:
            esme.bind()
            esme.submit(PHONE, text, source_addr="SHOP")
            esme.read_until(lambda: bool(esme.resps) and bool(esme.delivered), timeout=20)

        await trio.to_thread.run_sync(session)
        return esme

    async def history(self, esme: SmpplibEsme) -> list[tuple[str, str | None]]:
        message_id = esme.resps[0].message_id.decode()
        return [(e.kind, e.detail.get("channel"))
                for e in await self.gw.store.events_of(message_id)]


@contextlib.asynccontextmanager
async def omni_stack(tmp_path: Path, **sim: object) -> AsyncIterator[Omni]:
    credentials = tmp_path / "rbm.json"
    credentials.write_text(json.dumps({"client_id": "smsgw", "client_secret": "smsgw-secret"}))
    sim_config = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7, rcs=True,
                                 rcs_port=0, rcs_deliver_delay=0.2, rcs_read_delay=0.2,
                                 **sim)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        simulator = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(simulator.serve)
        base = f"http://127.0.0.1:{simulator.rcs_port}"
        accounts = gateway_config(tmp_path, simulator.port).accounts
        config = gateway_config(
            tmp_path, simulator.port, http=HttpConfig(host="127.0.0.1", port=0),
            accounts={**accounts, "omni": AccountConfig(
                "omni", password_hash("omnipass"), throughput=0, channels=("rcs", "sms"),
                rcs_wait=WAIT)},
            rcs={"rbm": RcsConfig(name="rbm", agent_id=AGENT, credentials_file=credentials,
                                  base_url=base, token_url=base + "/token", sms_sender="ACME",
                                  mo_account="omni", request_timeout=2.0)},
            routers=(RouterConfig(name="omni", type="account", accounts=("omni",),
                                  channels=(("rcs", "rbm"), ("sms", "sim"))),))
        stop = trio.Event()
        gw: daemon.Running = await nursery.start(functools.partial(daemon.run, config, stop.wait))
        assert simulator.rcs is not None and gw.http_port is not None
        simulator.rcs.gateway_listening("127.0.0.1", gw.http_port)
        await wait_for(lambda: all(c.is_up() for c in gw.connectors.values()))
        yield Omni(gw, simulator)
        stop.set()
        nursery.cancel_scope.cancel()


def receipt_stat(esme: SmpplibEsme) -> str:
    text = esme.delivered[0].short_message.decode()
    return text.split("stat:")[1].split()[0]


async def test_an_rcs_capable_phone_gets_rcs_only(tmp_path: Path) -> None:
    async with omni_stack(tmp_path) as omni:
        omni.phone(CAPABLE)
        esme = await omni.send()
        assert receipt_stat(esme) == "DELIVRD" and len(esme.delivered) == 1
        assert omni.sms() == []
        assert [m.phone for m in omni.rbm.messages.values()] == ["+" + PHONE]
        assert ("attempt", "rcs") in await omni.history(esme)


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
