"""Benchmark of gateway.store: group-committed writes under concurrent callers.

Prints single-message add_messages() calls/s with N concurrent trio tasks (the mean batch
size the writer achieved, and the process CPU per call, SQLite's thread included), then
save_message() updates/s; `--synchronous full|normal` as in [store]. A script, not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio

from gateway.model import Message, Part, PartState, State, new_message_id
from gateway.store import Store


def make_message(now: float) -> Message:
    return Message(
        id=new_message_id(), account="bench", source_addr="SHOP", source_ton=5, source_npi=0,
        dest_addr="33612345678", dest_ton=1, dest_npi=1, data_coding=0, esm_class=0,
        protocol_id=0, priority=0, registered_delivery=1, body=b"Your code is 123456" * 3,
        created_at=now, expires_at=now + 86400, not_before=now,
    )  # fmt: skip


async def bench_adds(store: Store, tasks: int, total: int) -> tuple[float, list[Message]]:
    """`tasks` tasks each add_messages([one]) in a loop until `total` were added."""
    now = time.time()
    msgs = [make_message(now) for _ in range(total)]
    per_task = total // tasks

    async def worker(chunk: list[Message]) -> None:
        for m in chunk:
            await store.add_messages([m])

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(worker, msgs[i * per_task : (i + 1) * per_task])
    return time.perf_counter() - t0, msgs[: per_task * tasks]


def cpu_ms(cpu0: float, calls: int) -> str:
    """Process CPU (all threads) per call since cpu0, in ms."""
    return f"{(time.process_time() - cpu0) / max(calls, 1) * 1000:.3f} ms CPU/call"


async def bench_updates(store: Store, msgs: list[Message], tasks: int) -> float:
    """`tasks` tasks each save_message() one message in flight with one part, in a loop."""
    per_task = len(msgs) // tasks

    async def worker(chunk: list[Message]) -> None:
        for m in chunk:
            m.state = State.IN_FLIGHT
            m.attempts += 1
            m.connector = "smsc-a"
            part = Part(
                m.id,
                1,
                "smsc-a",
                smsc_id=m.id[:16],
                state=PartState.SUBMITTED,
                submitted_at=time.time(),
            )
            await store.save_message(m, [part])

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(worker, msgs[i * per_task : (i + 1) * per_task])
    return time.perf_counter() - t0


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        async with Store.open(
            path, batch_max=args.batch_max, synchronous=args.synchronous,
            unfinished_max=max(args.total, 1),
        ) as store:
            cpu0 = time.process_time()
            elapsed, msgs = await bench_adds(store, args.tasks, args.total)
            n = len(msgs)
            print(
                f"add_messages([1 msg]) x {n} from {args.tasks} tasks "
                f"(synchronous={args.synchronous}, batch_max={args.batch_max}): "
                f"{n / elapsed:,.0f} calls/s, {store.commits} commits, "
                f"mean batch {store.committed_ops / max(store.commits, 1):.1f} rows, "
                f"{cpu_ms(cpu0, n)}"
            )
            commits0, ops0 = store.commits, store.committed_ops
            cpu0 = time.process_time()
            elapsed = await bench_updates(store, msgs, args.tasks)
            commits = store.commits - commits0
            print(
                f"save_message(msg, [part]) x {n} from {args.tasks} tasks: "
                f"{n / elapsed:,.0f} calls/s, {commits} commits, "
                f"mean batch {(store.committed_ops - ops0) / max(commits, 1):.1f} rows, "
                f"{cpu_ms(cpu0, n)}"
            )
            t0 = time.perf_counter()
            unfinished = await store.unfinished_messages()
            print(
                f"unfinished_messages(): {len(unfinished)} rows in {time.perf_counter() - t0:.3f} s"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--total", type=int, default=20_000)
    parser.add_argument("--batch-max", type=int, default=512)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    trio.run(main, parser.parse_args())
