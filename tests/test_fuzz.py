"""Socket-level fuzzing: hostile peers on many connections while a customer keeps submitting.

The gateway runs as a real process (its RSS is its own; "never dies" means its PID lives), the
simulator in another. Sixteen connections, each from its own loopback address, write frames
drawn by tests/fuzz_pdus.py from one seed, before bind and after a good one; meanwhile smpplib's
Client binds, submits with receipts requested and unbinds, again and again.

The rules: the daemon stays up and logs no error or traceback; the customer sees no error
status, no disconnect, and a receipt for every accepted message; every frame a fuzzer gets back
is well-formed, answers something it sent and never accepts what must be refused; the gateway
closes every hostile connection in time; its RSS stays within RSS_PEAK_GROWTH_MAX while fuzzing
and RSS_SETTLED_GROWTH_MAX after; then it holds no more sockets or descriptors than before, and
a fresh bind and submit still work. The seed is drawn per run and named in every failure:
SMSGW_FUZZ_SEED=<n> replays its draws (not the interleaving); SMSGW_FUZZ_SECONDS=<s> runs longer.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import smpplib.smpp
import trio

from gateway.passwords import hash_password
from smpp.connection import UNBIND_DRAIN
from smpp.constants import RESPONSE_BIT, CommandId, Status
from smpp.pdu import (
    Bind,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    DeliverSmResp,
    EnquireLink,
    FrameReader,
    GenericNack,
    Pdu,
    PduError,
    SubmitSmResp,
    Unbind,
    decode,
    encode,
    is_response,
)
from smpp.receipt import parse_receipt
from tests.fuzz_pdus import Frame, Mutator, header
from tests.procs import Proc, ProcessExited, free_port
from tests.stack import SmpplibEsme

SEED = int(os.environ.get("SMSGW_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
FUZZ_SECONDS = float(os.environ.get("SMSGW_FUZZ_SECONDS") or 10)
SCENARIOS_MAX = 400  # per fuzzing connection slot, whatever the time allows

# The listener under test: short timeouts so that hostile connections are cut within the run.
BIND_TIMEOUT, INACTIVITY, PROBE, RESPONSE_TIMEOUT, WRITE_TIMEOUT = 2.0, 5.0, 2.0, 4.0, 1.5
LOCKOUT_THRESHOLD = 4  # failed binds before an address is locked out (fewer scrypt runs)
PREBIND_LIMIT = 8  # PDUs taken before bind (README)
SLACK = 4.0  # a busy 2-core machine: a timeout fires this late at most
UNAUTHENTICATED = [f"127.0.0.{10 + i}" for i in range(8)]  # never bind successfully
AUTHENTICATED = [f"127.0.0.{30 + i}" for i in range(8)]  # bind as "fuzz", then misbehave
FUZZ_PASSWORD, DEMO_PASSWORD = "fuzzpw", "demopass"

# Memory bounds on the gateway's RSS, from the warmed-up baseline. While fuzzing (sampled every
# 0.1 s): two password checks at once (auth_concurrency) hold scrypt's 16 MiB each; a hostile
# connection at most 256 KiB of output for a peer that does not read, a 64 KiB frame and a
# 64 KiB read (6 MiB for 16); the rest is allocator slack. Once the fuzzers are gone: the
# store's page caches and allocator slack. Seen here: +30..40 MiB at the peak, +6..11 MiB
# after a 10 s run, +19 MiB after a 360 s one (anonymous memory creeping up ever more slowly:
# +4 MiB in the first 120 s without fuzzers, while Python's own heap, traced in-process, was
# back under 1 MiB). The bugs this guards against (issue 6) grew 100 MiB per socket before
# bind, 350 MiB in 40 s for one peer that stopped reading, and 16 MiB per thread that ever
# checked a password (gateway/cli.py release_large_blocks).
RSS_PEAK_GROWTH_MAX = 64 * 1024 * 1024
RSS_SETTLED_GROWTH_MAX = 24 * 1024 * 1024

PREBIND_ANSWERS = frozenset({CommandId.BIND_TRANSMITTER_RESP, CommandId.BIND_RECEIVER_RESP,
                             CommandId.BIND_TRANSCEIVER_RESP, CommandId.ENQUIRE_LINK_RESP,
                             CommandId.UNBIND_RESP, CommandId.GENERIC_NACK})
BIND_ANSWERS = frozenset({CommandId.BIND_TRANSMITTER_RESP, CommandId.BIND_RECEIVER_RESP,
                          CommandId.BIND_TRANSCEIVER_RESP})
# What an ESME may never have accepted (status 0): requests only an SMSC sends, and binds once
# bound (a second bind). Submitting on a receiver bind neither.
NEVER_OK = frozenset({CommandId.DELIVER_SM, CommandId.OUTBIND, CommandId.ALERT_NOTIFICATION,
                      CommandId.BIND_TRANSMITTER, CommandId.BIND_RECEIVER,
                      CommandId.BIND_TRANSCEIVER})
TX_ONLY = frozenset({CommandId.SUBMIT_SM, CommandId.SUBMIT_MULTI, CommandId.DATA_SM,
                     CommandId.QUERY_SM, CommandId.CANCEL_SM, CommandId.REPLACE_SM})
GATEWAY_REQUESTS = frozenset({CommandId.DELIVER_SM, CommandId.ENQUIRE_LINK, CommandId.UNBIND})

_SIM_TOML = """\
[simulator]
host = "127.0.0.1"
port = 0
control_host = "127.0.0.1"
control_port = 0
window = 100
receipt_delay = "50ms"
seed = {seed}
"""

_GW_TOML = """\
[gateway]
node = "fuzz"
log_level = "info"

