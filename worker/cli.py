"""The `pruner` command line (CONTRACT.md "CLI")."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import redis

from rules.errors import PolicyError, SchemaError
from rules.events import format_ms, parse_rfc3339_ms
from rules.policy import Policy
from worker.config import DEFAULT_REDIS_URL, Config, policy_path_from_env, redis_location
from worker.errors import ConfigError
from worker.logs import setup_logging
from worker.policyfile import load_policy

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3


def _config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as exc:
        print(f"pruner: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _policy(path: str | None) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(f"pruner: policy {path or '(bundled default)'}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _now_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return parse_rfc3339_ms(value, "--now")
    except SchemaError as exc:
        print(f"pruner: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def cmd_check(args: argparse.Namespace) -> int:
    config = _config()
    policy = _policy(args.policy or config.policy_path)
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
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from worker.jobs import run_sweep
    from worker.queues import connect

    config = _config()
    _policy(config.policy_path)
    now_ms = _now_ms(args.now) or int(time.time() * 1000)
    result = run_sweep(connect(config.redis_url, timeout=30), config, now_ms)
    if result.get("skipped"):
        print("sweep skipped: another sweep is running")
        return EXIT_FAILED
    print(
        f"sweep done as of {format_ms(now_ms)}: {result['due']} due leads evaluated, "
        f"{result['actions']} CRM actions recorded"
    )
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from rules.counters import fold
    from rules.explain import progress, sentence
    from webhooks.admin import is_erased, lead_document
    from worker.queues import connect
    from worker.store import LeadStore

    config = _config()
    connection = connect(config.redis_url, timeout=10)
    if config.suppression_key and is_erased(connection, config.suppression_key.encode(), args.crm, args.lead_id):
        if args.format == "json":  # what GET /leads answers for it (CONTRACT.md "HTTP")
            print(json.dumps({"crm": args.crm, "lead_id": args.lead_id, "state": "SUPPRESSED", "erased": True}))
        else:
            print(f"{args.crm} lead {args.lead_id} was erased on request: SUPPRESSED, nothing else is kept")
        return EXIT_OK
    store = LeadStore(connection)
    history = store.history(args.crm, args.lead_id)
    if history is None:
        print(f"pruner: no events have been received for {args.crm} lead {args.lead_id}", file=sys.stderr)
        return EXIT_FAILED
    doc = lead_document(args.crm, args.lead_id, history, store.state(args.crm, args.lead_id))
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    reason = f" (loss reason: {doc['loss_reason']})" if doc["loss_reason"] else ""
    print(f"{args.crm} lead {args.lead_id} is {doc['state']}{reason}; {doc['events']} events")
    for decision in doc["decisions"]:
        print(f"  {sentence(decision)}")
    if not doc["decisions"]:
        print("  no rule has fired yet")
    if doc["state"] == "ACTIVE":
        print("why not yet:")
        for line in progress(fold(history), _policy(config.policy_path)):
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
    from worker.queues import connect
    from worker.stats import collect, format_text

    config = _config()
    progress = Progress("leads")
    stats = collect(connect(config.redis_url, timeout=30), progress)
    progress.close()
    print(json.dumps(stats.to_json(), indent=2) if args.format == "json" else format_text(stats))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from worker.queues import connect, make_queue

    config = _config()
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
    from worker.simulate import SimulationError, format_text, simulate_file

    # The policy the worker runs (PRUNER_POLICY) unless told otherwise: else a dry run misleads.
    policy = _policy(args.policy or policy_path_from_env())
    bar = Progress("read %")
    try:
        report = simulate_file(args.events, policy, _now_ms(args.now), progress=lambda f: bar(int(f * 100) - bar.done))
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
    print(json.dumps(report.to_json(), indent=2) if args.format == "json" else format_text(report))
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.runner import run_worker

    run_worker(_config(), burst=args.burst)
    return EXIT_OK


def cmd_clock(args: argparse.Namespace) -> int:
    from worker.runner import run_clock

    run_clock(_config())
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from worker.dev import run_dev

    return run_dev(port=args.port, fake_hubspot=args.fake_hubspot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pruner", description="Prune cold CRM leads, explainably.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("dev", help="run web + worker + clock (and a Redis if none answers)")
    p.add_argument("--port", type=int, default=None, help="web port (default $PORT or 5000)")
    p.add_argument(
        "--fake-hubspot", action="store_true", help="also run the tests' fake HubSpot API and send callbacks to it"
    )
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("check", help="validate configuration and policy, print what is enabled")
    p.add_argument("--policy", help="policy file to check (default $PRUNER_POLICY or the bundled one)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("sweep", help="run the time-based evaluation once")
    p.add_argument("--now", help="evaluate as if it were this RFC 3339 time")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("explain", help="why a lead is in its state")
    p.add_argument("crm", choices=["hubspot", "salesforce"])
    p.add_argument("lead_id")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("stats", help="loss and conversion by source, segment, priority, reason")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("replay", help="re-enqueue failed jobs (all, or the ones named)")
    p.add_argument("--failed", action="store_true", help="take jobs from the failed registry (the default)")
    p.add_argument("--job", action="append", help="only this failed job id (repeatable)")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("simulate", help="dry-run the policy over a JSONL history of canonical events")
    p.add_argument("events", help="JSONL file: one canonical event (or one batch) per line")
    p.add_argument("--policy", help="policy file (default $PRUNER_POLICY or the bundled one)")
    p.add_argument("--now", help="evaluate as of this RFC 3339 time (default: the last event's)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("worker", help="run an RQ worker on the pruner queue")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("clock", help="enqueue the sweep every minute (RQ cron scheduler)")
    p.set_defaults(func=cmd_clock)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pruner` command line."""
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except redis.RedisError as exc:
        where = redis_location(os.environ.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL)
        print(f"pruner: Redis at {where} did not answer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    raise SystemExit(main())
