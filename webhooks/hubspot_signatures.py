"""HubSpot webhook signatures (v1, v2, v3) as pure functions over raw bytes.

v3 (the default, `X-HubSpot-Signature-v3`): base64 HMAC-SHA256 keyed with the app's
client secret over `method + uri + body + timestamp` (a few escapes in the URI decoded
first, `normalize_uri`; v2 signs the URI as sent), timestamp in epoch ms, refused
when more than 5 minutes away in either direction (HubSpot's own Python client only
checks the past). v1 and v2 (`X-HubSpot-Signature` with `X-HubSpot-Signature-Version`)
are hex SHA-256 of `secret + body` and `secret + method + uri + body`: accepted only
when the version header asks for them, since they carry no timestamp.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from webhooks.errors import SignatureError
from webhooks.signatures import Headers, lowercased

TOLERANCE_MS = 5 * 60 * 1000
# Epoch ms has 13 digits until the year 2286; anything much longer is not a time, and
# int() of thousands of digits raises (Python's int_max_str_digits) instead of refusing.
MAX_TIMESTAMP_DIGITS = 16
# HubSpot decodes exactly these escapes in the URI before signing (docs/crm.md).
_URI_DECODE = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip


def normalize_uri(uri: str) -> str:
    """Decode the escapes HubSpot decodes before signing (either case of hex digits)."""
    out = []
    i = 0
    while i < len(uri):
        chunk = uri[i : i + 3].upper()
        if uri[i] == "%" and chunk in _URI_DECODE:
            out.append(_URI_DECODE[chunk])
            i += 3
        else:
            out.append(uri[i])
            i += 1
    return "".join(out)


def sign_v1(secret: str, body: bytes) -> str:
    return hashlib.sha256(secret.encode() + body).hexdigest()


def sign_v2(secret: str, method: str, uri: str, body: bytes) -> str:
    return hashlib.sha256(f"{secret}{method}{uri}".encode() + body).hexdigest()


def sign_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = f"{method}{uri}".encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


ALL_VERSIONS = frozenset({"v1", "v2", "v3"})


def verify(
    body: bytes,
    headers: Headers,
    secret: str | Sequence[str],
    method: str,
    uri: str,
    now_ms: int,
    allowed: frozenset[str] = ALL_VERSIONS,
) -> str:
    """Check a HubSpot request's signature; return the version used or raise `SignatureError`.

    `allowed` narrows the versions accepted: HubSpot sends v3 beside v1/v2 on every request,
    and v1/v2 carry no timestamp, so a captured request stripped of its v3 headers could be
    replayed as v1 for ever. `HUBSPOT_SIGNATURE_VERSIONS=v3` closes that. Several secrets
    (the current and the previous client secret, while the app's is rotated): any one passes.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    named = lowercased(headers)
    v3 = named.get("x-hubspot-signature-v3")
    version = (named.get("x-hubspot-signature-version") or "").strip().lower()
    if v3 or version == "v3" or not version:
        if not v3:
            raise SignatureError("missing X-HubSpot-Signature-v3 header: the request is not signed")
        stamp = named.get("x-hubspot-request-timestamp") or ""
        # isascii too: str.isdigit also accepts "²" (which int() refuses) and other scripts' digits.
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
            raise SignatureError(
                f"X-HubSpot-Request-Timestamp must be epoch milliseconds (at most {MAX_TIMESTAMP_DIGITS} "
                f"ASCII digits), got {stamp[:40]!r}"
            )
        skew = now_ms - int(stamp)
        if skew > TOLERANCE_MS:
            raise SignatureError(f"X-HubSpot-Request-Timestamp is {skew // 1000} s old, more than the 300 s allowed")
        if -skew > TOLERANCE_MS:
            raise SignatureError(f"X-HubSpot-Request-Timestamp is {-skew // 1000} s in the future, more than 300 s")
        # Only v3 decodes escapes in the URI before signing; v2 signs it exactly as sent.
        _compare(v3, [sign_v3(s, method, normalize_uri(uri), body, stamp) for s in secrets])
        return "v3"
    if version in ("v1", "v2") and version not in allowed:
        raise SignatureError(f"{version} signatures are not accepted here (they carry no timestamp); sign with v3")
    given = named.get("x-hubspot-signature")
    if not given:
        raise SignatureError("missing X-HubSpot-Signature header: the request is not signed")
    if version == "v1":
        _compare(given.lower(), [sign_v1(s, body) for s in secrets])
    elif version == "v2":
        _compare(given.lower(), [sign_v2(s, method, uri, body) for s in secrets])
    else:
        raise SignatureError(f"X-HubSpot-Signature-Version must be v1, v2 or v3, got {version[:10]!r}")
    return version


def _compare(given: str, expected: list[str]) -> None:
    matched = False
    for wanted in expected:  # every one, never stopping early: timing says nothing
        matched |= hmac.compare_digest(given.encode("utf-8", "replace"), wanted.encode())
    if not matched:
        raise SignatureError("the HubSpot signature does not match: wrong client secret, URL, or an altered body")
