"""Property-based run of the HTTP API: schemathesis generates requests from the OpenAPI
document (valid and invalid ones) against a running gateway and checks every answer: no 500,
no undocumented status, content type, headers and bodies as documented. Bounded
(max_examples) so the suite stays fast."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.config import HttpConfig
from tests.openapi_check import DOC
from tests.stack import running_stack

schema = schemathesis.openapi.from_dict(DOC)
AUTH = {"Authorization": "Bearer demo-token"}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway (with its simulator) run by trio in a thread for the module's tests."""
    state: Path = tmp_path_factory.mktemp("properties")
    ready: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.Event] | BaseException] = \
        queue.Queue()

    async def main() -> None:
        async with running_stack(state, http=HttpConfig(port=0)) as (gw, _sim):
            stop = trio.Event()
            ready.put((f"http://127.0.0.1:{gw.http_port}", trio.lowlevel.current_trio_token(),
                       stop))
            await stop.wait()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            ready.put(exc)

    thread = threading.Thread(target=run, name="gateway")
    thread.start()
    started = ready.get(timeout=60)
    if isinstance(started, BaseException):
        raise started
    url, token, stop = started
    try:
        yield url
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(60)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers_and_never_a_500(
        case: schemathesis.Case, base_url: str) -> None:
    # Every other check of schemathesis applies. Schema-valid data may still be refused 422:
    # the rules beyond the schema (an alphanumeric sender of at most 11 characters, the
    # account's max_parts, send_at before the validity's end, "P" alone is no duration).
    case.call_and_validate(base_url=base_url, headers=AUTH,
                           excluded_checks=[positive_data_acceptance])
