"""The built-in SMSC simulator: the operator the demo and the tests talk to.

It accepts SMPP binds, answers submit_sm/data_sm/submit_multi (with injectable failures), sends
delivery receipts and MO messages as deliver_sm, and serves a small HTTP control interface.
`peer = "independent"` makes it write each PDU in a send of its own, as a real SMSC may.
With `rcs = true` it also plays an RBM platform and a voice provider (RcsSimulator).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import random
import signal
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, get_args
from urllib.parse import urlencode

import httpx
import hypercorn.trio
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from gateway.config import MessageIdFormat, ReceiptIdBase, SimulatorConfig
from gateway.rbm_simulator import RbmSimConfig, RbmSimulator
from gateway.voice_simulator import VoiceSimulator
from smpp import tls
from smpp.connection import Connection, ConnectionClosed, ResponseTimeout, Turns, WindowFull
from smpp.constants import (
    ESM_DELIVERY_RECEIPT,
    ESM_UDHI,
    REG_RECEIPT_FAILURE,
    REG_RECEIPT_MASK,
    REG_RECEIPT_NONE,
    CommandId,
    MessageState,
    Status,
    Tag,
    status_name,
)
from smpp.pdu import (
    Bind,
    CancelSm,
    DataSm,
    DeliverSm,
    Pdu,
    QuerySm,
    ReplaceSm,
    SmeDest,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    set_tlv_int,
    tlv_int,
)
from smpp.receipt import Receipt, format_receipt
from smpp.session import BindState, SessionError, Side
from smpp.text import TextEncodingError, alphabet, decode_text, encode_text, parse_udh

__all__ = [
    "ControlError",
    "RcsSimulator",
    "SimulatorStats",
    "SmscSimulator",
    "SubmitRecord",
    "main_simulate",
    "post_mo",
]

log = structlog.get_logger("gateway.simulator")

Stat = Literal["DELIVRD", "UNDELIV", "EXPIRED"]
Outcome = Literal["DELIVRD", "UNDELIV", "EXPIRED", "NONE"]

# Receipt details per outcome: (message_state TLV octet, err field of the receipt text).
_OUTCOME_DETAILS: dict[str, tuple[bytes, str]] = {
    "DELIVRD": (bytes((MessageState.DELIVERED,)), "000"),
    "UNDELIV": (bytes((MessageState.UNDELIVERABLE,)), "001"),
    "EXPIRED": (bytes((MessageState.EXPIRED,)), "000"),
}
_RECEIPT_SHARES = ("delivered", "undeliverable", "expired", "no_receipt")
_SUBMIT_SHARES = ("throttle", "error", "slow", "disconnect")
_DELAYS = ("receipt_delay", "slow_delay")
_SHARE_EPSILON = 1e-6
_MAX_SMPP_ADDR = 20  # source_addr / destination_addr: C-octet string of at most 21 octets
# Requests read together from one socket are answered in one pass (no task per PDU).
_SUBMIT_COMMANDS = frozenset({CommandId.SUBMIT_SM, CommandId.DATA_SM, CommandId.SUBMIT_MULTI})
_COMMAND_NAMES = {cid: cid.name.lower() for cid in _SUBMIT_COMMANDS}  # SubmitRecord.command


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SubmitRecord:
    """One accepted submission, as the simulator saw it (tests and the control API read it).

    ``short_message`` holds the octets as received (UDH included), or the message_payload TLV
    when short_message was empty. ``concat`` comes from the UDH, ``sar`` from the SAR TLVs:
    both are (reference, total, sequence). ``outcome`` is the receipt outcome drawn for it.
    """

    message_id: str
    command: str
    system_id: str
    source_addr: str
    destination_addr: str
    data_coding: int
    esm_class: int
    registered_delivery: int
    short_message: bytes
    concat: tuple[int, int, int] | None
    sar: tuple[int, int, int] | None
    validity_period: str
    schedule_delivery_time: str
    received_at: float  # wall clock, seconds since the epoch
    outcome: Outcome
    destinations: tuple[str, ...] = ()  # submit_multi: every SME destination
    source_ton: int = 0
    source_npi: int = 0
    dest_ton: int = 0  # submit_multi: the first SME destination's
    dest_npi: int = 0

    @property
    def body(self) -> bytes:
        """The message octets without the User Data Header."""
        if self.esm_class & ESM_UDHI:
            try:
                return parse_udh(self.short_message)[1]
            except TextEncodingError:
                return self.short_message
        return self.short_message

    @property
    def text(self) -> str | None:
        """The message as text, or None for binary data codings."""
        if alphabet(self.data_coding) == "binary":
            return None
        return decode_text(self.body, self.data_coding)

    def to_json(self) -> dict[str, Any]:
        def triple(value: tuple[int, int, int] | None) -> dict[str, int] | None:
            if value is None:
                return None
            return {"ref": value[0], "total": value[1], "seq": value[2]}

        return {
            "message_id": self.message_id,
            "command": self.command,
            "system_id": self.system_id,
            "source_addr": self.source_addr,
            "source_addr_ton": self.source_ton,
            "source_addr_npi": self.source_npi,
            "destination_addr": self.destination_addr,
            "dest_addr_ton": self.dest_ton,
            "dest_addr_npi": self.dest_npi,
            "destinations": list(self.destinations),
            "data_coding": self.data_coding,
            "esm_class": self.esm_class,
            "registered_delivery": self.registered_delivery,
            "text": self.text,
            "short_message_hex": self.short_message.hex(),
            "concat": triple(self.concat),
            "sar": triple(self.sar),
            "validity_period": self.validity_period,
            "schedule_delivery_time": self.schedule_delivery_time,
            "received_at": datetime.fromtimestamp(self.received_at, UTC).isoformat(),
            "outcome": self.outcome,
        }


@dataclass(slots=True)
class SimulatorStats:
    """Running totals since the simulator started."""

    binds: int = 0
    bind_failures: int = 0
    submits: int = 0  # submit_sm / data_sm / submit_multi received while bound
    accepted: int = 0
    throttled: int = 0
    errors: int = 0
    disconnects: int = 0
    slow: int = 0
    receipts_scheduled: int = 0
    receipts_sent: int = 0  # acknowledged with deliver_sm_resp status 0
    deliver_retried: int = 0  # deliver_sm (receipt or MO) nacked or timed out, sent again
    deliver_abandoned: int = 0  # given up after max_attempts
    mo_injected: int = 0
    mo_sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # drawn for accepted messages
    receipts_by_state: Counter[str] = field(default_factory=Counter)  # acknowledged ones


@dataclass(slots=True)
class _Outbound:
    """A deliver_sm waiting to reach a bound receiver: a receipt or an MO message."""

    pdu: DeliverSm
    kind: Literal["receipt", "mo"]
    stat: str = ""
    attempts: int = 0


class ControlError(Exception):
    """The simulator's control interface refused a request (or could not be reached)."""


