"""The configuration the nodes of one database run alike: the shared sections (accounts,
SMSCs, routes, routers, rules: config.SHARED_SECTIONS) kept in the database in numbered
versions. A node starts on the latest (the first node's file seeds it), follows each push
within a second (a NOTIFY, and a poll), and checks a push against its own file first.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from gateway import metrics
from gateway.config import ConfigError, GatewayConfig, file_shared_document, load_config
from gateway.routing_setup import build_routing
from gateway.store import SharedConfig, Store, StoreError

if TYPE_CHECKING:
    from gateway.daemon import Running

log = structlog.get_logger("gateway.shared_config")

POLL_INTERVAL = 1.0  # seconds: a push whose notification was lost is seen this late at most
RETRY_REFUSED = 60.0  # seconds before a version this node did not apply is tried again


class PushRefused(Exception):
    """A push this node does not store; .status is the admin endpoint's answer (409: the
    store is not shared, or the latest version is not the one expected; 422: the document
    does not make a usable configuration with this node's file)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def follows(store: Store, config: GatewayConfig) -> bool:
    """Whether this node runs the database's shared configuration: nodes share the store
    and the config was loaded from a file (one built in code keeps its own)."""
    return store.shared and config.shared_document is not None


async def _with(source: Path, shared: SharedConfig) -> GatewayConfig:
    return await trio.to_thread.run_sync(load_config, source, shared.document, shared.version)


def _differs(source: Path, own: str | None, shared: SharedConfig) -> None:
    """Warn when the file's own shared sections (``own``) are not the database's."""
    if own not in (None, "{}", shared.document):
        log.warning("config.shared_file_differs", file=str(source),
                    version=shared.version,
                    detail="this node's file has shared sections (accounts, SMSCs, routes, "
                           "rules...) that differ from the database's shared configuration, "
                           "which the node runs: to change it on every node, push the file "
                           "(smsgw config push FILE)")


async def settle(store: Store, config: GatewayConfig) -> GatewayConfig:
    """The configuration a starting node runs: its file with the database's latest shared
    configuration. None in the database yet: the file's shared sections become version 1;
    a file with none runs no account, SMSC or route until a version is pushed. ConfigError
    when the database's version does not make a usable configuration with this file."""
    if not follows(store, config):
        return config
    while (latest := await store.shared_config()) is None:
        if config.shared_document == "{}":
            log.warning("config.shared_none", file=str(config.source),
                        detail="the database holds no shared configuration and this node's "
                               "file has no shared sections: no account, SMSC or route until "
                               "one is pushed (smsgw config push FILE)")
            metrics.CONFIG_SHARED_VERSION.set(0)
            return config
        assert config.shared_document is not None
        version, stored = await store.push_shared_config(
            config.shared_document, f"node {config.node} ({config.source})", time.time(),
            if_version=0)
        if stored:
            log.info("config.shared_seeded", version=version, file=str(config.source))
            metrics.CONFIG_SHARED_VERSION.set(version)
            return dataclasses.replace(config, shared_version=version)
        # another node seeded it meanwhile: run that one
    _differs(config.source, config.shared_document, latest)
    new = config if latest.document == config.shared_document else \
        await _with(config.source, latest)
    metrics.CONFIG_SHARED_VERSION.set(latest.version)
    log.info("config.shared_running", version=latest.version, pushed_by=latest.pushed_by)
    return dataclasses.replace(new, shared_version=latest.version)


async def load(store: Store, running: GatewayConfig) -> GatewayConfig:
    """What a reload applies: the file again (its own sections), with the database's latest
    shared configuration when this node follows it."""
    if not follows(store, running):
        return await trio.to_thread.run_sync(load_config, running.source)
    latest = await store.shared_config()
    if latest is None:  # none pushed yet: the file's own sections, as at the start
        return await trio.to_thread.run_sync(load_config, running.source)
    _differs(running.source, await trio.to_thread.run_sync(
        file_shared_document, running.source), latest)
    return await _with(running.source, latest)


async def follow(running: Running, reload: Callable[[], Awaitable[object]]) -> None:
    """Run reload() when a version newer than the one running is pushed (by any node): at
    its notification, or at the next poll when that was lost. A version whose reload did
    not apply it (refused, or the store failed) is tried again after RETRY_REFUSED seconds,
    or at the next push."""
    store = running.store
    wake = trio.Event()

    def pushed() -> None:
        wake.set()

    store.follow_shared_config(pushed)
    tried, tried_at = 0, -math.inf
    while True:
        with trio.move_on_after(POLL_INTERVAL):
            await wake.wait()
        wake = trio.Event()
        try:
            versions = await store.shared_config_versions(limit=1)
        except StoreError:  # counted and logged by the store
            continue
        latest = versions[0].version if versions else 0
        if latest <= (running.config.shared_version or 0) or (
                latest == tried and trio.current_time() - tried_at < RETRY_REFUSED):
            continue
        log.info("config.shared_pushed", version=latest, by=versions[0].pushed_by)
        await reload()
        tried, tried_at = latest, trio.current_time()


async def push(running: Running, document: str, by: str,
               if_version: int | None) -> tuple[int, bool]:
    """Store ``document`` (the shared sections, canonical JSON) as the next version, once it
    makes a usable configuration with this node's file; (latest version, whether stored).
    Every node, this one included, applies it on the notification. PushRefused says why
    not."""
    from gateway import reload  # it imports this module

    store, config = running.store, running.config
    if not follows(store, config):
        raise PushRefused(409, "this node does not share its store with other nodes ([store] "
                               'backend = "postgresql" and shared = true): its configuration '
                               "is its file (edit it, then reload: systemctl reload smsgw)")
    try:
        new = reload.effective(config, await trio.to_thread.run_sync(
            load_config, config.source, document, 0), quiet=True)
        problem = reload.check(new)
        if problem is None:
            build_routing(new)  # plug-in routers take their options
    except ConfigError as exc:
        raise PushRefused(422, str(exc)) from None
    if problem is not None:
        raise PushRefused(422, problem)
    version, stored = await store.push_shared_config(document, by, time.time(), if_version)
    if not stored and if_version is not None and version != if_version:
        raise PushRefused(409, f"the latest shared configuration is version {version}, not "
                               f"{if_version}: someone pushed meanwhile (look at it: smsgw "
                               "config show)")
    if stored:
        log.info("config.shared_pushed_here", version=version, by=by)
    return version, stored


__all__ = ["POLL_INTERVAL", "PushRefused", "follow", "follows", "load", "push", "settle"]
