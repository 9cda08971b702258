"""Inbound: what providers send us, as the channels hand it over (routing/channel.py).

Receipts go to the dispatcher. MO messages go to the account that owns the number or short
code they were sent to. Each item is answered once its own effect is committed (as not
stored if it cannot be, so that the provider sends it again).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import structlog
import trio

from gateway import metrics
from gateway.clock import WallClock
from gateway.dispatcher import Dispatcher
from gateway.model import Event, OptOut, Report, ReportKind, State, new_message_id
from gateway.screening import Screening
from gateway.store import Store, StoreError
from gateway.webhooks import webhook_report
from routing.channel import Answered, Channel, MobileOriginated, ProviderReceipt
from routing.core import normalise_digits
from smpp.text import TextEncodingError, alphabet, decode_text

log = structlog.get_logger("gateway.inbound")


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

    async def receipts(self, channel: Channel, receipts: Sequence[ProviderReceipt],
                       answered: Answered,
                       parked: Callable[[int], None] | None = None) -> None:
        """ChannelEvents.receipts: the dispatcher applies them."""
        await self.dispatcher.receipts(channel, receipts, answered, parked)

    async def mobile_originated(self, channel: Channel, messages: Sequence[MobileOriginated],
                                answered: Answered) -> None:
        """ChannelEvents.mobile_originated: commit the MO reports of the accounts owning
        their destinations (with the opt-out list entries of STOP / START replies), answer
        each, then hand the reports on. An MO nobody owns is answered at once: resending it
        would not help."""
        mos: list[tuple[Report, int]] = []
        for i, mo in enumerate(messages):
            report = self._mo(channel, mo)
            if report is None:
                answered(i, True)
            else:
                mos.append((report, i))
        if not mos:
            return
        optouts = [entry for report, _ in mos if (entry := self._keyword(report)) is not None]
        try:
            with trio.CancelScope(shield=True):  # committed MO must reach the reporter
                await self.store.add_reports([report for report, _ in mos], optouts)
        except StoreError as exc:
            log.warning("mo.not_stored", smsc=channel.name, count=len(mos), error=str(exc))
            for _, i in mos:
                answered(i, False)
            return
        for report, i in mos:
            answered(i, True)
            metrics.MO.labels(report.account).inc()
            log.info("mo.received", account=report.account, smsc=channel.name,
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

    def _mo(self, channel: Channel, mo: MobileOriginated) -> Report | None:
        """The report carrying an MO to the account owning its destination, if any."""
        account = self.mo_owners.get(normalise_digits(mo.recipient))
        if account is None:
            # Nobody to tell; refusing would make the provider retry it forever.
            log.warning("mo.unowned", smsc=channel.name, to=mo.recipient)
            return None
        report = Report(
            account=account, kind=ReportKind.MO, message_id=new_message_id(),
            source_addr=mo.sender, source_ton=mo.sender_ton, source_npi=mo.sender_npi,
            dest_addr=mo.recipient, dest_ton=mo.recipient_ton, dest_npi=mo.recipient_npi,
            data_coding=mo.data_coding, body=mo.body, created_at=self.clock.now(),
        )
        return webhook_report(report) if account in self.mo_by_webhook else report
