"""The upstream listener against hostile or careless peers, over real sockets.

Each test names the rule it protects: unauthenticated peers are held short, connections are
limited per listener and per source address (refused before anything is allocated), idle
binds cost no task or timer of their own, and one bad peer never slows the others.
"""

from __future__ import annotations

import math
from pathlib import Path

import trio
from structlog.testing import capture_logs

from gateway.config import AccountConfig, ListenerConfig
from gateway.server import UNBOUND_GRACE, address_group
from smpp.connection import Connection
from smpp.constants import Status
from smpp.pdu import (
    BindTransceiver,
    EnquireLink,
    FrameReader,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    decode,
    encode,
)
from smpp.session import Side
from tests.stack import password_hash, running_stack, wait_for


async def _ignore(_conn: Connection, _pdu: Pdu) -> None:
    return None


async def _connect(port: int, source: str = "127.0.0.1") -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def _closed_by_peer(stream: trio.SocketStream, timeout: float = 5.0) -> bool:
    """Read until EOF (True) or the deadline (False); what was read is discarded."""
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


def _submit() -> SubmitSm:
    return SubmitSm(source_addr="ACME", source_addr_ton=5, destination_addr="33612345678",
                    dest_addr_ton=1, dest_addr_npi=1, short_message=b"hi")


async def test_enquire_links_before_bind_get_a_few_answers_then_the_connection_closes(
        tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        stream = await _connect(gw.smpp_port)
        flood = b"".join(encode(EnquireLink(sequence=s)) for s in range(1, 1001))
        await stream.send_all(flood)
        received = b""
        with trio.fail_after(5):
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                received += data
        assert 0 < len(received) <= 8 * 16  # a few enquire_link_resp, nothing more


async def test_a_submit_before_bind_closes_the_connection_unanswered(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as (gw, _sim):
        stream = await _connect(gw.smpp_port)
        submit = _submit()
        submit.sequence = 1
        await stream.send_all(encode(submit))
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""


async def test_connections_over_the_per_address_limit_are_closed_at_once_others_still_served(
        tmp_path: Path) -> None:
    listener = ListenerConfig(port=0, auth_failure_delay=0.01, bind_timeout=30,
                              max_connections=20, max_connections_per_address=3)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim):
        server = gw.servers[0]
        held = [await _connect(gw.smpp_port, "127.0.0.2") for _ in range(3)]
        await wait_for(lambda: len(server.connections) == 3)
        extra = await _connect(gw.smpp_port, "127.0.0.2")
        assert await _closed_by_peer(extra)
        assert len(server.connections) == 3
        # another address is not affected, and binds and submits normally
        async with trio.open_nursery() as nursery:
            conn = Connection(await _connect(gw.smpp_port, "127.0.0.1"), Side.ESME)
            nursery.start_soon(conn.run, _ignore)
            resp = await conn.request(BindTransceiver(system_id="demo", password="demopass"))
            assert resp.status == 0
            assert (await conn.request(_submit())).status == 0
            await conn.unbind()
        # a connection that goes frees its place for the next one of that address
        await held[0].aclose()
        await wait_for(lambda: len(server.connections) == 2)
        again = await _connect(gw.smpp_port, "127.0.0.2")
        assert not await _closed_by_peer(again, timeout=0.3)
        for stream in [*held[1:], again]:
            await stream.aclose()


async def test_connections_over_the_listener_limit_are_closed_at_once(tmp_path: Path) -> None:
    listener = ListenerConfig(port=0, auth_failure_delay=0.01, bind_timeout=30,
                              max_connections=4, max_connections_per_address=100)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim):
        server = gw.servers[0]
        sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        held = [await _connect(gw.smpp_port, s) for s in sources]
        await wait_for(lambda: len(server.connections) == 4)
        assert await _closed_by_peer(await _connect(gw.smpp_port, "127.0.0.6"))
        for stream in held:
            await stream.aclose()


async def test_idle_bound_sessions_cost_two_tasks_each_and_no_timer_task(tmp_path: Path) -> None:
    """The rule: an idle bound session is a reader and a writer task plus one timer-heap
    entry; no sweeper, keepalive, inactivity or bind-deadline task of its own."""
    count = 50
    accounts = {"demo": AccountConfig("demo", password_hash("demopass"), max_binds=count)}
    async with running_stack(tmp_path, accounts=accounts) as (gw, _sim), \
            trio.open_nursery() as nursery:
        before = trio.lowlevel.current_statistics().tasks_living
        conns = []
        for _ in range(count):
            conn = Connection(await _connect(gw.smpp_port), Side.ESME,
                              enquire_link_interval=math.inf)
            nursery.start_soon(conn.run, _ignore)
            resp = await conn.request(BindTransceiver(system_id="demo", password="demopass"))
            assert resp.status == 0
            conns.append(conn)
        await trio.sleep(0.2)
        added = trio.lowlevel.current_statistics().tasks_living - before
        # our client side costs 2 tasks per connection (reader, writer); the gateway's too
        assert added <= 4 * count + 5, f"{added / count:.1f} tasks per idle connection"
        for conn in conns:
            await conn.unbind()
        nursery.cancel_scope.cancel()


