"""The daemon: wires config into services and runs them under one root nursery.

`run(config, shutdown_trigger)` mirrors hypercorn's serve(): every service is started with
nursery.start() and is ready when it returns; once all are, systemd is told READY=1. When the
trigger fires, the daemon drains (gateway.lifecycle) and the services are cancelled.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import httpx
import structlog
import trio

from gateway import lifecycle, metrics, reload, sdnotify, shared_config
from gateway.clock import WallClock
from gateway.config import AccountConfig, GatewayConfig, RcsConfig, SmscConfig
from gateway.cross_node import CrossNode
from gateway.dispatcher import Dispatcher
from gateway.http_api import HttpApi, RcsEvents, VoiceStatus, metrics_app, serve_http
from gateway.inbound import Inbound
from gateway.model import OptOut, Report
from gateway.reporter import Reporter, receipt_report
from gateway.routing_setup import Routing, build_routing, export_breakers
from gateway.screening import Screening
from gateway.server import UPSTREAM_BIND_MODES, SmppServer, _AccountState, account_states
from gateway.slots import share_account_throughput, share_bind_slots
from gateway.store import Store, StoreError
from gateway.webhooks import Webhooks, endpoints, mo_by_webhook
from routing.channel import Channel
from routing.rcs import RbmClient, RcsChannel, load_credentials
from routing.sms import SmsChannel
from routing.smsc import SmscConnector
from routing.tts import VoiceChannel, VoiceSettings

log = structlog.get_logger("gateway.daemon")

HOUSEKEEPING_INTERVAL = 3600.0
HTTP_TIMEOUT = 30.0  # outbound HTTP (RCS, voice) when a connector sets no shorter timeout


@dataclass
class Running:
    """What a started daemon exposes (to tests, and to the benchmark)."""

    config: GatewayConfig
    store: Store
    dispatcher: Dispatcher
    reporter: Reporter
    servers: list[SmppServer] = field(default_factory=list)
    connectors: dict[str, SmscConnector] = field(default_factory=dict)
    # SMSC connectors a reload removed or replaced, until their drain ends (gateway.lifecycle
    # retire): they send nothing more, take their answers and receipts, then unbind.
    draining: list[SmscConnector] = field(default_factory=list)
    webhooks: Webhooks | None = None  # receipts and MO owed by webhook (gateway.webhooks)
    simulator: object | None = None
    http_port: int | None = None  # the HTTP listener (API and /metrics), when enabled
    metrics_port: int | None = None  # [http] metrics_port's listener (/metrics only), if any
    screening: Screening | None = None  # the rules, and the opt-out lists
    clock: WallClock = field(default_factory=WallClock)
    inbound: Inbound | None = None  # MO and receipts from operators
    http_api: HttpApi | None = None
    # The accounts' live states (binds, rate buckets), shared by every listener and the HTTP
    # API; a reload changes it in place.
    account_states: dict[str, _AccountState] = field(default_factory=dict)
    nursery: trio.Nursery | None = None  # the root nursery, once started
    http: httpx.AsyncClient | None = None  # the RCS and voice channels' client, once started
    # The provider endpoints of the HTTP API (when [http] is enabled): a reload changes their
    # maps of agents and voice connectors.
    rcs_events: RcsEvents | None = None
    voice_status: VoiceStatus | None = None
    routing: Routing | None = None  # the router chain, breakers, limits (gateway.routing_setup)
    # Set when the graceful drain begins: a front end (e.g. an HTTP server's shutdown_trigger)
    # stops taking requests on it.
    stopping: trio.Event = field(default_factory=trio.Event)
    reload_lock: trio.Lock = field(default_factory=trio.Lock)  # one reload at a time

    @property
    def smpp_port(self) -> int:
        port = self.servers[0].port
        assert port is not None
        return port


async def wait_for_signal(reloads: trio.MemorySendChannel[None] | None = None, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """Default shutdown trigger: returns on SIGTERM or SIGINT. SIGHUP asks `reloads` for a
    configuration reload (gateway.reload; logged and ignored without one). started() once
    the handlers are installed: a SIGTERM from then on is a graceful stop."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("daemon.signal", signal="SIGHUP", action="reload")
                if reloads is not None:
                    # one already queued reads the file later: this one adds nothing
                    with contextlib.suppress(trio.WouldBlock):
                        reloads.send_nowait(None)
                continue
            log.info("daemon.signal", signal=signal.Signals(signum).name)
            return


