"""SMPP 3.4 PDU codec, sans-I/O: PDU dataclasses, encode(), decode() and FrameReader.

Bytes in, PDU objects out and back; nothing here touches a socket or a clock. The hot PDUs
(submit_sm, deliver_sm, their responses, enquire_link) have hand-written struct-based paths;
the rarer ones share one table-driven path derived from their dataclass fields.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from smpp.constants import RESPONSE_BIT, CommandId, Status, Tag, status_name

__all__ = [
    "HEADER_LENGTH",
    "PDU_CLASSES",
    "TLV_SIZES",
    "AlertNotification",
    "Bind",
    "BindReceiver",
    "BindReceiverResp",
    "BindResp",
    "BindTransceiver",
    "BindTransceiverResp",
    "BindTransmitter",
    "BindTransmitterResp",
    "CancelSm",
    "CancelSmResp",
    "DataSm",
    "DataSmResp",
    "DeliverSm",
    "DeliverSmResp",
    "DlDest",
    "EnquireLink",
    "EnquireLinkResp",
    "FrameReader",
    "FramingError",
    "GenericNack",
    "MessageIdResp",
    "Outbind",
    "Pdu",
    "PduError",
    "QuerySm",
    "QuerySmResp",
    "ReplaceSm",
    "ReplaceSmResp",
    "ShortMessagePdu",
    "SmeDest",
    "SubmitMulti",
    "SubmitMultiResp",
    "SubmitSm",
    "SubmitSmResp",
    "Unbind",
    "UnbindResp",
    "UnsuccessSme",
    "decode",
    "encode",
    "is_response",
    "set_tlv_int",
    "set_tlv_str",
    "tlv_int",
    "tlv_str",
]

HEADER_LENGTH = 16

_HDR = struct.Struct(">IIII")
_U32 = struct.Struct(">I")
_TL = struct.Struct(">HH")
_B = struct.Struct(">B")
_BB = struct.Struct(">BB")
_BBB = struct.Struct(">BBB")

# Fixed value sizes (SMPP 3.4 section 5.3.2) of the TLVs we interpret; a TLV of another size
# is refused with ESME_RINVPARLEN. Other TLVs are carried verbatim, whatever their length.
TLV_SIZES: dict[int, int] = {
    Tag.SAR_MSG_REF_NUM: 2,
    Tag.SAR_TOTAL_SEGMENTS: 1,
    Tag.SAR_SEGMENT_SEQNUM: 1,
    Tag.MESSAGE_STATE: 1,
    Tag.SC_INTERFACE_VERSION: 1,
    Tag.USER_MESSAGE_REFERENCE: 2,
    Tag.NETWORK_ERROR_CODE: 3,
}


class PduError(Exception):
    """A frame that cannot be decoded (or a PDU that cannot be encoded).

    `status` is the command_status the peer should receive in the response (or
    generic_nack); `command_id` and `sequence` come from the header when it was readable.
    """

    def __init__(self, status: int, detail: str, command_id: int = 0, sequence: int = 0) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.command_id = command_id
        self.sequence = sequence

    def __str__(self) -> str:
        return (
            f"{self.detail} (command_id=0x{self.command_id:08X}, sequence={self.sequence}, "
            f"status={status_name(self.status)})"
        )


class FramingError(PduError):
    """The byte stream cannot be split into frames any more: nack and close the connection."""


def is_response(command_id: int) -> bool:
    """True when command_id is a response (bit 31 set)."""
    return bool(command_id & RESPONSE_BIT)


# --------------------------------------------------------------------------- PDU classes


@dataclass(slots=True)
class Pdu:
    """Base of every PDU: header fields plus optional parameters (raw values by tag)."""

    command_id: ClassVar[CommandId]
    response_class: ClassVar[type[Pdu] | None] = None

    sequence: int = 0
    status: int = 0
    tlvs: dict[int, bytes] = field(default_factory=dict)

    def response(self, status: int = 0, **fields: Any) -> Pdu:
        """The matching response PDU, same sequence; TypeError when there is none."""
        cls = self.response_class
        if cls is None:
            raise TypeError(f"{type(self).__name__} has no response PDU")
        return cls(sequence=self.sequence, status=status, **fields)


@dataclass(slots=True)
class GenericNack(Pdu):
    """generic_nack: header only (sent when a PDU cannot be answered otherwise)."""

    command_id = CommandId.GENERIC_NACK


@dataclass(slots=True)
class EnquireLinkResp(Pdu):
    command_id = CommandId.ENQUIRE_LINK_RESP


@dataclass(slots=True)
class EnquireLink(Pdu):
    command_id = CommandId.ENQUIRE_LINK
    response_class = EnquireLinkResp

    def response(self, status: int = 0, **fields: Any) -> EnquireLinkResp:
        return EnquireLinkResp(self.sequence, status, **fields)


@dataclass(slots=True)
class UnbindResp(Pdu):
    command_id = CommandId.UNBIND_RESP


@dataclass(slots=True)
class Unbind(Pdu):
    command_id = CommandId.UNBIND
    response_class = UnbindResp

    def response(self, status: int = 0, **fields: Any) -> UnbindResp:
        return UnbindResp(self.sequence, status, **fields)


@dataclass(slots=True)
class BindResp(Pdu):
    """Common body of the three bind_*_resp PDUs (sc_interface_version travels as a TLV)."""

    system_id: str = ""


@dataclass(slots=True)
class BindTransmitterResp(BindResp):
    command_id = CommandId.BIND_TRANSMITTER_RESP


@dataclass(slots=True)
class BindReceiverResp(BindResp):
    command_id = CommandId.BIND_RECEIVER_RESP


@dataclass(slots=True)
class BindTransceiverResp(BindResp):
    command_id = CommandId.BIND_TRANSCEIVER_RESP


@dataclass(slots=True)
class Bind(Pdu):
    """Common body of bind_transmitter / bind_receiver / bind_transceiver."""

    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""


@dataclass(slots=True)
class BindTransmitter(Bind):
    command_id = CommandId.BIND_TRANSMITTER
    response_class = BindTransmitterResp

    def response(self, status: int = 0, **fields: Any) -> BindTransmitterResp:
        return BindTransmitterResp(self.sequence, status, **fields)


@dataclass(slots=True)
class BindReceiver(Bind):
    command_id = CommandId.BIND_RECEIVER
    response_class = BindReceiverResp

    def response(self, status: int = 0, **fields: Any) -> BindReceiverResp:
        return BindReceiverResp(self.sequence, status, **fields)


@dataclass(slots=True)
class BindTransceiver(Bind):
    command_id = CommandId.BIND_TRANSCEIVER
    response_class = BindTransceiverResp

    def response(self, status: int = 0, **fields: Any) -> BindTransceiverResp:
        return BindTransceiverResp(self.sequence, status, **fields)


@dataclass(slots=True)
class Outbind(Pdu):
    """outbind: the SMSC asks the ESME to bind; it has no response PDU."""

    command_id = CommandId.OUTBIND

    system_id: str = ""
    password: str = ""


@dataclass(slots=True)
class MessageIdResp(Pdu):
    """Common body of submit_sm_resp, deliver_sm_resp and data_sm_resp."""

    message_id: str = ""


@dataclass(slots=True)
class SubmitSmResp(MessageIdResp):
    command_id = CommandId.SUBMIT_SM_RESP


@dataclass(slots=True)
class DeliverSmResp(MessageIdResp):
    command_id = CommandId.DELIVER_SM_RESP


@dataclass(slots=True)
class DataSmResp(MessageIdResp):
    command_id = CommandId.DATA_SM_RESP


@dataclass(slots=True)
class ShortMessagePdu(Pdu):
    """Common body of submit_sm and deliver_sm (sm_length is derived from short_message)."""

    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""


@dataclass(slots=True)
class SubmitSm(ShortMessagePdu):
    command_id = CommandId.SUBMIT_SM
    response_class = SubmitSmResp

    def response(self, status: int = 0, **fields: Any) -> SubmitSmResp:
        return SubmitSmResp(self.sequence, status, **fields)


@dataclass(slots=True)
class DeliverSm(ShortMessagePdu):
    command_id = CommandId.DELIVER_SM
    response_class = DeliverSmResp

    def response(self, status: int = 0, **fields: Any) -> DeliverSmResp:
        return DeliverSmResp(self.sequence, status, **fields)


@dataclass(slots=True, frozen=True)
class SmeDest:
    """submit_multi destination: an SME address (dest_flag 1)."""

    ton: int = 0
    npi: int = 0
    addr: str = ""


@dataclass(slots=True, frozen=True)
class DlDest:
    """submit_multi destination: a distribution list name (dest_flag 2)."""

    name: str = ""


@dataclass(slots=True, frozen=True)
class UnsuccessSme:
    """submit_multi_resp: one destination the SMSC refused, with its error status."""

    ton: int = 0
    npi: int = 0
    addr: str = ""
    error: int = 0


@dataclass(slots=True)
class SubmitMultiResp(Pdu):
    command_id = CommandId.SUBMIT_MULTI_RESP

    message_id: str = ""
    unsuccess: list[UnsuccessSme] = field(default_factory=list)


@dataclass(slots=True)
class SubmitMulti(Pdu):
    command_id = CommandId.SUBMIT_MULTI
    response_class = SubmitMultiResp

    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dests: list[SmeDest | DlDest] = field(default_factory=list)
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""

    def response(self, status: int = 0, **fields: Any) -> SubmitMultiResp:
        return SubmitMultiResp(self.sequence, status, **fields)


@dataclass(slots=True)
class DataSm(Pdu):
    command_id = CommandId.DATA_SM
    response_class = DataSmResp

    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    registered_delivery: int = 0
    data_coding: int = 0

    def response(self, status: int = 0, **fields: Any) -> DataSmResp:
        return DataSmResp(self.sequence, status, **fields)


@dataclass(slots=True)
class QuerySmResp(Pdu):
    command_id = CommandId.QUERY_SM_RESP

    message_id: str = ""
    final_date: str = ""
    message_state: int = 0
    error_code: int = 0


@dataclass(slots=True)
class QuerySm(Pdu):
    command_id = CommandId.QUERY_SM
    response_class = QuerySmResp

    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""

    def response(self, status: int = 0, **fields: Any) -> QuerySmResp:
        return QuerySmResp(self.sequence, status, **fields)


@dataclass(slots=True)
class CancelSmResp(Pdu):
    command_id = CommandId.CANCEL_SM_RESP


@dataclass(slots=True)
class CancelSm(Pdu):
    command_id = CommandId.CANCEL_SM
    response_class = CancelSmResp

    service_type: str = ""
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""

    def response(self, status: int = 0, **fields: Any) -> CancelSmResp:
        return CancelSmResp(self.sequence, status, **fields)


@dataclass(slots=True)
class ReplaceSmResp(Pdu):
    command_id = CommandId.REPLACE_SM_RESP


@dataclass(slots=True)
class ReplaceSm(Pdu):
    command_id = CommandId.REPLACE_SM
    response_class = ReplaceSmResp

    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""

    def response(self, status: int = 0, **fields: Any) -> ReplaceSmResp:
        return ReplaceSmResp(self.sequence, status, **fields)


@dataclass(slots=True)
class AlertNotification(Pdu):
    """alert_notification: an MS became available; it has no response PDU."""

    command_id = CommandId.ALERT_NOTIFICATION

    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    esme_addr_ton: int = 0
    esme_addr_npi: int = 0
    esme_addr: str = ""


_ALL_CLASSES: tuple[type[Pdu], ...] = (
    GenericNack,
    BindReceiver,
    BindReceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    QuerySm,
    QuerySmResp,
    SubmitSm,
    SubmitSmResp,
    DeliverSm,
    DeliverSmResp,
    Unbind,
    UnbindResp,
    ReplaceSm,
    ReplaceSmResp,
    CancelSm,
    CancelSmResp,
    BindTransceiver,
    BindTransceiverResp,
    Outbind,
    EnquireLink,
    EnquireLinkResp,
    SubmitMulti,
    SubmitMultiResp,
    AlertNotification,
    DataSm,
    DataSmResp,
)

PDU_CLASSES: dict[int, type[Pdu]] = {cls.command_id: cls for cls in _ALL_CLASSES}


# --------------------------------------------------------------------------- TLVs


def _encode_tlvs(tlvs: dict[int, bytes]) -> bytes:
    pack = _TL.pack
    return b"".join([pack(tag, len(value)) + value for tag, value in tlvs.items()])


def _decode_tlvs(frame: bytes, pos: int, end: int) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    unpack = _TL.unpack_from
    sizes = TLV_SIZES
    while pos < end:
        if pos + 4 > end:
            raise PduError(Status.ESME_RINVOPTPARSTREAM, f"truncated TLV header at offset {pos}")
        tag, length = unpack(frame, pos)
        pos += 4
        stop = pos + length
        if stop > end:
            raise PduError(
                Status.ESME_RINVOPTPARSTREAM,
                f"TLV 0x{tag:04X} length {length} overruns the body at offset {pos}",
            )
        size = sizes.get(tag)
        if size is not None and size != length:
            raise PduError(
                Status.ESME_RINVPARLEN, f"TLV 0x{tag:04X} has length {length}, expected {size}"
            )
        tlvs[tag] = frame[pos:stop]
        pos = stop
    return tlvs


def tlv_int(pdu: Pdu, tag: int, default: int | None = None) -> int | None:
    """A TLV's value as a big-endian unsigned integer (any length), or `default`."""
    value = pdu.tlvs.get(tag)
    if value is None:
        return default
    return int.from_bytes(value, "big")


