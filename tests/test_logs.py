"""Logs never carry a full phone number or message text, and no value makes a line unbounded.

The `redact` processor is checked on its own (field names, nesting, non-string values,
truncation), every log call of the packages is checked to use a field name it recognises,
and real flows through the running stack are logged to a buffer that is then searched.
"""

from __future__ import annotations

import ast
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from gateway import logs
from gateway.config import SmscConfig
from gateway.logs import mask_number, redact
from gateway.model import Message, State
from smpp.connection import Connection
from smpp.pdu import Bind, DeliverSm, Pdu
from smpp.session import Side
from tests.stack import SmpplibEsme, running_stack, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _redacted(**fields: Any) -> dict[str, Any]:
    return dict(redact(None, "info", {"event": "test", **fields}))


# -- the processor, field by field ------------------------------------------------------------

def test_phone_number_fields_keep_only_country_code_and_last_two_digits() -> None:
    out = _redacted(to="447700900123", source_addr="+33612345678", dest_addr="4915112345678",
                    destination_addr=b"33612345678", msisdn=447700900123,
                    sender="+1 (202) 555-0147", number="07700900123", address="36111")
    assert out["to"] == "+44***23"
    assert out["source_addr"] == "+33***78"
    assert out["dest_addr"] == "+49***78"
    assert out["destination_addr"] == "+33***78"  # bytes
    assert out["msisdn"] == "+44***23"  # an int
    assert out["sender"] == "+1***47"  # punctuation ignored
    assert out["number"] == "***23"  # national format: no country code to tell
    assert out["address"] == "***11"  # a short code


def test_field_names_ending_like_an_address_are_masked() -> None:
    out = _redacted(src_addr="447700900123", mo_address="33612345678",
                    mo_addresses=["33612345678", "36111"], phone_number="447700900123")
    assert out == {"event": "test", "src_addr": "+44***23", "mo_address": "+33***78",
                   "mo_addresses": ["+33***78", "***11"], "phone_number": "+44***23"}


def test_alphanumeric_sender_ids_and_empty_addresses_stay() -> None:
    out = _redacted(source_addr="ACME", sender="Shop24", to="", dest=None)
    assert out == {"event": "test", "source_addr": "ACME", "sender": "Shop24", "to": "",
                   "dest": None}


def test_a_long_value_with_letters_is_not_taken_for_a_sender_id() -> None:
    assert mask_number("tel:+447700900123") == "+44***23"


def test_a_huge_number_field_is_cut_not_parsed() -> None:
    out = _redacted(to="4" * 60_000 + "12", source_addr="x" * 60_000)
    assert out["to"] == "***12"
    assert out["source_addr"].endswith("[truncated: 59744 more characters]")


def test_message_text_fields_are_replaced_by_their_length() -> None:
    out = _redacted(text="Your code is 918273", short_message=b"Your code is 918273",
                    message_payload=bytearray(300), body="x" * 5, raw=b"\x00\x01",
                    payload=None, content=["Your code"])
    assert out["text"] == "<19 characters withheld>"
    assert out["short_message"] == "<19 octets withheld>"
    assert out["message_payload"] == "<300 octets withheld>"
    assert out["body"] == "<5 characters withheld>"
    assert out["raw"] == "<2 octets withheld>"
    assert out["payload"] is None
    assert out["content"] == "<withheld>"


def test_fields_are_found_inside_nested_mappings_and_lists() -> None:
    out = _redacted(dests=[{"addr": "447700900123", "ton": 1}, {"addr": "33612345678"}],
                    context={"to": ["447700900123"], "text": "secret", "smsc": "sim",
                             "inner": {"msisdn": "33612345678"}},
                    to={"ton": 1, "digits": "447700900123"})
    assert out["dests"] == [{"addr": "+44***23", "ton": 1}, {"addr": "+33***78"}]
    assert out["context"] == {"to": ["+44***23"], "text": "<6 characters withheld>",
                              "smsc": "sim", "inner": {"msisdn": "+33***78"}}
    assert out["to"]["digits"] == "+44***23"  # everything under a number field is a number