async def _on_signal(fired: trio.Event, reloads: trio.MemorySendChannel[None], *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The default trigger as a service: started() once the signal handlers are installed
    (before READY=1, so that a SIGTERM right after READY=1 is a graceful stop, not the
    default action that kills the process), `fired` set on SIGTERM or SIGINT; SIGHUP
    requests a reload."""
    await wait_for_signal(reloads, task_status=task_status)
    fired.set()




def follow_optouts(store: Store, screening: Screening, nursery: trio.Nursery) -> None:
    """Keep this node's opt-out lists in step with the commits of every node sharing the
    store (a STOP taken on another node refuses marketing here within a second)."""

    async def reload() -> None:
        while True:
            try:
                screening.replace_optouts(await store.optouts())
                return
            except StoreError:  # counted and logged by the store
                await trio.sleep(1.0)

    def changed(entries: list[OptOut] | None) -> None:
        if entries is None:
            nursery.start_soon(reload)
        else:
            screening.load_optouts(entries)

    store.follow_optouts(changed)


async def _housekeeping(running: Running, clock: WallClock) -> None:
    retention = running.config.store.retention
    while True:
        try:
            purged = await running.store.purge(clock.now() - retention)
        except StoreError:  # counted and logged by the store
            purged = 0
        if purged:
            log.info("store.purged", messages=purged)
        try:
            forgotten = await running.store.purge_idempotency(
                clock.now() - running.config.http.idempotency_lifetime)
        except StoreError:
            forgotten = 0
        if forgotten:
            log.info("store.idempotency_keys_purged", keys=forgotten)
        await trio.sleep(HOUSEKEEPING_INTERVAL)


def mo_owners(config: GatewayConfig) -> dict[str, str]:
    """Who owns an MO by its destination: the accounts' mo_addresses, and the senders of the
    RCS agents whose replies go to an account (mo_account)."""
    owners = {addr: acc.system_id for acc in config.accounts.values()
              for addr in acc.mo_addresses}
    for agent in config.rcs.values():
        if agent.mo_account:
            owners[agent.sms_sender or agent.agent_id] = agent.mo_account
    return owners


def rcs_channel(agent: RcsConfig, http: httpx.AsyncClient, nursery: trio.Nursery
                ) -> RcsChannel:
    """One [[rcs]] agent's channel (at start-up, and for an agent a reload adds or changes);
    its sends run in `nursery` with `http`. Raises ValueError when its credentials cannot be
    read."""
    client = RbmClient(http, base_url=agent.base_url, token_url=agent.token_url,
                       agent_id=agent.agent_id,
                       credentials=load_credentials(agent.credentials_file),
                       capability_ttl=agent.capability_ttl,
                       negative_ttl=agent.negative_capability_ttl,
                       timeout=agent.request_timeout)
    return RcsChannel(agent.name, client, nursery, capacity=agent.max_in_flight,
                      sender=agent.sms_sender)


def voice_channel(settings: VoiceSettings, http: httpx.AsyncClient, nursery: trio.Nursery,
                  accounts: Callable[[], Mapping[str, AccountConfig]]) -> VoiceChannel:
    """One [[voice]] provider account's channel. `accounts`: the running accounts (a reload
    changes them: an account's language is read at each call)."""

    def language_of(account: str) -> str:
        acc = accounts().get(account)
        return acc.language if acc is not None else ""

    return VoiceChannel(settings, http, nursery, language_of)


def _queued(connector: SmscConnector) -> int:
    return connector.queued


def sms_connector(smsc: SmscConfig, inbound: Inbound) -> tuple[SmscConnector, SmsChannel]:
    """One [[smsc]]'s connector and the channel the dispatcher speaks to, not started (at
    start-up, and for an SMSC a reload adds or changes). Raises tls.TlsFileError when its TLS
    files cannot be used."""
    connector = SmscConnector(smsc, observer=metrics.SmscMetrics(smsc.name))
    return connector, SmsChannel(connector, inbound)


def export_connector_gauges(connector: SmscConnector) -> None:
    """Its gauges from the start (binds at 0 until bound), so that an alert on "no bind" also
    fires for a connection that never came up."""
    metrics.SMSC_BINDS.labels(connector.name)
    metrics.SMSC_QUEUE.labels(connector.name).set_function(
        functools.partial(_queued, connector))


def _export_gauges(config: GatewayConfig, connectors: dict[str, SmscConnector]) -> None:
    """Every configured SMSC and account has its gauges from the start."""
    for connector in connectors.values():
        export_connector_gauges(connector)
    for account in config.accounts:
        for mode in UPSTREAM_BIND_MODES.values():
            metrics.UPSTREAM_BINDS.labels(account, mode)


async def run(
    config: GatewayConfig,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    sc = config.store
    routing = build_routing(config)  # before the store: a plug-in refusing its options stops here
    async with Store.open(sc.where, batch_max=sc.batch_max, synchronous=sc.synchronous,
                          queue_max=sc.queue_max, unfinished_max=sc.unfinished_max,
                          node=config.node, shared=sc.shared) as store:
        settled = await shared_config.settle(store, config)  # the database's shared sections
        if settled is not config:
            config, routing = settled, build_routing(settled)
        clock = WallClock()
        metrics.STORE_QUEUE.set_function(lambda: store.queued_rows)
        reporter = Reporter(store, clock, expiry=sc.report_expiry, accounts=config.accounts)
        webhooks = Webhooks(store, clock, endpoints(config.accounts.values()),
                            expiry=sc.report_expiry)

        def owed(report: Report) -> None:
            """A committed report goes the way it was stored for: webhook or deliver_sm."""
            if report.via == "http":
                webhooks.add(report)
            else:
                reporter.add(report)

        connectors: dict[str, SmscConnector] = {}
        channels: dict[str, Channel] = {}  # by connector name: what the dispatcher speaks to
        dispatcher = Dispatcher(store, routing.router, channels, config.retry, clock, owed,
                                receipt_of=receipt_report)
        screening = Screening(config.rules)
        screening.load_optouts(await store.optouts())
        if screening.sent is not None:  # the duplicates rule remembers across restarts
            screening.load_sent(await store.fingerprints(clock.now() - screening.sent.window))
        dispatcher.routing = routing  # its breakers, sender limits, backoff, quality trackers
        export_breakers(routing, clock.now())
        dispatcher.recheck = screening.recheck
        inbound = Inbound(dispatcher, store, clock, mo_owners(config), owed, screening,
                          config.validity, mo_by_webhook(config.accounts.values()))
        for smsc in config.smscs.values():
            connectors[smsc.name], channels[smsc.name] = sms_connector(smsc, inbound)
        _export_gauges(config, connectors)
        states = account_states(config.accounts)  # one per account, for every listener
        running = Running(config, store, dispatcher, reporter, connectors=connectors,
                          webhooks=webhooks, screening=screening, routing=routing, clock=clock,
                          inbound=inbound, account_states=states)
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http, \
                trio.open_nursery() as nursery:
            running.nursery = nursery
            if store.shared:  # the other nodes change the opt-out lists too
                follow_optouts(store, screening, nursery)
            if shared_config.follows(store, config):  # and push configurations
                nursery.start_soon(shared_config.follow, running,
                                   functools.partial(reload.reload, running))
            # their providers' reports come in through the HTTP API (RcsEvents, VoiceStatus)
            running.http = http
            rcs = {a.name: rcs_channel(a, http, nursery) for a in config.rcs.values()}
            voice = {v.name: voice_channel(v, http, nursery, lambda: running.config.accounts)
                     for v in config.voice.values()}
            channels.update(rcs)
            channels.update(voice)
            rcs_sim = None  # the simulator's RBM platform: told where the gateway listens
            if config.simulator is not None:
                from gateway.simulator import SmscSimulator

                sim = SmscSimulator(config.simulator, window=config.simulator.window)
                await nursery.start(sim.serve)
                running.simulator = sim
                if sim.rcs is not None and config.simulator.rcs_webhook_url is None:
                    rcs_sim = sim.rcs
                    if not config.http.enabled:
                        log.warning("simulator.rcs_events_nowhere",
                                    detail="[http] is disabled and [simulator] has no "
                                           "rcs_webhook_url: RBM events are not pushed")
            if store.shared:  # the nodes share each SMSC's binds and throughput
                for connector in connectors.values():
                    connector.set_slots(())  # no bind before its slots are leased
                await nursery.start(share_bind_slots, store, lambda: running.connectors)
                await nursery.start(share_account_throughput, store,
                                    lambda: running.account_states)
            await nursery.start(reporter.run)
            await nursery.start(webhooks.run)
            await nursery.start(dispatcher.run)
            if store.shared:  # cancels and replacements of the messages others work on
                cross = CrossNode(store, dispatcher)
                dispatcher.remote = cross
                await nursery.start(cross.run)
            for connector in connectors.values():
                await nursery.start(connector.run)
            for listener in config.listeners:
                server = SmppServer(listener, config.accounts, store, dispatcher, reporter, clock,
                                    validity=config.validity, node=config.node, states=states,
                                    screening=screening)
                await nursery.start(server.serve)
                running.servers.append(server)
            if config.http.enabled:
                # the provider endpoints are served even with no connector yet (a reload
                # may add one): a push for an unknown agent or connector gets 404
                running.rcs_events = RcsEvents(
                    {config.rcs[name].agent_id: channel for name, channel in rcs.items()},
                    inbound, push_tokens={r.agent_id: r.push_token
                                          for r in config.rcs.values()})
                running.voice_status = VoiceStatus(dict(voice), inbound)
                api = HttpApi(config, store, dispatcher, clock, states, running.stopping,
                              screening, rcs_events=running.rcs_events,
                              voice_status=running.voice_status)
                running.http_api = api
                running.http_port = await nursery.start(serve_http, api.app, config.http.host,
                                                        config.http.port)
                if rcs_sim is not None:
                    rcs_sim.gateway_listening(config.http.host, running.http_port)
            if config.http.metrics_port is not None:
                running.metrics_port = await nursery.start(
                    serve_http, metrics_app(), config.http.host, config.http.metrics_port)
            if config.admin.enabled:
                from gateway import admin

                await nursery.start(admin.serve, running, clock)
            nursery.start_soon(_housekeeping, running, clock)
            interval = sdnotify.watchdog_interval()
            if interval is not None and interval < math.inf:
                nursery.start_soon(lifecycle.watchdog, interval)
            nursery.start_soon(lifecycle.report_status, running)
            trigger = shutdown_trigger
            if trigger is None:
                fired = trio.Event()
                reloads, requests = trio.open_memory_channel[None](1)
                await nursery.start(reload.serve_reloads, running, requests)
                await nursery.start(_on_signal, fired, reloads)
                trigger = fired.wait
            lifecycle.ready(running)
            log.info("daemon.ready", node=config.node,
                     smpp_ports=[s.port for s in running.servers], http_port=running.http_port,
                     unfinished=len(dispatcher.live))
            task_status.started(running)
            await trigger()
            await lifecycle.stop(running)
            nursery.cancel_scope.cancel()
    log.info("daemon.stopped")