async def test_peers_reconnecting_for_each_bad_pdu_cannot_flood_the_log(tmp_path: Path) -> None:
    """The rule: before bind, protocol problems are logged against one budget per listener,
    so a peer that opens a new connection for every bad PDU gets no fresh budget each time."""
    async with running_stack(tmp_path) as (gw, _sim):
        with capture_logs() as logs:
            for n in range(30):
                stream = await _connect(gw.smpp_port, f"127.0.0.{2 + n % 5}")
                if n % 2:  # a response to nothing, then the fatal request
                    await stream.send_all(encode(SubmitSmResp(sequence=9, message_id="x")))
                submit = _submit()
                submit.sequence = 1
                await stream.send_all(encode(submit))
                assert await _closed_by_peer(stream)
        problems = [e for e in logs if e["event"] in ("smpp.protocol_violation",
                                                      "smpp.unexpected_response")]
        assert 1 <= len(problems) <= 5


def test_ipv6_peers_are_counted_by_their_64_network() -> None:
    assert address_group("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert address_group("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_group("64:ff9b::c000:207") == "192.0.2.7"  # through NAT64: its IPv4
    assert address_group("192.0.2.7") == "192.0.2.7"


async def test_one_address_cannot_hold_more_than_its_share_of_unbound_places(
        tmp_path: Path) -> None:
    listener = ListenerConfig(port=0, auth_failure_delay=0.01, bind_timeout=30,
                              max_unbound_per_address=2)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim):
        held = [await _connect(gw.smpp_port, "127.0.0.2") for _ in range(2)]
        await wait_for(lambda: len(gw.servers[0]._unbound) == 2)
        assert await _closed_by_peer(await _connect(gw.smpp_port, "127.0.0.2"))
        other = await _connect(gw.smpp_port, "127.0.0.3")
        assert not await _closed_by_peer(other, timeout=0.3)
        for stream in [*held, other]:
            await stream.aclose()


async def test_idle_unbound_connections_make_room_for_newcomers_not_binds_in_progress(
        tmp_path: Path) -> None:
    """The rule: peers that connect and never bind cannot hold every place on a listener:
    at max_unbound_connections the oldest connection that has sent no bind for a second is
    closed for a newcomer; a bind being decided is never cut (newcomers are refused)."""
    listener = ListenerConfig(port=0, auth_failure_delay=0.01, bind_timeout=30,
                              max_unbound_connections=2)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim):
        server = gw.servers[0]
        real_verify = server.auth._verify

        async def slow_for_guesses(password: str, encoded: str) -> bool:
            if password.startswith("wrong"):
                await trio.sleep(2.0)  # a password check still running
            return await real_verify(password, encoded)

        server.auth._verify = slow_for_guesses  # type: ignore[method-assign]
        deciding = await _connect(gw.smpp_port, "127.0.0.2")
        await deciding.send_all(encode(BindTransceiver(sequence=1, system_id="demo",
                                                       password="wrong")))
        idle = await _connect(gw.smpp_port, "127.0.0.3")
        await wait_for(lambda: len(server._unbound) == 2)
        early = await _connect(gw.smpp_port, "127.0.0.4")  # within the grace: not evicted
        assert await _closed_by_peer(early, timeout=0.5)
        assert not await _closed_by_peer(idle, timeout=0.1)
        await trio.sleep(UNBOUND_GRACE)
        newcomer = await _connect(gw.smpp_port, "127.0.0.4")
        assert await _closed_by_peer(idle)  # idle past the grace: it made room
        async with trio.open_nursery() as nursery:
            conn = Connection(newcomer, Side.ESME)
            nursery.start_soon(conn.run, _ignore)
            resp = await conn.request(BindTransceiver(system_id="demo", password="demopass"))
            assert resp.status == 0
            second = await _connect(gw.smpp_port, "127.0.0.6")
            await second.send_all(encode(BindTransceiver(sequence=1, system_id="demo",
                                                         password="wrong2")))
            await wait_for(lambda: len(server._unbound) == 2)
            refused = await _connect(gw.smpp_port, "127.0.0.5")  # only binds in progress left
            assert await _closed_by_peer(refused)
            reader = FrameReader()
            with trio.fail_after(10):
                while (frame := reader.next_frame()) is None:
                    reader.feed(await deciding.receive_some(100))
            assert decode(frame).status == Status.ESME_RINVPASWD  # answered, never cut
            await conn.unbind()


async def test_a_refused_bind_waiting_out_its_delay_makes_room_for_a_newcomer(
        tmp_path: Path) -> None:
    """The rule: a connection whose bind is refused and only waits out the failure delay
    holds nothing worth keeping: at the unbound limit it is closed for a newcomer (peers
    stopping short of the lockout cannot fill the listener with delayed refusals)."""
    listener = ListenerConfig(port=0, auth_failure_delay=5.0, bind_timeout=30,
                              max_unbound_connections=1)
    async with running_stack(tmp_path, listeners=(listener,)) as (gw, _sim):
        guesser = await _connect(gw.smpp_port, "127.0.0.2")
        await guesser.send_all(encode(BindTransceiver(sequence=1, system_id="demo",
                                                      password="guess")))
        await wait_for(lambda: any(p.refused for p in gw.servers[0]._unbound))
        async with trio.open_nursery() as nursery:
            conn = Connection(await _connect(gw.smpp_port, "127.0.0.3"), Side.ESME)
            nursery.start_soon(conn.run, _ignore)
            assert await _closed_by_peer(guesser, timeout=2.0)  # well before its 5 s answer
            resp = await conn.request(BindTransceiver(system_id="demo", password="demopass"))
            assert resp.status == 0
            await conn.unbind()
