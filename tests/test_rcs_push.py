"""Pure parts of the RCS channel: reading the RBM platform's Pub/Sub pushes (events become
receipts, user messages become MO, malformed bodies a clear PushError), what a message's
text is over RCS, the billing class rule, and the credentials file."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.model import Message, PartState
from routing.channel import MobileOriginated, ProviderReceipt, Unsendable
from routing.rcs import (
    BASIC,
    CONVERSATION,
    SINGLE,
    ClientSecret,
    PushError,
    ServiceAccount,
    billing_class,
    duration,
    e164,
    encode_push,
    load_credentials,
    message_text,
    parse_push,
)

MID = "0b8b5c8e-8a43-4a8f-9d1b-0f3a1d3e8c11"


def parse_pushed(body: bytes) -> ProviderReceipt | MobileOriginated | None:
    parsed = parse_push(body)
    assert parsed.agent_id == "agent" or parsed.item is None
    return parsed.item


def push(event: dict[str, Any]) -> bytes:
    return encode_push(event, message_id="1", publish_time="2026-12-02T10:00:00Z")


def user_event(kind: str) -> dict[str, Any]:
    return {"senderPhoneNumber": "+33612345678", "eventType": kind, "eventId": "e1",
            "messageId": MID, "agentId": "agent"}


@pytest.mark.parametrize(("kind", "outcome"), [
    ("DELIVERED", PartState.DELIVERED),
    ("READ", None),
])
def test_user_events_become_receipts_of_the_agent_message_id(
        kind: str, outcome: PartState | None) -> None:
    receipt = parse_pushed(push(user_event(kind)))
    assert isinstance(receipt, ProviderReceipt)
    assert (receipt.provider_id, receipt.outcome, receipt.word) == (MID, outcome, kind)
    assert json.loads(receipt.raw)["eventType"] == kind


def test_ttl_expiration_revoked_is_expired_and_revoke_failed_is_intermediate() -> None:
    server = {"phoneNumber": "+33612345678", "messageId": MID, "agentId": "agent",
              "eventId": "e2", "sendTime": "2026-12-02T10:00:00Z"}
    revoked = parse_pushed(push({**server, "eventType": "TTL_EXPIRATION_REVOKED"}))
    failed = parse_pushed(push({**server, "eventType": "TTL_EXPIRATION_REVOKE_FAILED"}))
    assert isinstance(revoked, ProviderReceipt) and revoked.outcome == PartState.EXPIRED
    assert isinstance(failed, ProviderReceipt) and failed.outcome is None


def test_typing_unknown_events_and_agent_launch_events_carry_nothing() -> None:
    assert parse_pushed(push(user_event("IS_TYPING"))) is None
    assert parse_pushed(push(user_event("SOMETHING_NEW"))) is None
    launch = json.loads(push({"agentId": "agent", "launchState": "LAUNCHED"}))
    launch["message"]["attributes"] = {"type": "agent_launch_event"}
    assert parse_push(json.dumps(launch).encode()).item is None


def test_a_text_reply_becomes_mo_from_the_phone_to_the_agent_gsm_when_it_fits() -> None:
    mo = parse_pushed(push({"senderPhoneNumber": "+33612345678", "messageId": "m1",
                          "agentId": "agent", "text": "STOP"}))
    assert mo == MobileOriginated(sender="33612345678", recipient="agent", body=b"STOP",
                                  data_coding=0, sender_ton=1, sender_npi=1)


def test_a_reply_outside_the_gsm_alphabet_is_ucs2() -> None:
    mo = parse_pushed(push({"senderPhoneNumber": "+33612345678", "messageId": "m1",
                          "agentId": "agent", "text": "Привет"}))
    assert isinstance(mo, MobileOriginated)
    assert (mo.data_coding, mo.body) == (8, "Привет".encode("utf-16-be"))


def test_suggestions_locations_and_files_become_text() -> None:
    base = {"senderPhoneNumber": "+33612345678", "messageId": "m1", "agentId": "agent"}
    tapped = parse_pushed(push({**base, "suggestionResponse": {"text": "Yes",
                                                             "postbackData": "y"}}))
    where = parse_pushed(push({**base, "location": {"latitude": 48.85, "longitude": 2.35}}))
    file = parse_pushed(push({**base, "userFile": {"payload": {"fileUri": "https://f/x.jpg"}}}))
    assert isinstance(tapped, MobileOriginated) and tapped.body == b"Yes"
    assert isinstance(where, MobileOriginated) and where.body == b"geo:48.85,2.35"
    assert isinstance(file, MobileOriginated) and file.body == b"https://f/x.jpg"


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "not JSON"),
    (b"[]", "no \"message\" object"),
    (b'{"message": {}}', "no \"data\""),
    (b'{"message": {"data": "%%%"}}', "not base64 of JSON"),
    (b'{"message": {"data": "' + base64.b64encode(b"[1]") + b'"}}', "not a JSON object"),
    (push({"eventType": "DELIVERED", "senderPhoneNumber": "+33612345678"}),
     "no messageId"),
    (push({"messageId": "m1", "agentId": "agent", "text": "hi"}), "no senderPhoneNumber"),
    (push({"senderPhoneNumber": "+33612345678", "messageId": "m1", "agentId": "agent"}),
     "no text"),
    (push({"senderPhoneNumber": "12", "messageId": "m1", "agentId": "a", "text": "x"}),
     "not an international number"),
    (push({"hello": "world"}), "neither an RBM event"),
    (push({"eventType": "DELIVERED", "messageId": "m1"}), "DELIVERED event has no agentId"),
])
def test_malformed_pushes_raise_push_error_saying_what_is_wrong(body: bytes,
                                                                 reason: str) -> None:
    with pytest.raises(PushError, match=reason):
        parse_push(body)


# --------------------------------------------------------------------------- message text
def message(body: bytes, data_coding: int = 0, esm_class: int = 0,
            to: str = "33612345678") -> Message:
    return Message(id="m", account="omni", source_addr="ACME", source_ton=5, source_npi=0,
                   dest_addr=to, dest_ton=1, dest_npi=1, data_coding=data_coding,
                   esm_class=esm_class, protocol_id=0, priority=0, registered_delivery=1,
                   body=body, created_at=0, expires_at=1, not_before=0)


def test_message_text_decodes_gsm_and_ucs2_and_refuses_udh_binary_and_empty() -> None:
    assert message_text(message(b"Hello")) == "Hello"
    assert message_text(message("Déjà".encode("utf-16-be"), data_coding=8)) == "Déjà"
    for bad in (message(b"\x05\x00\x03\x01\x02\x01Hi", esm_class=0x40),
                message(b"\x01\x02", data_coding=4), message(b"")):
        with pytest.raises(Unsendable):
            message_text(bad)


def test_e164_takes_international_digits_with_or_without_plus_only() -> None:
    assert e164("33612345678") == e164("+33612345678") == "+33612345678"
    for bad in ("0612", "+33 6 12", "ACME", "1234567890123456"):
        with pytest.raises(ValueError):
            e164(bad)


def test_billing_basic_up_to_160_characters_single_beyond_conversation_after_a_reply() -> None:
    now = 1_000_000.0
    assert billing_class("é" * 160, None, now) == BASIC  # characters, not octets
    assert billing_class("a" * 161, None, now) == SINGLE
    assert billing_class("a" * 161, now - 3600, now) == CONVERSATION
    assert billing_class("hi", now - 24 * 3600, now) == BASIC  # the window is 24 h


def test_ttl_is_a_protobuf_duration_in_seconds() -> None:
    assert duration(90.5) == "90.500s"


def test_credentials_file_is_a_service_account_or_a_client_secret(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps({"type": "service_account", "client_email": "a@b",
                              "private_key": pem, "private_key_id": "k1"}))
    cs = tmp_path / "cs.json"
    cs.write_text(json.dumps({"client_id": "smsgw", "client_secret": "s"}))
    assert load_credentials(sa) == ServiceAccount("a@b", pem, key_id="k1")
    sa.write_text(json.dumps({"type": "service_account", "client_email": "a@b",
                              "private_key": "PEM"}))
    with pytest.raises(ValueError, match=r"sa\.json: the service account's private_key is "
                                         "not a usable PEM"):
        load_credentials(sa)  # parsed when read, not at the first token request
    assert load_credentials(cs) == ClientSecret("smsgw", "s")
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "service_account"}')
    with pytest.raises(ValueError, match=r"bad\.json: a service account key needs"):
        load_credentials(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_credentials(tmp_path / "missing.json")
