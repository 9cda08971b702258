"""The daemon's life cycle as systemd sees it: READY, STATUS with live counts and WATCHDOG
pings (all sent from the trio event loop), then STOPPING and the graceful drain on SIGTERM.

The drain stops intake and operator attempts, waits for the operators' answers and their
commits, unbinds upstream and operator sessions concurrently, lets the webhook POSTs in flight
be answered (none new) and commits report deletions, all within `[gateway] shutdown_timeout`;
the store then commits what is queued and closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio

from gateway import sdnotify

if TYPE_CHECKING:
    from gateway.daemon import Running

log = structlog.get_logger("gateway.lifecycle")

STATUS_INTERVAL = 5.0  # seconds between two STATUS= updates


def status_line(running: Running) -> str:
    """The live counts systemctl status shows: binds, unfinished messages, reports owed."""
    upstream = {conn for server in running.servers
                for state in server.accounts.values() for conn in state.binds}
    smsc = sum(c.sessions for c in running.connectors.values())
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
                    operator_answers=sum(c.unanswered for c in running.connectors.values()),
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
    connectors = list(running.connectors.values())
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