def test_other_values_pass_unchanged_and_objects_holding_numbers_are_withheld() -> None:
    msg = Message(id="m1", account="demo", source_addr="ACME", source_ton=5, source_npi=0,
                  dest_addr="447700900123", dest_ton=1, dest_npi=1, data_coding=0,
                  esm_class=0, protocol_id=0, priority=0, registered_delivery=1,
                  body=b"Your code is 918273", created_at=0.0, expires_at=1.0, not_before=0.0,
                  state=State.QUEUED, next_attempt_at=0.0)
    out = _redacted(count=3, ratio=0.5, ok=True, none=None, smsc_id="0000001F",
                    item=msg, error=ValueError("boom"), smsc_ids=("a", "b"))
    assert out == {"event": "test", "count": 3, "ratio": 0.5, "ok": True, "none": None,
                   "smsc_id": "0000001F", "item": "<Message withheld>",
                   "error": "ValueError('boom')", "smsc_ids": ["a", "b"]}


def test_long_values_are_truncated_with_a_marker() -> None:
    out = _redacted(system_id="A" * 60_000, blob=b"\x00" * 60_000, items=list(range(10_000)),
                    mapping={f"k{i}": i for i in range(1000)})
    assert out["system_id"] == "A" * logs.MAX_CHARS + "...[truncated: 59744 more characters]"
    assert out["blob"].startswith("00" * (logs.MAX_CHARS // 2))
    assert out["blob"].endswith("[truncated: 59872 more octets]")
    assert out["items"][: logs.MAX_ITEMS] == list(range(logs.MAX_ITEMS))
    assert out["items"][-1] == f"[{10_000 - logs.MAX_ITEMS} more items]"
    assert len(out["mapping"]) == logs.MAX_ITEMS + 1 and "more entries" in out["mapping"]["..."]


def test_deep_nesting_is_cut() -> None:
    deep: Any = "447700900123"
    for _ in range(10):
        deep = [deep]
    out = _redacted(nest=deep)
    assert "447700900123" not in json.dumps(out) and "nested too deep" in json.dumps(out)


# -- the configured pipeline -------------------------------------------------------------------

@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """Logging configured as the daemon does it, written to a buffer; restored afterwards."""
    buffer = io.StringIO()
    logs.configure("debug", file=buffer, cache=False)
    yield buffer
    structlog.reset_defaults()


def test_a_peer_cannot_make_a_log_line_much_longer_than_its_input(
        log_buffer: io.StringIO) -> None:
    system_id = "\x00" * 60_000  # each NUL is 6 characters of JSON
    structlog.get_logger("test").warning("upstream.bind_refused", system_id=system_id)
    [line] = log_buffer.getvalue().splitlines()
    assert len(line) < 2_000
    assert json.loads(line)["system_id"].endswith("[truncated: 59744 more characters]")


def test_a_traceback_is_kept_head_and_tail(log_buffer: io.StringIO) -> None:
    try:
        raise ValueError("x" * 20_000 + " the end")
    except ValueError:
        structlog.get_logger("test").exception("boom", to="447700900123")
    entry = json.loads(log_buffer.getvalue())
    assert entry["to"] == "+44***23"
    assert entry["exception"].startswith("Traceback") and entry["exception"].endswith("the end")
    assert len(entry["exception"]) < logs.MAX_EXCEPTION_CHARS + 100


# -- every log call of the packages names its numbers and texts so that they are caught -------

_NUMBER_ATTRS = frozenset({"source_addr", "destination_addr", "dest_addr", "addr", "msisdn",
                           "mo_addresses"})
_TEXT_ATTRS = frozenset({"short_message", "message_payload", "body", "raw", "text",
                         "MESSAGE_PAYLOAD"})
_LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "msg"})


def _log_fields() -> Iterator[tuple[str, str, set[str]]]:
    """(where, field name, names used in its value) for every keyword of every log call
    (lengths aside)."""
    for package in ("gateway", "routing", "smpp", "rules"):
        for path in sorted((ROOT / package).glob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in _LOG_METHODS
                        and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "log"):
                    continue
                for kw in node.keywords:
                    value = kw.value
                    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
                            and value.func.id == "len":
                        continue  # a length is not the text
                    names = {n.attr for n in ast.walk(kw.value) if isinstance(n, ast.Attribute)}
                    names |= {n.id for n in ast.walk(kw.value) if isinstance(n, ast.Name)}
                    yield f"{path.name}:{node.lineno}", kw.arg or "**", names


