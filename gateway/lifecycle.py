"""The daemon's life cycle as systemd sees it: READY, STATUS with live counts and WATCHDOG
pings (all sent from the trio event loop), then STOPPING and the graceful drain on SIGTERM.

The drain stops intake and operator attempts, waits for the operators' answers and their
commits, unbinds upstream and operator sessions concurrently, lets the webhook POSTs in flight
be answered (none new) and commits report deletions, all within `[gateway] shutdown_timeout`;
the store then commits what is queued and closes. An SMSC connector a reload removes is
drained the same way on its own (`retire`), while the daemon runs on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog
import trio

from gateway import metrics, sdnotify
from gateway.model import Part, PartState
from routing.smsc import SmscConnector, SubmitResult
from smpp.constants import Status

if TYPE_CHECKING:
    from gateway.daemon import Running
    from gateway.dispatcher import Live

log = structlog.get_logger("gateway.lifecycle")

STATUS_INTERVAL = 5.0  # seconds between two STATUS= updates
# A connector a reload removed keeps its binds (sending nothing) until every part submitted
# through it has its receipt, at most this long; then it unbinds.
RECEIPT_DRAIN = 300.0
DRAIN_POLL = 0.5  # seconds between two looks at the receipts it still owes
# What its queued, unsent submits are answered: temporary, so their messages are tried again
# (on the next connector of their route, or later).
WITHDRAWN = SubmitResult(None, Status.ESME_RINVBNDSTS, temporary=True,
                         detail="not sent: its connector was removed by a reload")


def status_line(running: Running) -> str:
    """The live counts systemctl status shows: binds, unfinished messages, reports owed."""
    upstream = {conn for server in running.servers
                for state in server.accounts.values() for conn in state.binds}
    smsc = sum(c.sessions for c in [*running.connectors.values(), *running.draining])
    return (f"upstream binds {len(upstream)}, SMSC binds {smsc}, "
            f"unfinished messages {running.store.unfinished}, "
            f"reports pending {running.reporter.pending_total()}"
            + (f", webhooks pending {running.webhooks.pending_total()}"
               if running.webhooks is not None else ""))


def ready(running: Running) -> None:
    """READY=1: every service was started (listeners listening, connectors' tasks running:
    an SMSC that cannot be reached does not hold this back)."""
    sdnotify.notify(f"READY=1\nSTATUS={status_line(running)}")


async def report_status(running: Running, interval: float = STATUS_INTERVAL) -> None:
    """STATUS= every `interval` seconds."""
    while True:
        await trio.sleep(interval)
        sdnotify.notify(f"STATUS={status_line(running)}")


async def watchdog(interval: float) -> None:
    """WATCHDOG=1 every `interval` seconds from this task: an event loop blocked for longer
    than WatchdogSec sends none, and systemd restarts the daemon."""
    while True:
        sdnotify.notify("WATCHDOG=1")
        await trio.sleep(interval)


async def stop(running: Running) -> None:
    """STOPPING=1, then the drain (see the module docstring), given at most
    `[gateway] shutdown_timeout` seconds; a drain cut short is logged with what was left."""
    timeout = running.config.shutdown_timeout
    sdnotify.notify(f"STOPPING=1\nSTATUS=stopping: {status_line(running)}")
    log.info("daemon.stopping", timeout=timeout)
    started = trio.current_time()
    with trio.move_on_after(timeout) as scope:
        scope.shield = True
        await drain(running)
    if scope.cancelled_caught:
        log.warning("daemon.shutdown_timeout", timeout=timeout,
                    operator_answers=sum(c.unanswered for c in [*running.connectors.values(),
                                                                 *running.draining]),
                    upstream_connections=sum(len(s.connections) for s in running.servers),
                    detail="the drain did not finish within [gateway] shutdown_timeout: "
                           "unanswered submits are sent again after the restart")
    else:
        log.info("daemon.drained", seconds=round(trio.current_time() - started, 3))
    sdnotify.notify(f"STATUS=stopped: {status_line(running)}")


async def drain(running: Running) -> None:
    """Stop taking work, finish what is under way, leave the peers cleanly."""
    running.stopping.set()  # other front ends (the HTTP server) stop taking requests on this
    for server in running.servers:
        server.stop_accepting()
    running.dispatcher.stop_attempts()
    connectors = [*running.connectors.values(), *running.draining]
    for connector in connectors:
        connector.stop_sending()
    unanswered = sum(c.unanswered for c in connectors)
    if unanswered:
        sdnotify.notify(f"STATUS=stopping: waiting for {unanswered} operator answers")
    async with trio.open_nursery() as nursery:
        for connector in connectors:
            nursery.start_soon(connector.wait_answered)
    await running.dispatcher.settle()  # the answers handled and their outcomes committed
    sdnotify.notify("STATUS=stopping: unbinding")
    async with trio.open_nursery() as nursery:
        for server in running.servers:
            nursery.start_soon(server.close_all)
        for connector in connectors:
            nursery.start_soon(connector.close)
    await running.dispatcher.settle()
    await running.reporter.flush_deletes()
    if running.webhooks is not None:  # POSTs in flight answered, their deletions committed
        await running.webhooks.drain()


async def retire(running: Running, connector: SmscConnector,
                 parts: Sequence[tuple[Live, Part]]) -> None:
    """Drain a connector a reload took out of the dispatcher (removed, or replaced by a changed
    one under its name): its queued submits are handed back (WITHDRAWN), those on the wire get
    their answers (each bounded by response_timeout), then it stays bound, taking receipts and
    MO, until none of `parts` (those submitted through it) waits for its receipt or
    RECEIPT_DRAIN has passed; then it unbinds and its task ends. (A replaced connector also
    waits for the receipts of the parts it handed back that its successor sent again: they
    come to either, under the same name.)"""
    name = connector.name
    started = trio.current_time()
    try:
        withdrawn = await connector.withdraw(WITHDRAWN)
        log.info("smsc.draining", smsc=name, withdrawn=withdrawn,
                 unanswered=connector.unanswered, awaiting_receipts=_awaiting(parts))
        await connector.wait_answered()
        # their answers handled: the parts they accepted are SUBMITTED now (bounded: under
        # load the dispatcher may always have a write to commit)
        with trio.move_on_after(connector.config.response_timeout):
            await running.dispatcher.settle()
        with trio.move_on_after(RECEIPT_DRAIN):
            while _awaiting(parts):
                await trio.sleep(DRAIN_POLL)
        # the receipts' answers (sent once their effect is committed) go out before the unbind
        with trio.move_on_after(connector.config.response_timeout):
            await running.dispatcher.settle()
            await connector.wait_delivered()
        left = _awaiting(parts)
        if left:
            log.warning("smsc.drain_cut_short", smsc=name, awaiting_receipts=left,
                        seconds=RECEIPT_DRAIN,
                        detail="unbound with receipts still owed: their messages stay in "
                               "flight until their validity ends (or the connector is back)")
        await connector.close()
        log.info("smsc.retired", smsc=name, seconds=round(trio.current_time() - started, 3))
    finally:
        with contextlib.suppress(ValueError):
            running.draining.remove(connector)
        if name not in running.connectors:  # not replaced under the same name
            for gauge in (metrics.SMSC_QUEUE, metrics.SMSC_BINDS):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)


def _awaiting(parts: Sequence[tuple[Live, Part]]) -> int:
    """The parts still waiting for their receipt (not those of an attempt their message left
    for another: their receipts are only noted in its history)."""
    return sum(part.state is PartState.SUBMITTED and not live.msg.state.final
               and any(p is part for p in live.parts) for live, part in parts)