def tlv_str(pdu: Pdu, tag: int) -> str | None:
    """A TLV's value as latin-1 text, cut at the first NUL (C-string or raw), or None."""
    value = pdu.tlvs.get(tag)
    if value is None:
        return None
    nul = value.find(b"\0")
    if nul >= 0:
        value = value[:nul]
    return value.decode("latin-1")


def set_tlv_int(pdu: Pdu, tag: int, value: int, size: int | None = None) -> None:
    """Set an integer TLV; `size` in octets defaults to the tag's known size (TLV_SIZES)."""
    if size is None:
        size = TLV_SIZES.get(tag)
        if size is None:
            raise ValueError(f"size needed for TLV 0x{tag:04X}")
    pdu.tlvs[tag] = value.to_bytes(size, "big")


def set_tlv_str(pdu: Pdu, tag: int, value: str, nul: bool = True) -> None:
    """Set a text TLV, latin-1 encoded, NUL-terminated (C-octet string) unless nul=False."""
    raw = value.encode("latin-1")
    pdu.tlvs[tag] = raw + b"\0" if nul else raw


# --------------------------------------------------------------------------- hot paths


def _missing_nul(name: str) -> PduError:
    return PduError(Status.ESME_RINVCMDLEN, f"{name}: C-octet string without NUL terminator")