class _BadRequest(Exception):
    """A control request with bad JSON or bad fields; becomes a 400 problem+json."""


# --------------------------------------------------------------------------- simulator


class SmscSimulator:
    """An SMSC that listens for SMPP binds and serves an HTTP control interface.

    Run ``serve()`` in a nursery (``await nursery.start(sim.serve)``); ``port`` and
    ``control_port`` are the bound ports once it has started, ``rcs_port`` too when the
    config has ``rcs = true`` (``rcs`` is then the RBM platform and voice provider).
    """

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        max_records: int = 100_000,
        window: int | None = None,
        delivery_timeout: float = 10.0,
        retry_delay: float = 2.0,
        max_attempts: int = 10,
        enquire_link_interval: float = 30.0,
    ) -> None:
        self.config = config
        self.port = config.port
        self.control_port = config.control_port
        self.rcs: RcsSimulator | None = RcsSimulator(config) if config.rcs else None
        self.rcs_port: int | None = config.rcs_port if config.rcs else None
        self.max_records = max_records
        self.window = config.window if window is None else window  # deliver_sm per receiver
        self.delivery_timeout = delivery_timeout
        self.retry_delay = retry_delay
        self.max_attempts = max_attempts
        self.enquire_link_interval = enquire_link_interval
        self.submitted: list[SubmitRecord] = []
        self.stats = SimulatorStats()
        self._by_id: dict[str, SubmitRecord] = {}
        self._rng = random.Random(config.seed)
        self._next_number = self._rng.randrange(0x10000000, 0x80000000)
        self._outbox: deque[_Outbound] = deque()  # due now, waiting for a receiver's window
        self._receivers: list[Connection] = []  # bound receivers (RX, TRX), in bind order
        self._turns = Turns()  # which receiver gets the next deliver_sm
        self._timers: list[tuple[float, int, _Outbound]] = []
        self._timer_seq = 0
        self._timer_wake = trio.Event()
        self._connections: set[Connection] = set()
        self._conn_seq = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen for SMPP and control HTTP; ``started()`` once both are listening."""
        cfg = self.config
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
            if cfg.port == 0:  # a name with several addresses got one port each: keep one
                for extra in listeners[1:]:
                    await extra.aclose()
                listeners = listeners[:1]
            self.port = listeners[0].socket.getsockname()[1]
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                context = tls.server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca,
                                             cfg.tls_min_version)
                secured = [trio.SSLListener(lst, context) for lst in listeners]
                nursery.start_soon(trio.serve_listeners, self._serve_stream, secured)
            else:
                nursery.start_soon(trio.serve_listeners, self._serve_stream, listeners)
            app: Any = self.control_app()  # hypercorn's ASGI type is narrower than Starlette's
            binds: list[str] = await nursery.start(
                partial(hypercorn.trio.serve, app, self._hypercorn_config())
            )
            self.control_port = int(binds[0].rsplit(":", 1)[1])
            if self.rcs is not None:
                self.rcs_port = await nursery.start(self.rcs.serve)
            nursery.start_soon(self._timer_loop)
            log.info("simulator.listening", host=cfg.host, port=self.port,
                     tls=cfg.tls_cert is not None,
                     control_host=cfg.control_host, control_port=self.control_port,
                     rcs_host=cfg.rcs_host if cfg.rcs else None, rcs_port=self.rcs_port)
            task_status.started()

    def _hypercorn_config(self) -> HypercornConfig:
        hc = HypercornConfig()
        host = self.config.control_host
        hc.bind = [f"[{host}]:{self.config.control_port}" if ":" in host
                   else f"{host}:{self.config.control_port}"]
        hc.accesslog = None
        hc.loglevel = "WARNING"
        hc.graceful_timeout = 1.0
        return hc

    @property
    def queued(self) -> int:
        """deliver_sm waiting for a receiver (due now) or for their delay (later)."""
        return len(self._outbox) + len(self._timers)

    def bound_sessions(self) -> list[Connection]:
        return [c for c in self._connections if c.session.bound and not c.closed]

    # -- SMPP side ---------------------------------------------------------------------------
    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        self._conn_seq += 1
        conn = Connection(
            stream,
            Side.SMSC,
            window=self.window,
            response_timeout=self.delivery_timeout,
            enquire_link_interval=self.enquire_link_interval,
            name=f"sim-{self._conn_seq}",
            # An independent peer writes every submit_sm_resp and every receipt (as it falls
            # due) in a send of its own: no batching courtesy for the gateway.
            coalesce=self.config.peer != "independent",
        )
        self._connections.add(conn)
        try:
            async with trio.open_nursery() as nursery:
                conn.extra["nursery"] = nursery  # slow answers outlive the read they came in
                await conn.run(self._on_request, batch_handler=self._on_submits,
                               batch_commands=_SUBMIT_COMMANDS)
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("simulator.connection_failed", conn=conn.name)
        finally:
            self._connections.discard(conn)
            if conn in self._receivers:
                self._receivers.remove(conn)
            log.debug("simulator.disconnected", conn=conn.name)

    async def _on_request(self, conn: Connection, pdu: Pdu) -> None:
        try:
            if isinstance(pdu, Bind):
                await self._on_bind(conn, pdu)
            elif isinstance(pdu, SubmitSm | DataSm | SubmitMulti):
                await self._on_submits(conn, [pdu])
            elif isinstance(pdu, QuerySm):
                conn.respond(pdu.response(status=Status.ESME_RQUERYFAIL))
            elif isinstance(pdu, CancelSm):
                conn.respond(pdu.response(status=Status.ESME_RCANCELFAIL))
            elif isinstance(pdu, ReplaceSm):
                conn.respond(pdu.response(status=Status.ESME_RREPLACEFAIL))
            else:
                conn.respond(pdu.response(status=Status.ESME_RINVCMDID))
        except Exception:
            log.exception("simulator.request_failed", conn=conn.name,
                          command=pdu.command_id.name)

    async def _on_bind(self, conn: Connection, pdu: Bind) -> None:
        cfg = self.config
        if pdu.system_id != cfg.system_id:
            status = Status.ESME_RINVSYSID
        elif pdu.password != cfg.password:
            status = Status.ESME_RINVPASWD
        else:
            status = Status.ESME_ROK
        resp = pdu.response(status=status, system_id=cfg.system_id)
        if pdu.interface_version >= 0x34:
            set_tlv_int(resp, Tag.SC_INTERFACE_VERSION, 0x34)
        conn.respond(resp)
        if status != Status.ESME_ROK:
            self.stats.bind_failures += 1
            log.info("simulator.bind_refused", conn=conn.name, system_id=pdu.system_id,
                     status=status.name)
            await conn.flush()
            await conn.aclose()
            return
        self.stats.binds += 1
        conn.extra["system_id"] = pdu.system_id
        log.info("simulator.bound", conn=conn.name, command=pdu.command_id.name,
                 state=conn.state.value)
        if conn.state in (BindState.BOUND_RX, BindState.BOUND_TRX) and not conn.closed:
            self._receivers.append(conn)
            self._feed()

    async def _on_submits(self, conn: Connection, pdus: list[Pdu]) -> None:
        """Answer the submit_sm / data_sm / submit_multi of one socket read, in order.

        Each gets its own failure and outcome draws. A slow one is answered by a task of its
        own after slow_delay; a disconnect closes the connection and the rest of the read is
        dropped unanswered, as if it had never arrived.
        """
        cfg = self.config
        stats = self.stats
        rng = self._rng
        received_at = time.time()
        for pdu in pdus:
            try:
                assert isinstance(pdu, SubmitSm | DataSm | SubmitMulti)
                stats.submits += 1
                draw = rng.random()
                outcome = self._draw_outcome()
                if draw < cfg.throttle:
                    stats.throttled += 1
                    conn.respond(pdu.response(status=Status.ESME_RTHROTTLED))
                    continue
                draw -= cfg.throttle
                if draw < cfg.error:
                    stats.errors += 1
                    conn.respond(pdu.response(status=Status.ESME_RSYSERR))
                    continue
                draw -= cfg.error
                if draw < cfg.disconnect:
                    stats.disconnects += 1
                    log.info("simulator.disconnect_injected", conn=conn.name)
                    await conn.aclose()
                    return
                draw -= cfg.disconnect
                if draw < cfg.slow:
                    stats.slow += 1
                    nursery: trio.Nursery = conn.extra["nursery"]
                    nursery.start_soon(self._accept_slowly, conn, pdu, outcome, received_at)
                    continue
                self._accept(conn, pdu, outcome, received_at)
            except Exception:
                log.exception("simulator.request_failed", conn=conn.name,
                              command=pdu.command_id.name)

    async def _accept_slowly(self, conn: Connection, pdu: SubmitSm | DataSm | SubmitMulti,
                             outcome: Outcome, received_at: float) -> None:
        await trio.sleep(self.config.slow_delay)
        if conn.closed:
            return
        try:
            self._accept(conn, pdu, outcome, received_at)
        except Exception:
            log.exception("simulator.request_failed", conn=conn.name,
                          command=pdu.command_id.name)

    def _accept(self, conn: Connection, pdu: SubmitSm | DataSm | SubmitMulti,
                outcome: Outcome, received_at: float) -> None:
        record = self._record(conn, pdu, outcome, received_at)
        if isinstance(pdu, SubmitMulti):
            conn.respond(SubmitMultiResp(pdu.sequence, 0, message_id=record.message_id))
        else:
            conn.respond(pdu.response(message_id=record.message_id))
        self.stats.accepted += 1
        self.stats.outcomes[outcome] += 1
        self._schedule_receipts(record, pdu)

    def _draw_outcome(self) -> Outcome:
        """Receipt outcome: each failure takes its share, DELIVRD is what they leave."""
        cfg = self.config
        draw = self._rng.random()
        failures: tuple[tuple[float, Outcome], ...] = (
            (cfg.undeliverable, "UNDELIV"), (cfg.expired, "EXPIRED"), (cfg.no_receipt, "NONE"))
        for share, outcome in failures:
            if draw < share:
                return outcome
            draw -= share
        return "DELIVRD"

    def _new_message_id(self) -> str:
        number = self._next_number
        self._next_number += 1
        if self.config.message_id_format == "decimal":
            return str(number)
        return f"{number:08x}"

    def _receipt_id(self, message_id: str) -> str:
        """The id as the receipts write it: as answered, or in the other base (receipt_id_base
        "other": a hex id in decimal, a decimal id in hex, as some SMSCs do)."""
        if self.config.receipt_id_base == "same":
            return message_id
        if self.config.message_id_format == "decimal":
            return format(int(message_id), "x")
        return str(int(message_id, 16))

    def _record(self, conn: Connection, pdu: SubmitSm | DataSm | SubmitMulti,
                outcome: Outcome, received_at: float) -> SubmitRecord:
        message = getattr(pdu, "short_message", b"") or pdu.tlvs.get(Tag.MESSAGE_PAYLOAD, b"")
        concat: tuple[int, int, int] | None = None
        if pdu.esm_class & ESM_UDHI:
            try:
                concat = parse_udh(message)[0]
            except TextEncodingError:
                concat = None
        sar: tuple[int, int, int] | None = None
        if pdu.tlvs:
            ref = tlv_int(pdu, Tag.SAR_MSG_REF_NUM)
            total = tlv_int(pdu, Tag.SAR_TOTAL_SEGMENTS)
            seq = tlv_int(pdu, Tag.SAR_SEGMENT_SEQNUM)
            if ref is not None and total is not None and seq is not None:
                sar = (ref, total, seq)
        if isinstance(pdu, SubmitMulti):
            smes = [d for d in pdu.dests if isinstance(d, SmeDest)]
            destinations = tuple(d.addr for d in smes)
            destination = destinations[0] if destinations else ""
            dest_ton, dest_npi = (smes[0].ton, smes[0].npi) if smes else (0, 0)
        else:
            destinations = ()
            destination = pdu.destination_addr
            dest_ton, dest_npi = pdu.dest_addr_ton, pdu.dest_addr_npi
        record = SubmitRecord(
            message_id=self._new_message_id(),
            command=_COMMAND_NAMES[pdu.command_id],
            system_id=str(conn.extra.get("system_id", "")),
            source_addr=pdu.source_addr,
            destination_addr=destination,
            data_coding=pdu.data_coding,
            esm_class=pdu.esm_class,
            registered_delivery=pdu.registered_delivery,
            short_message=bytes(message),
            concat=concat,
            sar=sar,
            validity_period=getattr(pdu, "validity_period", ""),
            schedule_delivery_time=getattr(pdu, "schedule_delivery_time", ""),
            received_at=received_at,
            outcome=outcome,
            destinations=destinations,
            source_ton=pdu.source_addr_ton,
            source_npi=pdu.source_addr_npi,
            dest_ton=dest_ton,
            dest_npi=dest_npi,
        )
        self.submitted.append(record)
        self._by_id[record.message_id] = record
        slack = max(1, self.max_records // 10)
        if len(self.submitted) > self.max_records + slack:
            excess = len(self.submitted) - self.max_records
            for old in self.submitted[:excess]:
                if self._by_id.get(old.message_id) is old:
                    del self._by_id[old.message_id]
            del self.submitted[:excess]
        return record

    # -- receipts and MO ---------------------------------------------------------------------
    def _schedule_receipts(
        self, record: SubmitRecord, pdu: SubmitSm | DataSm | SubmitMulti
    ) -> None:
        asked = pdu.registered_delivery & REG_RECEIPT_MASK
        if asked == REG_RECEIPT_NONE or record.outcome == "NONE":
            return
        if asked == REG_RECEIPT_FAILURE and record.outcome == "DELIVRD":
            return
        if isinstance(pdu, SubmitMulti):
            targets = [(d.ton, d.npi, d.addr) for d in pdu.dests if isinstance(d, SmeDest)]
        else:
            targets = [(pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr)]
        delay = self.config.receipt_delay
        state, err = _OUTCOME_DETAILS[record.outcome]
        receipt_id = self._receipt_id(record.message_id)
        text = format_receipt(Receipt(
            id=receipt_id,
            sub=1,
            dlvrd=1 if record.outcome == "DELIVRD" else 0,
            submit_date=datetime.fromtimestamp(record.received_at, UTC),
            done_date=datetime.fromtimestamp(record.received_at + delay, UTC),
            stat=record.outcome,
            err=err,
            text=record.text or "",
        ))
        tlv_id = receipt_id.encode("latin-1") + b"\0"  # C-octet string
        for ton, npi, addr in targets:
            receipt = DeliverSm(
                source_addr_ton=ton,
                source_addr_npi=npi,
                source_addr=addr,
                dest_addr_ton=pdu.source_addr_ton,
                dest_addr_npi=pdu.source_addr_npi,
                destination_addr=pdu.source_addr,
                esm_class=ESM_DELIVERY_RECEIPT,
                data_coding=0,
                short_message=text,
                tlvs={Tag.RECEIPTED_MESSAGE_ID: tlv_id, Tag.MESSAGE_STATE: state},
            )
            self.stats.receipts_scheduled += 1
            self._schedule(_Outbound(receipt, "receipt", stat=record.outcome), delay)

    async def inject_mo(self, source_addr: str, destination_addr: str, text: str) -> None:
        """Queue a mobile-originated message (deliver_sm, esm_class 0) for a bound receiver.

        GSM 7-bit (data_coding 0) when the text allows it, else UCS-2 (8); a body longer than
        254 octets travels in message_payload. ValueError for an address SMPP cannot carry.
        """
        src_ton, src_npi, source = _address(source_addr, "from")
        dst_ton, dst_npi, dest = _address(destination_addr, "to")
        data_coding, body = encode_text(text)
        if len(body) > _MAX_PAYLOAD:
            raise ValueError(f"text: {len(body)} octets encoded, at most {_MAX_PAYLOAD}")
        pdu = DeliverSm(
            source_addr_ton=src_ton,
            source_addr_npi=src_npi,
            source_addr=source,
            dest_addr_ton=dst_ton,
            dest_addr_npi=dst_npi,
            destination_addr=dest,
            esm_class=0,
            data_coding=data_coding,
        )
        if len(body) <= 254:
            pdu.short_message = body
        else:
            pdu.tlvs[Tag.MESSAGE_PAYLOAD] = body
        self.stats.mo_injected += 1
        log.info("simulator.mo_queued", data_coding=data_coding, octets=len(body))
        self._outbox.append(_Outbound(pdu, "mo"))
        self._feed()
        await trio.lowlevel.checkpoint()

    def _schedule(self, item: _Outbound, delay: float) -> None:
        if delay <= 0:
            self._outbox.append(item)
            self._feed()
            return
        self._timer_seq += 1
        entry = (trio.current_time() + delay, self._timer_seq, item)
        heapq.heappush(self._timers, entry)
        if self._timers[0] is entry:  # the timer loop sleeps until the earliest one only
            self._timer_wake.set()

    async def _timer_loop(self) -> None:
        """Move delayed deliver_sm (receipts after receipt_delay, retries) to the outbox."""
        timers = self._timers
        while True:
            now = trio.current_time()
            if timers and timers[0][0] <= now:
                while timers and timers[0][0] <= now:
                    self._outbox.append(heapq.heappop(timers)[2])
                self._feed()
            self._timer_wake = trio.Event()
            deadline = timers[0][0] if timers else math.inf
            with trio.move_on_at(deadline):
                await self._timer_wake.wait()

    def _feed(self) -> None:
        """Send due deliver_sm to the bound receivers while one has a free window slot.

        The receivers take turns (round-robin), whichever session submitted the message. No
        task per deliver_sm: each one's response (or timeout, or the connection closing) comes
        back to _delivered, which feeds the freed slot again.
        """
        outbox = self._outbox
        receivers = self._receivers
        while outbox and receivers:
            conn = self._turns.pick(receivers)
            if conn is None:
                return  # every receiver's window is full: their responses feed us again
            item = outbox.popleft()
            try:
                conn.send_request(item.pdu, partial(self._delivered, conn, item),
                                  self.delivery_timeout)
            except (ConnectionClosed, SessionError, WindowFull) as exc:
                outbox.appendleft(item)  # not sent: stays first in line, for another receiver
                if isinstance(exc, WindowFull):
                    return
                receivers.remove(conn)
            except Exception:  # e.g. a PDU that cannot be encoded: no receiver will take it
                self.stats.deliver_abandoned += 1
                log.exception("simulator.deliver_failed", conn=conn.name, kind=item.kind)

    def _delivered(self, conn: Connection, item: _Outbound, resp: Pdu | None,
                   error: Exception | None) -> None:
        """A deliver_sm's fate: acknowledged, nacked or timed out (retried later), or its
        connection went away (back to the outbox for the next receiver)."""
        if resp is None:
            if isinstance(error, ResponseTimeout):
                self._retry(item, "timeout")
            else:  # ConnectionClosed: not the receiver's fault, the next session takes it
                self._outbox.append(item)
        elif resp.status != Status.ESME_ROK:
            self._retry(item, status_name(resp.status))
        else:
            if item.kind == "receipt":
                self.stats.receipts_sent += 1
                self.stats.receipts_by_state[item.stat] += 1
            else:
                self.stats.mo_sent += 1
            log.debug("simulator.delivered", conn=conn.name, kind=item.kind, stat=item.stat)
        self._feed()

    def _retry(self, item: _Outbound, reason: str) -> None:
        item.attempts += 1
        if item.attempts >= self.max_attempts:
            self.stats.deliver_abandoned += 1
            log.warning("simulator.deliver_abandoned", kind=item.kind, reason=reason,
                        attempts=item.attempts)
            return
        self.stats.deliver_retried += 1
        log.info("simulator.deliver_retry", kind=item.kind, reason=reason,
                 attempts=item.attempts)
        self._schedule(item, self.retry_delay * item.attempts)

    # -- run-time configuration --------------------------------------------------------------
    def apply_config(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """Change shares, delays, id formats or seed at run time; ValueError when invalid.

        Same rules as the config file: shares in 0..1; receipt outcome shares sum to 1, with
        ``delivered`` taking what the others leave when it is not given; submit failure shares
        sum to at most 1. Nothing changes unless everything is valid.
        """
        if not isinstance(changes, Mapping) or not changes:
            raise ValueError("expected a JSON object with the settings to change")
        unknown = sorted(set(changes) - set(_CHANGEABLE))
        if unknown:
            raise ValueError(f"cannot change {', '.join(map(str, unknown))}; "
                             f"changeable: {', '.join(_CHANGEABLE)}")
        values: dict[str, Any] = {}
        for key in _RECEIPT_SHARES + _SUBMIT_SHARES:
            if key in changes:
                values[key] = _number(key, changes[key], high=1.0)
        for key in _DELAYS:
            if key in changes:
                values[key] = _number(key, changes[key], high=math.inf)
        for key, choices in _CHOICES.items():
            if key in changes:
                if changes[key] not in choices:
                    raise ValueError(f"{key}: expected {' or '.join(map(json.dumps, choices))}, "
                                     f"got {changes[key]!r}")
                values[key] = changes[key]
        if "seed" in changes:
            seed = changes["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError(f"seed: expected an integer or null, got {seed!r}")
            values["seed"] = seed
        new = dataclasses.replace(self.config, **values)
        others = new.undeliverable + new.expired + new.no_receipt
        if "delivered" in changes:
            if abs(new.delivered + others - 1.0) > _SHARE_EPSILON:
                raise ValueError(
                    "delivered: receipt outcome shares must sum to 1: delivered + undeliverable"
                    f" + expired + no_receipt = {new.delivered + others:g} (leave delivered out"
                    " to make it the rest)")
        else:
            if others > 1.0 + _SHARE_EPSILON:
                raise ValueError("undeliverable + expired + no_receipt must be at most 1, got "
                                 f"{others:g}")
            new = dataclasses.replace(new, delivered=max(0.0, 1.0 - others))
        failures = new.throttle + new.error + new.slow + new.disconnect
        if failures > 1.0 + _SHARE_EPSILON:
            raise ValueError("throttle + error + slow + disconnect must be at most 1, got "
                             f"{failures:g}")
        self.config = new
        if "seed" in values:
            self._rng.seed(values["seed"])
        log.info("simulator.config_changed", **values)
        return new

    def config_json(self) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {key: getattr(cfg, key) for key in _CHANGEABLE}
        out.update(host=cfg.host, port=self.port, system_id=cfg.system_id,
                   control_host=cfg.control_host, control_port=self.control_port)
        if self.rcs_port is not None:
            out.update(rcs_host=cfg.rcs_host, rcs_port=self.rcs_port)
        return out

    def stats_json(self) -> dict[str, Any]:
        s = self.stats
        out: dict[str, Any] = {
            f.name: getattr(s, f.name) for f in dataclasses.fields(s)
            if f.name not in ("outcomes", "receipts_by_state")
        }
        out["outcomes"] = {k: s.outcomes.get(k, 0) for k in ("DELIVRD", "UNDELIV", "EXPIRED",
                                                              "NONE")}
        out["receipts_by_state"] = {k: s.receipts_by_state.get(k, 0)
                                    for k in ("DELIVRD", "UNDELIV", "EXPIRED")}
        out["queued"] = self.queued
        out["bound_sessions"] = len(self.bound_sessions())
        out["records"] = len(self.submitted)
        return out

    # -- control HTTP interface --------------------------------------------------------------
    def control_app(self) -> Starlette:
        """The Starlette app of the control interface (served by serve())."""
        return Starlette(routes=[
            Route("/stats", self._http_stats, methods=["GET"]),
            Route("/messages", self._http_messages, methods=["GET"]),
            Route("/messages/{message_id}", self._http_message, methods=["GET"]),
            Route("/mo", self._http_mo, methods=["POST"]),
            Route("/config", self._http_get_config, methods=["GET"]),
            Route("/config", self._http_post_config, methods=["POST"]),
        ])

    async def _http_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats_json())

    async def _http_messages(self, request: Request) -> Response:
        raw = request.query_params.get("limit", "100")
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= self.max_records:
            return _problem(400, f"limit: expected an integer from 1 to {self.max_records}, "
                                 f"got {raw!r}")
        records = self.submitted[-limit:]
        return JSONResponse({"count": len(records), "messages": [r.to_json() for r in records]})

    async def _http_message(self, request: Request) -> Response:
        message_id = request.path_params["message_id"]
        record = self._by_id.get(message_id)
        if record is None:
            return _problem(404, f"no submitted message with id {message_id!r}")
        return JSONResponse(record.to_json())

    async def _http_mo(self, request: Request) -> Response:
        try:
            data = await _json_object(request)
            fields = {}
            for key in ("from", "to", "text"):
                value = data.get(key)
                if not isinstance(value, str):
                    raise ValueError(f"{key}: expected a string, got {value!r}")
                fields[key] = value
            extra = sorted(set(data) - {"from", "to", "text"})
            if extra:
                raise ValueError(f"unknown fields: {', '.join(extra)}")
            await self.inject_mo(fields["from"], fields["to"], fields["text"])
        except (ValueError, TextEncodingError) as exc:
            return _problem(400, str(exc))
        return JSONResponse({"status": "queued"}, status_code=202)

    async def _http_get_config(self, request: Request) -> Response:
        return JSONResponse(self.config_json())

    async def _http_post_config(self, request: Request) -> Response:
        try:
            self.apply_config(await _json_object(request))
        except ValueError as exc:
            return _problem(400, str(exc))
        return JSONResponse(self.config_json())


# --------------------------------------------------------------------------- helpers

_CHOICES = {"message_id_format": get_args(MessageIdFormat),
            "receipt_id_base": get_args(ReceiptIdBase)}
_CHANGEABLE = (*_RECEIPT_SHARES, *_SUBMIT_SHARES, *_DELAYS, *_CHOICES, "seed")
_MAX_PAYLOAD = 64_000


def _number(key: str, value: object, *, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= high:
        bounds = "from 0 to 1" if high == 1.0 else "of at least 0"
        raise ValueError(f"{key}: expected a finite number {bounds}, got {value!r}")
    return number


def _address(addr: str, name: str) -> tuple[int, int, str]:
    """(ton, npi, address) for an MO address: international number, short code or alphanumeric."""
    value = addr.strip()
    digits = value[1:] if value.startswith("+") else value
    if not value or len(digits) > _MAX_SMPP_ADDR:
        raise ValueError(f"{name}: expected an address of 1 to {_MAX_SMPP_ADDR} characters, "
                         f"got {addr!r}")
    if digits.isascii() and digits.isdigit():
        if value.startswith("+") or len(digits) > 8:
            return 1, 1, digits  # international, E.164
        return 0, 1, digits  # short code / national: unknown TON, ISDN plan
    if not value.isascii() or not value.isprintable():
        raise ValueError(f"{name}: expected printable ASCII, got {addr!r}")
    return 5, 0, value  # alphanumeric


async def _json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    return data


def _problem(status: int, detail: str) -> Response:
    titles = {400: "Bad Request", 404: "Not Found"}
    return JSONResponse(
        {"type": "about:blank", "title": titles.get(status, "Error"), "status": status,
         "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


# --------------------------------------------------------------------------- RBM and voice


def events_url(host: str, port: int) -> str:
    """The gateway's RBM push URL (POST /v1/rcs/events) on its HTTP listener host:port; a
    wildcard host is reached on 127.0.0.1."""
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/v1/rcs/events"


class RcsSimulator:
    """The RBM platform (gateway.rbm_simulator: its API, /token and /control/... at the root)
    and the voice provider (gateway.voice_simulator, mounted at /voice) on one HTTP listener,
    set up from the [simulator] rcs_* and voice_* keys. ``port`` is the bound port once
    ``serve()`` has started. Its pushes go to ``rcs_webhook_url``, or when that is not set to
    the URL given to ``gateway_listening()`` (the daemon's own listener); none before."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        first, *others = config.rcs_agent_ids
        self.rbm = RbmSimulator(RbmSimConfig(
            host=config.rcs_host, port=config.rcs_port, agent_id=first,
            other_agent_ids=tuple(others), webhook_url=None,
            client_id=config.rcs_client_id, client_secret=config.rcs_client_secret,
            deliver_delay=config.rcs_deliver_delay, read_delay=config.rcs_read_delay,
            default_state=config.rcs_default_state,
            phones={phone: str(state) for phone, state in config.rcs_phones.items()}))
        self.voice = VoiceSimulator(answer_delay=config.voice_answer_delay,
                                    talk_time=config.voice_talk_time,
                                    default=config.voice_default, token=config.voice_token)
        self.voice.numbers.update(config.voice_numbers)
        self.port = config.rcs_port
        if config.rcs_webhook_url is not None:
            self._push_to(config.rcs_webhook_url)

    @property
    def webhook_url(self) -> str | None:
        """Where the RBM events are pushed (with the push token), None: nowhere yet."""
        return self.rbm.config.webhook_url

    def gateway_listening(self, host: str, port: int) -> None:
        """The gateway's HTTP listener is up at host:port: push there, unless the config
        names another rcs_webhook_url."""
        if self.config.rcs_webhook_url is None:
            self._push_to(events_url(host, port))

    def _push_to(self, url: str) -> None:
        token = self.config.rcs_push_token
        if token is not None:
            url += ("&" if "?" in url else "?") + urlencode({"token": token})
        self.rbm.config.webhook_url = url

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Run both simulators and serve them; started() with the port."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.voice.run)
            self.port = await nursery.start(
                partial(self.rbm.serve, extra=[Mount("/voice", app=self.voice.app)]))
            task_status.started(self.port)


# --------------------------------------------------------------------------- CLI helpers


async def main_simulate(config: SimulatorConfig) -> None:
    """Run the simulator until SIGINT or SIGTERM (``smsgw simulate-smsc``)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            sim = SmscSimulator(config)
            await nursery.start(sim.serve)
            log.info("simulator.ready", host=config.host, port=sim.port,
                     control_host=config.control_host, control_port=sim.control_port,
                     system_id=config.system_id, rcs_port=sim.rcs_port,
                     rcs_events=sim.rcs.webhook_url if sim.rcs is not None else None)
            async for signum in signals:
                log.info("simulator.stopping", signal=signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()


def post_mo(control_url: str, source: str, dest: str, text: str) -> None:
    """Ask a running simulator to inject an MO message (``smsgw simulate-smsc mo``).

    Raises ControlError with the simulator's explanation when it refuses or is unreachable.
    """
    url = control_url.rstrip("/") + "/mo"
    try:
        response = httpx.post(url, json={"from": source, "to": dest, "text": text}, timeout=10.0)
    except httpx.HTTPError as exc:
        raise ControlError(f"{url}: {exc}") from exc
    if response.status_code != 202:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ControlError(f"{url}: HTTP {response.status_code}: {detail}")
