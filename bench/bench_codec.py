"""Benchmark: PDU encode/decode rates of smpp.pdu next to smpplib's codec on this machine.

Run `python bench/bench_codec.py`; each figure is the best of a few ~0.4 s bounded loops on
one core. Target (DESIGN.md): >= 150,000 submit_sm decodes/s and encodes/s.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import smpplib.smpp

from smpp.constants import MessageState, Tag
from smpp.pdu import (
    DeliverSm,
    FrameReader,
    SubmitSm,
    SubmitSmResp,
    decode,
    encode,
    set_tlv_int,
    set_tlv_str,
)

TEXT = b"Your verification code is 482913. It expires in 10 minutes. Do not share it."
RECEIPT = (
    b"id:5f3c0a1b77 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
    b"stat:DELIVRD err:000 text:Your verificatio"
)
SUBMIT_FIELDS: dict[str, Any] = {
    "service_type": "",
    "source_addr_ton": 5,
    "source_addr_npi": 0,
    "source_addr": "ACME",
    "dest_addr_ton": 1,
    "dest_addr_npi": 1,
    "destination_addr": "33612345678",
    "esm_class": 0,
    "protocol_id": 0,
    "priority_flag": 0,
    "schedule_delivery_time": "",
    "validity_period": "",
    "registered_delivery": 1,
    "replace_if_present_flag": 0,
    "data_coding": 0,
    "sm_default_msg_id": 0,
    "short_message": TEXT,
}
DELIVER_FIELDS: dict[str, Any] = {
    **SUBMIT_FIELDS,
    "source_addr_ton": 1,
    "source_addr_npi": 1,
    "source_addr": "33612345678",
    "dest_addr_ton": 5,
    "dest_addr_npi": 0,
    "destination_addr": "ACME",
    "esm_class": 0x04,
    "registered_delivery": 0,
    "short_message": RECEIPT,
}


class _Client:
    sequence = 0

    def next_sequence(self) -> int:
        return 1


def rate(fn: Callable[[], object], seconds: float = 0.4, rounds: int = 3) -> float:
    """Calls per second of fn, best of `rounds` loops each bounded to about `seconds`."""
    best = 0.0
    for _ in range(rounds):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            for _ in range(500):
                fn()
            calls += 500
            now = time.perf_counter()
        best = max(best, calls / (now - start))
    return best


def show(who: str, what: str, per_second: float) -> None:
    print(f"{who:<9}{what:<22}{per_second:>12,.0f}/s")


def main() -> int:
    submit = SubmitSm(sequence=1234, **SUBMIT_FIELDS)
    submit_frame = encode(submit)
    deliver = DeliverSm(sequence=99, **DELIVER_FIELDS)
    deliver.tlvs[Tag.NETWORK_ERROR_CODE] = b"\x03\x00\x00"
    set_tlv_int(deliver, Tag.MESSAGE_STATE, MessageState.DELIVERED)
    set_tlv_str(deliver, Tag.RECEIPTED_MESSAGE_ID, "5f3c0a1b77")
    deliver_frame = encode(deliver)
    resp = SubmitSmResp(sequence=1234, message_id="5f3c0a1b77")
    resp_frame = encode(resp)

    client = _Client()
    ref_submit = smpplib.smpp.make_pdu("submit_sm", client=client, **SUBMIT_FIELDS)
    ref_submit.sequence = 1234
    ref_deliver = smpplib.smpp.make_pdu(
        "deliver_sm",
        client=client,
        network_error_code=b"\x03\x00\x00",
        message_state=2,
        receipted_message_id="5f3c0a1b77",
        **DELIVER_FIELDS,
    )
    ref_deliver.sequence = 99
    if ref_submit.generate() != submit_frame or ref_deliver.generate() != deliver_frame:
        print("warning: smpplib and smpp.pdu frames differ; rates not comparable")

    def parse(frame: bytes) -> Callable[[], object]:
        return lambda: smpplib.smpp.parse_pdu(frame, client=client)

    stream = submit_frame * 1000

    def reassemble() -> None:
        reader = FrameReader()
        reader.feed(stream)
        for frame in reader.frames():
            decode(frame)

    show("ours", "submit_sm decode:", rate(lambda: decode(submit_frame)))
    show("ours", "submit_sm encode:", rate(lambda: encode(submit)))
    show("ours", "deliver_sm decode:", rate(lambda: decode(deliver_frame)))
    show("ours", "deliver_sm encode:", rate(lambda: encode(deliver)))
    show("ours", "submit_sm_resp decode:", rate(lambda: decode(resp_frame)))
    show("ours", "submit_sm_resp encode:", rate(lambda: encode(resp)))
    show("ours", "frame+decode x1000:", rate(reassemble, rounds=2) * 1000)
    show("smpplib", "submit_sm decode:", rate(parse(submit_frame)))
    show("smpplib", "submit_sm encode:", rate(ref_submit.generate))
    show("smpplib", "deliver_sm decode:", rate(parse(deliver_frame)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
