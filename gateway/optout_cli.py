"""`smsgw optout list|add|remove|import|export`: an account's opt-out list (STOP), through the
running daemon's admin socket (the daemon holds the list the rules read).

CSV in and out: one number a line in the first column, a header line optional on import;
numbers in international or the account's national form.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

from gateway.admin_cli import (
    AdminClient,
    CommandFailed,
    _print_json,
    _runner,
    common_arguments,
    table,
)

BATCH = 5000  # numbers per request to the daemon (it takes at most 10,000)
CSV_FIELDS = ("msisdn", "opted_out_at", "source")


def _send(client: AdminClient, account: str, numbers: list[str], opted_out: bool,
          source: str) -> tuple[int, list[str]]:
    d = client.call("POST", "/v1/optouts", body={"account": account, "opted_out": opted_out,
                                                "msisdns": numbers, "source": source})
    return len(d["done"]), list(d["refused"])


def _report(done: int, refused: list[str], verb: str, account: str, out: IO[str],
            as_json: bool) -> int:
    if as_json:
        _print_json({"account": account, verb: done, "refused": refused}, out)
    else:
        print(f"{done} number(s) {verb} for account {account}", file=out)
        if refused:
            print(f"refused (not valid numbers): {', '.join(refused[:20])}"
                  f"{' ...' if len(refused) > 20 else ''}", file=out)
    return 1 if refused else 0


def cmd_list(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    d = client.call("GET", "/v1/optouts", params={"account": args.account})
    if args.json:
        _print_json(d, out)
    elif d["optouts"]:
        print(table([(o["msisdn"], o["at"][:19].replace("T", " "), o["source"])
                     for o in d["optouts"]], ("MSISDN", "SINCE (UTC)", "SOURCE")), file=out)
    else:
        print(f"no number on the opt-out list of {args.account}", file=out)
    return 0


def _change(opted_out: bool) -> Callable[[AdminClient, argparse.Namespace, IO[str]], int]:
    def run(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
        done, refused = _send(client, args.account, list(args.numbers), opted_out, "cli")
        return _report(done, refused, "added" if opted_out else "removed", args.account, out,
                       args.json)
    return run


def _numbers(rows: Iterator[list[str]]) -> Iterator[str]:
    """The first column of each non-empty row, a header ("msisdn", ...) skipped."""
    for i, row in enumerate(rows):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        value = row[0].strip()
        if i == 0 and not any(c.isdigit() for c in value):
            continue  # a header line
        yield value


def _bar(total: int, desc: str) -> Any:
    """A progress bar on stderr when it is a terminal and the file is large, else None."""
    if not sys.stderr.isatty() or total < BATCH:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="number", unit_scale=True, file=sys.stderr, desc=desc)


def cmd_import(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    try:
        with open(args.file, newline="", encoding="utf-8-sig") as f:
            numbers = list(_numbers(csv.reader(f)))
    except OSError as exc:
        raise CommandFailed(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CommandFailed(f"{args.file}: not a UTF-8 CSV file: {exc}") from None
    bar = _bar(len(numbers), "optout import")
    done, refused = 0, []
    for start in range(0, len(numbers), BATCH):
        chunk = numbers[start:start + BATCH]
        n, bad = _send(client, args.account, chunk, not args.remove, "import")
        done += n
        refused += bad
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return _report(done, refused, "removed" if args.remove else "added", args.account, out,
                   args.json)


def cmd_export(client: AdminClient, args: argparse.Namespace, out: IO[str]) -> int:
    d = client.call("GET", "/v1/optouts", params={"account": args.account})
    output: IO[str] = out if args.output in (None, "-") else \
        open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115
    try:
        writer = csv.writer(output)
        writer.writerow(CSV_FIELDS)
        for o in d["optouts"]:
            writer.writerow((o["msisdn"], o["at"], o["source"]))
    finally:
        if output is not out:
            output.close()
    print(f"{len(d['optouts'])} numbers exported", file=sys.stderr)
    return 0


def add_optout_commands(sub: Any, default_config: str) -> None:
    """Add `smsgw optout ...` to the `smsgw` parser's subparsers."""
    common = common_arguments(default_config)
    common.add_argument("--account", required=True, help="the account (its system_id)")
    optout = sub.add_parser("optout", help="an account's opt-out list (numbers that replied "
                                           "STOP)")
    osub = optout.add_subparsers(dest="action", required=True)

    def command(name: str, run: Callable[[AdminClient, argparse.Namespace, IO[str]], int],
                help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = osub.add_parser(name, parents=[common], help=help_,
                                                     description=help_)
        p.set_defaults(func=_runner(run))
        return p

    command("list", cmd_list, "the numbers on the account's list, since when, and how")
    command("add", _change(True), "put numbers on the list (as if they replied STOP)") \
        .add_argument("numbers", nargs="+", metavar="NUMBER")
    command("remove", _change(False), "take numbers off the list (as if they replied START)") \
        .add_argument("numbers", nargs="+", metavar="NUMBER")
    imp = command("import", cmd_import, "add the numbers of a CSV file (first column; a "
                                        "header line is skipped)")
    imp.add_argument("file")
    imp.add_argument("--remove", action="store_true", help="take them off instead")
    exp = command("export", cmd_export, "write the list as CSV: msisdn, opted_out_at, source")
    exp.add_argument("--output", "-o", help="file to write (default: stdout)")