[store]
path = "{store}"

[http]
enabled = false

[[listener]]
host = "127.0.0.1"
port = {port}
bind_timeout = "{bind_timeout}s"
inactivity_timeout = "{inactivity}s"
enquire_link_interval = "{probe}s"
response_timeout = "{response_timeout}s"
write_timeout = "{write_timeout}s"
auth_failure_delay = "10ms"
auth_failure_delay_max = "250ms"
auth_lockout_threshold = {lockout}

[[account]]
system_id = "demo"
password_hash = "{demo_hash}"
throughput = 1000

[[account]]
system_id = "fuzz"
password_hash = "{fuzz_hash}"
max_binds = 64
throughput = 300

[[smsc]]
name = "sim"
host = "127.0.0.1"
port = {sim_port}
system_id = "sim"
password = "simpass"
binds = 2
window = 50
reconnect_delay = "50ms"
reconnect_delay_max = "500ms"

[[route]]
name = "default"
smscs = ["sim"]
"""


# --------------------------------------------------------------------------- the gateway


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _held_sockets(port: int) -> int:
    """Server-side TCP sockets of the listener on `port` still open in the gateway:
    ESTABLISHED, or CLOSE_WAIT (the peer left and the gateway has not closed its end)."""
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if int(local.split(":")[1], 16) == port and state in ("01", "08"):
            held += 1
    return held


def _log_problems(proc: Proc) -> list[str]:
    """Error-level lines, logged exceptions and raw tracebacks in the gateway's output."""
    problems = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("level") in ("error", "critical") or "exception" in entry:
                    problems.append(line[:2000])
        elif "Traceback" in line:
            problems.append(line)
    return problems