def _sm_length_overrun(length: int) -> PduError:
    return PduError(Status.ESME_RINVCMDLEN, f"sm_length {length} runs past the end of the body")


def _nul_inside(name: str) -> PduError:
    return PduError(Status.ESME_RSYSERR, f"cannot encode {name}: contains a NUL character")


def _make_sm_decoder(cls: type[ShortMessagePdu]) -> Callable[[bytes, int, int], Pdu]:
    def decode_sm(frame: bytes, status: int, sequence: int) -> Pdu:
        find = frame.find
        end = find(b"\0", 16)
        if end < 0:
            raise _missing_nul("service_type")
        service_type = frame[16:end].decode("latin-1")
        src_ton = frame[end + 1]
        src_npi = frame[end + 2]
        pos = end + 3
        end = find(b"\0", pos)
        if end < 0:
            raise _missing_nul("source_addr")
        source_addr = frame[pos:end].decode("latin-1")
        dst_ton = frame[end + 1]
        dst_npi = frame[end + 2]
        pos = end + 3
        end = find(b"\0", pos)
        if end < 0:
            raise _missing_nul("destination_addr")
        destination_addr = frame[pos:end].decode("latin-1")
        esm_class, protocol_id, priority_flag = _BBB.unpack_from(frame, end + 1)
        pos = end + 4
        end = find(b"\0", pos)
        if end < 0:
            raise _missing_nul("schedule_delivery_time")
        schedule = frame[pos:end].decode("latin-1")
        pos = end + 1
        end = find(b"\0", pos)
        if end < 0:
            raise _missing_nul("validity_period")
        validity = frame[pos:end].decode("latin-1")
        pos = end + 6  # registered_delivery .. sm_default_msg_id, sm_length at pos - 1
        size = len(frame)
        if pos > size:
            raise PduError(Status.ESME_RINVCMDLEN, "body ends before sm_length")
        sm_length = frame[pos - 1]
        stop = pos + sm_length
        if stop > size:
            raise _sm_length_overrun(sm_length)
        return cls(
            sequence,
            status,
            _decode_tlvs(frame, stop, size) if stop < size else {},
            service_type,
            src_ton,
            src_npi,
            source_addr,
            dst_ton,
            dst_npi,
            destination_addr,
            esm_class,
            protocol_id,
            priority_flag,
            schedule,
            validity,
            frame[end + 1],
            frame[end + 2],
            frame[end + 3],
            frame[end + 4],
            frame[pos:stop],
        )

    return decode_sm


