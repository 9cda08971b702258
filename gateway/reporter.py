"""Reporter: delivers what the gateway owes upstream accounts (receipts and MO) as deliver_sm.

Reports are committed before they get here. Each is sent over one of the account's bound
receiver/transceiver sessions (as far as their windows allow; answers come back through
callbacks, no task per report) and deleted from the store only after a deliver_sm_resp OK;
anything refused or unanswered is sent again later, after a reconnect, or after a restart.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable

import structlog
import trio

from gateway import metrics
from gateway.model import Report, ReportKind
from gateway.store import Store, StoreError
from smpp.connection import Connection, ConnectionClosed, Turns, WindowFull
from smpp.constants import Tag
from smpp.pdu import DeliverSm, Pdu, set_tlv_int, set_tlv_str
from smpp.session import SessionError

log = structlog.get_logger("gateway.reporter")

ESM_RECEIPT = 0x04
MAX_SHORT_MESSAGE = 254
RETRY_DELAY = 5.0  # seconds before a report refused or unanswered upstream is offered again
MAX_IN_FLIGHT = 512  # per account; each bind's window limits further
_SMPP_STATE = {"DELIVERED": 2, "EXPIRED": 3, "UNDELIVERABLE": 5, "REJECTED": 8}


def deliver_pdu(report: Report) -> DeliverSm:
    """The deliver_sm carrying a report: receipt text + TLVs, or the MO as received."""
    pdu = DeliverSm(
        source_addr_ton=report.source_ton, source_addr_npi=report.source_npi,
        source_addr=report.source_addr, dest_addr_ton=report.dest_ton,
        dest_addr_npi=report.dest_npi, destination_addr=report.dest_addr,
        data_coding=report.data_coding,
    )
    if len(report.body) > MAX_SHORT_MESSAGE:
        pdu.tlvs[Tag.MESSAGE_PAYLOAD] = report.body  # a long MO
    else:
        pdu.short_message = report.body
    if report.kind is ReportKind.RECEIPT:
        pdu.esm_class = ESM_RECEIPT
        set_tlv_str(pdu, Tag.RECEIPTED_MESSAGE_ID, report.message_id)
        if report.state is not None:
            set_tlv_int(pdu, Tag.MESSAGE_STATE, _SMPP_STATE.get(report.state.value, 7), 1)
    return pdu


class _Account:
    def __init__(self) -> None:
        self.binds: list[Connection] = []
        self.pending: dict[int, Report] = {}
        self.ready: deque[int] = deque()  # pending ids waiting to be sent, oldest first
        self.later: deque[tuple[float, int]] = deque()  # (trio time, id) to offer again
        self.in_flight = 0
        self.wake = trio.Event()
        self.turns = Turns()  # which bind sends next

    def kick(self) -> None:
        self.wake.set()


class Reporter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._accounts: dict[str, _Account] = {}
        self._nursery: trio.Nursery | None = None
        self._to_ack: list[int] = []  # delivered upstream, deletion not yet committed
        self._ack_wake = trio.Event()

    def _account(self, name: str) -> _Account:
        acc = self._accounts.get(name)
        if acc is None:
            acc = self._accounts[name] = _Account()
            if self._nursery is not None:
                self._nursery.start_soon(self._serve_account, name, acc)
        return acc

    # -- inputs -------------------------------------------------------------------------------
    def add(self, report: Report) -> None:
        """Take a committed report (it has its store id)."""
        assert report.id is not None
        acc = self._account(report.account)
        if report.id not in acc.pending:
            acc.pending[report.id] = report
            acc.ready.append(report.id)
            acc.wake.set()

    def add_many(self, reports: Iterable[Report]) -> None:
        for report in reports:
            self.add(report)

    def bind_added(self, account: str, conn: Connection) -> None:
        acc = self._account(account)
        acc.binds.append(conn)
        conn.on_slot_freed = acc.kick
        acc.wake.set()

    def bind_removed(self, account: str, conn: Connection) -> None:
        acc = self._account(account)
        if conn in acc.binds:
            acc.binds.remove(conn)

    def pending_count(self, account: str) -> int:
        acc = self._accounts.get(account)
        return len(acc.pending) if acc else 0

    # -- delivery -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name in await self.store.accounts_with_pending_reports():
                self.add_many(await self.store.pending_reports(name, limit=1_000_000))
            nursery.start_soon(self._ack_loop)
            task_status.started()
            await trio.sleep_forever()  # keeps the nursery open for accounts seen later

    async def _serve_account(self, name: str, acc: _Account) -> None:
        while True:
            acc.wake = trio.Event()
            now = trio.current_time()
            while acc.later and acc.later[0][0] <= now:
                acc.ready.append(acc.later.popleft()[1])
            while acc.ready and acc.in_flight < MAX_IN_FLIGHT:
                conn = acc.turns.pick(acc.binds)
                if conn is None:
                    break  # no bind, or every window full: woken by a bind or an answer
                report = acc.pending.get(acc.ready.popleft())
                if report is not None:
                    self._send(name, acc, report, conn)
            if acc.later:
                with trio.move_on_at(acc.later[0][0]):
                    await acc.wake.wait()
            else:
                await acc.wake.wait()

    def _send(self, name: str, acc: _Account, report: Report, conn: Connection) -> None:
        assert report.id is not None
        try:
            conn.send_request(deliver_pdu(report),
                              functools.partial(self._answered, name, acc, report))
        except (ConnectionClosed, SessionError, WindowFull):
            acc.ready.appendleft(report.id)  # this bind is going: another one takes it
            return
        except Exception:  # e.g. a report that cannot be encoded: never end the account loop
            log.exception("report.send_failed", account=name, message_id=report.message_id)
            acc.later.append((trio.current_time() + RETRY_DELAY, report.id))
            return
        acc.in_flight += 1

    def _answered(self, name: str, acc: _Account, report: Report, resp: Pdu | None,
                  error: Exception | None) -> None:
        assert report.id is not None
        acc.in_flight -= 1
        acc.kick()
        if resp is not None and resp.status == 0:
            # Forgotten here at once; deleted from the store by the next ack batch. A crash
            # before that commit sends it again after the restart (at least once).
            acc.pending.pop(report.id, None)
            self._to_ack.append(report.id)
            self._ack_wake.set()
            metrics.child(metrics.REPORTS_SENT, name, report.kind.value).inc()
            log.info("report.delivered", account=name, message_id=report.message_id,
                     kind=report.kind.value)
            return
        if resp is not None:
            log.info("report.refused", account=name, message_id=report.message_id,
                     status=f"0x{resp.status:08X}")
        else:
            log.info("report.unanswered", account=name, message_id=report.message_id,
                     error=repr(error))
        acc.later.append((trio.current_time() + RETRY_DELAY, report.id))

    async def _ack_loop(self) -> None:
        """Delete delivered reports from the store, many per commit."""
        while True:
            await self._ack_wake.wait()
            self._ack_wake = trio.Event()
            ids, self._to_ack = self._to_ack, []
            if not ids:
                continue
            try:
                await self.store.ack_reports(ids)
            except StoreError:
                log.exception("report.ack_failed", reports=len(ids))
                self._to_ack.extend(ids)  # try again; at worst they are re-sent after restart
                await trio.sleep(RETRY_DELAY)
                self._ack_wake.set()

