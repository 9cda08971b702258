"""The ESME-facing server under bad input and lifecycle rules, over real sockets.

Malformed PDUs are answered (or the connection closed) without harming other sessions; an
unbound connection is closed; systemd hears READY=1 and STOPPING=1.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from pathlib import Path

import pytest
import trio

from gateway.config import ListenerConfig
from smpp.connection import Connection
from smpp.constants import CommandId, Status
from smpp.pdu import BindTransceiver, FrameReader, Pdu, SubmitSm, decode
from smpp.session import Side
from tests.stack import running_stack, wait_for


async def _ignore(_conn: Connection, _pdu: Pdu) -> None:
    return None


async def _bound(nursery: trio.Nursery, port: int) -> Connection:
    conn = Connection(await trio.open_tcp_stream("127.0.0.1", port), Side.ESME)
    nursery.start_soon(conn.run, _ignore)
    resp = await conn.request(BindTransceiver(system_id="demo", password="demopass"))
    assert resp.status == 0
    return conn


def _submit(dest: str = "33612345678") -> SubmitSm:
    return SubmitSm(source_addr="ACME", source_addr_ton=5, destination_addr=dest,
                    dest_addr_ton=1, dest_addr_npi=1, short_message=b"hi")


async def _read_pdus(stream: trio.SocketStream, count: int) -> list[Pdu]:
    reader = FrameReader()
    out: list[Pdu] = []
    with trio.fail_after(5):
        while len(out) < count:
            data = await stream.receive_some(4096)
            if not data:
                break
            reader.feed(data)
            while (frame := reader.next_frame()) is not None:
                out.append(decode(frame))
    return out


async def test_garbage_length_closes_only_that_connection(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim), trio.open_nursery() as nursery:
        healthy = await _bound(nursery, gw.smpp_port)
        bad = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)
        await bad.send_all(struct.pack(">IIII", 4, 4, 0, 1))
        [nack] = await _read_pdus(bad, 1)
        assert nack.command_id == CommandId.GENERIC_NACK
        with trio.fail_after(5):
            assert await bad.receive_some(10) == b""  # closed by the gateway
        resp = await healthy.request(_submit())
        assert resp.status == 0
        await healthy.unbind()
        nursery.cancel_scope.cancel()


async def test_unknown_command_and_truncated_submit_are_answered_and_session_survives(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        stream = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)
        from smpp.pdu import encode
        await stream.send_all(encode(BindTransceiver(sequence=1, system_id="demo",
                                                     password="demopass")))
        [bind_resp] = await _read_pdus(stream, 1)
        assert bind_resp.status == 0
        unknown = struct.pack(">IIII", 16, 0x000000AB, 0, 2)
        truncated = struct.pack(">IIII", 20, CommandId.SUBMIT_SM, 0, 3) + b"\0\0\0\0"
        good = encode(dataclasses.replace(_submit(), sequence=4))
        await stream.send_all(unknown + truncated + good)
        answers = {p.sequence: p for p in await _read_pdus(stream, 3)}
        assert answers[2].command_id == CommandId.GENERIC_NACK
        assert answers[2].status == Status.ESME_RINVCMDID
        assert answers[3].command_id == CommandId.SUBMIT_SM_RESP
        assert answers[3].status == Status.ESME_RINVCMDLEN
        assert answers[4].status == 0
        await stream.aclose()


async def test_connection_that_never_binds_is_closed_after_bind_timeout(tmp_path: Path) -> None:
    listener = ListenerConfig(port=0, bind_timeout=0.3, auth_failure_delay=0.01)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim):
        stream = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""


async def test_bad_validity_period_is_refused_with_rinvexpiry(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim), trio.open_nursery() as nursery:
        conn = await _bound(nursery, gw.smpp_port)
        bad = dataclasses.replace(_submit(), validity_period="2611XX103000000+")
        assert (await conn.request(bad)).status == Status.ESME_RINVEXPIRY
        past = dataclasses.replace(_submit(), validity_period="200101000000000+")
        assert (await conn.request(past)).status == Status.ESME_RINVEXPIRY
        await conn.unbind()
        assert sim.submitted == []
        nursery.cancel_scope.cancel()


async def test_scheduled_message_is_not_sent_before_its_time(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, sim), trio.open_nursery() as nursery:
        conn = await _bound(nursery, gw.smpp_port)
        scheduled = dataclasses.replace(_submit(), schedule_delivery_time="000000000001000R")
        sent_at = trio.current_time()
        assert (await conn.request(scheduled)).status == 0
        await wait_for(lambda: bool(sim.submitted))
        assert trio.current_time() - sent_at >= 0.95
        await conn.unbind()
        nursery.cancel_scope.cancel()


async def test_systemd_is_told_ready_then_stopping(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    messages: list[bytes] = []
    async with running_stack(tmp_path):
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(sock)
        messages.append(sock.recv(1000))
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(sock)
    messages.append(sock.recv(1000))
    sock.close()
    ready, stopping = (m.decode().split("\n") for m in messages)
    assert ready[0] == "READY=1" and ready[1].startswith("STATUS=upstream binds 0, ")
    assert stopping[0] == "STOPPING=1" and stopping[1].startswith("STATUS=stopping: ")


async def test_messages_acknowledged_to_the_store_are_sent_even_if_the_upstream_drops(
        tmp_path: Path) -> None:
    from smpp.pdu import encode
    async with running_stack(tmp_path) as (gw, sim):
        stream = await trio.open_tcp_stream("127.0.0.1", gw.smpp_port)
        await stream.send_all(encode(BindTransceiver(sequence=1, system_id="demo",
                                                     password="demopass")))
        [bind_resp] = await _read_pdus(stream, 1)
        assert bind_resp.status == 0
        submits = b"".join(encode(dataclasses.replace(_submit(f"3361234560{i}"), sequence=10 + i))
                           for i in range(5))
        await stream.send_all(submits)
        await stream.aclose()  # gone before the answers
        await wait_for(lambda: len(sim.submitted) == 5)
        with trio.fail_after(10):  # the dispatcher's state change commits after the send
            while (await gw.store.stats())["QUEUED"]:
                await trio.sleep(0.01)
