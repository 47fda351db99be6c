"""`pruner leads`: list leads by state, loss reason, rule, CRM, source and time, from the list index.

The same filters as `GET /leads` (worker/leadindex.py checks both), printed as a table,
JSON (the HTTP answer's shape) or CSV; `--backfill` indexes a store written before the
index existed. Ids and lifecycle only: no personal data is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from worker import leadindex, leadquery, reindex
from worker.cliargs import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from worker.config import Config
from worker.queues import connect

COLUMNS = ("crm", "lead_id", "state", "loss_reason", "changed_at", "rules")
EPILOG = """\
examples:
  pruner leads --state LOST --reason no_response
  pruner leads --rule unresponsive --since 2026-11-01T00:00:00Z --format csv > unresponsive.csv
  pruner leads --state BREAKUP_DUE --all --format json
  pruner leads --backfill          # once, after upgrading a store written before the index

environment:
  REDIS_URL (default redis://localhost:6379/0)
"""


def add_command(sub: Any, config: Any) -> None:
    """Add `pruner leads` to the CLI's subcommands; `config` loads the configuration (exits on error)."""
    p = sub.add_parser(
        "leads",
        help="list leads by state, loss reason, rule, source or time (ids only)",
        description=(
            "List leads, newest change first (the time of the lead's latest decision), a page at a time: the\n"
            "leads a rule has decided on, and won leads. Ids and lifecycle only, never personal data."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--state", help=f"one of {', '.join(leadquery.STATES)}")
    p.add_argument("--reason", help="loss reason, e.g. no_response, competitor, not_interested")
    p.add_argument("--rule", help="leads a rule decided on, e.g. unresponsive, breakup_grace")
    p.add_argument("--crm", help="hubspot or salesforce")
    p.add_argument("--source", help="the lead's source (lead_profile), e.g. webinar")
    p.add_argument("--segment", help="the lead's segment (lead_profile)")
    p.add_argument("--priority", help="the lead's priority (lead_profile)")
    p.add_argument("--stage", help="the deal stage, e.g. closedwon")
    p.add_argument("--outcome", help=f"one of {', '.join(leadquery.OUTCOMES)}")
    p.add_argument("--since", help="changed at or after this RFC 3339 time")
    p.add_argument("--until", help="changed before this RFC 3339 time")
    p.add_argument("--limit", default=str(leadquery.DEFAULT_LIMIT), help="leads per page (1-500, default 50)")
    p.add_argument("--cursor", help="continue after the page that printed this cursor")
    p.add_argument("--all", action="store_true", help="follow the cursor to the last page")
    p.add_argument("--format", choices=["text", "json", "csv"], default="text")
    p.add_argument("--backfill", action="store_true", help="index every stored lead now, then exit")
    p.set_defaults(func=lambda args: run(args, config()))


def run(args: argparse.Namespace, config: Config) -> int:
    connection = connect(config.redis_url, timeout=30)
    if args.backfill:
        count = reindex.ensure_index(connection, force=True)
        if count is None:
            print("pruner leads: another process is indexing the store now: try again once it is done", file=sys.stderr)
            return EXIT_FAILED
        print(f"indexed the {count} stored leads (listed: decided on or won); the index is complete")
        return EXIT_OK
    params = {name: getattr(args, name) for name in leadquery.QUERY_PARAMETERS if getattr(args, name) is not None}
    try:
        query = leadquery.parse_query(params)
    except leadquery.QueryError as exc:
        print(f"pruner leads: --{exc.parameter}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows: list[dict[str, Any]] = []
    cursor = query.cursor
    while True:
        found = leadquery.page(connection, query.filters, query.limit, cursor)
        rows += [row.public() for row in found.rows]
        cursor = found.next_cursor
        if not (args.all and cursor):
            break
    if not leadindex.is_complete(connection):
        note = "leads stored before the index may be missing: run `pruner leads --backfill`"
        print(f"pruner leads: {note}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"leads": rows, "next_cursor": cursor}, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([[_cell(row[c]) for c in COLUMNS] for row in rows])
    else:
        print(format_table(rows))
    if cursor and args.format != "json":
        print(f"more: pruner leads ... --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def _cell(value: object) -> str:
    if value is None:
        return ""
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Align the rows in columns under a header; say so when there are none."""
    if not rows:
        return "no leads match"
    cells = [list(COLUMNS)] + [[_cell(row[c]) or "-" for c in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)
