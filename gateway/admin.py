"""The admin endpoint: a small JSON-over-HTTP app on a Unix socket that `smsgw status`,
`queue`, `message`, `cdr`, `erase`, `optout` and `config` talk to. Who may use it is decided
by the socket file's permissions (mode 0600: the daemon's user, and root); it reads the
running daemon's state and the store, asks the dispatcher to retry or cancel a message, and
takes pushes of the nodes' shared configuration.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import socket
import stat
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import metrics, shared_config
from gateway.clock import WallClock
from gateway.config import SHARED_SECTIONS, ConfigError, parse_duration, shared_json
from gateway.dispatcher import ChangeRefused, RetryRefused
from gateway.model import FINAL_STATES, Event, Message, OptOut, Part, State
from gateway.store import StoreError
from gateway.store_sql import SHARED_CONFIG_KEPT
from gateway.store_sqlite import make_private_dirs
from smpp.session import BindState

log = structlog.get_logger("gateway.admin")

RATE_SAMPLE = 5.0  # seconds between two samples of the counters behind the rates
RATE_WINDOW = 60.0  # rates are averaged over the last minute
QUEUE_PAGE_MAX = 1000
UNFINISHED_STATES = tuple(s for s in State if s not in FINAL_STATES)
_MSISDN = re.compile(r"\+?[0-9]{3,20}")
ENCODINGS = {0: "GSM7", 1: "ASCII", 2: "binary", 3: "Latin-1", 4: "binary", 8: "UCS-2"}


class AdminSocketError(Exception):
    """The admin socket cannot be created; the message says why and what to do."""


def iso(ts: float | None) -> str | None:
    """A UNIX time as ISO 8601 UTC with milliseconds ("2026-12-01T10:00:00.000Z")."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def encoding_name(data_coding: int) -> str:
    return ENCODINGS.get(data_coding, f"data_coding 0x{data_coding:02X}")


# --------------------------------------------------------------------------- the socket


def open_socket(path: Path) -> socket.socket:
    """A Unix stream socket bound at path, mode 0600, not listening yet. Missing directories
    are created mode 0700. A stale socket (nobody listening: a daemon that died) is replaced;
    a live one, or another kind of file, is an error."""
    make_private_dirs(path.parent)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise AdminSocketError(f"{path}: exists and is not a socket: remove it or set "
                                   "[admin] socket to another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # stale: left by a daemon that did not stop cleanly
        else:
            raise AdminSocketError(f"{path}: another daemon is serving this admin socket: "
                                   "give each daemon its own [admin] socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Nobody can connect before listen(): the mode is right before the first client.
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        raise AdminSocketError(f"{path}: cannot create the admin socket: "
                               f"{exc.strerror or exc}") from exc
    return sock


# --------------------------------------------------------------------------- rates


def _totals(counter: Counter, label: str | None) -> dict[str, float]:
    """A counter's value summed over all its series, or per value of one label."""
    out: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "") if label else ""
                out[key] = out.get(key, 0.0) + sample.value
    return out


class Rates:
    """Per-second rates over the last RATE_WINDOW seconds, from the Prometheus counters
    sampled every RATE_SAMPLE seconds (a bounded ring of samples)."""

    SOURCES: tuple[tuple[str, Counter, str | None], ...] = (
        ("accepted", metrics.ACCEPTED, None),
        ("reports_delivered", metrics.REPORTS_SENT, None),
        ("submits", metrics.ATTEMPTS, "smsc"),
        ("submit_errors", metrics.SUBMIT_ERRORS, "smsc"),
        ("receipts", metrics.RECEIPTS, "smsc"),
    )

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, float]]] = deque(
            maxlen=int(RATE_WINDOW / RATE_SAMPLE) + 1)

    @classmethod
    def snapshot(cls) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, counter, label in cls.SOURCES:
            for key, value in _totals(counter, label).items():
                values[f"{name}:{key}" if label else name] = value
        return values

    def sample(self) -> None:
        self.samples.append((trio.current_time(), self.snapshot()))

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(RATE_SAMPLE)

    def per_second(self) -> tuple[dict[str, float], float]:
        """Each counter's rate (per second) since the oldest sample; the seconds covered."""
        now, current = trio.current_time(), self.snapshot()
        if not self.samples or now <= self.samples[0][0]:
            return {}, 0.0
        since, old = self.samples[0]
        span = now - since
        return {k: round((v - old.get(k, 0.0)) / span, 2) for k, v in current.items()}, span


