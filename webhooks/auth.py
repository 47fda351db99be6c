"""The admin token, one check for every admin surface: `/leads` (bearer), `/dashboard` and `/rq` (bearer or session).

The session cookie holds an expiry and an HMAC keyed by the token, never the token: it cannot
be replayed past its expiry and dies when the token is rotated.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "pruner_admin"
SESSION_SECONDS = 12 * 3600


def session_value(token: str, expires: int) -> str:
    """Return the cookie value for a session that ends at `expires` (epoch seconds)."""
    mac = hmac.new(token.encode(), f"pruner-dashboard|{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def session_valid(token: str, value: str, now: float) -> bool:
    """Say whether a cookie value was made with `token` and has not expired."""
    expires, _, _ = value.partition(".")
    # isdigit() alone accepts "²" and other non-ASCII digits, which int() refuses (a 500);
    # twelve digits reach past the year 30000 and stay far below int()'s length limit.
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12) or int(expires) < now:
        return False
    return hmac.compare_digest(session_value(token, int(expires)).encode(), value.encode())


def token_matches(given: str, token: str) -> bool:
    """Whether `given` (a form field, a query parameter, a header value) is the admin token, in constant time."""
    return hmac.compare_digest(given.strip().encode(), token.encode())


def bearer_ok(authorization: str, token: str) -> bool:
    """Whether an `Authorization` header value is `Bearer <token>` (scheme case-insensitive), in constant time."""
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and bool(value) and token_matches(value, token)
