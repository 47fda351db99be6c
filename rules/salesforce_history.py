"""Salesforce records read through the REST API -> canonical events, for a backfill (pure; no I/O).

A SOQL read returns each record's current values as JSON: booleans, numbers and nulls where an
Outbound Message carries text. `as_text` writes them the way the SOAP message does, and the
record then goes through the very function the webhook path uses for its sObject
(rules/salesforce_map.py `map_records`, with no notification id). So a record read here and the
notification Salesforce sent for the same version of it give the same events under the same
ids: activities and facts are keyed on the record, changes on the record and its
`LastModifiedDate`.

A Bulk API 2.0 query answers CSV instead (`csv_records`): every value is already text, written
the way the mapping reads it (`true`/`false`, `75000.0`, dateTimes such as
`2026-11-20T10:00:00.000Z`, which the mapping's time parser reads as it reads the REST API's
`+0000` form), and an empty cell where JSON has null. Empty becomes None, so a CSV record and the
REST record of the same version map to the same events.

What a read cannot see: the versions before the current one (SOQL has no history without field
history tracking). A backfill therefore says what each record is now, dated by its own times.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
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


def csv_records(text: str, columns: Sequence[str]) -> list[dict[str, str | None]]:
    """The records of one set of Bulk API 2.0 query results (CSV, comma, LF) as field -> text or None.

    `columns` are the fields the job selected. A set normally starts with its header row (in the
    order the query named the fields, API 50.0 and later; alphabetical before): it is recognised
    whatever its order or case and used to name the cells. A set without one (nothing documents
    that either way for the sets after the first) is read against `columns`. An empty cell is
    null: Bulk API writes null as nothing, where the REST API writes `null`.
    """
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    if not rows:
        return []
    by_lower = {name.lower(): name for name in columns}
    first = [cell.strip().lower() for cell in rows[0]]
    if sorted(first) == sorted(by_lower):
        header, rows = [by_lower[cell] for cell in first], rows[1:]
    else:
        header = list(columns)
    out = []
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a Bulk API result row has {len(row)} cells for {len(header)} columns")
        out.append({name: (cell if cell != "" else None) for name, cell in zip(header, row, strict=True)})
    return out


def record_events(
    sobject: str, records: Iterable[Mapping[str, Any]], now_ms: int, m: SalesforceMapping, out: Mapped
) -> None:
    """Map records of one sObject type exactly as their outbound messages are mapped; add to `out`."""
    result = map_records(((sobject, as_text(r), None) for r in records), now_ms, m)
    out.events.extend(Versioned(e, result.versions.get(e.id)) for e in result.events)
    out.ignored.update({f"{sobject}:{reason}": n for reason, n in result.skipped.items()})
