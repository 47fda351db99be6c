"""What every `pruner` command shares: exit codes, and reading the configuration, the policy and time flags.

Each helper prints one sentence and exits with the documented code when its input is wrong,
so a command body reads as the happy path.
"""

from __future__ import annotations

import logging
import sys

from rules.errors import PolicyError, SchemaError
from rules.events import parse_rfc3339_ms
from rules.policy import Policy
from worker.config import Config
from worker.errors import ConfigError
from worker.policyfile import load_policy

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3


def config_or_exit() -> Config:
    try:
        return Config.from_env()
    except ConfigError as exc:
        print(f"pruner: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def policy_or_exit(path: str | None) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(f"pruner: policy {path or '(bundled default)'}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def now_flag_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return parse_rfc3339_ms(value, "--now")
    except SchemaError as exc:
        print(f"pruner: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def date_flag_ms(value: str, flag: str) -> int:
    """A --since/--until value: a date (midnight UTC) or an RFC 3339 time."""
    text = value.strip()
    if len(text) == 10:
        text += "T00:00:00Z"
    try:
        return parse_rfc3339_ms(text, flag)
    except SchemaError as exc:
        print(f"pruner: {exc} (a date like 2026-09-01, or an RFC 3339 time)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def logs_to_stderr() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
