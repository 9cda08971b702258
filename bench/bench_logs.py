"""Benchmark: what the log pipeline costs per line, with and without the `redact` processor.

Run `python bench/bench_logs.py`; each figure is the best of a few bounded loops on one core,
writing JSON lines to an in-memory buffer (no I/O), for the lines the daemon writes most.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable
from typing import Any

import structlog

from gateway import logs

LINES: dict[str, tuple[str, dict[str, Any]]] = {
    "message.accepted (no number)": ("message.accepted", {
        "message_id": "0f" * 16, "account": "demo", "state": "QUEUED", "interface": "smpp"}),
    "mo.unowned (one number)": ("mo.unowned", {"smsc": "sim", "to": "447700900789"}),
    "bind_refused (60 KB system_id)": ("upstream.bind_refused", {
        "system_id": "A" * 60_000, "conn": "127.0.0.1:40000", "status": "0x0000000E"}),
}
LOOPS, SECONDS = 5, 0.3


def _rate(call: Callable[[], None]) -> float:
    """Best lines/s of LOOPS loops of about SECONDS each."""
    best = 0.0
    for _ in range(LOOPS):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < SECONDS:
            for _ in range(100):
                call()
            count += 100
        best = max(best, count / elapsed)
    return best


class _LastLine(io.StringIO):
    """A sink that keeps only the last line written (memory stays flat)."""

    last = ""

    def write(self, text: str) -> int:
        self.last = text
        return len(text)


def main() -> None:
    for redacting in (False, True):
        sink = _LastLine()
        logs.configure("info", file=sink, cache=False)
        if not redacting:
            processors = structlog.get_config()["processors"]
            structlog.configure(processors=[p for p in processors if p is not logs.redact])
        log = structlog.get_logger("bench")
        for name, (event, fields) in LINES.items():
            rate = _rate(functools.partial(log.info, event, **fields))
            label = "with redact   " if redacting else "without redact"
            print(f"{label} {name:32s} {1e6 / rate:7.2f} us/line  "
                  f"{len(sink.last):7d} characters/line")
        structlog.reset_defaults()


if __name__ == "__main__":
    main()
