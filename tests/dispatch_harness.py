"""Test helpers: a dispatcher on the real SQLite store with scripted operator connections.

For virtual-time tests (MockClock with an autojump threshold that lets SQLite's thread work);
`fail_writes` injects store failures (disk full) into the dispatcher's writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from gateway import history
from gateway.clock import WallClock
from gateway.config import RetryConfig, SmscConfig
from gateway.dispatcher import Dispatcher
from gateway.model import Message, Report, State, new_message_id
from gateway.reporter import receipt_report
from gateway.routing_setup import Routing
from gateway.store import PendingWrite, Store, StoreError
from routing.channel import Channel, ProviderReceipt
from routing.core import PrefixRoute, PrefixRouter, Router
from routing.sms import SmsChannel, stat_outcome
from routing.smsc import Answer, DeliverHandler, SmscConnector, Submission, SubmitResult
from smpp.pdu import Pdu, SubmitSm
from smpp.text import encode_text

HOUR = 3600.0
DAY = 24 * HOUR


async def _answer_ok(_c: SmscConnector, pdus: list[Pdu], answer: Answer) -> None:
    for pdu in pdus:
        answer(pdu, 0)


class ScriptedSmsc(SmscConnector):
    """An operator connection whose answers the test decides."""

    def __init__(self, name: str, answer: Callable[[SubmitSm], SubmitResult] | None = None,
                 up: bool = True, on_deliver: DeliverHandler = _answer_ok,
                 **config: Any) -> None:
        super().__init__(SmscConfig(name=name, host="127.0.0.1", port=1, system_id="x",
                                    password="y", **config), on_deliver)
        self.up = up
        self.answer = answer or (lambda pdu: SubmitResult(f"{name}-{len(self.sent)}", 0))
        self.sent: list[tuple[float, SubmitSm]] = []

    def is_up(self) -> bool:
        return self.up

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:  # the real submit queue, no binds
            nursery.start_soon(self._sender)
            task_status.started()

    async def _wait_ready(self) -> bool:
        return self.up

    def _send(self, item: Submission) -> None:
        self.sent.append((trio.current_time(), item.pdu))
        item.done(self.answer(item.pdu))


class Harness:
    def __init__(self, store: Store, dispatcher: Dispatcher, clock: WallClock,
                 reports: list[Report]) -> None:
        self.store, self.dispatcher, self.clock, self.reports = store, dispatcher, clock, reports

    def message(self, text: str = "hello", *, validity: float = DAY,
                registered_delivery: int = 1) -> Message:
        now = self.clock.now()
        dc, body = encode_text(text)
        return Message(id=new_message_id(), account="acme", source_addr="ACME", source_ton=5,
                       source_npi=0, dest_addr="33612345678", dest_ton=1, dest_npi=1,
                       data_coding=dc, esm_class=0, protocol_id=0, priority=0,
                       registered_delivery=registered_delivery, body=body, created_at=now,
                       expires_at=now + validity, not_before=now, next_attempt_at=now)

    async def submit(self, msg: Message) -> None:
        await self.store.add_messages([msg], [history.accepted(msg, "smpp")])
        self.dispatcher.enqueue(msg)

    async def receipts(self, connector: str, receipts: Sequence[tuple[str, str, int, bytes]],
                       answered: Callable[[int, bool], None], *, hold: float,
                       id_format: str = "auto") -> None:
        """Hand the dispatcher operator receipts (smsc_id, stat, error, raw text) as the SMS
        channel reads them."""
        await self.dispatcher.on_receipts(
            connector, [ProviderReceipt(smsc_id, stat_outcome(stat), stat.upper(), error, raw)
                        for smsc_id, stat, error, raw in receipts],
            answered, hold=hold, id_format=id_format)

    async def receipt(self, connector: str, smsc_id: str, stat: str, error: int, *,
                      hold: float, raw: bytes = b"", id_format: str = "auto") -> bool:
        """One operator receipt (see receipts); whether its effect is stored."""
        results: list[bool] = []
        await self.receipts(connector, [(smsc_id, stat, error, raw)],
                            lambda _i, ok: results.append(ok), hold=hold, id_format=id_format)
        [stored] = results
        return stored

    async def wait_final(self, msg_id: str, timeout: float = 2 * DAY) -> Message:
        step = 0.01  # grows: each virtual step costs the autojump threshold in real time
        with trio.fail_after(timeout):
            while msg_id in self.dispatcher.live:
                await trio.sleep(step)
                step = min(step * 2, HOUR)
        stored = await self.store.get_message(msg_id)
        assert stored is not None
        return stored

    async def wait_in_flight(self, msg: Message, sent: Callable[[], int]) -> None:
        """Until the operator has `sent()` submits and the message is in flight."""
        with trio.fail_after(60):
            while not sent() or self.dispatcher.live[msg.id].msg.state is not State.IN_FLIGHT:
                await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def harness(tmp_path: Path, connectors: dict[str, SmscConnector],
                  nursery: trio.Nursery, *, others: Mapping[str, Channel] | None = None,
                  router: Router | None = None, routing: Routing | None = None
                  ) -> AsyncIterator[Harness]:
    """A store on tmp_path/db.sqlite3 (opened again by a second harness: a restart) and a
    running dispatcher over `connectors` (as SMS channels) and the `others` channels, routed
    by `router` (default: every connector, in order), or by `routing` (its router, breakers,
    sender limits, backoff and quality trackers); `nursery` is cancelled when the block
    ends."""
    async with Store.open(tmp_path / "db.sqlite3") as store:
        clock = WallClock()
        reports: list[Report] = []
        router = (routing.router if routing is not None else router) or PrefixRouter(
            [PrefixRoute("default", (), tuple(connectors))])
        channels: dict[str, Channel] = {n: SmsChannel(c) for n, c in connectors.items()}
        channels.update(others or {})
        dispatcher = Dispatcher(store, router, channels,
                                RetryConfig(initial_delay=5, max_delay=300, multiplier=2),
                                clock, reports.append, receipt_of=receipt_report,
                                routing=routing)
        for connector in connectors.values():
            await nursery.start(connector.run)
        await nursery.start(dispatcher.run)
        yield Harness(store, dispatcher, clock, reports)
        nursery.cancel_scope.cancel()


def fail_writes(store: Store, count: float) -> list[int]:
    """Make the next `count` dispatcher writes fail as on a full disk (math.inf: all of
    them). Returns a one-item list counting the refusals so far."""
    real = store.save_messages_nowait
    refusals = [0]

    def disk_full(*args: Any, **kwargs: Any) -> PendingWrite:
        if refusals[0] < count:
            refusals[0] += 1
            raise StoreError("database or disk is full")
        return real(*args, **kwargs)

    store.save_messages_nowait = disk_full  # type: ignore[method-assign]
    return refusals
