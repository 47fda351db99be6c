"""Logging with a redaction step: emails and phone numbers never reach a log line.

Pruner's own log calls pass counts and hashes only, but libraries log what they
like (RQ logs job descriptions, werkzeug logs URLs that may carry a lead id). The
record factory formats every record once and replaces anything shaped like an
email address or an international phone number before any handler sees it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

# RQ colours its messages when stdout is a terminal; a JSON log line must not carry the escapes.
ANSI = re.compile(r"\x1b\[[0-9;]*m")
EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"\+\d[\d ().-]{6,}\d")
_installed = False


def redact(text: str) -> str:
    """Replace emails and phone numbers in `text`."""
    if "@" in text:
        text = EMAIL.sub("<email>", text)
    if "+" in text:
        text = PHONE.sub("<phone>", text)
    return text


def install_redaction() -> None:
    """Redact every log record created in this process from now on (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        return record

    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log platforms (Heroku drains, Loki, Datadog) parse without rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": ANSI.sub("", record.getMessage()),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: int = logging.INFO) -> None:
    """Log JSON lines to stdout (the platform collects it), redacted; PRUNER_LOG_FORMAT=text for people."""
    install_redaction()
    handler = logging.StreamHandler(sys.stdout)
    if os.environ.get("PRUNER_LOG_FORMAT", "json").strip().lower() == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
