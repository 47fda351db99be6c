"""The `pruner` command line (docs/http.md "CLI")."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

import redis

from rules.errors import SchemaError
from rules.events import format_ms
from rules.explain import plural, progress, sentence
from rules.hubspot_map import wanted_subscriptions
from worker import leadlist, simulate, stats
from worker.backfill_command import cmd_backfill_hubspot, cmd_backfill_salesforce
from worker.cliargs import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    config_or_exit,
    now_flag_ms,
    policy_or_exit,
)
from worker.config import DEFAULT_REDIS_URL, Config, policy_path_from_env, redis_location
from worker.dev import run_dev
from worker.hubspot_subscribe import SubscribeError, WebhooksApi, subscribe
from worker.jobs import preview_sweep, run_sweep
from worker.leaddoc import is_erased, lead_document
from worker.logs import setup_logging
from worker.queues import connect, make_queue
from worker.redisinfo import inspect
from worker.runner import run_clock, run_worker
from worker.simulate import SimulationError, simulate_file
from worker.store import LeadStore


def cmd_check(args: argparse.Namespace) -> int:
    config = config_or_exit()
    policy = policy_or_exit(args.policy or config.policy_path)
    print(f"configuration OK (redis {redis_location(config.redis_url)})")
    print(f"policy OK: {args.policy or config.policy_path or 'bundled default'}")
    on = [rule for rule, enabled in policy.enabled.items() if enabled]
    print(f"  rules on: {', '.join(on)}")
    print(
        f"  silence needs {policy.min_touches_for_silence} touches; holidays: {policy.holiday_country or 'none'}; "
        f"re-engage after {policy.reengage_after_days} days"
    )
    for name, enabled in config.enabled().items():
        print(f"  {'on ' if enabled else 'off'}  {name}")
    return _check_redis(config)


def _check_redis(config: Config) -> int:
    try:
        facts = inspect(connect(config.redis_url, timeout=5))
    except redis.RedisError as exc:
        # A release phase may run before the Redis add-on answers: say so, do not fail on it.
        print(f"  Redis not inspected ({redis_location(config.redis_url)} did not answer: {exc})")
        return EXIT_OK
    if facts.policy is None:
        print(f"  Redis not inspected: {facts.warnings[0]}")
        return EXIT_OK
    limit = f"{facts.max_bytes} bytes" if facts.max_bytes else "no limit"
    persistence = "AOF" if facts.aof else "no AOF"
    persistence += {True: ", RDB", False: ", no RDB", None: ", RDB unknown"}[facts.rdb]
    server = f"Redis {facts.version}" if facts.version else "Redis"
    print(f"  {server}: maxmemory-policy {facts.policy}, {facts.used_bytes} bytes used of {limit}; {persistence}")
    for warning in facts.warnings:
        print(f"  warning: {warning}")
    for problem in facts.problems:
        print(f"pruner: {problem}", file=sys.stderr)
    return EXIT_CONFIG if facts.problems else EXIT_OK


# A --now further ahead than this is "what if", not "catch up": the clocks of two machines may
# differ by seconds, never by minutes.
FUTURE_SLACK_MS = 5 * 60 * 1000


def cmd_sweep(args: argparse.Namespace) -> int:
    config = config_or_exit()
    policy_or_exit(config.policy_path)
    wall_ms = int(time.time() * 1000)
    now_ms = now_flag_ms(args.now) or wall_ms
    connection = connect(config.redis_url, timeout=30)
    if now_ms > wall_ms + FUTURE_SLACK_MS and not args.commit_future:
        # Decisions dated in the future would be permanent (a lead's time never moves back) and
        # their actions would reach the CRM on the next drain: so only say what would happen.
        preview = preview_sweep(connection, config, now_ms)
        print(f"dry run: --now {format_ms(now_ms)} is in the future; nothing was written.")
        for (crm, lead_id), decisions, actions in preview:
            said = "; ".join(f"{to} by {rule}" + (f" ({reason})" if reason else "") for rule, to, reason in decisions)
            print(f"  {crm} {lead_id}: {said or 'no new decision'}; {plural(actions, 'CRM action')}")
        print(f"{plural(len(preview), 'due lead')} would be evaluated. Add --commit-future to write these decisions.")
        return EXIT_OK
    result = run_sweep(connection, config, now_ms)
    if result.get("skipped"):
        print("sweep skipped: another sweep is running")
        return EXIT_FAILED
    print(
        f"sweep done as of {format_ms(now_ms)}: {result['due']} due leads evaluated, "
        f"{result['actions']} CRM actions recorded"
    )
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    config = config_or_exit()
    connection = connect(config.redis_url, timeout=10)
    if config.suppression_key and is_erased(connection, config.suppression_key.encode(), args.crm, args.lead_id):
        if args.format == "json":  # what GET /leads answers for it (docs/http.md)
            print(json.dumps({"crm": args.crm, "lead_id": args.lead_id, "state": "SUPPRESSED", "erased": True}))
        else:
            print(f"{args.crm} lead {args.lead_id} was erased on request: SUPPRESSED, nothing else is kept")
        return EXIT_OK
    store = LeadStore(connection)
    log = store.log(args.crm, args.lead_id)
    if log is None:
        print(f"pruner: no events have been received for {args.crm} lead {args.lead_id}", file=sys.stderr)
        return EXIT_FAILED
    doc = lead_document(
        args.crm, args.lead_id, log, store.state(args.crm, args.lead_id), store.checkpoint(args.crm, args.lead_id)
    )
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    label = "break-up reason" if doc["state"] == "BREAKUP_DUE" else "loss reason"
    reason = f" ({label}: {doc['loss_reason']})" if doc["loss_reason"] else ""
    print(f"{args.crm} lead {args.lead_id} is {doc['state']}{reason}; {plural(doc['events'], 'event')}")
    for decision in doc["decisions"]:
        print(f"  {sentence(decision)}")
    if not doc["decisions"]:
        print("  no rule has fired yet")
    if doc["state"] == "ACTIVE":
        lines = progress(doc["progress"])
        print("why not yet:" if lines else "why not yet: not known until the lead's next event or sweep")
        for line in lines:
            print(f"  {line}")
    if doc.get("next_due"):
        print(f"next time-based check: {doc['next_due']}")
    return EXIT_OK


class Progress:
    """A one-line progress counter on stderr, only when a person is watching (a TTY)."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.live = sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self.done += n
        if self.live:
            of = f"/{self.total}" if self.total else ""
            print(f"\r{self.label}: {self.done}{of}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live:
            print(file=sys.stderr)


def cmd_stats(args: argparse.Namespace) -> int:
    config = config_or_exit()
    progress = Progress("leads")
    result = stats.collect(connect(config.redis_url, timeout=30), progress)
    progress.close()
    print(json.dumps(result.to_json(), indent=2) if args.format == "json" else stats.format_text(result))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    config = config_or_exit()
    queue = make_queue(connect(config.redis_url, timeout=30), config.queue_name)
    registry = queue.failed_job_registry
    job_ids = registry.get_job_ids()
    if args.job:
        missing = sorted(set(args.job) - set(job_ids))
        if missing:
            print(f"pruner: not in the failed registry: {', '.join(missing)}", file=sys.stderr)
            return EXIT_USAGE
        job_ids = list(args.job)
    progress = Progress("requeued", len(job_ids))
    requeued = 0
    for job_id in job_ids:
        try:
            registry.requeue(job_id)
            requeued += 1
        except Exception as exc:  # a job deleted meanwhile: say so, keep going
            print(f"pruner: could not requeue {job_id}: {exc}", file=sys.stderr)
        progress(1)
    progress.close()
    print(f"requeued {requeued} of {len(job_ids)} failed jobs on queue {config.queue_name!r}")
    return EXIT_OK if requeued == len(job_ids) else EXIT_FAILED


def cmd_simulate(args: argparse.Namespace) -> int:
    # The policy the worker runs (PRUNER_POLICY) unless told otherwise: else a dry run misleads.
    policy = policy_or_exit(args.policy or policy_path_from_env())
    bar = Progress("read %")
    try:
        report = simulate_file(
            args.events, policy, now_flag_ms(args.now), progress=lambda f: bar(int(f * 100) - bar.done)
        )
    except OSError as exc:
        print(f"pruner: cannot read {args.events}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except SchemaError as exc:
        print(f"pruner: {args.events}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SimulationError as exc:
        print(f"pruner: simulating {args.events} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        bar.close()
    print(json.dumps(report.to_json(), indent=2) if args.format == "json" else simulate.format_text(report))
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    run_worker(config_or_exit(), burst=args.burst)
    return EXIT_OK


def cmd_clock(args: argparse.Namespace) -> int:
    run_clock(config_or_exit())
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    return run_dev(port=args.port, fake_hubspot=args.fake_hubspot)


# Every subcommand's --help: what it does, an example, and the environment it reads.
_REDIS = "REDIS_URL (default redis://localhost:6379/0)"
_POLICY = "PRUNER_POLICY (policy file; default: the bundled one)"
HELP: dict[str, tuple[str, str, list[str], list[str]]] = {
    # name: (one line, description, examples, environment)
    "dev": (
        "run web + worker + clock (and a Redis if none answers)",
        "Run the whole system on this machine for trying it out: the web process, one RQ worker and the "
        "clock. Without REDIS_URL and with nothing on localhost:6379 it starts a Redis of its own. It prints "
        "a signed example request and the exports a second shell needs. Ctrl-C stops everything.",
        ["pruner dev", "pruner dev --port 8000 --fake-hubspot"],
        [_REDIS, "PORT (default 5000)", "PRUNER_WEBHOOK_SECRET, PRUNER_ADMIN_TOKEN (generated when unset)"],
    ),
    "check": (
        "validate configuration and policy, print what is enabled",
        "Validate the environment and the policy file and print what is switched on. The release phase runs "
        "it: exit 3 on a bad setting or policy fails the deploy.",
        ["pruner check", "pruner check --policy my-policy.yaml"],
        [_REDIS, _POLICY, "every PRUNER_*, HUBSPOT_* and SALESFORCE_* setting in the README"],
    ),
    "sweep": (
        "run the time-based evaluation once",
        "Re-evaluate every lead whose next time-based check is due (proposal expiry, break-up grace, "
        "re-engage), as the clock does every minute. A --now more than 5 minutes ahead is a dry run that "
        "prints what would be decided, unless --commit-future says to write it.",
        [
            "pruner sweep",
            "pruner sweep --now 2027-03-01T09:00:00Z",
            "pruner sweep --now 2027-03-01T09:00:00Z --commit-future",
        ],
        [_REDIS, _POLICY, "PRUNER_DRY_RUN", "PRUNER_SUPPRESSION_KEY"],
    ),
    "explain": (
        "why a lead is in its state",
        "Say why a lead is in its state: each decision with the numbers it compared, and for an ACTIVE "
        "lead how far it is from each rule. --format json prints what GET /leads/<crm>/<id> answers.",
        ["pruner explain hubspot 12345", "pruner explain salesforce 00Q5g00000AbCdE --format json"],
        [_REDIS, _POLICY, "PRUNER_SUPPRESSION_KEY (to recognise an erased lead)"],
    ),
    "stats": (
        "loss and conversion by source, segment, priority, reason",
        "Print loss and conversion rates by source, segment, priority and reason, and the stage leads were lost in.",
        ["pruner stats", "pruner stats --format json | jq .by_reason"],
        [_REDIS],
    ),
    "replay": (
        "re-enqueue failed jobs (all, or the ones named)",
        "Put jobs from RQ's failed registry (batches or drains whose retries ran out) back on the queue. "
        "The failed registry is the only source; --failed is accepted so scripts can say so.",
        ["pruner replay", "pruner replay --job 3f2c...", "pruner replay --failed | tail -1"],
        [_REDIS],
    ),
    "simulate": (
        "dry-run the policy over a JSONL history of canonical events",
        'Replay a history of canonical events (one event or one {"events": [...]} batch per line) through '
        "the policy, without Redis or any CRM, and report what would have been decided, per rule and reason.",
        ["pruner simulate history.jsonl", "pruner simulate history.jsonl --policy strict.yaml --format json"],
        [_POLICY],
    ),
    "worker": (
        "run an RQ worker on the pruner queue",
        "Run one RQ worker: applies queued batches, sweeps and CRM drains. SIGTERM finishes the current job first.",
        ["pruner worker", "pruner worker --burst"],
        [_REDIS, _POLICY, "PRUNER_DRY_RUN", "PRUNER_SUPPRESSION_KEY", "HUBSPOT_*", "SALESFORCE_*"],
    ),
    "hubspot subscribe": (
        "create the HubSpot app's missing webhook subscriptions",
        "Read the HubSpot app's webhook settings and subscriptions (Webhooks API v3) and create the ones "
        "Pruner's mapping needs that are missing; paused ones are re-activated, others are left alone. "
        "--target-url also sets where HubSpot sends them. Running it again changes nothing.",
        [
            "pruner hubspot subscribe --dry-run",
            "pruner hubspot subscribe --target-url https://pruner.example/webhooks/hubspot",
        ],
        [
            "HUBSPOT_APP_ID, HUBSPOT_DEVELOPER_API_KEY (the app's developer API key, sent as hapikey)",
            "HUBSPOT_API_BASE (default https://api.hubapi.com)",
            _POLICY,
        ],
    ),
    "backfill hubspot": (
        "read a HubSpot portal's history: into the pipeline, a JSONL file, or counts only",
        "Read contacts, deals, calls, emails and meetings from HubSpot's CRM API (the property history from "
        "--since, and the state at --since; engagements dated in the window) and map them as the webhooks "
        "are mapped, with the same event ids: events go to the workers like webhook batches, or with --out "
        "to a canonical JSONL file for `pruner simulate`; --dry-run writes nothing and prints counts. "
        "Interrupted, the same command continues where it stopped; run again after it finished, it adds nothing.",
        [
            "pruner backfill hubspot --since 2026-09-01 --dry-run",
            "pruner backfill hubspot --since 2026-09-01 --out history.jsonl && pruner simulate history.jsonl",
            "pruner backfill hubspot --since 2026-09-01T00:00:00Z --until 2026-12-01T00:00:00Z",
        ],
        [
            _REDIS + " (the rate limiter, the cursors, the queue)",
            "HUBSPOT_ACCESS_TOKEN, HUBSPOT_API_BASE, HUBSPOT_RATE_LIMIT",
            _POLICY + " (the portal's property names)",
        ],
    ),
    "backfill salesforce": (
        "read a Salesforce org's history: into the pipeline, a JSONL file, or counts only",
        "Read Leads, Opportunities and Individuals last changed before --until, and Tasks and Events "
        "(archived ones too) changed between --since and --until, by SOQL over the REST API, and map each "
        "record with the Outbound Message mapping, so a record and its notification give the same event ids: "
        "events go to the workers like webhook batches, or with --out to a canonical JSONL file for "
        "`pruner simulate`; --dry-run writes nothing and prints counts. Fields and objects the org lacks are "
        "left out and counted. An object with 10,000 records or more in the window is read by a Bulk API 2.0 "
        "query job instead of REST pages (--bulk always|never to choose). Interrupted, the same command "
        "continues where it stopped; run again after it finished, it adds nothing.",
        [
            "pruner backfill salesforce --since 2026-09-01 --dry-run",
            "pruner backfill salesforce --since 2024-01-01 --bulk always --out history.jsonl",
            "pruner backfill salesforce --since 2026-09-01 --out history.jsonl && pruner simulate history.jsonl",
            "pruner backfill salesforce --since 2026-09-01T00:00:00Z --until 2026-12-01T00:00:00Z",
        ],
        [
            _REDIS + " (the rate limiter, the cursors, the queue)",
            "SALESFORCE_INSTANCE_URL, SALESFORCE_ACCESS_TOKEN (or the login variables), SALESFORCE_API_VERSION",
            "SALESFORCE_RATE_LIMIT, PRUNER_BACKFILL_RATE_SHARE, SALESFORCE_MAPPING (the org's field names)",
            _POLICY,
        ],
    ),
    "clock": (
        "enqueue the sweep every minute (RQ cron scheduler)",
        "Enqueue the sweep every minute and the dashboard's stats every 5 minutes (RQ's cron scheduler). "
        "Run exactly one.",
        ["pruner clock"],
        [_REDIS],
    ),
}


def _add_command(sub: Any, name: str) -> argparse.ArgumentParser:
    line, description, examples, env = HELP[name]
    epilog = "examples:\n" + "".join(f"  {e}\n" for e in examples)
    epilog += "\nenvironment:\n" + "".join(f"  {v}\n" for v in env)
    parser: argparse.ArgumentParser = sub.add_parser(
        name.split()[-1],  # "hubspot subscribe" is `subscribe` under the `hubspot` group
        help=line,
        description=textwrap.fill(description, 88),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def cmd_hubspot_subscribe(args: argparse.Namespace) -> int:
    config = config_or_exit()
    if config.hubspot_app_id is None or config.hubspot_developer_api_key is None:
        print("pruner: set HUBSPOT_APP_ID and HUBSPOT_DEVELOPER_API_KEY (the app's developer API key)", file=sys.stderr)
        return EXIT_CONFIG
    wanted = wanted_subscriptions(policy_or_exit(config.policy_path).hubspot)
    api = WebhooksApi(config.hubspot_api_base, config.hubspot_app_id, config.hubspot_developer_api_key)
    try:
        subscribe(api, wanted, args.target_url, args.dry_run, print)
    except SubscribeError as exc:
        print(f"pruner: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pruner",
        description="Prune cold CRM leads, explainably. `pruner COMMAND --help` says more about each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _add_command(sub, "dev")
    p.add_argument("--port", type=int, default=None, help="web port (default $PORT or 5000)")
    p.add_argument(
        "--fake-hubspot", action="store_true", help="also run the tests' fake HubSpot API and send callbacks to it"
    )
    p.set_defaults(func=cmd_dev)
    p = _add_command(sub, "check")
    p.add_argument("--policy", help="policy file to check (default $PRUNER_POLICY or the bundled one)")
    p.set_defaults(func=cmd_check)
    p = _add_command(sub, "sweep")
    p.add_argument("--now", help="evaluate as if it were this RFC 3339 time (in the future: a dry run)")
    p.add_argument(
        "--commit-future",
        action="store_true",
        help="with a --now in the future, really write its decisions and queue their CRM actions",
    )
    p.set_defaults(func=cmd_sweep)
    p = _add_command(sub, "explain")
    p.add_argument("crm", choices=["hubspot", "salesforce"])
    p.add_argument("lead_id")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_explain)
    p = _add_command(sub, "stats")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_stats)
    p = _add_command(sub, "replay")
    p.add_argument("--failed", action="store_true", help="from the failed registry (the only source; optional)")
    p.add_argument("--job", action="append", help="only this failed job id (repeatable)")
    p.set_defaults(func=cmd_replay)
    p = _add_command(sub, "simulate")
    p.add_argument("events", help="JSONL file: one canonical event (or one batch) per line")
    p.add_argument("--policy", help="policy file (default $PRUNER_POLICY or the bundled one)")
    p.add_argument("--now", help="evaluate as of this RFC 3339 time (default: the last event's)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_simulate)
    p = _add_command(sub, "worker")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=cmd_worker)
    p = _add_command(sub, "clock")
    p.set_defaults(func=cmd_clock)
    leadlist.add_command(sub, config_or_exit)
    hubspot = sub.add_parser("hubspot", help="HubSpot app set-up").add_subparsers(dest="hubspot", required=True)
    p = _add_command(hubspot, "hubspot subscribe")
    p.add_argument("--target-url", help="also set the app's target URL, e.g. https://<your-app>/webhooks/hubspot")
    p.add_argument("--dry-run", action="store_true", help="read and report only; change nothing")
    p.set_defaults(func=cmd_hubspot_subscribe)
    backfill = sub.add_parser("backfill", help="read a CRM's existing history (resumable)").add_subparsers(
        dest="backfill", required=True
    )
    for crm, command in (("hubspot", cmd_backfill_hubspot), ("salesforce", cmd_backfill_salesforce)):
        p = _add_command(backfill, f"backfill {crm}")
        p.add_argument("--since", required=True, help="from this date (2026-09-01) or RFC 3339 time")
        p.add_argument("--until", help="up to this date or time, excluded (default: now)")
        p.add_argument("--out", help="write canonical JSONL here (for pruner simulate) instead of queueing")
        p.add_argument("--dry-run", action="store_true", help="write and queue nothing; print counts")
        p.add_argument("--format", choices=["text", "json"], default="text", help="of the summary")
        if crm == "salesforce":
            p.add_argument(
                "--bulk",
                choices=["auto", "always", "never"],
                default="auto",
                help="read objects by Bulk API 2.0 query jobs: auto from 10,000 records in an object's window "
                "(a SELECT COUNT() first), always, or never (REST SOQL pages only)",
            )
        p.set_defaults(func=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pruner` command line."""
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except redis.RedisError as exc:
        where = redis_location(os.environ.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL)
        print(f"pruner: Redis at {where} did not answer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`pruner leads | head`): what Python's docs advise for SIGPIPE —
        # point stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    raise SystemExit(main())
