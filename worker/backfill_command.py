"""`pruner backfill hubspot|salesforce`: read a CRM's existing history into the pipeline, a file, or a report.

The argument handling and the report; the reading and mapping are worker/backfill.py,
worker/crm/hubspot_backfill.py and worker/crm/salesforce_backfill.py (docs/backfill.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import redis

from rules.events import format_ms
from rules.explain import plural
from worker.backfill import Backfill, BulkChoice, Cursors, ProgressLine, Run, SalesforceBackfill, Window
from worker.backfill_sinks import JsonlSink, QueueSink, Sink
from worker.backfill_spool import SpoolSink, spool_path
from worker.cliargs import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    config_or_exit,
    date_flag_ms,
    logs_to_stderr,
    policy_or_exit,
)
from worker.crm.base import CrmError
from worker.crm.hubspot_backfill import HubSpotHistory, search_limiter
from worker.crm.hubspot_client import HubSpotClient, build_client
from worker.crm.salesforce import build_client as build_salesforce_client
from worker.crm.salesforce_backfill import SalesforceHistory
from worker.crm.salesforce_bulk import BulkHistory
from worker.crm.salesforce_client import SalesforceClient
from worker.errors import ConfigError
from worker.firstrun import FirstRun, PreviewSink, first_run
from worker.held import release_held
from worker.queues import connect, make_queue


def cmd_backfill_hubspot(args: argparse.Namespace) -> int:
    return _backfill(args, "hubspot")


def cmd_backfill_salesforce(args: argparse.Namespace) -> int:
    return _backfill(args, "salesforce")


def _backfill(args: argparse.Namespace, crm: str) -> int:
    if args.dry_run and args.out:
        print("pruner: --dry-run writes nothing; leave out --out (or --dry-run)", file=sys.stderr)
        return EXIT_USAGE
    logs_to_stderr()  # stdout is the report (--format json is read by scripts); retries are logged meanwhile
    config = config_or_exit()
    policy = policy_or_exit(config.policy_path)
    since = date_flag_ms(args.since, "--since")
    until = date_flag_ms(args.until, "--until") if args.until else int(time.time() * 1000)
    try:
        window = Window(since, until)
    except ValueError as exc:
        print(f"pruner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    connection = connect(config.redis_url, timeout=30)
    client: HubSpotClient | SalesforceClient
    try:
        # A live CRM keeps working meanwhile: the backfill leaves the workers their share of the budget.
        if crm == "hubspot":
            client = build_client(config, connection, config.backfill_rate_share)
        else:
            client = build_salesforce_client(config, connection, config.backfill_rate_share)
    except (ConfigError, CrmError) as exc:  # CrmError: Salesforce refused the configured login
        print(f"pruner: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    cursors: Cursors | None = None
    sink: Sink
    if args.dry_run:
        sink = PreviewSink()
    elif args.out:
        cursors = Cursors(connection, window, "out:" + os.path.abspath(args.out), crm)
        resuming = bool(cursors.load())
        if resuming and not os.path.exists(args.out):
            cursors.clear()  # the file the cursors continue is gone: start over
            resuming = False
        try:
            sink = JsonlSink(args.out, append=resuming)
        except OSError as exc:
            print(f"pruner: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    else:
        # Spooled, and queued lead by lead once all is read: the workers decide on whole histories.
        cursors = Cursors(connection, window, "live", crm)
        spool = spool_path(cursors.key)
        resuming = bool(cursors.load())
        if resuming and not os.path.exists(spool):
            cursors.clear()  # the spool the cursors continue is gone (another machine): start over
            resuming = False
        try:
            sink = SpoolSink(spool, resuming, make_queue(connection, config.queue_name))
        except OSError as exc:
            print(f"pruner: cannot write the spool {spool}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    progress = ProgressLine()
    run: Run[Any, Any]
    if isinstance(client, HubSpotClient):
        history = HubSpotHistory(client, search_limiter(connection, config.hubspot_search_rate_limit))
        run = Backfill(history, sink, window, policy.hubspot, cursors, progress=progress)
    else:
        bulk = BulkHistory(client) if args.bulk != "never" else None
        run = SalesforceBackfill(SalesforceHistory(client), sink, window, config.salesforce_mapping, cursors,
                                 progress=progress, bulk=bulk, bulk_choice=BulkChoice(args.bulk))  # fmt: skip
    try:
        tally = run.run()
        if isinstance(sink, SpoolSink):
            sink.finish()
    except KeyboardInterrupt:
        progress.close()
        print("pruner: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return EXIT_FAILED
    except CrmError as exc:
        progress.close()
        print(f"pruner: backfill stopped: {exc}; run the same command again to continue", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    progress.close()
    released: dict[str, int] = {}
    if isinstance(sink, SpoolSink):
        try:
            released = _release(connection, sink.queued)
        except KeyboardInterrupt:
            print("pruner: interrupted; run the same command again: it ends by releasing what it held", file=sys.stderr)
            return EXIT_FAILED
        if released.get("failed"):
            print(f"pruner: {plural(released['failed'], 'backfill job')} failed: fix the cause, run "
                  "`pruner replay --failed`, then the same command again (what it reads again counts once, and it "
                  "ends by releasing the decisions it held)", file=sys.stderr)  # fmt: skip
            return EXIT_FAILED
    preview = (
        first_run(sink.leads, policy, int(time.time() * 1000), tally.contact_owner, config.breakup_task_clock)
        if isinstance(sink, PreviewSink)
        else None
    )
    if args.format == "json":
        extra = {"first_run": preview.to_json()} if preview else released
        print(json.dumps({**tally.to_json(), **extra}, indent=2))
        return EXIT_OK
    read = ", ".join(f"{n:,} {kind}" for kind, n in tally.records.items())
    print(f"backfill {crm} {format_ms(window.since_ms)} .. {format_ms(window.until_ms)}: read {read or 'nothing'}")
    if tally.resumed:
        print(f"  continued from the cursors of: {', '.join(tally.resumed)}")
    if tally.bulk:
        print(f"  read by Bulk API 2.0 query jobs: {', '.join(tally.bulk)}")
    by_type = ", ".join(f"{kind} {n:,}" for kind, n in sorted(tally.events.items()))
    print(f"  {sum(tally.events.values()):,} events for {plural(len(tally.leads), 'lead')}" +
          (f": {by_type}" if by_type else ""))  # fmt: skip
    owners = ", ".join(f"{owner} {n:,}" for owner, n in tally.owners.most_common(10))
    if owners:
        print(f"  {'contacts' if crm == 'hubspot' else 'leads'} per owner: {owners}")
    skipped = ", ".join(f"{reason} {n:,}" for reason, n in tally.ignored.most_common(10))
    if skipped and crm == "salesforce":
        # Fields and objects the org lacks show here: an admin can add them, or map others.
        print(f"  not mapped: {skipped}")
    if preview is not None:
        _print_first_run(preview)
        print("  dry run: nothing was written or queued")
    elif args.out:
        print(f"  written to {args.out}")
    else:
        print(f"  queued in {plural(sink.jobs if isinstance(sink, SpoolSink) else 0, 'job')} "
              f"on queue {config.queue_name!r}, lead by lead, and applied")  # fmt: skip
        print(f"  decisions held until the whole history was in: {plural(released.get('released', 0), 'lead')}; "
              "the next sweep acts on them")  # fmt: skip
    return EXIT_OK


def _release(connection: redis.Redis, sink: QueueSink) -> dict[str, int]:
    """Wait for the workers to apply what the backfill queued, then release what they held.

    The spool queues each lead's events together in one job, but the jobs are applied by any
    number of workers in any order. So the workers decide a backfill's batches without acting
    until the last one is applied (worker/held.py; a
    webhook for the lead meanwhile is decided live, on what its history holds then). Returns
    {"released": leads made due} or, when some job failed, {"failed": jobs}: then nothing is
    released, since those leads' histories are still partial.
    """

    def tell(left: int) -> None:
        if sys.stderr.isatty():
            print(f"\rwaiting for the workers to apply {plural(left, 'job')}   ", end="", file=sys.stderr)

    failed = sink.wait_applied(tell)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if failed:
        return {"failed": failed}
    released = release_held(connection, int(time.time() * 1000))
    if released:
        # The sweep that acts on them now, rather than at the clock's next minute.
        sink.queue.enqueue("worker.jobs.sweep", result_ttl=0, description="sweep: after a backfill")
    return {"released": released}


def _print_first_run(preview: FirstRun) -> None:
    states = ", ".join(f"{state} {n:,}" for state, n in preview.states.most_common())
    print(f"  the first live run would leave: {states or 'no lead'}")
    actions = ", ".join(f"{kind} {n:,}" for kind, n in preview.actions.most_common())
    print(f"  and ask the CRM for: {actions or 'nothing'}")
    cap = preview.per_owner_per_day
    if preview.tasks_per_owner:
        limit = f"at most {cap} a day" if cap > 0 else "no daily limit"
        spread = ", ".join(
            f"{owner} {n:,} over {plural(preview.days_for(owner), 'day')}"
            for owner, n in preview.tasks_per_owner.most_common(10)
        )
        print(f"  tasks per owner ({limit}): {spread}")
