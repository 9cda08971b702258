"""Circuit breakers end to end: smpplib as the ESME, two SMSC simulators as operators A and B on
127.0.0.1, the route listing A then B, a breaker that opens after 2 failures for 1 s.

Rule protected here: an SMSC that keeps failing has its breaker opened and is skipped (traffic
goes to B without trying A first); once A has recovered and the cool-down has passed, the
half-open probe succeeds, the breaker closes and traffic goes back to A. Each change is logged
(`routing.breaker`) and shown by the `smsgw_smsc_breaker_state` gauge.
"""

from __future__ import annotations

from pathlib import Path

import trio
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway.config import BreakerConfig
from routing.breaker import BreakerState
from tests.stack import SmpplibEsme, running_stack, wait_for
from tests.test_operator_failover import A_THEN_B, operator_a, smsc_a


def gauge(smsc: str) -> float | None:
    return REGISTRY.get_sample_value("smsgw_smsc_breaker_state", {"smsc": smsc})


async def test_a_failing_smsc_opens_its_breaker_traffic_goes_to_b_then_back_after_recovery(
        tmp_path: Path) -> None:
    async with operator_a(error=1.0) as a, running_stack(
            tmp_path, extra_smscs=(smsc_a(a),), routes=A_THEN_B,
            breaker=BreakerConfig(failures=2, cooldown=1.0)) as (gw, b):
        assert gw.routing is not None
        breaker = gw.routing.breakers["a"]
        assert gauge("a") == 0 and gauge("sim") == 0

        async def send(n: int) -> None:
            esme = SmpplibEsme(gw.smpp_port)
            await trio.to_thread.run_sync(esme.submit_one, f"3361234560{n}", b"hello")
            assert len(esme.delivered) == 1  # one receipt upstream

        with capture_logs() as logs:
            for n in range(3):
                await send(n)
            # A refused the first two (then each went to B); the third skipped A altogether.
            assert a.stats.errors == 2 and not a.submitted
            assert [r.destination_addr for r in b.submitted] == [
                f"3361234560{n}" for n in range(3)]
            assert breaker.state(gw.clock.now()) is BreakerState.OPEN and gauge("a") == 2

            a.apply_config({"error": 0})  # A recovers; its cool-down passes
            await wait_for(lambda: breaker.state(gw.clock.now()) is BreakerState.HALF_OPEN)
            assert gauge("a") == 1
            await send(3)  # the probe
            await send(4)
            assert [r.destination_addr for r in a.submitted] == ["33612345603", "33612345604"]
            assert len(b.submitted) == 3 and a.stats.errors == 2
            assert breaker.state(gw.clock.now()) is BreakerState.CLOSED and gauge("a") == 0
        changes = [(e["connector"], e["old"], e["new"]) for e in logs
                   if e["event"] == "routing.breaker"]
        assert changes == [("a", "closed", "open"), ("a", "open", "half_open"),
                           ("a", "half_open", "closed")]
