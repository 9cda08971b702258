"""Hostile SMPP octets for the socket fuzz test: real PDUs from smpp.pdu, encoded, then broken.

`Mutator(rng)` draws frames from one seeded random.Random, so a seed replays the same octets:
valid PDUs (legal or not in the peer's state), responses to nothing, corrupted bodies (bit
flips, truncated and extended bodies, C-strings without NUL, bad TLVs), random command ids,
overlong fields, and length lies (huge, tiny, or promising more than is sent).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from smpp.constants import RESPONSE_BIT, CommandId, Tag
from smpp.pdu import (
    TLV_SIZES,
    AlertNotification,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CancelSm,
    DataSm,
    DeliverSm,
    DlDest,
    EnquireLink,
    GenericNack,
    Outbind,
    Pdu,
    QuerySm,
    ReplaceSm,
    SmeDest,
    SubmitMulti,
    SubmitSm,
    Unbind,
    encode,
)

_HDR = struct.Struct(">IIII")
PREBIND_PDU_MAX = 1024  # the gateway's limit on a PDU's size before bind (README)


@dataclass(frozen=True, slots=True)
class Frame:
    """Octets to write, and what they are.

    kind: the mutation's name (counted, and named in findings).
    terminal: the octets lie about their length, so the peer cannot find the next frame: the
    fuzzer sends nothing after them and expects the connection to be closed.
    """

    data: bytes
    kind: str
    terminal: bool = False


def header(data: bytes) -> tuple[int, int, int, int] | None:
    """(command_length, command_id, command_status, sequence) of a frame, None if short."""
    return _HDR.unpack_from(data) if len(data) >= 16 else None


def _reframe(command_id: int, status: int, sequence: int, body: bytes) -> bytes:
    """A frame whose command_length tells the truth about `body`."""
    return _HDR.pack(16 + len(body), command_id, status, sequence) + body


def _body(frame: bytes) -> bytes:
    return frame[16:]


class Mutator:
    """Draws hostile frames from `rng`. `bound`: what the sender may legally send now does
    not matter (wrong states are part of the mix), but binds are weighted up before bind."""

    DIGITS = "0123456789"

    def __init__(self, rng: random.Random, *, max_pdu_size: int = 65536) -> None:
        self.rng = rng
        self.max_pdu_size = max_pdu_size

    # -- values ----------------------------------------------------------------------------
    def sequence(self) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            return 0
        if roll < 0.1:
            return 0xFFFFFFFF
        return rng.randint(1, 0x7FFFFFFF)

    def text(self, longest: int = 20) -> str:
        """Latin-1 text without NUL: often plausible, sometimes any octet, sometimes long."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.5:
            return "".join(rng.choice(self.DIGITS) for _ in range(rng.randint(0, longest)))
        if roll < 0.9:
            return "".join(chr(rng.randint(1, 255)) for _ in range(rng.randint(0, longest)))
        return "".join(chr(rng.randint(1, 255)) for _ in range(rng.randint(longest, 300)))

    def number(self) -> str:
        rng = self.rng
        if rng.random() < 0.7:
            return "336" + "".join(rng.choice(self.DIGITS) for _ in range(8))
        return self.text()

    def octet(self) -> int:
        rng = self.rng
        return rng.choice((0, 1, 5, rng.randint(0, 255)))

    def tlvs(self) -> dict[int, bytes]:
        rng = self.rng
        tlvs: dict[int, bytes] = {}
        for _ in range(rng.choice((0, 0, 0, 1, 2, 4))):
            tag = rng.choice((*TLV_SIZES, Tag.MESSAGE_PAYLOAD, Tag.RECEIPTED_MESSAGE_ID,
                              Tag.SOURCE_PORT, rng.randint(0, 0xFFFF)))
            size = TLV_SIZES.get(tag, rng.randint(0, 40))
            tlvs[tag] = rng.randbytes(size)
        return tlvs

    # -- real PDUs -------------------------------------------------------------------------
    def bind(self, system_id: str | None = None, password: str | None = None) -> Pdu:
        rng = self.rng
        cls = rng.choice((BindTransmitter, BindReceiver, BindTransceiver))
        return cls(sequence=self.sequence(),
                   system_id=rng.choice(("demo", "fuzz", self.text(16))) if system_id is None
                   else system_id,
                   password=self.text(9) if password is None else password,
                   system_type=self.text(13), interface_version=rng.choice((0x34, 0x33, 0x50,
                                                                             self.octet())),
                   addr_ton=self.octet(), addr_npi=self.octet(), address_range=self.text(41))

    def submit(self) -> SubmitSm:
        """A submit_sm: half of them plausible (the gateway would take them), half wild."""
        return self.plausible_submit() if self.rng.random() < 0.5 else self.wild_submit()

    def plausible_submit(self) -> SubmitSm:
        rng = self.rng
        return SubmitSm(sequence=self.sequence(), source_addr_ton=5, source_addr="ACME",
                        dest_addr_ton=1, dest_addr_npi=1, destination_addr=self.number(),
                        registered_delivery=rng.choice((0, 1)),
                        short_message=rng.randbytes(rng.randint(0, 160)).replace(b"\0", b"")
                        if rng.random() < 0.3 else b"hello")

    def wild_submit(self) -> SubmitSm:
        rng = self.rng
        text = rng.randbytes(rng.choice((0, 5, 70, 160, 255)))
        return SubmitSm(sequence=self.sequence(), tlvs=self.tlvs(),
                        service_type=rng.choice(("", "", self.text(6))),
                        source_addr_ton=rng.choice((5, 1, self.octet())),
                        source_addr=rng.choice(("ACME", self.number())),
                        dest_addr_ton=rng.choice((1, self.octet())),
                        dest_addr_npi=rng.choice((1, self.octet())),
                        destination_addr=self.number(), esm_class=self.octet(),
                        protocol_id=self.octet(), priority_flag=self.octet(),
                        schedule_delivery_time=rng.choice(("", "", self.text(17))),
                        validity_period=rng.choice(("", "", "000001000000000R", self.text(17))),
                        registered_delivery=rng.choice((0, 1, self.octet())),
                        data_coding=rng.choice((0, 8, self.octet())), short_message=text)

    def request(self, *, bound: bool = False) -> Pdu:
        """A well-formed request of any kind, legal or not where it is sent (no unbind once
        bound: it would end the session, which the fuzz test does on purpose)."""
        rng = self.rng
        seq = self.sequence()
        makers: tuple[Callable[[], Pdu], ...] = (
            self.submit, self.submit, self.submit,
            lambda: self.bind(),
            lambda: EnquireLink(sequence=seq),
            lambda: EnquireLink(sequence=seq) if bound else Unbind(sequence=seq),
            lambda: GenericNack(sequence=seq, status=rng.randint(0, 0x100)),
            lambda: QuerySm(sequence=seq, message_id=self.text(65), source_addr=self.number()),
            lambda: CancelSm(sequence=seq, message_id=self.text(), destination_addr=self.number()),
            lambda: ReplaceSm(sequence=seq, message_id=self.text(), short_message=b"x"),
            lambda: DataSm(sequence=seq, source_addr="ACME", destination_addr=self.number(),
                           tlvs={Tag.MESSAGE_PAYLOAD: rng.randbytes(rng.randint(0, 300))}),
            lambda: SubmitMulti(sequence=seq, source_addr="ACME", short_message=b"multi",
                                dests=[SmeDest(1, 1, self.number()) if rng.random() < 0.8
                                       else DlDest(self.text(21))
                                       for _ in range(rng.choice((0, 1, 3, 255)))]),
            # wrong direction: an ESME does not send these
            lambda: DeliverSm(sequence=seq, source_addr=self.number(), destination_addr="ACME",
                              esm_class=rng.choice((0, 4)), short_message=b"id:1 stat:DELIVRD"),
            lambda: Outbind(sequence=seq, system_id=self.text(), password=self.text()),
            lambda: AlertNotification(sequence=seq, source_addr=self.number()),
        )
        return rng.choice(makers)()

    def response(self) -> Pdu:
        """A response to a request never sent (sequence drawn at random)."""
        rng = self.rng
        request = self.request()
        try:
            resp = request.response(status=rng.choice((0, 0, 8, rng.randint(0, 0x500))))
        except TypeError:  # outbind, alert_notification have no response
            resp = GenericNack(sequence=request.sequence, status=8)
        resp.sequence = self.sequence()
        return resp

    # -- frames ----------------------------------------------------------------------------
    def cuts(self, data: bytes) -> list[bytes]:
        """`data` in the pieces to write it in: mostly whole, sometimes in a few random cuts
        (a frame split across reads), sometimes one octet at a time (up to 40 octets)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.8 or len(data) < 2:
            return [data]
        if roll < 0.95:
            marks = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
        else:
            marks = list(range(1, min(len(data), 40)))
        return [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)]

    def frame(self, *, bound: bool, lies: float = 0.04) -> Frame:
        """One hostile frame; terminal ones (length lies) with probability `lies`."""
        rng = self.rng
        roll = rng.random()
        if roll < lies:
            return self.length_lie()
        if not bound and roll < 0.35:
            return Frame(encode(self.bind()), "bind")
        kinds: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
            ("valid", lambda f: f),
            ("valid", lambda f: f),
            ("bit_flips", self.flip_bits),
            ("truncated", self.truncate),
            ("extended", self.extend),
            ("no_nul", self.strip_nuls),
            ("bad_tlv", self.bad_tlv),
            ("random_command_id", self.random_command_id),
            ("overlong", self.overlong),
        )
        if rng.random() < 0.15:
            return Frame(encode(self.response()), "response_to_nothing")
        kind, mutate = rng.choice(kinds)
        return Frame(mutate(encode(self.request(bound=bound))), kind)

    def flip_bits(self, frame: bytes) -> bytes:
        rng = self.rng
        body = bytearray(_body(frame))
        for _ in range(rng.randint(1, 8) if body else 0):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        return frame[:16] + bytes(body)

    def truncate(self, frame: bytes) -> bytes:
        body = _body(frame)
        _, cid, status, seq = _HDR.unpack_from(frame)
        return _reframe(cid, status, seq, body[:self.rng.randint(0, max(0, len(body) - 1))])

    def extend(self, frame: bytes) -> bytes:
        _, cid, status, seq = _HDR.unpack_from(frame)
        extra = self.rng.randbytes(self.rng.choice((1, 3, 4, 17, 64)))
        return _reframe(cid, status, seq, _body(frame) + extra)

    def strip_nuls(self, frame: bytes) -> bytes:
        body = bytes(b if b else self.rng.randint(1, 255) for b in _body(frame))
        return frame[:16] + body

    def bad_tlv(self, frame: bytes) -> bytes:
        rng = self.rng
        _, cid, status, seq = _HDR.unpack_from(frame)
        choice = rng.randrange(3)
        if choice == 0:  # declares more octets than follow
            tlv = struct.pack(">HH", Tag.MESSAGE_PAYLOAD, rng.randint(5, 0xFFFF)) + b"abcd"
        elif choice == 1:  # a tag of known size with another size
            tag = rng.choice(sorted(TLV_SIZES))
            size = rng.choice([n for n in range(0, 6) if n != TLV_SIZES[tag]])
            tlv = struct.pack(">HH", tag, size) + rng.randbytes(size)
        else:  # a TLV header cut short
            tlv = rng.randbytes(rng.randint(1, 3))
        return _reframe(cid, status, seq, _body(frame) + tlv)

    def random_command_id(self, frame: bytes) -> bytes:
        rng = self.rng
        _, _cid, status, seq = _HDR.unpack_from(frame)
        cid = rng.choice((rng.randint(0, 0xFFFFFFFF), rng.randint(0, 0x120),
                          rng.choice(list(CommandId)) ^ RESPONSE_BIT,
                          0x80000000, 0x7FFFFFFF, 0x10000))
        return _reframe(cid, status, seq, _body(frame))

    def overlong(self, frame: bytes) -> bytes:
        """The same PDU with a field far longer than any peer should send: C-strings of
        hundreds of octets, or a body that fills the largest PDU allowed."""
        rng = self.rng
        _, cid, status, seq = _HDR.unpack_from(frame)
        if rng.random() < 0.5:
            body = _body(frame)
            cut = body.find(b"\0")
            long_text = bytes(rng.randint(0x21, 0x7E) for _ in range(rng.randint(100, 900)))
            body = long_text + body[max(cut, 0):]
        else:
            room = self.max_pdu_size - 16 - len(_body(frame)) - 4
            size = rng.choice((PREBIND_PDU_MAX, room // 2, room))
            body = _body(frame) + struct.pack(">HH", 0x1400, min(size, 0xFFFF))
            body += rng.randbytes(min(size, 0xFFFF))
        return _reframe(cid, status, seq, body)

    def length_lie(self) -> Frame:
        """A command_length the stream cannot recover from: huge, tiny, or longer than what
        is sent (a partial frame, then silence)."""
        rng = self.rng
        real = encode(self.request())
        _, cid, status, seq = _HDR.unpack_from(real)
        roll = rng.randrange(3)
        if roll == 0:
            length = rng.choice((0xFFFFFFFF, 0x80000000, 1 << 24, self.max_pdu_size + 1))
            return Frame(_HDR.pack(length, cid, status, seq) + _body(real)[:8], "huge_length",
                         True)
        if roll == 1:
            return Frame(_HDR.pack(rng.randint(0, 15), cid, status, seq), "tiny_length", True)
        cut = rng.randint(1, len(real) - 1) if len(real) > 1 else 1
        return Frame(real[:cut], "partial", True)