def test_every_logged_number_or_text_is_under_a_field_name_the_processor_knows() -> None:
    found = list(_log_fields())
    assert len(found) > 50  # the scan sees the log calls
    for where, field, names in found:
        if names & _TEXT_ATTRS:
            assert field.lower() in logs.TEXT_FIELDS, f"{where}: {field}= logs message text"
        elif names & _NUMBER_ATTRS:
            assert logs.field_kind(field) == "phone", f"{where}: {field}= logs a phone number"


# -- end to end: real flows through the running stack ------------------------------------------

GOOD_DEST = "447700900123"
BAD_DEST = "4477009001x7"
MO_FROM = "447700900456"
UNOWNED = "447700900789"
RECEIPT_FROM = "447700900321"
SECRET = "Your code is 918273"
MO_TEXT = "STOP please 5512"
UNOWNED_TEXT = "hello unowned 7788"


class _RawSmsc:
    """An SMSC of the test's own making: it accepts any bind and, once bound, sends one
    receipt whose text has no id (unreadable), with the message's text quoted in it."""

    def __init__(self) -> None:
        self.port = 0
        self.answered: list[Pdu] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, stream: trio.SocketStream) -> None:
        await Connection(stream, Side.SMSC, name="raw").run(self._on_request)

    async def _on_request(self, conn: Connection, pdu: Pdu) -> None:
        conn.respond(pdu.response(system_id="raw") if isinstance(pdu, Bind) else pdu.response())
        if isinstance(pdu, Bind):
            receipt = DeliverSm(source_addr_ton=1, source_addr_npi=1, source_addr=RECEIPT_FROM,
                                destination_addr="ACME", esm_class=0x04,
                                short_message=f"sub:001 stat:DELIVRD text:{SECRET}".encode())
            self.answered.append(await conn.request(receipt))


def _events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


async def test_flows_through_the_stack_log_no_number_and_no_text(
        tmp_path: Path, log_buffer: io.StringIO) -> None:
    async with trio.open_nursery() as nursery:
        raw = _RawSmsc()
        await nursery.start(raw.serve)
        extra = SmscConfig(name="raw", host="127.0.0.1", port=raw.port, system_id="gw",
                           password="pw", reconnect_delay=0.05)
        async with running_stack(tmp_path, extra_smscs=(extra,)) as (gw, sim):
            esme = SmpplibEsme(gw.smpp_port)

            def submits() -> None:
                esme.bind()
                esme.submit(BAD_DEST, SECRET.encode())
                esme.read_until(lambda: bool(esme.errors))
                esme.submit(GOOD_DEST, SECRET.encode())
                esme.read_until(lambda: bool(esme.resps) and bool(esme.delivered))

            with trio.fail_after(20):
                await trio.to_thread.run_sync(submits)
                await sim.inject_mo(MO_FROM, "36111", MO_TEXT)
                await trio.to_thread.run_sync(
                    lambda: esme.read_until(lambda: len(esme.delivered) == 2))
                await trio.to_thread.run_sync(esme.close)
                await sim.inject_mo(MO_FROM, UNOWNED, UNOWNED_TEXT)
                await wait_for(lambda: '"mo.unowned"' in log_buffer.getvalue()
                               and bool(raw.answered))
        nursery.cancel_scope.cancel()

    output = log_buffer.getvalue()
    seen = {e["event"] for e in _events(output)}
    assert {"upstream.submit_refused", "message.final", "mo.received", "mo.unowned",
            "receipt.orphan"} <= seen
    for number in (GOOD_DEST, BAD_DEST, MO_FROM, UNOWNED, RECEIPT_FROM):
        assert number[2:] not in output, number  # not even without its country code
    for text in (SECRET, MO_TEXT, UNOWNED_TEXT):
        for form in (text, text[:10], text.encode().hex(), text.encode()[:10].hex()):
            assert form not in output, form
    [unowned] = [e for e in _events(output) if e["event"] == "mo.unowned"]
    assert unowned["to"] == "+44***89"
    [refused] = [e for e in _events(output) if e["event"] == "upstream.submit_refused"]
    assert refused["detail"].startswith("destination address has a character other than")
