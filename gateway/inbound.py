"""Inbound: what operators send us (deliver_sm / data_sm), sorted into receipts and MO.

Receipts are read from their TLVs (receipted_message_id, message_state) or, failing those,
from the receipt text, and handed to the dispatcher. MO messages go to the account that owns
the number or short code they were sent to. Each PDU is answered once its own effect is
committed (a temporary error if it cannot be, so that the operator sends it again).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import structlog
import trio

from gateway import metrics
from gateway.clock import WallClock
from gateway.dispatcher import Dispatcher
from gateway.model import Event, OptOut, Report, ReportKind, State, new_message_id
from gateway.screening import Screening
from gateway.store import Store, StoreError
from gateway.webhooks import webhook_report
from routing.core import normalise_digits
from routing.smsc import Answer, SmscConnector
from smpp.constants import MessageState, Status, Tag
from smpp.pdu import DataSm, DeliverSm, Pdu, tlv_int, tlv_str
from smpp.receipt import STATE_TO_STAT, parse_receipt
from smpp.text import TextEncodingError, alphabet, decode_text

log = structlog.get_logger("gateway.inbound")

ESM_TYPE_MASK = 0x3C
ESM_RECEIPT = 0x04
ESM_INTERMEDIATE = 0x20
_DIGITS = re.compile(r"[0-9]{1,10}")
_HEX = re.compile(r"[0-9A-Fa-f]{1,8}")


@dataclass(frozen=True, slots=True)
class OperatorReceipt:
    smsc_id: str
    stat: str
    error: int


def _error_code(text_err: str | None, pdu: Pdu) -> int:
    network = pdu.tlvs.get(Tag.NETWORK_ERROR_CODE)
    if network is not None and len(network) == 3:
        return int.from_bytes(network[1:], "big")
    if text_err and _DIGITS.fullmatch(text_err):
        code = int(text_err)
    elif text_err and _HEX.fullmatch(text_err):
        code = int(text_err, 16)
    else:
        return 0
    return code if code <= 0xFFFFFFFF else 0


def read_receipt(pdu: DeliverSm | DataSm) -> OperatorReceipt | None:
    """The receipt a deliver_sm/data_sm carries, or None if it is not one (an MO).

    The TLVs (receipted_message_id, message_state, network_error_code) are preferred; the
    receipt text is parsed only for what they leave unknown.
    """
    tlv_id = tlv_str(pdu, Tag.RECEIPTED_MESSAGE_ID)
    if (pdu.esm_class & ESM_TYPE_MASK) not in (ESM_RECEIPT, ESM_INTERMEDIATE) and tlv_id is None:
        return None
    state = tlv_int(pdu, Tag.MESSAGE_STATE)
    stat = STATE_TO_STAT.get(state) if state is not None else None
    needs_error = stat != "DELIVRD" and Tag.NETWORK_ERROR_CODE not in pdu.tlvs
    parsed = None
    if not tlv_id or stat is None or needs_error:
        text = pdu.short_message if isinstance(pdu, DeliverSm) else b""
        text = text or pdu.tlvs.get(Tag.MESSAGE_PAYLOAD, b"")
        parsed = parse_receipt(text) if text else None
    smsc_id = tlv_id or (parsed.id if parsed else "")
    if stat is None:
        stat = parsed.stat if parsed is not None else STATE_TO_STAT[MessageState.UNKNOWN]
    if (pdu.esm_class & ESM_TYPE_MASK) == ESM_INTERMEDIATE:
        stat = STATE_TO_STAT[MessageState.ENROUTE]  # a progress notification, never final
    return OperatorReceipt(smsc_id, stat, _error_code(parsed.err if parsed else None, pdu))


class Inbound:
    def __init__(self, dispatcher: Dispatcher, store: Store, clock: WallClock,
                 mo_owners: Mapping[str, str], on_report: Callable[[Report], None],
                 screening: Screening | None = None, validity: float = 86400.0,
                 mo_by_webhook: Collection[str] = frozenset()) -> None:
        self.screening = screening  # STOP / START keywords in MO (rules/optout)
        self.validity = validity  # of the STOP confirmations sent back
        self.dispatcher = dispatcher
        self.store = store
        self.clock = clock
        self.mo_owners = {normalise_digits(k): v for k, v in mo_owners.items()}
        self.on_report = on_report
        self.mo_by_webhook = frozenset(mo_by_webhook)  # accounts taking their MO by webhook

    def configure(self, mo_owners: Mapping[str, str], mo_by_webhook: Collection[str],
                  validity: float) -> None:
        """A reload changed the accounts: who owns which MO number, who takes MO by webhook,
        and the validity of STOP confirmations. MO already stored keep their owner."""
        self.mo_owners = {normalise_digits(k): v for k, v in mo_owners.items()}
        self.mo_by_webhook = frozenset(mo_by_webhook)
        self.validity = validity

    async def on_deliver(self, connector: SmscConnector, pdus: list[Pdu], answer: Answer) -> None:
        """Handle deliver_sm/data_sm read together from an operator. Each is answered as soon
        as what it carries is committed: OK, or ESME_RX_T_APPN (a temporary error: the
        operator sends it again) if the store could not take it. A receipt held for matching
        delays only its own answer."""
        receipts: list[tuple[str, str, int, bytes]] = []
        receipt_pdus: list[Pdu] = []
        mos: list[tuple[Report, Pdu]] = []
        unreadable: list[tuple[bytes, Pdu]] = []
        for pdu in pdus:
            assert isinstance(pdu, DeliverSm | DataSm)
            raw = pdu.short_message if isinstance(pdu, DeliverSm) else b""
            receipt = read_receipt(pdu)
            if receipt is None:
                mo = self._mo(connector, pdu)
                if mo is None:
                    answer(pdu, Status.ESME_ROK)  # nobody to tell: resending would not help
                else:
                    mos.append((mo, pdu))
            elif not receipt.smsc_id:
                unreadable.append((raw, pdu))
            else:
                receipts.append((receipt.smsc_id, receipt.stat, receipt.error, raw))
                receipt_pdus.append(pdu)

        def answered(pdu: Pdu, stored: bool) -> None:
            answer(pdu, Status.ESME_ROK if stored else Status.ESME_RX_T_APPN)

        async def apply_receipts() -> None:
            cfg = connector.config
            await self.dispatcher.on_receipts(
                connector.name, receipts, cfg.receipt_hold, cfg.receipt_id_format,
                lambda i, stored: answered(receipt_pdus[i], stored),
                lambda i: answer.defer(receipt_pdus[i]))

        if not mos and not unreadable:  # the usual read: receipts only, no nursery needed
            if receipts:
                await apply_receipts()
            return
        async with trio.open_nursery() as nursery:
            if mos:
                nursery.start_soon(self._store_mos, connector, mos, answered)
            for raw, pdu in unreadable:
                nursery.start_soon(self._store_unreadable, connector, raw, pdu, answered)
            if receipts:
                await apply_receipts()

    async def _store_unreadable(self, connector: SmscConnector, raw: bytes, pdu: Pdu,
                                answered: Callable[[Pdu, bool], None]) -> None:
        """A receipt without a readable id: kept as an orphan (warned, counted)."""
        answered(pdu, await self.dispatcher.record_orphan(connector.name, "", "UNKNOWN", raw))

    async def _store_mos(self, connector: SmscConnector, mos: list[tuple[Report, Pdu]],
                         answered: Callable[[Pdu, bool], None]) -> None:
        """Commit MO reports (with the opt-out list entries of STOP / START replies), answer
        their PDUs, then hand the reports to the reporter."""
        optouts = [entry for report, _ in mos if (entry := self._keyword(report)) is not None]
        try:
            with trio.CancelScope(shield=True):  # committed MO must reach the reporter
                await self.store.add_reports([report for report, _ in mos], optouts)
        except StoreError as exc:
            log.warning("mo.not_stored", smsc=connector.name, count=len(mos), error=str(exc))
            for _, pdu in mos:
                answered(pdu, False)
            return
        for report, pdu in mos:
            answered(pdu, True)
            metrics.MO.labels(report.account).inc()
            log.info("mo.received", account=report.account, smsc=connector.name,
                     report_id=report.id, optout=report.extra.get("optout"))
            self.on_report(report)
        if self.screening is not None and optouts:
            self.screening.optouts_stored(optouts)
            await self._confirm(optouts, [r for r, _ in mos if r.extra.get("optout")])

    def _keyword(self, report: Report) -> OptOut | None:
        """A STOP / START reply: the report is marked (extra "optout": "stop" | "start")
        and the opt-out list entry to store with it is returned."""
        if self.screening is None:
            return None
        if alphabet(report.data_coding) == "binary":
            return None
        try:
            text = decode_text(report.body, report.data_coding)
        except TextEncodingError:
            return None
        found = self.screening.mo_keyword(report.account, report.source_addr,
                                          report.source_ton, text, report.created_at)
        if found is None:
            return None
        kind, entry = found
        report.extra["optout"] = kind
        return entry

    async def _confirm(self, optouts: list[OptOut], reports: list[Report]) -> None:
        """Send the accounts' STOP confirmations (where configured), from the number each
        reply went to."""
        assert self.screening is not None
        now = self.clock.now()
        for entry, report in zip(optouts, reports, strict=True):
            msg = self.screening.confirmation(entry, report.dest_addr, now, self.validity)
            if msg is None:
                continue
            event = Event(msg.id, now, "accepted", State.ACCEPTED, msg.state,
                          {"interface": "rules", "reason": "optout-confirmation"})
            try:
                with trio.CancelScope(shield=True):
                    await self.store.add_messages([msg], [event])
            except StoreError as exc:
                log.warning("optout.confirmation_not_stored", account=entry.account,
                            error=str(exc))
                continue
            log.info("message.accepted", message_id=msg.id, account=msg.account,
                     state=msg.state.value, interface="rules")
            self.dispatcher.enqueue(msg)

    def _mo(self, connector: SmscConnector, pdu: DeliverSm | DataSm) -> Report | None:
        """The report carrying an MO to the account owning its destination, if any."""
        account = self.mo_owners.get(normalise_digits(pdu.destination_addr))
        if account is None:
            # Nobody to tell; refusing would make the SMSC retry it forever.
            log.warning("mo.unowned", smsc=connector.name, to=pdu.destination_addr)
            return None
        body = pdu.short_message if isinstance(pdu, DeliverSm) else b""
        body = body or pdu.tlvs.get(Tag.MESSAGE_PAYLOAD, b"")
        report = Report(
            account=account, kind=ReportKind.MO, message_id=new_message_id(),
            source_addr=pdu.source_addr, source_ton=pdu.source_addr_ton,
            source_npi=pdu.source_addr_npi, dest_addr=pdu.destination_addr,
            dest_ton=pdu.dest_addr_ton, dest_npi=pdu.dest_addr_npi,
            data_coding=pdu.data_coding, body=body, created_at=self.clock.now(),
        )
        return webhook_report(report) if account in self.mo_by_webhook else report
