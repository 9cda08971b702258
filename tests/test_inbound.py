"""Reading operator receipts: TLVs first, the receipt text for whatever they leave unknown."""

from __future__ import annotations

from routing.sms import read_receipt
from smpp.constants import Tag
from smpp.pdu import DataSm, DeliverSm, set_tlv_int, set_tlv_str

TEXT = (b"id:0A1B2C sub:001 dlvrd:000 submit date:2611231030 done date:2611231031 "
        b"stat:UNDELIV err:034 text:hello")


def _receipt(text: bytes = TEXT) -> DeliverSm:
    return DeliverSm(esm_class=0x04, source_addr="33612345678", destination_addr="ACME",
                     short_message=text)


def test_text_only_receipt_gives_id_stat_and_error() -> None:
    r = read_receipt(_receipt())
    assert r is not None and (r.smsc_id, r.stat, r.error) == ("0A1B2C", "UNDELIV", 34)


def test_tlvs_win_over_the_text() -> None:
    pdu = _receipt(TEXT.replace(b"UNDELIV", b"DELIVRD"))
    set_tlv_str(pdu, Tag.RECEIPTED_MESSAGE_ID, "ffee01")
    set_tlv_int(pdu, Tag.MESSAGE_STATE, 5)
    r = read_receipt(pdu)
    assert r is not None and (r.smsc_id, r.stat, r.error) == ("ffee01", "UNDELIV", 34)


def test_network_error_code_tlv_gives_the_error() -> None:
    pdu = _receipt(b"")
    set_tlv_str(pdu, Tag.RECEIPTED_MESSAGE_ID, "42")
    set_tlv_int(pdu, Tag.MESSAGE_STATE, 5)
    pdu.tlvs[Tag.NETWORK_ERROR_CODE] = b"\x03\x00\x0b"
    r = read_receipt(pdu)
    assert r is not None and (r.smsc_id, r.stat, r.error) == ("42", "UNDELIV", 11)


def test_receipt_in_data_sm_payload_is_read() -> None:
    pdu = DataSm(esm_class=0x04)
    pdu.tlvs[Tag.MESSAGE_PAYLOAD] = TEXT
    r = read_receipt(pdu)
    assert r is not None and r.smsc_id == "0A1B2C"


def test_mo_is_not_a_receipt() -> None:
    assert read_receipt(DeliverSm(esm_class=0, short_message=b"STOP")) is None


def test_unreadable_receipt_has_no_id() -> None:
    r = read_receipt(_receipt(b"garbage"))
    assert r is not None and r.smsc_id == "" and r.stat == "UNKNOWN"