_SM_FORMAT = "%s\0%c%c%s\0%c%c%s\0%c%c%c%s\0%s\0%c%c%c%c%c"


def _encode_sm(pdu: Pdu) -> bytes:
    assert isinstance(pdu, ShortMessagePdu)
    service_type = pdu.service_type
    source_addr = pdu.source_addr
    destination_addr = pdu.destination_addr
    schedule = pdu.schedule_delivery_time
    validity = pdu.validity_period
    if (
        "\0" in service_type
        or "\0" in source_addr
        or "\0" in destination_addr
        or "\0" in schedule
        or "\0" in validity
    ):
        raise _nul_inside("C-octet string field")
    short_message = pdu.short_message
    body = (
        _SM_FORMAT
        % (
            service_type,
            pdu.source_addr_ton,
            pdu.source_addr_npi,
            source_addr,
            pdu.dest_addr_ton,
            pdu.dest_addr_npi,
            destination_addr,
            pdu.esm_class,
            pdu.protocol_id,
            pdu.priority_flag,
            schedule,
            validity,
            pdu.registered_delivery,
            pdu.replace_if_present_flag,
            pdu.data_coding,
            pdu.sm_default_msg_id,
            len(short_message),
        )
    ).encode("latin-1") + short_message
    if pdu.tlvs:
        return body + _encode_tlvs(pdu.tlvs)
    return body


