"""`smsgw rules check`: the dry run. Every rule's decision on one message and the message as it
would be sent, without sending or storing anything ("why was my message deferred?").

The opt-out list is the running daemon's (asked over its admin socket) when it answers, else
none is consulted, and the output says which.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import IO, Any

from gateway.admin_cli import AdminClient, CommandFailed
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.intake import IntakeError, IntakePolicy, accept_text
from gateway.model import Message
from gateway.screening import CODEC, Screening
from rules.core import Decision, Outcome, Verdict


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


def _at(text: str | None) -> float:
    if text is None:
        return dt.datetime.now(dt.UTC).timestamp()
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandFailed(f"--at: expected an ISO 8601 time such as "
                            f"2026-12-05T21:30:00+01:00, got {text!r}", 2) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _optouts(config: GatewayConfig, account: str, screening: Screening) -> str:
    """Load the daemon's opt-out list of the account; what was consulted, for the output."""
    try:
        client = AdminClient(config.admin_socket)
        listed = client.call("GET", "/v1/optouts", params={"account": account})["optouts"]
    except CommandFailed as exc:
        return f"none ({exc})"
    for entry in listed:
        screening.optouts.set(account, entry["msisdn"], True)
    return f"the running daemon's ({len(listed)} numbers)"


def decision_view(d: Decision) -> dict[str, Any]:
    out: dict[str, Any] = d.json()
    if d.until is not None:
        out["until"] = _iso(d.until)
    if d.changes:  # the text is shown decoded in "message", not as octets here
        out["changes"] = [{"field": c.field, "old": "(text)", "new": "(text)"}
                          if c.field == "body" else c.json() for c in d.changes]
    return out


def message_view(msg: Message) -> dict[str, Any]:
    text = CODEC.decode(msg.body, msg.data_coding)
    return {
        "from": msg.source_addr, "from_ton": msg.source_ton, "from_npi": msg.source_npi,
        "to": msg.dest_addr, "to_ton": msg.dest_ton, "to_npi": msg.dest_npi,
        "text": text, "data_coding": msg.data_coding,
        "segments": CODEC.segments(msg.body, msg.data_coding), "traffic": msg.traffic,
        "number_type": msg.number_type or None, "country": msg.country or None,
        "state": msg.state.value, "send_at": _iso(msg.not_before),
        "expires_at": _iso(msg.expires_at),
    }


def check(args: argparse.Namespace, out: IO[str]) -> int:
    """Run the dry run; exit status 0 (would be accepted, maybe deferred), 1 (refused), 2
    (usage or configuration error)."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    account = config.accounts.get(args.account)
    if account is None:
        print(f"error: --account: {args.account!r} is not an account of {args.config} "
              f"({', '.join(sorted(config.accounts))})", file=sys.stderr)
        return 2
    try:
        now = _at(args.at)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    screening = Screening(config.rules)
    consulted = _optouts(config, args.account, screening)
    policy = IntakePolicy(config.validity, account.validity, account.max_parts)
    try:
        msg = accept_text(args.account, args.source, args.to, args.text, now, policy)
    except IntakeError as exc:
        result: dict[str, Any] = {"accepted": False, "intake": exc.detail,
                                  "smpp_status": exc.status}
        verdict = None
    else:
        verdict = screening.check(msg, now, "check", args.service_type or "", args.traffic)
        result = _result(verdict)
    result["optout_list"] = consulted
    result["at"] = _iso(now)
    if args.json:
        json.dump(result, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        _print(result, verdict, out)
    return 0 if result["accepted"] else 1


def _result(verdict: Verdict) -> dict[str, Any]:
    rejected = verdict.rejected
    return {
        "accepted": rejected is None,
        "deferred": verdict.deferred and rejected is None,
        "decisions": [decision_view(d) for d in verdict.decisions],
        "message": None if rejected is not None else message_view(verdict.message),
        "refused": None if rejected is None else {
            "rule": rejected.rule, "reason": rejected.reason, "detail": rejected.detail,
            "smpp_status": f"0x{rejected.smpp_status:08X}",
            "http_status": rejected.http_status},
    }


def _print(result: dict[str, Any], verdict: Verdict | None, out: IO[str]) -> None:
    print(f"at {result['at']}; opt-out list consulted: {result['optout_list']}", file=out)
    if verdict is None:
        print(f"REFUSED by intake: {result['intake']} (SMPP status "
              f"0x{result['smpp_status']:08X})", file=out)
        return
    if not verdict.decisions:
        print("no rule runs for this account", file=out)
    for d in verdict.decisions:
        line = f"{d.rule:<12} {d.outcome.value:<7}"
        if d.reason:
            line += f" {d.reason}:"
        if d.detail:
            line += f" {d.detail}"
        for c in d.changes:
            if c.field != "body":
                line += f" [{c.field}: {c.old!r} -> {c.new!r}]"
        if d.outcome is Outcome.DEFER:
            line += f" (until {_iso(d.until)})"
        print(line.rstrip(), file=out)
    if result["refused"] is not None:
        r = result["refused"]
        print(f"REFUSED by {r['rule']} ({r['reason']}): SMPP {r['smpp_status']}, HTTP "
              f"{r['http_status']}", file=out)
        return
    m = result["message"]
    print(f"{'DEFERRED' if result['deferred'] else 'ACCEPTED'}: would be sent {m['send_at']} "
          f"(valid until {m['expires_at']}), {m['traffic']}", file=out)
    kind = " ".join(k for k in (m["number_type"], m["country"]) if k)  # for the routes
    print(f"  from {m['from']} (TON {m['from_ton']} NPI {m['from_npi']}) to {m['to']} "
          f"(TON {m['to_ton']} NPI {m['to_npi']}{', ' + kind if kind else ''}), "
          f"{m['segments']} SMS", file=out)
    print(f"  text: {m['text']!r}", file=out)


def add_rules_commands(sub: Any, default_config: str) -> None:
    rules = sub.add_parser("rules", help="the rules engine")
    rsub = rules.add_subparsers(dest="action", required=True)
    help_ = ("dry run: every rule's decision on one message and the message as it would be "
             "sent, without sending or storing anything")
    p = rsub.add_parser("check", help=help_, description=help_)
    p.add_argument("--config", "-c", default=default_config)
    p.add_argument("--account", required=True, help="the account (system_id)")
    p.add_argument("--from", dest="source", required=True, help="the sender")
    p.add_argument("--to", required=True, help="the recipient")
    p.add_argument("--text", required=True)
    p.add_argument("--traffic", choices=("alert", "marketing"),
                   help="default: the account's (or the service type's)")
    p.add_argument("--service-type", help="as an SMPP submit's service_type (e.g. MKT)")
    p.add_argument("--at", help="ISO 8601 time to judge it at (default: now; UTC unless an "
                                "offset is given)")
    p.add_argument("--json", action="store_true", help="JSON output, for scripts")
    p.set_defaults(func=lambda args: check(args, sys.stdout))
