"""The SMS channel: the Channel protocol over one SMSC connection group (routing/smsc.py).

It owns what is SMPP about sending a message: segmentation, the submit_sm PDUs and their
TON/NPI policy, mapping submit_sm_resp to SendResults, and reading the SMSC's deliver_sm /
data_sm into channel-neutral ProviderReceipts and MobileOriginated for the core's events.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from gateway.model import Message, PartState
from routing.channel import (
    SMS,
    Answered,
    Channel,
    ChannelEvents,
    MobileOriginated,
    ProviderReceipt,
    Revoked,
    SendDone,
    SendResult,
    Unit,
    Unsendable,
)
from routing.smsc import Answer, SmscConnector, SubmitResult
from smpp.constants import MessageState, Status, Tag
from smpp.pdu import DataSm, DeliverSm, Pdu, SubmitSm, set_tlv_int, tlv_int, tlv_str
from smpp.receipt import STATE_TO_STAT, id_variants, parse_receipt
from smpp.text import Segment, TextEncodingError, split

log = structlog.get_logger("routing.sms")

ESM_UDHI = 0x40
ESM_MODE_MASK = 0x03  # messaging mode bits kept from the upstream's esm_class
ESM_TYPE_MASK = 0x3C
ESM_RECEIPT = 0x04
ESM_INTERMEDIATE = 0x20
_DIGITS = re.compile(r"[0-9]{1,10}")
_HEX = re.compile(r"[0-9A-Fa-f]{1,8}")

# An SMSC receipt's stat word -> the part's outcome; None: intermediate, no change. A word not
# listed is an outcome all the same: UNDELIVERABLE.
STAT_TO_PART: dict[str, PartState | None] = {
    "DELIVRD": PartState.DELIVERED,
    "UNDELIV": PartState.UNDELIVERABLE,
    "EXPIRED": PartState.EXPIRED,
    "DELETED": PartState.UNDELIVERABLE,
    "REJECTD": PartState.REJECTED,
    "UNKNOWN": PartState.UNDELIVERABLE,
    "ACCEPTD": None,
    "ENROUTE": None,
}


def stat_outcome(stat: str) -> PartState | None:
    """The part outcome a receipt's stat word means (unknown words: UNDELIVERABLE)."""
    return STAT_TO_PART.get(stat.upper(), PartState.UNDELIVERABLE)


# -- receipt ids ---------------------------------------------------------------------------------
def norm_id(smsc_id: str) -> str:
    """An SMSC message id as compared: no padding, lower case, no leading zeros."""
    return smsc_id.strip("\x00 \t\r\n").lower().lstrip("0") or "0"


def receipt_keys(smsc_id: str, id_format: str = "auto") -> list[str]:
    """The normalised ids under which a receipt's id may match a submit_sm_resp's id.

    id_format (per SMSC): "as-is" exact; "hex": the receipt shows in hex the decimal id the
    submit_sm_resp gave; "decimal": the receipt shows in decimal a hex id; "auto": any of these.
    """
    given = smsc_id.strip("\x00 \t\r\n")
    try:
        if id_format == "as-is":
            keys = [given]
        elif id_format == "hex":
            keys = [given, str(int(given, 16))]
        elif id_format == "decimal":
            keys = [given, format(int(given, 10), "x")]
        else:
            keys = id_variants(given)
    except ValueError:
        keys = [given]
    return list(dict.fromkeys(norm_id(k) for k in keys))


# -- reading what the SMSC delivers --------------------------------------------------------------
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
    read = _read(pdu)
    return None if read is None else OperatorReceipt(*read)


def _read(pdu: DeliverSm | DataSm) -> tuple[str, str, int] | None:
    """read_receipt's (smsc_id, stat, error), without the OperatorReceipt around them."""
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
    return smsc_id, stat, _error_code(parsed.err if parsed else None, pdu)


