"""Logging with a redaction step: emails and phone numbers never reach a log line.

Pruner's own log calls pass counts and hashes only, but libraries log what they
like (RQ logs job descriptions, werkzeug logs URLs that may carry a lead id). The
record factory formats every record once and replaces anything shaped like an
email address or an international phone number before any handler sees it.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

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


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stdout (the platform collects it), redacted."""
    install_redaction()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
