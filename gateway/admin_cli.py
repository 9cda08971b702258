"""The admin commands of `smsgw`: status, queue, message show|retry|cancel, cdr, erase.

Each is a client of the running daemon's admin socket (gateway.admin), found through --config
(or given with --socket); it prints tables for people and, with --json, JSON for scripts.
Exit status: 0 done, 1 refused or incomplete, 2 usage or configuration error, 3 unreachable.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import errno
import json
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from gateway.config import check

EXIT_REFUSED, EXIT_UNREACHABLE = 1, 3
CDR_FIELDS = (
    "id", "account", "sender", "recipient", "channel", "parts", "encoding", "smsc",
    "operator_message_id", "state", "accepted_at", "done_at", "attempts", "error", "origin",
    "traffic", "client_ref", "rcs_billing",
)  # fmt: skip


class CommandFailed(Exception):
    """The command could not do its job; str() is what to tell the user, .status the exit."""

    def __init__(self, message: str, status: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.status = status


def unreachable(path: Path, exc: OSError) -> CommandFailed:
    """What to tell a user who cannot reach the daemon at its admin socket."""
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        text = (f"the gateway is not running (nothing answers at its admin socket {path}): "
                "start it (smsgw run, or systemctl start smsgw), or give the --config it "
                "runs with")
    elif exc.errno in (errno.EACCES, errno.EPERM):
        text = (f"permission denied on the admin socket {path}: run this as the daemon's "
                "user (e.g. sudo -u smsgw smsgw ...) or as root")
    else:
        text = f"cannot reach the gateway at its admin socket {path}: {exc.strerror or exc}"
    return CommandFailed(text, EXIT_UNREACHABLE)


class AdminClient:
    """HTTP over the daemon's admin socket (httpx with a Unix-socket transport)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))  # a clear errno, before any HTTP
        except OSError as exc:
            raise unreachable(path, exc) from None
        finally:
            probe.close()
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)),
                                 base_url="http://smsgw", timeout=None)

    def call(self, method: str, url: str, *, params: dict[str, Any] | None = None,
             body: object = None) -> Any:
        try:
            resp = self.http.request(method, url, params=params, json=body)
        except httpx.TransportError as exc:
            raise CommandFailed(f"the gateway at {self.path} did not answer: {exc}",
                                EXIT_UNREACHABLE) from None
        try:
            document = resp.json()
        except ValueError:
            raise CommandFailed(f"the gateway answered {resp.status_code}: "
                                f"{resp.text[:200]}") from None
        if resp.status_code >= 400:
            raise CommandFailed(str(document.get("detail", resp.text)))
        return document


# --------------------------------------------------------------------------- output


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Rows as aligned columns under their headers."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _short(iso: str | None) -> str | None:
    """An ISO time from the daemon as "YYYY-MM-DD hh:mm:ss" (UTC)."""
    return iso[:19].replace("T", " ") if iso else None


