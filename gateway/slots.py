"""The limits several gateway nodes sharing a PostgreSQL store share. Each [[smsc]]'s binds and
contract throughput are slots (one bind, throughput / binds each) that the nodes lease and
run, so that together they never open more binds nor send faster than the contract, and a
dead node's slots go on elsewhere; each account's throughput is split by its binds per node."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import structlog
import trio

from gateway.server import _AccountState
from gateway.store import Store, StoreError
from routing.smsc import SmscConnector

log = structlog.get_logger("gateway.slots")

LEASE = 10.0  # seconds a slot is held without renewal (a dead node's slots wait this long)
RENEW = LEASE / 4  # seconds between renewals
MARGIN = 1.5  # seconds: a node stops using a slot this long before its lease may have ended


async def share_bind_slots(store: Store, connectors: Callable[[], Mapping[str, SmscConnector]],
                           *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    """Lease this node's share of every SMSC's bind slots (binds / live nodes, rounded up),
    renewing every RENEW seconds, and give each connector the slots it holds. A connector
    whose lease could not be renewed stops using its slots before they may have expired."""
    valid_until: dict[str, float] = {}
    started = False
    while True:
        try:
            live = await store.live_nodes(LEASE)
        except StoreError:  # counted and logged by the store
            live = 0
        for name, connector in list(connectors().items()):
            total = connector.config.binds
            asked = trio.current_time()
            try:
                if not live:
                    raise StoreError("no node count")
                slots = await store.lease_slots(name, total, math.ceil(total / live), LEASE)
            except StoreError:
                if trio.current_time() >= valid_until.get(name, -math.inf):
                    connector.set_slots(())  # its lease may be over: no more binds here
                continue
            valid_until[name] = asked + LEASE - MARGIN
            connector.set_slots(slots)
        if not started:
            task_status.started()
            started = True
        await trio.sleep(RENEW)


SHARE_INTERVAL = 1.0  # seconds between two looks at every node's binds per account


async def share_account_throughput(
        store: Store, accounts: Callable[[], Mapping[str, _AccountState]], *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Every SHARE_INTERVAL seconds, record this node's upstream binds per account and set
    each account's rate here to its share of the throughput: (binds here + 1) / (binds on all
    live nodes + live nodes), so that the shares sum to the throughput, follow the binds, and
    each node keeps some for HTTP submits and a bind arriving."""
    started = False
    while True:
        states = accounts()
        try:
            totals, live = await store.account_binds(
                {name: len(state.binds) for name, state in states.items()}, LEASE)
        except StoreError:  # counted and logged by the store: the shares stay as they are
            totals, live = {}, 0
        for name, state in states.items() if live else ():
            throughput = state.config.throughput
            if throughput > 0:
                share = throughput * (len(state.binds) + 1) / (totals.get(name, 0) + live)
                if abs(state.bucket.rate - share) > 1e-9:
                    state.bucket.set_rate(share)
        if not started:
            task_status.started()
            started = True
        await trio.sleep(SHARE_INTERVAL)
