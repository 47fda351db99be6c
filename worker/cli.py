"""The `pruner` command line (CONTRACT.md "CLI")."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rules.errors import SchemaError
from rules.events import parse_rfc3339_ms
from worker.config import Config
from worker.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3


def _config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as exc:
        print(f"pruner: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_check(args: argparse.Namespace) -> int:
    config = _config()
    print(f"configuration OK ({config.redis_url.split('@')[-1]})")
    for name, on in config.enabled().items():
        print(f"  {'on ' if on else 'off'}  {name}")
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from worker.jobs import sweep

    now_ms = None
    if args.now:
        try:
            now_ms = parse_rfc3339_ms(args.now, "--now")
        except SchemaError as exc:
            print(f"pruner: {exc}", file=sys.stderr)
            return EXIT_USAGE
    result = sweep(now_ms)
    print(f"sweep done: {result['due']} due leads evaluated")
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

    return run_dev(port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pruner", description="Prune cold CRM leads, explainably.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("dev", help="run web + worker + clock (and a Redis if none answers)")
    p.add_argument("--port", type=int, default=None, help="web port (default $PORT or 5000)")
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("check", help="validate configuration and policy, print what is enabled")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("sweep", help="run the time-based evaluation once")
    p.add_argument("--now", help="evaluate as if it were this RFC 3339 time")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("worker", help="run an RQ worker on the pruner queue")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("clock", help="enqueue the sweep every minute (RQ cron scheduler)")
    p.set_defaults(func=cmd_clock)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pruner` command line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
