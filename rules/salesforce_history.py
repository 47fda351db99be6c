"""Salesforce records read through the REST API -> canonical events, for a backfill (pure; no I/O).

A SOQL read returns each record's current values as JSON: booleans, numbers and nulls where an
Outbound Message carries text. `as_text` writes them the way the SOAP message does, and the
record then goes through the very function the webhook path uses for its sObject
(rules/salesforce_map.py `map_records`, with no notification id). So a record read here and the
notification Salesforce sent for the same version of it give the same events under the same
ids: activities and facts are keyed on the record, changes on the record and its
`LastModifiedDate`.

What a read cannot see: the versions before the current one (SOQL has no history without field
history tracking). A backfill therefore says what each record is now, dated by its own times.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from rules.hubspot_history import Mapped
from rules.hubspot_map import Versioned
from rules.salesforce_fields import SalesforceMapping
from rules.salesforce_map import map_records

OWNER_FIELD = "OwnerId"  # read on leads for the dry run's count per owner; no event carries it


def as_text(record: Mapping[str, Any]) -> dict[str, str | None]:
    """A REST record's field values as an Outbound Message writes them (`true`, `61`, `75000.0`)."""
    out: dict[str, str | None] = {}
    for name, value in record.items():
        if name == "attributes" or isinstance(value, dict | list):
            continue  # the record's type and URL, or a relationship: no field the mapping reads
        if value is None:
            out[name] = None
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value)  # a number: the mapping parses it back as SOAP's text
    return out


def record_events(
    sobject: str, records: Iterable[Mapping[str, Any]], now_ms: int, m: SalesforceMapping, out: Mapped
) -> None:
    """Map records of one sObject type exactly as their outbound messages are mapped; add to `out`."""
    result = map_records(((sobject, as_text(r), None) for r in records), now_ms, m)
    out.events.extend(Versioned(e, result.versions.get(e.id)) for e in result.events)
    out.ignored.update({f"{sobject}:{reason}": n for reason, n in result.skipped.items()})
