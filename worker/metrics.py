"""Aggregate counters the workers keep in Redis, for `/metrics` and the dashboard.

Workers may run on other machines than the web (Heroku dynos), so prometheus-client's
multiprocess files cannot carry their numbers; a few Redis hashes can. Only
aggregates are stored: rule and reason names, CRM endpoints and statuses — never a
lead id.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping

import redis

DECISIONS_KEY = "pruner:metrics:decisions"  # field "rule|to|reason" -> count
CRM_CALLS_KEY = "pruner:metrics:crm_calls"  # field "crm|endpoint|status" -> count
EVENTS_KEY = "pruner:metrics:events"  # field "source|type" -> count of events applied
LAG_KEY = "pruner:metrics:lag"  # fields: queue_seconds, event_seconds, at (of the last batch)
DAILY_PREFIX = "pruner:metrics:daily:"  # per UTC day: field "to|reason" -> decisions that day
# field "checkpoint" (continued from the lead's checkpoint), "replay" (its whole log: a late
# event, a lead written before checkpoints, a policy change) or "new" -> lead evaluations
EVALUATIONS_KEY = "pruner:metrics:evaluations"
# Events folded away past the retention horizon, and late ones ignored for being past it.
RETENTION_KEY = "pruner:metrics:retention"
# field "crm|kind" -> actions the CRM refused for good (worker/actions.py: they wait in pruner:dead:{crm})
REFUSED_KEY = "pruner:metrics:refused"
# The labels of those two exported at 0 before their first count: Prometheus's increase() sees
# no rise in a series born at 1, so an alert on the first refusal or recovery would stay silent.
REFUSED_KINDS = ("breakup_task", "reengage_task", "mark_lost", "suppress", "forward_erasure")
RECONCILED_OBJECTS = (
    *("contacts", "deals", "calls", "emails", "meetings"),  # HubSpot (worker/reconcile.py)
    *("Lead", "Task", "Event", "Opportunity", "Individual"),  # Salesforce (rules/salesforce_map.SOBJECTS)
)
RECONCILED_KEY = "pruner:metrics:reconciled"  # field: object type -> events reconciliation added (worker/reconcile.py)


def record_batch(
    connection: redis.Redis,
    decisions: Iterable[tuple[str, str, str | None]],
    events: Iterable[tuple[str, str]],
    enqueued_at: float | None,
    newest_event_ms: int | None,
    evaluations: Mapping[str, int] | None = None,
    retention: Mapping[str, int] | None = None,
) -> None:
    """Count a processed batch's new decisions, events and evaluations by path; remember its lag."""
    now = time.time()
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    with connection.pipeline(transaction=False) as pipe:
        # Counted here first: a batch's hundred decisions are a handful of distinct ones.
        by_rule = Counter(f"{rule}|{to}|{reason or ''}" for rule, to, reason in decisions)
        for field, n in by_rule.items():
            pipe.hincrby(DECISIONS_KEY, field, n)
        by_day = Counter(field.split("|", 1)[1] for field in by_rule.elements())
        for field, n in by_day.items():
            pipe.hincrby(DAILY_PREFIX + day, field, n)
        pipe.expire(DAILY_PREFIX + day, 400 * 86_400)
        counts: dict[str, int] = {}
        for source, etype in events:
            counts[f"{source}|{etype}"] = counts.get(f"{source}|{etype}", 0) + 1
        for field, n in counts.items():
            pipe.hincrby(EVENTS_KEY, field, n)
        for path, n in (evaluations or {}).items():
            pipe.hincrby(EVALUATIONS_KEY, path, n)
        for what, n in (retention or {}).items():
            if n:
                pipe.hincrby(RETENTION_KEY, what, n)
        lag: dict[str, float] = {"at": now}
        if enqueued_at is not None:
            lag["queue_seconds"] = max(0.0, now - enqueued_at)
        if newest_event_ms is not None:
            lag["event_seconds"] = max(0.0, now - newest_event_ms / 1000)
        pipe.hset(LAG_KEY, mapping=lag)  # type: ignore[arg-type]
        pipe.execute()


def endpoint_template(path: str) -> str:
    """Replace record ids and emails in an API path by `{id}`: metrics stay aggregate and non-personal."""
    return "/".join("{id}" if _is_identifier(seg) else seg for seg in path.split("?", 1)[0].split("/"))


def _is_identifier(segment: str) -> bool:
    # Record ids all carry digits (HubSpot's numbers, Salesforce's 15/18 characters, and
    # whatever a CRM prefixes them with); API words do not, but for versions and oauth2.
    if "@" in segment or "%40" in segment.upper():
        return True
    return any(c.isdigit() for c in segment) and not _API_WORD.fullmatch(segment)


_API_WORD = re.compile(r"v\d+(\.\d+)?|oauth2")


def count_crm_call(connection: redis.Redis, crm: str, endpoint: str, status: int | str) -> None:
    """Count one outbound CRM call (endpoint as a template, e.g. `/crm/v3/objects/contacts/batch/update`)."""
    connection.hincrby(CRM_CALLS_KEY, f"{crm}|{endpoint}|{status}", 1)
