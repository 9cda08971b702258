"""Where one account's stored reports stand between memory and the store's pages, and the
taking of reports other nodes left free.

Shared by the reporter (SMPP) and the webhook deliverer (HTTP), which each keep at most
`memory` reports of an account in memory and read the rest from the store by pages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.model import Report
from gateway.store import Store, StoreError

CLAIM_BATCH = 500  # free reports claimed per transaction


async def claim_free(store: Store, accounts: Sequence[str], via: str,
                     take: Callable[[Report], None]) -> int:
    """Several nodes share the store: claim the free reports of these accounts going ``via``
    (left by a node without a receiver bind of the account, or by a dead node), batch after
    batch, handing each to ``take``; how many. A store failure (counted and logged by the
    store) ends it: the next poll tries again."""
    claimed = 0
    while accounts:
        try:
            reports = await store.claim_reports(accounts, via, CLAIM_BATCH)
        except StoreError:
            break
        for report in reports:
            take(report)
        claimed += len(reports)
        if len(reports) < CLAIM_BATCH:
            break
    return claimed


class Paging:
    """Reports are committed in id order. While `backlog` is set, every report taken into
    memory so far has an id <= `cursor`, and admits() leaves new reports with a higher id in
    the store; a page read takes `id > cursor`, so it never brings in a report twice. A
    report handed over with an id <= cursor (committed before one already taken in, handed
    over after it) is taken in at once: no page would bring it."""

    def __init__(self) -> None:
        self.backlog = False  # some of its reports may be in the store only
        self.cursor = 0  # every stored report with an id <= cursor is, or was, in memory
        self.kept_max = 0  # highest id taken into memory
        self.left_max = 0  # highest id admits() left in the store

    def admits(self, report_id: int, in_memory: int, memory: int) -> bool:
        """A committed report handed over: True to take it into memory now, False to leave
        it in the store for its page."""
        if not self.backlog:
            if in_memory < memory:
                return True
            self.backlog = True  # memory full: from now on new reports wait in the store
            self.cursor = max(self.cursor, self.kept_max)
        if report_id <= self.cursor:
            return True
        self.left_max = max(self.left_max, report_id)
        return False

    def kept(self, report_id: int) -> None:
        """A report was taken into memory."""
        self.kept_max = max(self.kept_max, report_id)

    def read(self, report_id: int) -> None:
        """A page brought this report (kept, or handled at once)."""
        self.cursor = max(self.cursor, report_id)

    def page_done(self, got: int, room: int) -> None:
        """A page of `room` reports brought `got`: fewer, and nothing left behind beyond the
        cursor, means everything stored is in memory or handled."""
        if got < room and self.left_max <= self.cursor:
            self.backlog = False