def _make_message_id_decoder(cls: type[MessageIdResp]) -> Callable[[bytes, int, int], Pdu]:
    def decode_message_id(frame: bytes, status: int, sequence: int) -> Pdu:
        end = frame.find(b"\0", 16)
        if end < 0:
            raise _missing_nul("message_id")
        size = len(frame)
        pos = end + 1
        tlvs = _decode_tlvs(frame, pos, size) if pos < size else {}
        return cls(sequence, status, tlvs, frame[16:end].decode("latin-1"))

    return decode_message_id


def _encode_message_id(pdu: Pdu) -> bytes:
    assert isinstance(pdu, MessageIdResp)
    message_id = pdu.message_id
    if "\0" in message_id:
        raise _nul_inside("message_id")
    body = message_id.encode("latin-1") + b"\0"
    if pdu.tlvs:
        return body + _encode_tlvs(pdu.tlvs)
    return body


def _make_header_decoder(cls: type[Pdu]) -> Callable[[bytes, int, int], Pdu]:
    def decode_header_only(frame: bytes, status: int, sequence: int) -> Pdu:
        if len(frame) > 16:
            return cls(sequence, status, _decode_tlvs(frame, 16, len(frame)))
        return cls(sequence, status)

    return decode_header_only


def _encode_header_only(pdu: Pdu) -> bytes:
    return _encode_tlvs(pdu.tlvs) if pdu.tlvs else b""


def _encode_nothing(pdu: Pdu) -> bytes:
    return b""


# --------------------------------------------------------------------------- table path

# Field kinds, derived from the dataclass annotations: every mandatory integer field of
# SMPP 3.4 is one octet, every str a C-octet string, the bytes field the sm_length-prefixed
# short_message; the two list fields are submit_multi's destination and unsuccess lists.
_KIND_BY_TYPE = {
    "str": "c",
    "int": "B",
    "bytes": "S",
    "list[SmeDest | DlDest]": "D",
    "list[UnsuccessSme]": "U",
}
_BASE_FIELDS = frozenset(("sequence", "status", "tlvs"))


def _field_spec(cls: type[Pdu]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f.name, _KIND_BY_TYPE[str(f.type)])
        for f in dataclasses.fields(cls)
        if f.name not in _BASE_FIELDS
    )


def _cstring(frame: bytes, pos: int, name: str) -> tuple[str, int]:
    end = frame.find(b"\0", pos)
    if end < 0:
        raise _missing_nul(name)
    return frame[pos:end].decode("latin-1"), end + 1