def _age(iso: str | None) -> str:
    """How long ago an ISO time was: "42s", "5m12s", "3h05m", "2d04h"."""
    if not iso:
        return "-"
    seconds = max(0, int((dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(
        iso.replace("Z", "+00:00"))).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _print_json(document: object, out: IO[str]) -> None:
    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")


# --------------------------------------------------------------------------- commands


def _for_people(client: AdminClient, args: argparse.Namespace, out: IO[str], method: str,
                url: str) -> Any:
    """The endpoint's document; None once printed as JSON (--json: nothing else to do)."""
    document = client.call(method, url)
    if args.json:
        _print_json(document, out)
        return None
    return document


def cmd_status(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    s = _for_people(client, args, out, "GET", "/v1/status")
    if s is None:
        return 0
    q, r = s["queues"], s["rates"]
    print(f"{s['node']}: up {s['uptime_seconds']} s; {q['unfinished']} unfinished messages "
          f"({', '.join(f'{n} {k}' for k, n in s['messages'].items() if n) or 'none'}), "
          f"{q['waiting_for_connector']} waiting for a connector, {q['reports_pending']} "
          f"reports owed upstream, {q['store_rows_waiting']} rows waiting for the store",
          file=out)
    print(f"rates over the last {r['window_seconds']} s: {r['accepted_per_s']}/s accepted, "
          f"{r['reports_delivered_per_s']}/s reports delivered upstream\n", file=out)
    print(table([(a["account"], a["binds"]["transmitter"], a["binds"]["receiver"],
                  a["binds"]["transceiver"], a["unfinished"], a["reports_pending"])
                 for a in s["accounts"]],
                ("ACCOUNT", "BINDS TX", "RX", "TRX", "UNFINISHED", "REPORTS OWED")), file=out)
    print(file=out)
    print(table([(c["smsc"], "up" if c["up"] else "DOWN",
                  f"{c['bound_transmitting']}/{c['binds_configured']}",
                  c["bound_receiving"], c["queued"], c["submits_per_s"],
                  c["submit_errors_per_s"], c["receipts_per_s"]) for c in s["smscs"]],
                ("SMSC", "STATE", "BOUND TX", "RX", "QUEUED", "SUBMITS/S", "ERRORS/S",
                 "RECEIPTS/S")), file=out)
    for c in s["smscs"]:
        for e in c["last_errors"]:
            print(f"  {c['smsc']}: {_short(e['at'])} {e['what']}: {e['detail']}", file=out)
    return 0


def _pages(client: AdminClient, url: str, params: dict[str, Any], key: str
           ) -> Iterator[dict[str, Any]]:
    """Every page of a paged endpoint, fetched as the previous one is consumed."""
    while True:
        page = client.call("GET", url, params=params)
        yield page
        if page.get(key) is None:
            return
        params = {**params, "after": page[key]}


def cmd_queue(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    params: dict[str, Any] = {
        k: v for k, v in (("account", args.account), ("state", args.state),
                          ("smsc", args.smsc), ("older_than", args.older_than)) if v is not None}
    params["limit"] = min(200, args.limit) if args.limit else 200
    count = 0
    headers = ("ID", "ACCOUNT", "STATE", "SMSC", "TRIES", "AGE", "NEXT ATTEMPT", "RECIPIENT")
    for page in _pages(client, "/v1/queue", params, "next"):
        messages = page["messages"][:args.limit - count] if args.limit else page["messages"]
        if args.json:
            out.writelines(json.dumps(m, ensure_ascii=False) + "\n" for m in messages)
        elif messages:
            rows = [(m["id"], m["account"], m["state"], m["smsc"], m["attempts"],
                     _age(m["accepted_at"]),
                     "waiting for a connector" if m.get("waiting_for_connector")
                     else _short(m["next_attempt_at"]), m["recipient"]) for m in messages]
            lines = table(rows, headers).splitlines()
            print("\n".join(lines if count == 0 else lines[1:]), file=out)  # one header
        count += len(messages)
        if args.limit and count >= args.limit:
            break
    if not args.json:
        cut = f" (the first {args.limit})" if args.limit and count >= args.limit else ""
        print(f"{count} unfinished message{'s' * (count != 1)}{cut}", file=out)
    return 0


def cmd_show(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    d = _for_people(client, args, out, "GET", f"/v1/messages/{args.id}")
    if d is None:
        return 0
    width = max(len(k) for k in d["message"])
    for k, v in d["message"].items():
        print(f"{k.ljust(width)}  {'-' if v is None else v}", file=out)
    if d["parts"]:
        print("\n" + table([(p["part"], p["smsc"], p["operator_message_id"], p["state"],
                             p["error"], _short(p["submitted_at"]), _short(p["done_at"]))
                            for p in d["parts"]],
                           ("PART", "SMSC", "OPERATOR ID", "STATE", "ERROR", "SUBMITTED",
                            "DONE")), file=out)
    print("\nhistory:" if d["history"] else "\nhistory: none recorded", file=out)
    if d["history"]:
        print(table([(e["at"], e["event"],
                      f"{e['from'] or ''} -> {e['to']}" if e["to"] else "",
                      json.dumps(e["detail"], ensure_ascii=False) if e["detail"] else "")
                     for e in d["history"]], ("AT (UTC)", "EVENT", "STATE", "DETAIL")),
              file=out)
    return 0


def cmd_retry(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    d = _for_people(client, args, out, "POST", f"/v1/messages/{args.id}/retry")
    if d is not None:
        print(f"{d['id']}: {d['detail']}", file=out)
    return 0


def cmd_cancel(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    d = _for_people(client, args, out, "POST", f"/v1/messages/{args.id}/cancel")
    if d is not None:
        print(f"{d['id']}: {d['detail']}", file=out)
    return 0


def _progress(args: argparse.Namespace, out: IO[str]) -> Callable[[int, int, int], None]:
    """A progress bar on stderr when it is a terminal and the records go elsewhere (a file,
    a pipe); else nothing. Called with (scanned, total, records) after each page."""
    if not sys.stderr.isatty() or (out is sys.stdout and sys.stdout.isatty()):
        return lambda _done, _total, _records: None
    from tqdm import tqdm

    bar = tqdm(total=1, unit="row", unit_scale=True, file=sys.stderr, leave=True,
               desc="cdr export")

    def update(done: int, total: int, records: int) -> None:
        bar.total = max(total, 1)
        bar.n = done
        bar.set_postfix(records=records, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()
    return update


def cmd_cdr(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    params = {"since": args.since, **({"until": args.until} if args.until else {})}
    output: IO[str] = out if args.output in (None, "-") else \
        open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115
    progress = _progress(args, output)
    writer = csv.DictWriter(output, CDR_FIELDS) if args.format == "csv" else None
    if writer is not None:
        writer.writeheader()
    records = 0
    try:
        for page in _pages(client, "/v1/cdr", params, "next"):
            for record in page["records"]:
                if writer is not None:
                    writer.writerow(record)
                else:
                    output.write(json.dumps(record, ensure_ascii=False) + "\n")
            records += len(page["records"])
            span = page["end"] - page["start"]
            progress(span if page["next"] is None else page["next"] - page["start"], span,
                     records)
    finally:
        if output is not out:
            output.close()
    print(f"{records} records exported", file=sys.stderr)
    return 0


def cmd_totals(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    params = {"since": args.since, **({"until": args.until} if args.until else {})}
    totals = client.call("GET", "/v1/cdr/totals", params=params)["totals"]
    if args.json:
        for row in totals:
            out.write(json.dumps(row) + "\n")
    elif totals:
        print(table([(t["day"], t["account"], t["smsc"] or None, t["channel"], t["state"],
                      t["messages"], t["parts"]) for t in totals],
                    ("DAY", "ACCOUNT", "SMSC", "CHANNEL", "STATE", "MESSAGES", "PARTS")),
              file=out)
    else:
        print("no messages purged or erased on those days", file=out)
    return 0


def cmd_erase(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    d = client.call("POST", "/v1/erase", body={"msisdn": args.msisdn})
    left = d["unfinished_left"]
    if args.json:
        _print_json(d, out)
    else:
        print(f"erased {d['msisdn']}: {d['messages_deleted']} messages (with "
              f"{d['parts_deleted']} parts and {d['history_events_deleted']} history events), "
              f"{d['reports_deleted']} receipts/MO owed upstream, "
              f"{d['orphan_receipts_deleted']} orphan receipts deleted; the number replaced in "
              f"{d['history_events_redacted']} history events of other messages; counts kept "
              "in the daily totals", file=out)
        if d.get("optout_lists"):
            print(f"taken off the opt-out list of: {', '.join(d['optout_lists'])}", file=out)
        if left:
            print(f"NOT erased: {len(left)} unfinished message(s), being delivered: "
                  f"{' '.join(left[:20])}{' ...' if len(left) > 20 else ''}; run this again "
                  "once they are final (at the latest when their validity ends)", file=out)
    return EXIT_REFUSED if left else 0


# --------------------------------------------------------------------------- arguments


def common_arguments(default_config: str) -> argparse.ArgumentParser:
    """The options of every command that talks to the daemon's admin socket (a parent)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=default_config,
                        help="the daemon's configuration (to find its admin socket)")
    common.add_argument("--socket", help="the admin socket, instead of reading --config")
    common.add_argument("--json", action="store_true", help="JSON output, for scripts")
    return common


def add_commands(sub: Any, default_config: str) -> None:
    """Add the admin subcommands to the `smsgw` parser's subparsers."""
    common = common_arguments(default_config)

    def command(parent: Any, name: str, run: Callable[..., int], help_: str
                ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help_,
                                                       description=help_)
        p.set_defaults(func=_runner(run))
        return p

    command(sub, "status", cmd_status,
            "binds per account and SMSC, queue depths, rates, the last errors of each SMSC")
    queue = command(sub, "queue", cmd_queue,
                    "list the unfinished messages, soonest to expire first (--json: one "
                    "JSON object a line)")
    queue.add_argument("--account")
    queue.add_argument("--state", help="ACCEPTED, SCHEDULED, QUEUED or IN_FLIGHT")
    queue.add_argument("--smsc", help="the SMSC of its current or last attempt")
    queue.add_argument("--older-than", help="accepted longer ago than this (30m, 2h, 1d)")
    queue.add_argument("--limit", type=int, help="list at most this many")
    message = sub.add_parser("message", help="one message: show its history, retry or "
                                              "cancel it")
    msub = message.add_subparsers(dest="action", required=True)
    command(msub, "show", cmd_show, "a message, its parts and its history").add_argument("id")
    command(msub, "retry", cmd_retry,
            "attempt now a message waiting for a retry or for a connector").add_argument("id")
    command(msub, "cancel", cmd_cancel,
            "cancel a message not yet handed to an operator (final CANCELLED, never sent; "
            "its receipt, if owed, says DELETED)").add_argument("id")
    cdr = sub.add_parser("cdr", help="call detail records")
    csub = cdr.add_subparsers(dest="action", required=True)
    export = command(csub, "export", cmd_cdr,
                     "one record per message accepted in [--since, --until): account, sender, "
                     "recipient, channel, parts, encoding, SMSC, operator message id, state, "
                     "times")
    export.add_argument("--since", required=True,
                        help="ISO 8601 date or time, UTC unless an offset is given")
    export.add_argument("--until", help="ISO 8601 (default: now)")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("--output", "-o", help="file to write (default: stdout)")
    totals = command(csub, "totals", cmd_totals,
                     "the counts per day, account, SMSC, channel and final state that "
                     "retention and erase keep of the messages they delete")
    totals.add_argument("--since", required=True, help="ISO 8601 date (UTC days)")
    totals.add_argument("--until", help="ISO 8601 date, excluded (default: no end)")
    erase = command(sub, "erase", cmd_erase,
                    "erase everything stored about one phone number (GDPR), and say what")
    erase.add_argument("--msisdn", required=True, help="the number, international format")


def _runner(run: Callable[[AdminClient, argparse.Namespace, IO[str]], int]
                      ) -> Callable[[argparse.Namespace], int]:
    """The `func` the smsgw parser calls: find the socket, connect, run the command."""
    def func(args: argparse.Namespace) -> int:
        path = Path(args.socket) if args.socket else check(args.config).admin_socket
        try:
            return run(AdminClient(path), args, sys.stdout)
        except CommandFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.status
    return func
