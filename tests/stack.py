"""Test helpers: a gateway daemon wired to the built-in simulator, and smpplib as the ESME.

`running_stack()` starts both in the test's trio run on ephemeral 127.0.0.1 ports;
`SmpplibEsme` drives smpplib's blocking Client (an implementation nobody here wrote).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import smpplib.client
import smpplib.consts
import trio

from gateway import daemon
from gateway.config import (
    AccountConfig,
    GatewayConfig,
    HttpConfig,
    ListenerConfig,
    RetryConfig,
    RouteConfig,
    SimulatorConfig,
    SmscConfig,
    StoreConfig,
)
from gateway.passwords import hash_password
from gateway.simulator import SmscSimulator
from gateway.tokens import hash_token

DEMO_WEBHOOK_SECRET = "demo-webhook-secret-0123456789"


@functools.cache
def password_hash(password: str) -> str:
    return hash_password(password)


def gateway_config(state_dir: Path, sim_port: int, smsc_changes: dict[str, Any] | None = None,
                   extra_smscs: tuple[SmscConfig, ...] = (), **changes: Any) -> GatewayConfig:
    smsc = SmscConfig(name="sim", host="127.0.0.1", port=sim_port, system_id="sim",
                      password="simpass", binds=2, window=50, reconnect_delay=0.05,
                      reconnect_delay_max=0.5, response_timeout=5, receipt_hold=2)
    smsc = dataclasses.replace(smsc, **(smsc_changes or {}))
    config = GatewayConfig(
        source=state_dir / "test.toml",
        listeners=(ListenerConfig(port=0, auth_failure_delay=0.01, bind_timeout=5),),
        accounts={
            "demo": AccountConfig("demo", password_hash("demopass"), mo_addresses=("36111",),
                                  throughput=0, http_tokens=(hash_token("demo-token"),),
                                  webhook_secret=DEMO_WEBHOOK_SECRET),
            "other": AccountConfig("other", password_hash("otherpw"), max_binds=1,
                                   throughput=5, http_tokens=(hash_token("other-token"),)),
        },
        smscs={"sim": smsc, **{extra.name: extra for extra in extra_smscs}},
        routes=(RouteConfig("default", (), ("sim",)),),
        store=StoreConfig(path=state_dir / "smsgw.sqlite3"),
        retry=RetryConfig(initial_delay=0.2, max_delay=1, multiplier=2),
        http=HttpConfig(enabled=False),  # tests that use it pass HttpConfig(port=0)
        simulator=None,
    )
    return dataclasses.replace(config, **changes)


@contextlib.asynccontextmanager
async def running_stack(
    state_dir: Path, sim: SimulatorConfig | None = None,
    smsc_changes: dict[str, Any] | None = None, extra_smscs: tuple[SmscConfig, ...] = (),
    **changes: Any
) -> AsyncIterator[tuple[daemon.Running, SmscSimulator]]:
    sim_config = sim or SimulatorConfig(port=0, control_port=0, receipt_delay=0.05, seed=7)
    async with trio.open_nursery() as nursery:
        simulator = SmscSimulator(sim_config, window=sim_config.window)
        await nursery.start(simulator.serve)
        config = gateway_config(state_dir, simulator.port, smsc_changes, extra_smscs, **changes)
        stop = trio.Event()
        running: daemon.Running = await nursery.start(
            functools.partial(daemon.run, config, stop.wait))
        with trio.fail_after(10):
            while not all(c.is_up() for c in running.connectors.values()):
                await trio.sleep(0.01)
        yield running, simulator
        stop.set()
        nursery.cancel_scope.cancel()


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


class SmpplibEsme:
    """smpplib's blocking Client bound to the gateway; call its methods from a thread."""

    def __init__(self, port: int, system_id: str = "demo", password: str = "demopass",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.client = smpplib.client.Client("127.0.0.1", port, timeout=5,
                                            allow_unknown_opt_params=True,
                                            ssl_context=ssl_context)
        self.resps: list[Any] = []
        self.delivered: list[Any] = []
        self.errors: list[Any] = []
        self.system_id, self.password = system_id, password
        self.client.set_message_sent_handler(lambda pdu, **kw: self.resps.append(pdu))
        self.client.set_message_received_handler(lambda pdu, **kw: self.delivered.append(pdu))
        self.client.set_error_pdu_handler(self.errors.append)

    def bind(self, mode: str = "transceiver") -> None:
        self.client.connect()
        getattr(self.client, f"bind_{mode}")(system_id=self.system_id, password=self.password)

    def submit(self, destination: str, text: bytes, **fields: Any) -> None:
        params: dict[str, Any] = {
            "source_addr_ton": smpplib.consts.SMPP_TON_ALNUM, "source_addr": "ACME",
            "dest_addr_ton": smpplib.consts.SMPP_TON_INTL,
            "dest_addr_npi": smpplib.consts.SMPP_NPI_ISDN,
            "destination_addr": destination, "short_message": text, "registered_delivery": 1,
        }
        params.update(fields)
        self.client.send_message(**params)

    def submit_one(self, destination: str, text: bytes) -> None:
        """Bind, submit one message, read until its submit_sm_resp and a deliver_sm (its
        receipt) are in, unbind. Blocking: run it in a thread."""
        self.bind()
        self.submit(destination, text)
        self.read_until(lambda: bool(self.resps) and bool(self.delivered))
        self.close()

    def read_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            self.client.read_once()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.unbind()
        self.client.disconnect()