def _make_table_decoder(cls: type[Pdu]) -> Callable[[bytes, int, int], Pdu]:
    spec = _field_spec(cls)
    factory: Callable[..., Pdu] = cls

    def decode_table(frame: bytes, status: int, sequence: int) -> Pdu:
        size = len(frame)
        pos = 16
        values: list[Any] = []
        append = values.append
        for name, kind in spec:
            if kind == "c":
                text, pos = _cstring(frame, pos, name)
                append(text)
            elif kind == "B":
                append(frame[pos])
                pos += 1
            elif kind == "S":
                length = frame[pos]
                pos += 1
                stop = pos + length
                if stop > size:
                    raise _sm_length_overrun(length)
                append(frame[pos:stop])
                pos = stop
            elif kind == "D":
                dests: list[SmeDest | DlDest] = []
                count = frame[pos]
                pos += 1
                for _ in range(count):
                    flag = frame[pos]
                    if flag == 1:
                        ton, npi = _BB.unpack_from(frame, pos + 1)
                        addr, pos = _cstring(frame, pos + 3, "destination_addr")
                        dests.append(SmeDest(ton, npi, addr))
                    elif flag == 2:
                        dl_name, pos = _cstring(frame, pos + 1, "dl_name")
                        dests.append(DlDest(dl_name))
                    else:
                        raise PduError(Status.ESME_RINVDESTFLAG, f"unknown dest_flag {flag}")
                append(dests)
            else:  # "U"
                unsuccess: list[UnsuccessSme] = []
                count = frame[pos]
                pos += 1
                for _ in range(count):
                    ton, npi = _BB.unpack_from(frame, pos)
                    addr, pos = _cstring(frame, pos + 2, "destination_addr")
                    (error,) = _U32.unpack_from(frame, pos)
                    pos += 4
                    unsuccess.append(UnsuccessSme(ton, npi, addr, error))
                append(unsuccess)
        tlvs = _decode_tlvs(frame, pos, size) if pos < size else {}
        return factory(sequence, status, tlvs, *values)

    return decode_table


def _encode_cstring(value: str, name: str) -> bytes:
    if "\0" in value:
        raise _nul_inside(name)
    return value.encode("latin-1") + b"\0"


def _make_table_encoder(cls: type[Pdu]) -> Callable[[Pdu], bytes]:
    spec = _field_spec(cls)

    def encode_table(pdu: Pdu) -> bytes:
        parts: list[bytes] = []
        append = parts.append
        for name, kind in spec:
            value = getattr(pdu, name)
            if kind == "c":
                append(_encode_cstring(value, name))
            elif kind == "B":
                append(_B.pack(value))
            elif kind == "S":
                append(_B.pack(len(value)))
                append(bytes(value))
            elif kind == "D":
                append(_B.pack(len(value)))
                for dest in value:
                    if isinstance(dest, SmeDest):
                        append(_BBB.pack(1, dest.ton, dest.npi))
                        append(_encode_cstring(dest.addr, "destination_addr"))
                    else:
                        append(b"\x02")
                        append(_encode_cstring(dest.name, "dl_name"))
            else:  # "U"
                append(_B.pack(len(value)))
                for sme in value:
                    append(_BB.pack(sme.ton, sme.npi))
                    append(_encode_cstring(sme.addr, "destination_addr"))
                    append(_U32.pack(sme.error))
        if pdu.tlvs:
            append(_encode_tlvs(pdu.tlvs))
        return b"".join(parts)

    return encode_table


# --------------------------------------------------------------------------- dispatch

_DECODERS: dict[int, Callable[[bytes, int, int], Pdu]] = {}
_ENCODERS: dict[type[Pdu], Callable[[Pdu], bytes]] = {}

for _cls in _ALL_CLASSES:
    _DECODERS[_cls.command_id] = _make_table_decoder(_cls)
    _ENCODERS[_cls] = _make_table_encoder(_cls)
for _cls in (SubmitSm, DeliverSm):
    _DECODERS[_cls.command_id] = _make_sm_decoder(_cls)
    _ENCODERS[_cls] = _encode_sm
for _cls in (SubmitSmResp, DeliverSmResp, DataSmResp):
    _DECODERS[_cls.command_id] = _make_message_id_decoder(_cls)
    _ENCODERS[_cls] = _encode_message_id
for _cls in (
    EnquireLink,
    EnquireLinkResp,
    Unbind,
    UnbindResp,
    CancelSmResp,
    ReplaceSmResp,
    GenericNack,
):
    _DECODERS[_cls.command_id] = _make_header_decoder(_cls)
    _ENCODERS[_cls] = _encode_header_only