class Gateway:
    """The simulator and the gateway as processes; stop() stops both by PID."""

    def __init__(self, directory: Path) -> None:
        self.procs: list[Proc] = []
        sim_toml = directory / "sim.toml"
        sim_toml.write_text(_SIM_TOML.format(seed=SEED % 1000))
        sim = Proc("simulator", ["simulate-smsc", "--config", str(sim_toml)], directory)
        self.procs.append(sim)
        sim_port = int(sim.wait_event("simulator.ready", timeout=30)["port"])
        config = directory / "gw.toml"
        for _attempt in range(5):  # a free port can be taken before the gateway binds it
            self.port = free_port()
            config.write_text(_GW_TOML.format(
                store=directory / "store" / "smsgw.sqlite3", port=self.port,
                bind_timeout=BIND_TIMEOUT, inactivity=INACTIVITY, probe=PROBE,
                response_timeout=RESPONSE_TIMEOUT, write_timeout=WRITE_TIMEOUT,
                lockout=LOCKOUT_THRESHOLD, demo_hash=hash_password(DEMO_PASSWORD),
                fuzz_hash=hash_password(FUZZ_PASSWORD), sim_port=sim_port))
            config.chmod(0o600)
            self.proc = Proc("gateway", ["run", "--config", str(config)], directory)
            self.procs.append(self.proc)
            try:
                self.proc.wait_event("daemon.ready", timeout=30)
                self.proc.wait_event("smsc.bound", timeout=30)
                return
            except ProcessExited as exc:
                if "in use" not in exc.proc.tail():
                    raise
        raise AssertionError("no free port for the gateway after 5 attempts")

    @property
    def alive(self) -> bool:
        return self.proc.popen.poll() is None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=10)


# --------------------------------------------------------------------------- the fuzzers