def provider_receipt(pdu: DeliverSm | DataSm) -> ProviderReceipt | None:
    """The channel-neutral receipt a deliver_sm/data_sm carries (provider_id "" when it names
    no id: an orphan), or None for an MO."""
    read = _read(pdu)
    if read is None:
        return None
    smsc_id, stat, error = read
    raw = pdu.short_message if isinstance(pdu, DeliverSm) else b""
    word = stat.upper()
    return ProviderReceipt(smsc_id, STAT_TO_PART.get(word, PartState.UNDELIVERABLE), word,
                           error, raw)


def mobile_originated(pdu: DeliverSm | DataSm) -> MobileOriginated:
    body = pdu.short_message if isinstance(pdu, DeliverSm) else b""
    body = body or pdu.tlvs.get(Tag.MESSAGE_PAYLOAD, b"")
    return MobileOriginated(
        sender=pdu.source_addr, recipient=pdu.destination_addr, body=body,
        data_coding=pdu.data_coding, sender_ton=pdu.source_addr_ton,
        sender_npi=pdu.source_addr_npi, recipient_ton=pdu.dest_addr_ton,
        recipient_npi=pdu.dest_addr_npi)


Parked = Callable[[int], None]


class SmsEvents(ChannelEvents, Protocol):
    """ChannelEvents, where a receipt batch may also say which receipt starts waiting for its
    submit_sm_resp (parked(i)): the SMS channel then stops counting that deliver_sm in its
    bind's incoming window, so the resp it waits for can still be read."""

    async def receipts(self, channel: Channel, receipts: Sequence[ProviderReceipt],
                       answered: Answered, parked: Parked | None = None) -> None: ...


def send_result(result: SubmitResult) -> SendResult:
    """The SendResult a submit_sm's result is: itself (a SubmitResult is one, its
    provider_id the SMSC's id), so the connector's results reach `done` as they are."""
    return result