_ENCODERS[GenericNack] = _encode_nothing  # generic_nack is always header only
del _cls

# Internal reference encoders/decoders (table path for every class) so tests can check the
# hand-written fast paths against them.
_TABLE_DECODERS = {cls.command_id: _make_table_decoder(cls) for cls in _ALL_CLASSES}
_TABLE_ENCODERS = {cls: _make_table_encoder(cls) for cls in _ALL_CLASSES}


def encode(pdu: Pdu) -> bytes:
    """Encode one PDU into a complete frame (16-octet header + body).

    Raises PduError (status ESME_RSYSERR) when a field cannot be represented: an integer out
    of range, a non-latin-1 character, a NUL inside a C-octet string, short_message > 255.
    """
    cls = type(pdu)
    encoder = _ENCODERS.get(cls)
    if encoder is None:
        raise TypeError(f"not an SMPP PDU: {cls.__name__}")
    try:
        body = encoder(pdu)
        return _HDR.pack(16 + len(body), cls.command_id, pdu.status, pdu.sequence) + body
    except PduError as exc:
        exc.command_id = cls.command_id
        exc.sequence = pdu.sequence
        raise
    except (struct.error, ValueError, OverflowError, TypeError, AttributeError) as exc:
        raise PduError(
            Status.ESME_RSYSERR,
            f"cannot encode {cls.__name__}: {exc}",
            cls.command_id,
            pdu.sequence if isinstance(pdu.sequence, int) else 0,
        ) from None


def decode(data: bytes | bytearray | memoryview) -> Pdu:
    """Decode one complete frame (header included) into its PDU object.

    Only PduError escapes; its `status` is what the peer should be answered with.
    """
    frame = data if type(data) is bytes else bytes(data)
    size = len(frame)
    if size < 16:
        raise PduError(Status.ESME_RINVCMDLEN, f"frame of {size} octets is shorter than a header")
    length, command_id, status, sequence = _HDR.unpack_from(frame)
    decoder = _DECODERS.get(command_id)
    if decoder is None:
        raise PduError(
            Status.ESME_RINVCMDID, f"unknown command_id 0x{command_id:08X}", command_id, sequence
        )
    if length != size:
        raise PduError(
            Status.ESME_RINVCMDLEN,
            f"command_length {length} does not match the frame's {size} octets",
            command_id,
            sequence,
        )
    if size == 16 and status and command_id & RESPONSE_BIT:
        # error responses may omit their body (SMPP 3.4 section 3.3): default fields
        return PDU_CLASSES[command_id](sequence, status)
    try:
        return decoder(frame, status, sequence)
    except PduError as exc:
        exc.command_id = command_id
        exc.sequence = sequence
        raise
    except (struct.error, IndexError):
        raise PduError(
            Status.ESME_RINVCMDLEN,
            "body ends inside a mandatory field",
            command_id,
            sequence,
        ) from None


# --------------------------------------------------------------------------- framing


class FrameReader:
    """Reassemble complete frames from an arbitrarily chunked byte stream (sans-I/O).

    feed() bytes as they arrive; next_frame() returns one complete frame or None. A
    command_length below 16 or above max_length raises FramingError: the stream cannot be
    resynchronised, so the caller sends generic_nack and closes.
    """

    __slots__ = ("_buf", "_pos", "max_length")

    def __init__(self, max_length: int = 65536) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_length = max_length

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def next_frame(self) -> bytes | None:
        """One complete frame (header included), or None until more bytes are fed."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 4:
            return None
        (length,) = _U32.unpack_from(buf, pos)
        if length < 16 or length > self.max_length:
            command_id = sequence = 0
            if avail >= 16:
                _, command_id, _, sequence = _HDR.unpack_from(buf, pos)
            raise FramingError(
                Status.ESME_RINVCMDLEN,
                f"command_length {length} outside 16..{self.max_length}",
                command_id,
                sequence,
            )
        if avail < length:
            return None
        end = pos + length
        if end == len(buf):
            frame = bytes(buf) if pos == 0 else bytes(buf[pos:])
            buf.clear()
            self._pos = 0
            return frame
        self._pos = end
        return bytes(buf[pos:end])

    def frames(self) -> Iterator[bytes]:
        """Every complete frame currently buffered."""
        while (frame := self.next_frame()) is not None:
            yield frame
