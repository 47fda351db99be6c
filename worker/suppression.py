"""The suppression list: keyed hashes that let Pruner recognise an erased or objecting person.

After an erasure Pruner keeps only HMAC-SHA-256 hashes, keyed with
`PRUNER_SUPPRESSION_KEY`, of `crm:lead_id` and of each normalized email the
lead had: enough to recognise a re-imported or re-created person, useless to
anyone without the key (a bare SHA-256 of an email is reversed by a dictionary).
Purging an erased lead from job payloads is worker/gdpr.py's.
"""

from __future__ import annotations

import hashlib
import hmac

SUPPRESSED_KEY = "pruner:suppressed"
AUDIT_KEY = "pruner:erasures"


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    """Return the hex HMAC-SHA-256 of `kind:value` under the suppression key."""
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()


def lead_hash(key: bytes, crm: str, lead_id: str) -> str:
    return keyed_hash(key, "lead", f"{crm}:{lead_id}")


def normalize_email(email: str) -> str:
    return email.strip().lower()


def email_hash(key: bytes, email: str) -> str:
    return keyed_hash(key, "email", normalize_email(email))


def objection_hash(key: bytes, crm: str, lead_id: str, channel: str | None = None) -> str:
    """Marks a suppressed lead deleted in the CRM: if the record comes back, so does SUPPRESSED.

    Without `channel`, the objection covered every channel; with one, that channel only.
    """
    return keyed_hash(key, "objected", f"{crm}:{lead_id}" + (f":{channel}" if channel else ""))
