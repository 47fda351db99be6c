"""A CRM action: what a decision asks of the CRM, queued in the outbox as JSON.

An action (built by worker/decide.py, or worker/actions.py for a forwarded erasure) crosses
processes as JSON in the outbox, exactly these keys:

    {"id": "hubspot:123:pushed_back:BREAKUP_DUE@0#1",   # unique, stable: the idempotency key
     "kind": "mark_lost" | "breakup_task" | "reengage_task" | "suppress" | "forward_erasure",
     "crm": "hubspot", "lead_id": "123", "rule": "pushed_back",
     "reason": "deprioritized" | None, "at": "2026-11-20T10:00:00Z", "dry_run": false,
     "channels": ["email"]          # suppress only: which opt-outs to set
     "source": "hubspot"}           # forward_erasure only: where the erasure came from
"""

from __future__ import annotations

import hashlib
from typing import NotRequired, TypedDict


class Action(TypedDict):
    """One CRM action, as queued in the outbox (see above)."""

    id: str
    kind: str
    crm: str
    lead_id: str
    rule: str
    reason: str | None
    at: str
    dry_run: bool
    channels: NotRequired[list[str]]
    source: NotRequired[str]


def action_digest(action_id: str) -> str:
    """The hex digest a CRM record made by an action carries, to be found again (a task sent twice?).

    One derivation for every CRM; each writes as much of it as its search can match: HubSpot
    one alphanumeric token (`pruner` + 24 digits, its CONTAINS_TOKEN matches whole tokens),
    Salesforce a `[pruner-ref` 12 digits `]` suffix of the Task subject.
    """
    return hashlib.sha256(action_id.encode()).hexdigest()
