"""Test-only launcher of `smsgw`: SIGUSR1 blocks the main thread, which runs the trio event
loop, for $SMSGW_TEST_BLOCK_SECONDS, with a notification on $NOTIFY_SOCKET before and after.

Python runs a signal handler in the main thread, so while this one sleeps the event loop runs
nothing: tests/test_systemd.py checks that no watchdog ping is sent meanwhile.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from gateway import cli, sdnotify


def main() -> int:
    seconds = float(os.environ["SMSGW_TEST_BLOCK_SECONDS"])

    def block(_signum: int, _frame: FrameType | None) -> None:
        sdnotify.notify("TEST_LOOP_BLOCKED=1")
        time.sleep(seconds)
        sdnotify.notify("TEST_LOOP_BLOCKED=0")

    signal.signal(signal.SIGUSR1, block)
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