# --------------------------------------------------------------------------- views


def message_view(msg: Message, *, parked: bool | None = None) -> dict[str, Any]:
    """A message for the admin commands: its numbers, never its text (length and encoding)."""
    view: dict[str, Any] = {
        "id": msg.id, "account": msg.account, "state": msg.state.value,
        "sender": msg.source_addr, "recipient": msg.dest_addr, "origin": msg.origin,
        "traffic": msg.traffic, "number_type": msg.number_type or None,
        "country": msg.country or None, "channel": msg.channel, "smsc": msg.connector,
        "parts": msg.parts_total, "encoding": encoding_name(msg.data_coding),
        "text_octets": len(msg.body), "attempts": msg.attempts,
        "error": f"0x{msg.error:08X}" if msg.error else None,
        "accepted_at": iso(msg.created_at), "not_before": iso(msg.not_before),
        "next_attempt_at": None if msg.state.final else iso(msg.next_attempt_at),
        "expires_at": iso(msg.expires_at), "done_at": iso(msg.done_at),
        "client_ref": msg.client_ref,
    }
    if parked is not None:
        view["waiting_for_connector"] = parked
    return view


def part_view(part: Part) -> dict[str, Any]:
    return {"part": part.part_no, "smsc": part.connector, "operator_message_id": part.smsc_id,
            "state": part.state.value, "error": f"0x{part.error:08X}" if part.error else None,
            "submitted_at": iso(part.submitted_at), "done_at": iso(part.done_at)}


def event_view(event: Event) -> dict[str, Any]:
    return {"at": iso(event.at), "event": event.kind,
            "from": event.from_state.value if event.from_state else None,
            "to": event.to_state.value if event.to_state else None, "detail": event.detail}


def cdr_view(record: dict[str, Any]) -> dict[str, Any]:
    """One call detail record (see Store.cdr_page) as exported."""
    return {
        "id": record["id"], "account": record["account"], "sender": record["source_addr"],
        "recipient": record["dest_addr"], "channel": record["channel"],
        "parts": record["parts_total"], "encoding": encoding_name(record["data_coding"]),
        "smsc": record["connector"], "operator_message_id": record["operator_ids"],
        "state": record["state"], "accepted_at": iso(record["created_at"]),
        "done_at": iso(record["done_at"]), "attempts": record["attempts"],
        "error": f"0x{record['error']:08X}" if record["error"] else None,
        "origin": record["origin"], "traffic": record["traffic"],
        "client_ref": record["client_ref"],
        "rcs_billing": record["billing"] or None,
    }


def problem(status: int, detail: str) -> Response:
    titles = {400: "Bad request", 404: "Not found", 409: "Conflict",
              422: "Unprocessable content", 503: "Unavailable"}
    return JSONResponse({"title": titles.get(status, "Error"), "status": status,
                         "detail": detail}, status_code=status,
                        media_type="application/problem+json")


class BadRequest(Exception):
    """A query parameter or body the admin endpoint cannot take; the message says which."""