class SmsChannel:
    """The Channel over one SMSC connection group. Revoke is UNSUPPORTED: the connector does
    not send cancel_sm (an SMSC's cancel_sm answer does not say whether the SMS reached the
    phone, so it could not tell REVOKED from DELIVERED anyway)."""

    kind = SMS

    def __init__(self, connector: SmscConnector, events: SmsEvents | None = None) -> None:
        self.connector = connector
        self.config = connector.config
        self.name = connector.name
        self.events = events
        if events is not None:
            connector.on_deliver = self.on_deliver
        # receipt matching (the dispatcher asks): how long a receipt waits for its
        # submit_sm_resp, and how this SMSC may spell its ids in receipts
        self.receipt_hold = self.config.receipt_hold
        self.receipt_id_format = self.config.receipt_id_format

    # -- state ----------------------------------------------------------------------------------
    def is_up(self) -> bool:
        return self.connector.is_up()

    @property
    def capacity(self) -> int:
        return self.connector.capacity

    async def wait_changed(self) -> None:
        await self.connector.wait_changed()

    # -- sending --------------------------------------------------------------------------------
    def prepare(self, message: Message) -> Sequence[Unit]:
        """The message's segments on this SMSC (its segmentation method and UDH reference
        size); Unsendable (ESME_RINVMSGLEN) when it cannot be cut for it."""
        try:
            segments = self._segments(message)
        except TextEncodingError as exc:  # e.g. more than 255 parts for this SMSC
            raise Unsendable(Status.ESME_RINVMSGLEN, str(exc)) from exc
        if len(segments) == 1:  # the usual message
            return [Unit(1, segments[0])]
        return [Unit(n, segment) for n, segment in enumerate(segments, 1)]

    def _segments(self, msg: Message) -> list[Segment]:
        if msg.esm_class & ESM_UDHI:  # already segmented upstream: one part, as submitted
            return [Segment(msg.body, True, None, len(msg.body) > 254)]
        cfg = self.config
        # Derived from the id, so parts resent after a restart carry the same reference; from
        # all of it (its first digits are the time, shared by the messages of a minute; a
        # submit_multi destination's id is the first one's with ":2", ":3"... after it).
        ref = zlib.crc32(msg.id.encode()) % (0xFFFE if cfg.udh_ref16 else 0xFE) + 1
        return split(msg.body, msg.data_coding, method=cfg.segmentation, ref=ref,
                     ref16=cfg.udh_ref16)

    def submit_pdu(self, msg: Message, segment: Segment) -> SubmitSm:
        """The submit_sm for one segment: the SMSC's TON/NPI where configured, else the
        upstream's (the connector sets validity_period from the deadline when it sends)."""
        cfg = self.config
        pdu = SubmitSm(
            source_addr_ton=msg.source_ton if cfg.source_ton is None else cfg.source_ton,
            source_addr_npi=msg.source_npi if cfg.source_npi is None else cfg.source_npi,
            source_addr=msg.source_addr,
            dest_addr_ton=msg.dest_ton if cfg.dest_ton is None else cfg.dest_ton,
            dest_addr_npi=msg.dest_npi if cfg.dest_npi is None else cfg.dest_npi,
            destination_addr=msg.dest_addr.lstrip("+"),
            esm_class=(msg.esm_class & ESM_MODE_MASK) | (ESM_UDHI if segment.udhi else 0),
            protocol_id=msg.protocol_id, priority_flag=msg.priority,
            registered_delivery=1,  # always: receipts drive the message's final state
            data_coding=msg.data_coding,
        )
        if segment.payload:
            pdu.tlvs[Tag.MESSAGE_PAYLOAD] = segment.short_message
        else:
            pdu.short_message = segment.short_message
        if segment.sar is not None:
            ref, total, seq = segment.sar
            set_tlv_int(pdu, Tag.SAR_MSG_REF_NUM, ref, 2)
            set_tlv_int(pdu, Tag.SAR_TOTAL_SEGMENTS, total, 1)
            set_tlv_int(pdu, Tag.SAR_SEGMENT_SEQNUM, seq, 1)
        return pdu

    def submit_nowait(self, message: Message, unit: Unit, deadline: float,
                      done: SendDone) -> None:
        segment = unit.payload
        if not isinstance(segment, Segment):
            raise TypeError(f"not a unit this SMS channel prepared: {unit!r}")
        # done takes any SendResult, so the connector's SubmitResults go to it as they are
        self.connector.submit_nowait(self.submit_pdu(message, segment), deadline, done)

    async def revoke(self, message: Message, provider_id: str) -> Revoked:
        return Revoked.UNSUPPORTED

    # -- receipt matching -----------------------------------------------------------------------
    # The id a submitted unit is found under: norm_id itself (asked three times per message).
    receipt_key = staticmethod(norm_id)

    def receipt_keys(self, provider_id: str, id_format: str) -> list[str]:
        """Every key a receipt's id may match under (see receipt_keys)."""
        return receipt_keys(provider_id, id_format)

    # -- what the SMSC delivers -----------------------------------------------------------------
    async def on_deliver(self, _connector: SmscConnector, pdus: list[Pdu],
                         answer: Answer) -> None:
        """The connector's deliver handler: receipts and MO to the events sink, each PDU
        answered OK once its effect is stored, ESME_RX_T_APPN (send it again) otherwise."""
        assert self.events is not None
        receipts: list[ProviderReceipt] = []
        receipt_pdus: list[Pdu] = []
        mos: list[MobileOriginated] = []
        mo_pdus: list[Pdu] = []
        for pdu in pdus:
            assert isinstance(pdu, DeliverSm | DataSm)
            receipt = provider_receipt(pdu)
            if receipt is None:
                mos.append(mobile_originated(pdu))
                mo_pdus.append(pdu)
            else:
                receipts.append(receipt)
                receipt_pdus.append(pdu)

        def answered(of: list[Pdu], i: int, stored: bool) -> None:
            answer(of[i], Status.ESME_ROK if stored else Status.ESME_RX_T_APPN)

        def parked(i: int) -> None:
            answer.defer(receipt_pdus[i])

        events = self.events
        if not mos:  # the usual read: receipts only, no nursery needed
            await events.receipts(self, receipts, functools.partial(answered, receipt_pdus),
                                  parked)
            return
        async with trio.open_nursery() as nursery:  # one slow kind does not delay the other
            nursery.start_soon(events.mobile_originated, self, mos,
                               functools.partial(answered, mo_pdus))
            if receipts:
                await events.receipts(self, receipts, functools.partial(answered, receipt_pdus),
                                      parked)
