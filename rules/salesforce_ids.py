"""Salesforce record ids: the 15-character case-sensitive and 18-character forms, and what looks like one.

Apart from the mapping (rules/salesforce_map.py) because the shells need them too: the
client, the executor, the settings and the inbound route check and convert ids.
"""

from __future__ import annotations

import re

_ID = re.compile(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?")
_SUFFIX_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def to_18(record_id: str) -> str:
    """Return the case-insensitive 18-character form of a Salesforce id (15 or 18 chars in)."""
    if len(record_id) != 15:
        return record_id
    suffix = ""
    for start in range(0, 15, 5):
        chunk = record_id[start : start + 5]
        bits = sum(1 << i for i, char in enumerate(chunk) if "A" <= char <= "Z")
        suffix += _SUFFIX_CHARS[bits]
    return record_id + suffix


def to_15(record_id: str) -> str:
    """Return the case-sensitive 15-character form of a Salesforce id.

    An 18-character id's suffix spells the case of the first 15 characters, so an id pasted
    in the wrong case (18-character ids are meant to be case-insensitive) is restored.
    """
    if len(record_id) != 18:
        return record_id
    out = []
    for group, start in enumerate(range(0, 15, 5)):
        bits = _SUFFIX_CHARS.find(record_id[15 + group].upper())
        if bits < 0:
            return record_id[:15]  # not a checksum: keep what was given
        chunk = record_id[start : start + 5]
        out += [c.upper() if bits >> i & 1 else c.lower() for i, c in enumerate(chunk)]
    return "".join(out)


def is_record_id(value: object) -> bool:
    """Say whether `value` looks like a Salesforce record id (15 or 18 alphanumerics)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None
