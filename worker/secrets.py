"""Standard Webhooks secrets (`whsec_<base64>`): their format, for the config to check and the web to use.

Below `worker.config` (which refuses an unusable `PRUNER_WEBHOOK_SECRET` at start) and
`webhooks.signatures` (which verifies with the decoded keys), so neither imports the other.
"""

from __future__ import annotations

import base64
import binascii

_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """Return the HMAC key of a `whsec_<base64>` secret; raise ValueError when unusable.

    Padding is optional, as in the reference library: some providers print secrets without it.
    """
    raw = secret[len(_PREFIX) :] if secret.startswith(_PREFIX) else secret
    raw += "=" * (-len(raw) % 4)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError(f"the key must be at least 16 bytes, got {len(key)}")
    return key


def decode_secrets(value: str) -> tuple[bytes, ...]:
    """Return the keys of a space-separated list of secrets (several while one is being rotated)."""
    return tuple(decode_secret(secret) for secret in value.split())