@dataclass
class Findings:
    """What the fuzzers did and every rule they saw broken (each names its connection)."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    scenarios: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)


class Peer:
    """One fuzzing connection: what it sent (to judge the answers), and a reader that checks
    every frame the gateway sends back and answers the gateway's requests: "polite" peers
    properly, "rude" ones often with an error status, a generic_nack, the wrong response or
    twice, "silent" ones never (draws from their own `rng`)."""

    def __init__(self, stream: trio.SocketStream, name: str, findings: Findings,
                 manners: str = "polite", rng: random.Random | None = None) -> None:
        self.stream = stream
        self.name = name
        self.findings = findings
        self.manners = manners
        self.rng = rng or random.Random(0)
        self.sent: dict[int, list[int]] = collections.defaultdict(list)  # seq -> command ids
        self.requests: collections.Counter[int] = collections.Counter()  # by sequence
        self.answers: collections.Counter[int] = collections.Counter()  # by sequence
        self.unbind: int | None = None  # sequence of our unbind
        self.must_fail: set[int] = set()  # sequences of requests that may not get status 0
        self.credentials: int | None = None  # sequence of our bind with the right password
        self.mode: CommandId | None = None  # our bind's command once accepted
        self.bind_answered = trio.Event()
        self.closed = trio.Event()  # EOF or reset from the gateway
        self.muted = False  # after a length lie nothing more is written
        self.listening = trio.Event()
        self.listening.set()
        self.unbound_answers = 0
        self._writing = trio.Lock()

    def problem(self, text: str) -> None:
        self.findings.problems.append(f"{self.name}: {text}")

    # -- writing ---------------------------------------------------------------------------
    async def send(self, frame: Frame, pieces: list[bytes] | None = None) -> bool:
        """Write a frame, in `pieces` (a short pause between two) if given; False once the
        gateway has closed the connection."""
        if self.muted:
            return False
        self.findings.sent[frame.kind] += 1
        self._note(frame.data, frame.kind)
        if frame.terminal:
            self.muted = True
        try:
            async with self._writing:
                for k, piece in enumerate(pieces or [frame.data]):
                    if k:
                        await trio.sleep(0.002)
                    await self.stream.send_all(piece)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _note(self, data: bytes, kind: str) -> None:
        """Remember the command and sequence of every frame in `data` (up to a length lie)."""
        pos = 0
        while (head := header(data[pos:pos + 16])) is not None:
            length, cid, _, seq = head
            self.sent[seq].append(cid)
            if not is_response(cid):
                self.requests[seq] += 1
            if kind == "valid" and self.mode is not None and (
                    cid in NEVER_OK or (self.mode == CommandId.BIND_RECEIVER and cid in TX_ONLY)):
                self.must_fail.add(seq)
            if length < 16:
                break
            pos += length

    async def bind(self, system_id: str, password: str, cls: type[Bind], sequence: int) -> bool:
        """Bind with the right password; True when accepted in time."""
        self.credentials = sequence
        data = encode(cls(sequence=sequence, system_id=system_id, password=password))
        if not await self.send(Frame(data, "good_bind")):
            return False
        with trio.move_on_after(BIND_TIMEOUT + SLACK):
            await self.bind_answered.wait()
        if not self.bind_answered.is_set() and not self.closed.is_set():
            self.problem(f"bind with the right password unanswered after {BIND_TIMEOUT + SLACK}s")
        return self.mode is not None

    async def leave(self, mut: Mutator) -> None:
        """Unbind (a sequence of its own): every earlier request must be answered before the
        unbind_resp, and the connection closed."""
        seq = mut.sequence()
        while seq in self.sent or seq == 0:
            seq = mut.sequence()
        self.unbind = seq
        if await self.send(Frame(encode(Unbind(sequence=seq)), "unbind")):
            await self.expect_close(UNBIND_DRAIN + SLACK, "unbind")

    async def _answer(self, request: Pdu) -> None:
        """Answer one of the gateway's requests as our manners say, unless a write of ours is
        blocked (a reader that waited for it would stop reading: both sides stuck on full
        buffers)."""
        if self.muted or self.manners == "silent":
            return
        answer = request.response()
        if self.manners == "rude":
            roll = self.rng.random()
            if roll < 0.3:
                answer.status = self.rng.choice((Status.ESME_RSYSERR, Status.ESME_RTHROTTLED,
                                                 Status.ESME_RMSGQFUL, 0x42424242))
            elif roll < 0.4:
                answer = GenericNack(request.sequence, self.rng.choice((0, Status.ESME_RINVCMDID)))
            elif roll < 0.5:
                answer = SubmitSmResp(request.sequence, message_id="wrong kind")
            elif roll < 0.6:
                answer = DeliverSmResp(self.rng.randint(1, 0x7FFFFFFF))  # another sequence
        try:
            self._writing.acquire_nowait()
        except trio.WouldBlock:
            return
        try:
            data = encode(answer)
            await self.stream.send_all(data + data if self.rng.random() < 0.05 else data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        finally:
            self._writing.release()

    # -- reading ---------------------------------------------------------------------------
    async def read_loop(self) -> None:
        frames = FrameReader(max_length=1 << 20)
        try:
            while True:
                await self.listening.wait()
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                frames.feed(data)
                try:
                    ready = list(frames.frames())
                except PduError as exc:
                    self.problem(f"the gateway's frames cannot be split: {exc}")
                    return
                for frame in ready:
                    await self._check(frame)
        finally:
            self.closed.set()

    async def _check(self, frame: bytes) -> None:
        try:
            pdu = decode(frame)
        except PduError as exc:
            self.problem(f"undecodable frame from the gateway: {exc}; {frame[:64].hex()}")
            return
        cid = pdu.command_id
        if not is_response(cid):
            if cid not in GATEWAY_REQUESTS or self.mode is None:
                self.problem(f"gateway sent {cid.name} on a "
                             f"{self.mode.name if self.mode else 'missing'} bind")
            else:
                if cid == CommandId.DELIVER_SM and self.mode == CommandId.BIND_TRANSMITTER:
                    self.problem("deliver_sm on a transmitter bind")
                await self._answer(pdu)
            return
        self.answers[pdu.sequence] += 1
        if cid == CommandId.UNBIND_RESP and pdu.sequence == self.unbind:
            unanswered = [seq for seq, n in self.requests.items() if self.answers[seq] < n]
            if unanswered:
                self.problem(f"unbind_resp before the answers to {len(unanswered)} earlier "
                             f"requests (sequences {unanswered[:5]})")
        if self.mode is None:
            self.unbound_answers += 1
            if self.unbound_answers == PREBIND_LIMIT + 1:
                self.problem(f"answer {self.unbound_answers} before bind: {cid.name}")
            if cid not in PREBIND_ANSWERS:
                self.problem(f"{cid.name} before bind")
        sent = self.sent.get(pdu.sequence)
        if sent is None:
            if pdu.sequence != 0 or cid != CommandId.GENERIC_NACK:
                self.problem(f"{cid.name} (status 0x{pdu.status:08X}) answers sequence "
                             f"{pdu.sequence}, never sent")
            return
        if cid != CommandId.GENERIC_NACK and (cid & ~RESPONSE_BIT) not in sent:
            self.problem(f"{cid.name} answers sequence {pdu.sequence}, sent with "
                         f"{[hex(c) for c in sent]}")
        if pdu.status == 0 and pdu.sequence in self.must_fail and len(sent) == 1:
            self.problem(f"{cid.name} status 0 for a request that must be refused on a "
                         f"{self.mode.name if self.mode else 'missing'} bind")
        if cid in BIND_ANSWERS and self.mode is None:
            if pdu.status == 0:
                if pdu.sequence != self.credentials:
                    self.problem(f"{cid.name} status 0 for a bind without the password")
                self.mode = CommandId(cid & ~RESPONSE_BIT)
            elif pdu.sequence == self.credentials:
                self.problem(f"right password refused: {Status(pdu.status).name}")
            self.bind_answered.set()

    async def expect_close(self, within: float, why: str) -> None:
        """The gateway must close the connection within `within` seconds (what it sends
        meanwhile is still read and checked)."""
        self.listening.set()
        with trio.move_on_after(within):
            await self.closed.wait()
            return
        self.problem(f"still open {within:.0f}s after {why}")


async def _connect(port: int, source: str, rcvbuf: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket()
    if rcvbuf is not None:  # before connect: the TCP window stays that small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


@contextlib.asynccontextmanager
async def _peer(port: int, source: str, name: str, findings: Findings, *,
                manners: str = "polite", rng: random.Random | None = None,
                rcvbuf: int | None = None) -> AsyncIterator[Peer]:
    """A fuzzing connection from `source` with its reader running; on exit the connection is
    closed and the reader stopped."""
    stream = await _connect(port, source, rcvbuf)
    peer = Peer(stream, name, findings, manners, rng)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_loop)
        try:
            yield peer
        finally:
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def _prebind_junk(peer: Peer, mut: Mutator, rng: random.Random) -> None:
    """Up to a dozen frames before bind: binds with garbage and overlong fields, corrupted
    and wrong-state PDUs, responses to nothing, maybe a length lie; then the gateway closes."""
    for _ in range(rng.randint(1, 12)):
        frame = mut.frame(bound=False)
        if not await peer.send(frame, mut.cuts(frame.data)) or frame.terminal:
            break
    await peer.expect_close(BIND_TIMEOUT + SLACK, "junk before bind")


async def _enquire_flood(peer: Peer, mut: Mutator, rng: random.Random) -> None:
    """A thousand enquire_links before bind: a few answers, then the connection closes."""
    flood = b"".join(encode(EnquireLink(sequence=mut.sequence())) for _ in range(1000))
    await peer.send(Frame(flood, "enquire_link_flood"))
    await peer.expect_close(SLACK, "an enquire_link flood before bind")


async def _bound_junk(peer: Peer, mut: Mutator, rng: random.Random) -> None:
    """Bind as "fuzz", then a random mix, often several frames in one write (the gateway
    handles a read's submits together); leave by unbind, abruptly, by going silent, or with
    a length lie."""
    cls = rng.choice((BindTransmitter, BindTransceiver, BindReceiver))
    if not await peer.bind("fuzz", FUZZ_PASSWORD, cls, mut.sequence()):
        return
    ends = peer.findings.scenarios
    for _ in range(rng.randint(5, 100)):
        roll = rng.random()
        if roll < 0.03:
            burst = rng.choice((50, 200, 1000))
            flood = b"".join(encode(EnquireLink(sequence=mut.sequence())) for _ in range(burst))
            frame = Frame(flood, "enquire_link_flood")
        elif roll < 0.05:  # more than the incoming window at once
            burst = rng.choice((100, 400))
            flood = b"".join(encode(mut.plausible_submit()) for _ in range(burst))
            frame = Frame(flood, "submit_flood")
        else:
            frames = [mut.frame(bound=True, lies=0) for _ in range(rng.choice((1, 1, 4, 16)))]
            for extra in frames[:-1]:
                peer.findings.sent[extra.kind] += 1
            frame = Frame(b"".join(f.data for f in frames), frames[-1].kind)
        if not await peer.send(frame, mut.cuts(frame.data)):
            ends["bound_junk: closed by the gateway"] += 1
            return
        if rng.random() < 0.2:
            await trio.sleep(rng.random() * 0.05)
    ending = rng.choices(("unbind", "abrupt", "silence", "length lie"), (3, 3, 1, 2))[0]
    ends[f"bound_junk: {ending}"] += 1
    if ending == "unbind":
        await peer.leave(mut)
    elif ending == "silence":
        peer.muted = True
        await peer.expect_close(INACTIVITY + SLACK, "silence")
    elif ending == "length lie":
        lie = mut.length_lie()
        if await peer.send(lie):
            await peer.expect_close(INACTIVITY + SLACK, f"a {lie.kind} frame")


async def _deaf(peer: Peer, mut: Mutator, rng: random.Random) -> None:
    """Bind, stop reading, flood requests that are answered (4 MiB at most, 2 s at most:
    the gateway stops reading us once its answers pile up); the gateway must close the
    connection once its writes make no progress (its memory is held by the RSS bounds)."""
    if not await peer.bind("fuzz", FUZZ_PASSWORD, BindTransceiver, mut.sequence()):
        return
    peer.listening = trio.Event()  # the reader stops
    burst = b"".join(encode(EnquireLink(sequence=mut.sequence())) for _ in range(4096))
    with trio.move_on_after(2.0):
        for _ in range(64):  # 4 MiB at most
            if not await peer.send(Frame(burst, "deaf_flood")):
                break
    peer.muted = True
    await trio.sleep(rng.random() * WRITE_TIMEOUT)
    await peer.expect_close(WRITE_TIMEOUT + INACTIVITY + SLACK, "not reading")


Scenario = Callable[[Peer, Mutator, random.Random], Any]
# (scenario, weight)
UNAUTHENTICATED_SCENARIOS: tuple[tuple[Scenario, int], ...] = ((_prebind_junk, 8),
                                                                (_enquire_flood, 1))
AUTHENTICATED_SCENARIOS: tuple[tuple[Scenario, int], ...] = ((_bound_junk, 6), (_deaf, 1))


async def _fuzz_slot(port: int, source: str, scenarios: tuple[tuple[Scenario, int], ...],
                     slot_seed: int, findings: Findings, deadline: float) -> None:
    """Run scenarios one connection after another from `source` until `deadline`."""
    rng = random.Random(slot_seed)
    mut = Mutator(rng)
    for number in range(SCENARIOS_MAX):
        if trio.current_time() >= deadline:
            return
        scenario = rng.choices([s for s, _ in scenarios], [w for _, w in scenarios])[0]
        kind = scenario.__name__.strip("_")
        findings.scenarios[kind] += 1
        async with _peer(port, source, f"{source} #{number} {kind}", findings,
                         manners=rng.choices(("polite", "rude", "silent"), (6, 3, 1))[0],
                         rng=random.Random(rng.random()),
                         rcvbuf=4096 if scenario is _deaf else None) as peer:
            with trio.move_on_at(deadline):
                await scenario(peer, mut, rng)


# --------------------------------------------------------------------------- the customer


class Customer:
    """The well-behaved upstream: smpplib's Client from 127.0.0.1, in a thread. Each cycle
    binds, submits BATCH messages with receipts requested (one at a time, each answered
    before the next), waits a little for their receipts, and unbinds."""

    BATCH = 10
    ANSWER_DEADLINE = 10.0  # a submit_sm_resp later than this is a hang
    RECEIPT_WAIT = 3.0  # per cycle; receipts still missing are collected at the end

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[str] = []
        self.receipts: collections.Counter[str] = collections.Counter()
        self.stats: list[str] = []
        self.errors: list[str] = []
        self.cycles = 0
        self.slowest = 0.0  # seconds, the slowest submit_sm_resp (printed, not asserted)
        self.stop = threading.Event()
        self.submitted = 0

    def run(self) -> None:
        """Cycles until stop is set or something goes wrong (recorded in errors)."""
        while not self.stop.is_set() and not self.errors:
            self.session(self.BATCH, self.RECEIPT_WAIT)

    def session(self, count: int, receipt_wait: float, *, all_receipts: bool = False) -> None:
        esme = SmpplibEsme(self.port)
        client = esme.client
        client.set_error_pdu_handler(
            lambda pdu: self.errors.append(f"{pdu.command} status 0x{pdu.status:08X}"))
        client.set_message_received_handler(self._receipt)
        cycle = self.cycles = self.cycles + 1
        try:
            esme.bind("transceiver")
            mine: list[str] = []
            for _ in range(count):
                self.submitted += 1
                before = len(esme.resps)
                started = time.monotonic()
                esme.submit(f"3361{self.submitted:07d}", b"customer")
                esme.read_until(lambda b=before: len(esme.resps) > b, self.ANSWER_DEADLINE)
                self.slowest = max(self.slowest, time.monotonic() - started)
                resp = esme.resps[-1]
                if resp.status == 0:
                    mine.append(resp.message_id.decode())
            self.accepted.extend(mine)
            wanted = self.accepted if all_receipts else mine
            with contextlib.suppress(TimeoutError):
                esme.read_until(lambda: all(self.receipts[m] for m in wanted), receipt_wait)
            self._unbind(esme)
        except Exception as exc:
            self.errors.append(f"cycle {cycle}: {exc!r}")
            with contextlib.suppress(Exception):
                client.disconnect()

    def _receipt(self, pdu: Any, **_kwargs: Any) -> None:
        if not pdu.esm_class & 0x04:
            self.errors.append(f"a deliver_sm that is not a receipt: {pdu.short_message!r}")
            return
        self.receipts[pdu.receipted_message_id.rstrip(b"\0").decode()] += 1
        receipt = parse_receipt(pdu.short_message)
        self.stats.append(receipt.stat if receipt is not None else "unreadable")

    def _unbind(self, esme: SmpplibEsme) -> None:
        """unbind, read up to its unbind_resp (a receipt read meanwhile is counted, not
        answered: the gateway sends it again later), disconnect."""
        client = esme.client
        client.send_pdu(smpplib.smpp.make_pdu("unbind", client=client))
        deadline = time.monotonic() + self.ANSWER_DEADLINE
        while time.monotonic() < deadline:
            pdu = client.read_pdu()
            if pdu.command == "unbind_resp":
                if pdu.status:
                    self.errors.append(f"unbind_resp status 0x{pdu.status:08X}")
                break
            if pdu.command == "deliver_sm":
                self._receipt(pdu)
        else:
            self.errors.append("no unbind_resp")
        client.disconnect()


# --------------------------------------------------------------------------- the test


@contextlib.contextmanager
def _gateway(directory: Path) -> Iterator[Gateway]:
    gateway = Gateway(directory)
    try:
        yield gateway
    finally:
        gateway.stop()


async def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.05)
        return True
    return False


async def test_fuzzing_peers_never_hurt_the_daemon_nor_a_customer_and_memory_stays_bounded(
        tmp_path: Path) -> None:
    seed = f"SMSGW_FUZZ_SEED={SEED}"
    print(f"fuzz: {seed} SMSGW_FUZZ_SECONDS={FUZZ_SECONDS:g}")
    with _gateway(tmp_path) as gw, trio.fail_after(FUZZ_SECONDS + 120):
        pid = gw.proc.pid
        customer = Customer(gw.port)
        # Warm-up: a customer cycle (its password is then verified and cached) and refused
        # binds (scrypt on both auth threads). The baselines are taken after it, with no
        # upstream connection open.
        await trio.to_thread.run_sync(customer.session, 2, 5.0)

        async def refused_bind(source: str) -> None:
            async with _peer(gw.port, source, f"warm-up {source}", Findings()) as peer:
                await peer.send(Frame(encode(BindTransceiver(sequence=1, system_id="demo",
                                                             password="wrong")), "bind"))
                await peer.expect_close(SLACK, "a refused bind")

        async with trio.open_nursery() as nursery:
            for k in range(4):
                nursery.start_soon(refused_bind, f"127.0.0.{250 + k}")
        assert await _wait(lambda: _held_sockets(gw.port) == 0, SLACK)
        assert not customer.errors, f"{seed}: warm-up: {customer.errors}"
        base_rss, base_fds = _rss(pid), _descriptors(pid)

        findings = Findings()
        peak = base_rss
        deadline = trio.current_time() + FUZZ_SECONDS

        timeline: list[str] = []  # every 10 s: for long runs by hand (a trend is a leak)

        async def sample_rss() -> None:
            nonlocal peak
            for tick in itertools.count():
                with contextlib.suppress(OSError):
                    rss = _rss(pid)
                    peak = max(peak, rss)
                    if tick % 100 == 0:
                        timeline.append(f"{tick // 10}s {rss >> 20} MiB")
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_rss)
            async with trio.open_nursery() as fuzzers:
                for k, source in enumerate(UNAUTHENTICATED):
                    fuzzers.start_soon(_fuzz_slot, gw.port, source, UNAUTHENTICATED_SCENARIOS,
                                       SEED * 100 + k, findings, deadline)
                for k, source in enumerate(AUTHENTICATED):
                    fuzzers.start_soon(_fuzz_slot, gw.port, source, AUTHENTICATED_SCENARIOS,
                                       SEED * 100 + 50 + k, findings, deadline)
                # the customer cycles as long as the fuzzers run, then ends its cycle
                fuzzers.start_soon(trio.to_thread.run_sync, customer.run)
                try:
                    await trio.sleep_until(deadline)
                finally:
                    customer.stop.set()
            nursery.cancel_scope.cancel()

        summary = (f"{seed}: sent {dict(findings.sent)}, scenarios {dict(findings.scenarios)}; "
                   f"customer: {customer.cycles} cycles, {len(customer.accepted)} accepted, "
                   f"slowest answer {customer.slowest * 1000:.0f} ms; RSS {base_rss >> 20} MiB "
                   f"-> peak {peak >> 20} MiB")
        print(summary)
        assert gw.alive, f"{summary}\nthe gateway died:\n{gw.proc.tail()}"
        assert not customer.errors, f"{summary}\ncustomer: {customer.errors}"
        assert not findings.problems, f"{summary}\n" + "\n".join(findings.problems[:30])

        # Every fuzzing connection is gone: sockets and descriptors back to the baseline.
        assert await _wait(lambda: _held_sockets(gw.port) == 0, INACTIVITY + SLACK), \
            f"{summary}\n{_held_sockets(gw.port)} upstream sockets still held"
        assert await _wait(lambda: _descriptors(pid) <= base_fds, SLACK), \
            f"{summary}\ndescriptors {base_fds} -> {_descriptors(pid)}"
        settled = _rss(pid)
        print(f"RSS every 10 s: {', '.join(timeline)}; once the fuzzers are gone: "
              f"{settled >> 20} MiB")
        assert peak - base_rss <= RSS_PEAK_GROWTH_MAX, \
            f"{summary}\nRSS grew {(peak - base_rss) >> 20} MiB while fuzzing"
        assert settled - base_rss <= RSS_SETTLED_GROWTH_MAX, \
            f"{summary}\nRSS {(settled - base_rss) >> 20} MiB above the baseline after fuzzing"

        # Still serving: a fresh bind and submit, and every receipt owed to the customer.
        await trio.to_thread.run_sync(lambda: customer.session(1, 20.0, all_receipts=True))
        assert not customer.errors, f"{summary}\nafter fuzzing: {customer.errors}"
        assert len(customer.accepted) == customer.submitted
        missing = [m for m in customer.accepted if not customer.receipts[m]]
        assert not missing, f"{summary}\n{len(missing)} accepted without receipt: {missing[:5]}"
        assert set(customer.receipts) <= set(customer.accepted)
        assert set(customer.stats) == {"DELIVRD"}
        assert gw.alive
        assert not _log_problems(gw.proc), f"{summary}\n" + "\n".join(_log_problems(gw.proc)[:5])