def parse_time(name: str, value: str) -> float:
    """A UNIX time from ISO 8601 (a date, or a date and time; UTC unless an offset is given)
    or a plain number of seconds since the epoch."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: expected an ISO 8601 date or time (2026-11-30, "
                         f"2026-11-30T08:00:00Z), got {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


# --------------------------------------------------------------------------- the app


class AdminApp:
    """The endpoint's handlers, over the running daemon (see gateway.daemon.Running)."""

    def __init__(self, running: Any, clock: WallClock, rates: Rates) -> None:
        self.running = running
        self.clock = clock
        self.rates = rates
        self.started = clock.now()

    def app(self) -> Starlette:
        def guarded(handler: Callable[[Request], Awaitable[Response]]
                    ) -> Callable[[Request], Awaitable[Response]]:
            @functools.wraps(handler)
            async def wrapper(request: Request) -> Response:
                try:
                    return await handler(request)
                except BadRequest as exc:
                    return problem(400, str(exc))
                except StoreError as exc:  # counted and logged by the store
                    return problem(503, f"the store failed: {exc}; try again")
            return wrapper

        return Starlette(routes=[
            Route("/v1/status", guarded(self.status)),
            Route("/v1/queue", guarded(self.queue)),
            Route("/v1/messages/{id}", guarded(self.show)),
            Route("/v1/messages/{id}/retry", guarded(self.retry), methods=["POST"]),
            Route("/v1/messages/{id}/cancel", guarded(self.cancel), methods=["POST"]),
            Route("/v1/cdr", guarded(self.cdr)),
            Route("/v1/cdr/totals", guarded(self.totals)),
            Route("/v1/erase", guarded(self.erase), methods=["POST"]),
            Route("/v1/optouts", guarded(self.optouts)),
            Route("/v1/optouts", guarded(self.set_optouts), methods=["POST"]),
            Route("/v1/config", guarded(self.shared_config)),
            Route("/v1/config", guarded(self.push_config), methods=["POST"]),
        ])

    async def status(self, _request: Request) -> Response:
        running = self.running
        store, dispatcher = running.store, running.dispatcher
        stats = await store.stats()
        pending, _ = await store.pending_report_counts()
        rates, span = self.rates.per_second()
        states = running.servers[0].accounts if running.servers else {}
        accounts = []
        for name in running.config.accounts:
            binds = {"transmitter": 0, "receiver": 0, "transceiver": 0}
            state = states.get(name)
            for conn in (state.binds if state is not None else ()):
                mode = {BindState.BOUND_TX: "transmitter", BindState.BOUND_RX: "receiver",
                        BindState.BOUND_TRX: "transceiver"}.get(conn.state)
                if mode:
                    binds[mode] += 1
            accounts.append({"account": name, "binds": binds,
                             "unfinished": dispatcher.unfinished_of(name),
                             "reports_pending": pending.get(name, 0)})
        smscs = []
        for name, conn in running.connectors.items():
            tx, rx = conn.bound()
            smscs.append({
                "smsc": name, "up": conn.is_up(), "binds_configured": conn.config.binds,
                "bound_transmitting": tx, "bound_receiving": rx, "queued": conn.queued,
                "submits_per_s": rates.get(f"submits:{name}", 0.0),
                "submit_errors_per_s": rates.get(f"submit_errors:{name}", 0.0),
                "receipts_per_s": rates.get(f"receipts:{name}", 0.0),
                "last_errors": [{"at": iso(self.clock.now() - (trio.current_time() - at)),
                                 "what": what, "detail": detail}
                                for at, what, detail in reversed(conn.errors)],
            })
        return JSONResponse({
            "node": running.config.node, "uptime_seconds": round(self.clock.now() - self.started),
            "accounts": accounts, "smscs": smscs,
            "messages": {s.value: stats[s.value] for s in UNFINISHED_STATES},
            "queues": {"unfinished": store.unfinished, "waiting_for_connector":
                       dispatcher.parked, "store_rows_waiting": store.queued_rows,
                       "reports_pending": stats["pending_reports"]},
            "rates": {"window_seconds": round(span), "accepted_per_s": rates.get("accepted", 0.0),
                      "reports_delivered_per_s": rates.get("reports_delivered", 0.0)},
        })

    async def queue(self, request: Request) -> Response:
        q = request.query_params
        unknown = set(q) - {"account", "state", "smsc", "older_than", "after", "limit"}
        if unknown:
            raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        state = None
        if "state" in q:
            try:
                state = State(q["state"].upper())
            except ValueError:
                state = None
            if state is None or state.final:
                raise BadRequest(f"state: expected one of {', '.join(UNFINISHED_STATES)} "
                                 f"(the queue holds unfinished messages), got {q['state']!r}")
        created_before = None
        if "older_than" in q:
            try:
                created_before = self.clock.now() - parse_duration(q["older_than"])
            except ValueError:
                raise BadRequest(f"older_than: expected a duration (30s, 5m, 2h, 1d), got "
                                 f"{q['older_than']!r}") from None
        try:
            limit = int(q.get("limit", "200"))
            after = None
            if "after" in q:
                expires, rowid = q["after"].split(":")
                after = (float(expires), int(rowid))
        except ValueError:
            raise BadRequest("limit: expected an integer; after: the 'next' of the previous "
                             "page") from None
        if not 1 <= limit <= QUEUE_PAGE_MAX:
            raise BadRequest(f"limit: expected 1 to {QUEUE_PAGE_MAX}, got {limit}")
        page = await self.running.store.unfinished_page(
            account=q.get("account"), state=state, connector=q.get("smsc"),
            created_before=created_before, after=after, limit=limit)
        dispatcher = self.running.dispatcher
        nxt = f"{page[-1][0][0]!r}:{page[-1][0][1]}" if len(page) == limit else None
        return JSONResponse({
            "messages": [message_view(m, parked=dispatcher.is_parked(m.id)) for _, m in page],
            "next": nxt})

    async def show(self, request: Request) -> Response:
        message_id = request.path_params["id"]
        store = self.running.store
        msg = await store.get_message(message_id)
        if msg is None:
            return problem(404, f"no message {message_id} in the store (a wrong id, or purged "
                                "after [store] retention, or erased)")
        live = self.running.dispatcher.live.get(message_id)
        if live is not None:
            msg = live.msg  # the dispatcher's copy is ahead of the store's by a round at most
        return JSONResponse({
            "message": message_view(msg, parked=self.running.dispatcher.is_parked(msg.id)),
            "parts": [part_view(p) for p in await store.get_parts(message_id)],
            "history": [event_view(e) for e in await store.events_of(message_id)],
        })

    async def retry(self, request: Request) -> Response:
        message_id = request.path_params["id"]
        try:
            done = self.running.dispatcher.retry_now(message_id)
        except RetryRefused as exc:
            msg = await self.running.store.get_message(message_id)
            if msg is None:
                return problem(404, f"no message {message_id} in the store")
            if msg.state.final:
                return problem(409, f"message {message_id} is {msg.state.value} already: "
                                    "nothing to retry")
            return problem(409, f"message {message_id}: {exc}")
        return JSONResponse({"id": message_id, "detail": done})

    async def cancel(self, request: Request) -> Response:
        """Cancel a message of any account while no part of it is with an operator (as its
        sender may, see Dispatcher.cancel): its receipt, if owed, says DELETED."""
        message_id = request.path_params["id"]
        try:
            msg = await self.running.dispatcher.cancel(message_id, account=None, by="admin")
        except ChangeRefused as exc:
            if exc.reason == "unknown":
                return problem(404, f"no message {message_id} in the store (a wrong id, or "
                                    "purged after [store] retention, or erased)")
            if exc.reason == "busy":
                return problem(503, f"{exc}")
            if exc.state is not None and exc.state.final:
                return problem(409, f"message {message_id} is {exc.state.value} already: "
                                    "nothing to cancel")
            return problem(409, f"{exc} (it ends at the end of its validity, or with the "
                                "operator's receipt)")
        log.info("admin.message_cancelled", message_id=message_id, account=msg.account)
        return JSONResponse({"id": message_id, "state": msg.state.value,
                             "detail": "cancelled: it will not be sent"
                                       + ("; its DELETED receipt is owed to its sender"
                                          if msg.registered_delivery & 0x03 else "")})

    async def cdr(self, request: Request) -> Response:
        q = request.query_params
        if "since" not in q:
            raise BadRequest("since: required (an ISO 8601 date or time)")
        since = parse_time("since", q["since"])
        until = parse_time("until", q["until"]) if "until" in q else self.clock.now()
        if until <= since:
            raise BadRequest("until: expected a time after since")
        try:
            after = int(q["after"]) if "after" in q else None
        except ValueError:
            raise BadRequest("after: the 'next' of the previous page") from None
        page = await self.running.store.cdr_page(since, until, after)
        return JSONResponse({"records": [cdr_view(r) for r in page.records], "next": page.next,
                             "start": page.start, "end": page.end})

    async def totals(self, request: Request) -> Response:
        """The daily counts retention and erasure kept of the messages they deleted."""
        q = request.query_params
        if "since" not in q:
            raise BadRequest("since: required (an ISO 8601 date)")

        def day(name: str, value: str) -> str:
            return dt.datetime.fromtimestamp(parse_time(name, value), tz=dt.UTC).date() \
                .isoformat()

        since = day("since", q["since"])
        until = day("until", q["until"]) if "until" in q else "9999-12-31"
        rows = await self.running.store.daily_totals(since, until)
        names = ("day", "account", "smsc", "channel", "state", "messages", "parts")
        return JSONResponse({"totals": [dict(zip(names, r, strict=True)) for r in rows]})

    async def erase(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) != {"msisdn"} \
                or not isinstance(body["msisdn"], str):
            raise BadRequest('expected a JSON object {"msisdn": "<number>"}')
        digits = re.sub(r"[\s().-]", "", body["msisdn"])
        if not _MSISDN.fullmatch(digits):
            raise BadRequest(f"msisdn: expected an international number (3 to 20 digits, "
                             f"optionally after '+'), got {body['msisdn']!r}")
        digits = digits.lstrip("+")
        forms = [digits, "+" + digits]
        hooks = self.running.webhooks
        if hooks is not None:  # no webhook POSTs the number once it is erased
            hooks.forget_addresses(forms)
        result = await self.running.store.erase_addresses(forms)
        if hooks is not None:  # and none paged in meanwhile
            hooks.forget_addresses(forms)
        if self.running.screening is not None:  # the rules forget it too
            for account in result.optouts:
                self.running.screening.optouts.set(account, digits, False)
        log.info("admin.erased", msisdn=digits, messages=result.messages,
                 reports=result.reports, unfinished=len(result.unfinished))
        return JSONResponse({
            "msisdn": digits, "messages_deleted": result.messages,
            "parts_deleted": result.parts, "history_events_deleted": result.events,
            "reports_deleted": result.reports, "orphan_receipts_deleted": result.orphan_receipts,
            "history_events_redacted": result.events_redacted,
            "optout_lists": result.optouts,
            "unfinished_left": result.unfinished, "wal_cleared": result.wal_cleared,
        })


    # -- opt-out lists (rules/optout): smsgw optout ---------------------------------------------
    def _optout_account(self, account: object) -> str:
        if not isinstance(account, str) or account not in self.running.config.accounts:
            known = ", ".join(sorted(self.running.config.accounts))
            raise BadRequest(f"account: expected a configured account ({known}), got "
                             f"{account!r}")
        return account

    async def optouts(self, request: Request) -> Response:
        account = self._optout_account(request.query_params.get("account"))
        entries = await self.running.store.optouts(account)
        return JSONResponse({"account": account, "optouts": [
            {"msisdn": o.msisdn, "at": iso(o.at), "source": o.source} for o in entries]})

    async def set_optouts(self, request: Request) -> Response:
        """{"account", "opted_out": true|false, "msisdns": [...], "source": "cli"|"import"}:
        numbers put on (or taken off) the list; numbers that are not valid are refused and
        listed, the others done."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) != {"account", "opted_out", "msisdns",
                                                       "source"}:
            raise BadRequest('expected a JSON object {"account", "opted_out", "msisdns", '
                             '"source"}')
        account = self._optout_account(body["account"])
        msisdns, opted_out, source = body["msisdns"], body["opted_out"], body["source"]
        if not isinstance(opted_out, bool) or source not in ("cli", "import") \
                or not isinstance(msisdns, list) \
                or not all(isinstance(m, str) for m in msisdns) or len(msisdns) > 10_000:
            raise BadRequest("opted_out: true or false; source: cli or import; msisdns: at "
                             "most 10000 numbers as strings")
        screening = self.running.screening
        now = self.clock.now()
        entries, refused = [], []
        for raw in msisdns:
            msisdn = screening.normalise_msisdn(account, raw)
            if msisdn is None:
                refused.append(raw)
            else:
                entries.append(OptOut(account, msisdn, opted_out, now, source))
        await self.running.store.set_optouts(entries)
        screening.optouts_stored(entries)
        return JSONResponse({"account": account, "done": [e.msisdn for e in entries],
                             "refused": refused})

    async def shared_config(self, request: Request) -> Response:
        """The shared configuration of the nodes of this database: the version this node
        runs, the latest (or ?version=N) with its document, and the versions kept."""
        running = self.running
        if not shared_config.follows(running.store, running.config):
            return problem(409, "this node does not share its store with other nodes: its "
                                f"configuration is its file, {running.config.source}")
        raw = request.query_params.get("version")
        if raw is not None and not raw.isdigit():
            raise BadRequest(f"version: expected a number, got {raw!r}")
        version = int(raw) if raw is not None else None
        found = await running.store.shared_config(version)
        if found is None and version is not None:
            return problem(404, f"no shared configuration version {version} (the latest "
                                f"{SHARED_CONFIG_KEPT} are kept)")
        versions = await running.store.shared_config_versions()
        return JSONResponse({
            "node": running.config.node, "running_version": running.config.shared_version,
            "config": None if found is None else {
                "version": found.version, "pushed_at": iso(found.pushed_at),
                "pushed_by": found.pushed_by, "document": json.loads(found.document)},
            "versions": [{"version": v.version, "pushed_at": iso(v.pushed_at),
                          "pushed_by": v.pushed_by} for v in versions]})

    async def push_config(self, request: Request) -> Response:
        """{"document": {the shared sections}, "by": who, "if_version": N or null}: stored as
        the next version once it makes a usable configuration with this node's file; every
        node applies it within a second."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) != {"document", "by", "if_version"} \
                or not isinstance(body["document"], dict) or not isinstance(body["by"], str) \
                or not (body["if_version"] is None or type(body["if_version"]) is int):
            raise BadRequest('expected a JSON object {"document": {...}, "by": "...", '
                             '"if_version": a number or null}')
        unknown = sorted(set(body["document"]) - set(SHARED_SECTIONS))
        if unknown:
            return problem(422, f"document: {', '.join(unknown)}: not shared sections (a "
                                f"node's own sections stay in its file; shared: "
                                f"{', '.join(SHARED_SECTIONS)})")
        try:
            document = shared_json("document", body["document"])
            version, stored = await shared_config.push(self.running, document, body["by"],
                                                       body["if_version"])
        except shared_config.PushRefused as exc:
            return problem(exc.status, str(exc))
        except ConfigError as exc:
            return problem(422, str(exc))
        return JSONResponse({"version": version, "stored": stored})


@contextlib.asynccontextmanager
async def _socket_file(path: Path) -> AsyncIterator[socket.socket]:
    """The bound socket; its file removed on the way out (if it is still ours)."""
    sock = open_socket(path)
    ours = path.stat().st_ino
    try:
        yield sock
    finally:
        with contextlib.suppress(OSError):
            if path.stat().st_ino == ours:
                path.unlink()


async def serve(running: Any, clock: WallClock, *,
                task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin endpoint on [admin] socket until cancelled; started: the path."""
    path = running.config.admin_socket
    rates = Rates()
    app = AdminApp(running, clock, rates).app()
    async with _socket_file(path) as sock, trio.open_nursery() as nursery:
        hconf = HyperConfig()
        hconf.bind = [f"fd://{sock.detach()}"]  # hypercorn takes the descriptor over
        hconf.accesslog = None
        hconf.errorlog = None
        nursery.start_soon(rates.run)
        await nursery.start(functools.partial(hypercorn_serve, app, hconf))  # type: ignore
        log.info("admin.listening", socket=str(path))
        task_status.started(path)


__all__ = ["AdminApp", "AdminSocketError", "Rates", "open_socket", "serve"]
