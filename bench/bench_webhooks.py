"""Benchmark of gateway.webhooks: N receipt events of one account signed, POSTed, answered
204 and deleted, to a Starlette receiver (hypercorn, same process), per `--concurrency`;
prints events/s and the p50/p99 POST latency. A script, not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clock import WallClock
from gateway.http_api import serve_http
from gateway.model import Report, ReportKind, State, new_message_id
from gateway.store import Store
from gateway.webhooks import Endpoint, Webhooks, webhook_report


def receipt(now: float) -> Report:
    report = Report(account="bench", kind=ReportKind.RECEIPT, message_id=new_message_id(),
                    source_addr="33612345678", source_ton=1, source_npi=1, dest_addr="SHOP",
                    dest_ton=5, dest_npi=0, data_coding=0, body=b"id:x stat:DELIVRD",
                    created_at=now, state=State.DELIVERED)
    return webhook_report(report, client_ref="bench", stat="DELIVRD")


async def run_one(path: Path, total: int, concurrency: int) -> None:
    latencies: list[float] = []

    async def handle(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    app = Starlette(routes=[Route("/hook", handle, methods=["POST"])])
    async with trio.open_nursery() as servers:
        port = await servers.start(serve_http, app, "127.0.0.1", 0)
        async with Store.open(path, synchronous="normal") as store, \
                trio.open_nursery() as nursery:
            clock = WallClock()
            reports = [receipt(clock.now()) for _ in range(total)]
            await store.add_reports(reports)
            hooks = Webhooks(store, clock, {"bench": Endpoint(
                url=f"http://127.0.0.1:{port}/hook", secret="bench-secret-0123456789",
                concurrency=concurrency)}, memory=total)
            await nursery.start(hooks.run)
            original = hooks._attempt

            async def timed(acc, report):  # type: ignore[no-untyped-def]
                started = time.perf_counter()
                try:
                    return await original(acc, report)
                finally:
                    latencies.append(time.perf_counter() - started)

            hooks._attempt = timed  # type: ignore[method-assign]
            started = time.perf_counter()
            hooks.add_many(reports)
            while hooks.pending_total():
                await trio.sleep(0.01)
            await hooks.flush_deletes()
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        servers.cancel_scope.cancel()
    latencies.sort()
    print(f"concurrency {concurrency:3d}: {total / elapsed:7.0f} events/s, POST p50 "
          f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 "
          f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    for concurrency in args.concurrency:
        with tempfile.TemporaryDirectory() as tmp:
            trio.run(run_one, Path(tmp) / "bench.sqlite3", args.events, concurrency)


if __name__ == "__main__":
    main()
