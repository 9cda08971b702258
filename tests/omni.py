"""Test helpers: the gateway with an account "omni" that prefers RCS with SMS fallback and
allows voice, the built-in simulator as RBM platform, voice provider (HTTP) and SMSC (SMPP)
on 127.0.0.1 (its pushes and call statuses carrying the tokens the gateway requires, as in
conf/demo.toml), and smpplib as omni's upstream ESME (tests/test_rcs_failover.py,
tests/test_tts_e2e.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from gateway import daemon
from gateway.config import (
    AccountConfig,
    HttpConfig,
    RcsConfig,
    RouterConfig,
    SimulatorConfig,
)
from gateway.rbm_simulator import RbmSimulator
from gateway.simulator import SmscSimulator
from routing.tts import HttpTemplate, StatusFormat, VoiceSettings
from rules.settings import parse_rules
from tests.procs import free_port
from tests.stack import SmpplibEsme, gateway_config, password_hash, wait_for

AGENT = "smsgw-demo-agent"
PUSH_TOKEN = "omni-rcs-push-token"  # the agent's push_token; the simulator pushes with it
CALLBACK_TOKEN = "omni-voice-callback-token"  # the voice connector's callback_token
PHONE = "33612345678"
WAIT = 1.5  # the account's rcs_wait, seconds


@dataclass
class Omni:
    gw: daemon.Running
    sim: SmscSimulator

    @property
    def rbm(self) -> RbmSimulator:
        assert self.sim.rcs is not None
        return self.sim.rcs.rbm

    def phone(self, state: str, number: str = PHONE) -> None:
        self.rbm.set_state("+" + number, state)

    def sms(self) -> list[tuple[str, str]]:
        """(sender, destination) of each SMS the SMSC took."""
        return [(r.source_addr, r.destination_addr) for r in self.sim.submitted]

    async def send(self, text: bytes = b"Your parcel arrives today", to: str = PHONE,
                   **fields: Any) -> SmpplibEsme:
        """Submit one message as account omni (sender SHOP) and wait for its receipt."""
        esme = SmpplibEsme(self.gw.smpp_port, system_id="omni", password="omnipass")

        def session() -> None:
            esme.bind()
            esme.submit(to, text, source_addr="SHOP", **fields)
            esme.read_until(lambda: bool(esme.resps) and bool(esme.delivered), timeout=20)

        await trio.to_thread.run_sync(session)
        return esme

    async def history(self, esme: SmpplibEsme) -> list[tuple[str, str | None]]:
        message_id = esme.resps[0].message_id.decode()
        return [(e.kind, e.detail.get("channel"))
                for e in await self.gw.store.events_of(message_id)]


def voice_settings(sim_port: int, http_port: int) -> VoiceSettings:
    """The gateway's [[voice]] connector for the simulator's voice provider under /voice."""
    base = f"http://127.0.0.1:{sim_port}/voice"
    return VoiceSettings(
        name="voice",
        place=HttpTemplate(url=base + "/v1/calls", body={
            "to": "{to_e164}", "from": "{from}", "ring_timeout": "{timeout}",
            "tts": {"text": "{text}", "language": "{language}", "voice": "{voice}"},
            "status_callback": "{callback_url}", "client_ref": "{message_id}"}),
        cancel=HttpTemplate(url=base + "/v1/calls/{call_id}", method="DELETE"),
        call_id_field="call.id",
        status=StatusFormat(id_field="call.id", status_field="call.status",
                            error_field="error.code"),
        callback_url=f"http://127.0.0.1:{http_port}/v1/voice/status/{{connector}}"
                     "?token={callback_token}",
        callback_token=CALLBACK_TOKEN,
        caller_id="+33100000000", voices={"fr": "Celine"}, request_timeout=5)


@contextlib.asynccontextmanager
async def omni_stack(tmp_path: Path, *, rules: dict[str, Any] | None = None,
                     channels: tuple[str, ...] = ("rcs", "sms"), **sim: Any
                     ) -> AsyncIterator[Omni]:
    """omni: channels rcs then sms (rcs_wait WAIT), voice allowed, language fr-FR; routers:
    French fixed lines -> tts:voice, then rcs:rbm -> sms:sim; `rules`: omni's [rules]."""
    credentials = tmp_path / "rbm.json"
    credentials.write_text(json.dumps({"client_id": "smsgw", "client_secret": "smsgw-secret"}))
    settings: dict[str, Any] = {"rcs_deliver_delay": 0.2, "rcs_read_delay": 0.2,
                                "voice_answer_delay": 0.2, "voice_talk_time": 0.2, **sim}
    sim_config = SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7, rcs=True,
                                 rcs_port=0, rcs_push_token=PUSH_TOKEN, **settings)
    async with trio.open_nursery() as nursery:
        simulator = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(simulator.serve)
        assert simulator.rcs_port is not None
        base = f"http://127.0.0.1:{simulator.rcs_port}"
        http_port = free_port()
        accounts = gateway_config(tmp_path, simulator.port).accounts
        config = gateway_config(
            tmp_path, simulator.port, http=HttpConfig(host="127.0.0.1", port=http_port),
            accounts={**accounts, "omni": AccountConfig(
                "omni", password_hash("omnipass"), throughput=0, channels=channels,
                rcs_wait=WAIT, voice=True, language="fr-FR")},
            rcs={"rbm": RcsConfig(name="rbm", agent_id=AGENT, credentials_file=credentials,
                                  base_url=base, token_url=base + "/token", sms_sender="ACME",
                                  mo_account="omni", request_timeout=2.0,
                                  push_token=PUSH_TOKEN)},
            voice={"voice": voice_settings(simulator.rcs_port, http_port)},
            routers=(RouterConfig(name="fixed-lines", type="destination", accounts=("omni",),
                                  countries=("FR",), number_types=("fixed_line",),
                                  channels=(("tts", "voice"),)),
                     RouterConfig(name="omni", type="account", accounts=("omni",),
                                  channels=(("rcs", "rbm"), ("sms", "sim")))),
            **({"rules": parse_rules(rules, ["demo", "other", "omni"])} if rules else {}))
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
