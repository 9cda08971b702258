"""`smsgw message cancel ID` against a running gateway: a message not sent yet (of any account)
is cancelled for good and its sender gets its DELETED receipt; one sent or final is refused
with the reason (exit 1); --json prints the daemon's answer."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from gateway.model import State
from smpp.receipt import parse_receipt
from tests.stack import SmpplibEsme, running_stack, wait_for
from tests.test_admin import smsgw


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    with capture_logs():
        yield


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short directory: a Unix socket path holds at most 107 octets."""
    with tempfile.TemporaryDirectory(prefix="smsgw-cancel-") as d:
        yield Path(d)


async def test_message_cancel_cancels_a_waiting_message_and_refuses_a_sent_one(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_stack(state_dir) as (running, sim):
        sock = str(running.config.admin_socket)
        esme = SmpplibEsme(running.smpp_port)

        def submit() -> list[str]:
            esme.bind()
            for dest in ("33611111111", "33622222222"):
                esme.submit(dest, b"Hello", schedule_delivery_time="000000010000000R")
            esme.submit("33633333333", b"Hello now")
            esme.read_until(lambda: len(esme.resps) == 3 and len(esme.delivered) == 1)
            return [r.message_id.decode() for r in esme.resps]

        with trio.fail_after(30):
            ids = await trio.to_thread.run_sync(submit)
        # the answers may come in any order (the commits): which id is which, from the store
        by_dest = {}
        for message_id in ids:
            stored = await running.store.get_message(message_id)
            assert stored is not None
            by_dest[stored.dest_addr] = message_id
        first, second, sent = (by_dest[d] for d in ("33611111111", "33622222222",
                                                     "33633333333"))
        status, out, _ = await smsgw(capsys, "message", "cancel", first, "--socket", sock)
        assert status == 0 and out.strip() == (f"{first}: cancelled: it will not be sent; its "
                                               "DELETED receipt is owed to its sender")
        status, out, _ = await smsgw(capsys, "message", "cancel", second, "--socket", sock,
                                     "--json")
        assert status == 0 and json.loads(out)["state"] == "CANCELLED"
        with trio.fail_after(30):
            await trio.to_thread.run_sync(
                lambda: esme.read_until(lambda: len(esme.delivered) == 3))
        stats = {r.id: r.stat for p in esme.delivered
                 if (r := parse_receipt(bytes(p.short_message))) is not None}
        assert stats == {first: "DELETED", second: "DELETED", sent: "DELIVRD"}
        stored = await running.store.get_message(first)
        assert stored is not None and stored.state is State.CANCELLED
        history = [(e.kind, e.detail) for e in await running.store.events_of(first)]
        assert history[1] == ("cancelled", {"by": "admin"})  # after "accepted"
        status, _, err = await smsgw(capsys, "message", "cancel", first, "--socket", sock)
        assert status == 1 and "CANCELLED already: nothing to cancel" in err
        status, _, err = await smsgw(capsys, "message", "cancel", sent, "--socket", sock)
        assert status == 1 and "DELIVERED already" in err
        status, _, err = await smsgw(capsys, "message", "cancel", "f" * 32, "--socket", sock)
        assert status == 1 and "no message" in err
        status, out, _ = await smsgw(capsys, "message", "show", first, "--socket", sock)
        assert status == 0 and "CANCELLED" in out and "cancelled" in out
        await wait_for(lambda: len(sim.submitted) == 1)
        assert [r.destination_addr for r in sim.submitted] == ["33633333333"]
        await trio.to_thread.run_sync(esme.close)
