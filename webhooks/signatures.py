"""Standard Webhooks signature verification, as a pure function.

Same algorithm as the `standardwebhooks` package (HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}`, base64, `v1,` prefix, space-separated
list), with two differences that matter to a server: the clock is a parameter,
and every malformed header raises the one `SignatureError` instead of a
`ValueError` or `UnicodeDecodeError` escaping as a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Protocol

from webhooks.errors import SignatureError


class Headers(Protocol):
    """Request headers: werkzeug's `Headers`, or any mapping (looked up case-insensitively)."""

    def get(self, key: str, /) -> str | None: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


def lowercased(headers: Headers) -> dict[str, str]:
    """The headers keyed by lower-case name: HTTP names are case-insensitive, a plain dict is not."""
    return {str(k).lower(): v for k, v in headers.items()}


TOLERANCE_SECONDS = 5 * 60
MAX_ID_LENGTH = 256


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `v1,<base64>` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(body: bytes, headers: Headers, keys: bytes | Sequence[bytes], now: float) -> str:
    """Check the Standard Webhooks headers of `body`; return the webhook id or raise `SignatureError`.

    Several keys while a secret is rotated: a signature by any of them passes.
    """
    named = lowercased(headers)
    msg_id = named.get("webhook-id")
    stamp = named.get("webhook-timestamp")
    given = named.get("webhook-signature")
    missing = [
        name
        for name, value in (("webhook-id", msg_id), ("webhook-timestamp", stamp), ("webhook-signature", given))
        if not value
    ]
    if missing:
        raise SignatureError(f"missing header(s) {', '.join(missing)}: the request is not signed")
    assert msg_id is not None and stamp is not None and given is not None
    if len(msg_id) > MAX_ID_LENGTH or not msg_id.isprintable():
        raise SignatureError("webhook-id must be at most 256 printable characters")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError(f"webhook-timestamp must be integer seconds since the epoch, got {stamp[:40]!r}") from None
    if timestamp < now - TOLERANCE_SECONDS:
        raise SignatureError(f"webhook-timestamp is {int(now - timestamp)} s old, more than the 300 s allowed")
    if timestamp > now + TOLERANCE_SECONDS:
        ahead = int(timestamp - now)
        raise SignatureError(f"webhook-timestamp is {ahead} s in the future, more than the 300 s allowed")
    expected = [sign(key, msg_id, timestamp, body).encode() for key in ([keys] if isinstance(keys, bytes) else keys)]
    matched = False
    for candidate in given.split(" "):
        # Compare every candidate with every key, never stopping early, so timing says nothing.
        for wanted in expected:
            matched |= hmac.compare_digest(candidate.encode("utf-8", "replace"), wanted)
    if not matched:
        raise SignatureError("webhook-signature does not match the body: wrong secret or the body was altered")
    return msg_id
