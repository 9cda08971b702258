"""Deletion of the reports taken upstream (deliver_sm answered, webhook answered, expired),
many per commit, with the history lines of their messages that say so.

Shared by the reporter (SMPP) and the webhook deliverer (HTTP): a crash before the commit
sends those reports again after the restart (at least once), never loses one.
"""

from __future__ import annotations

import trio

from gateway.model import Event
from gateway.store import Store, StoreError


class ReportAcks:
    def __init__(self, store: Store, retry_delay: float) -> None:
        self.store = store
        self.retry_delay = retry_delay  # after a failed deletion commit
        self._ids: list[int] = []  # done with, not deleted yet
        self._events: list[Event] = []  # what their messages' histories get with that deletion
        self._wake = trio.Event()
        self._busy = False  # a deletion commit is under way
        self._committed = trio.Event()  # set after each deletion commit

    def add(self, report_id: int, event: Event | None = None) -> None:
        """Queue a report's deletion (and the history line committed with it)."""
        self._ids.append(report_id)
        if event is not None:
            self._events.append(event)
        self._wake.set()

    async def flush(self) -> None:
        """Return once the deletions queued so far are committed (graceful stop: a report the
        upstream took is not sent again after the restart)."""
        while self._ids or self._busy:
            self._committed = trio.Event()
            self._wake.set()
            await self._committed.wait()

    async def run(self) -> None:
        """Delete what is queued, many per commit, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            ids, self._ids = self._ids, []
            events, self._events = self._events, []
            if not ids:
                self._committed.set()
                continue
            self._busy = True
            try:
                await self.store.ack_reports(ids, events)
            except StoreError:  # counted and logged by the store
                self._ids[:0] = ids  # again; at worst re-sent after a restart
                self._events[:0] = events
                await trio.sleep(self.retry_delay)
                self._wake.set()
            finally:
                self._busy = False
                self._committed.set()
