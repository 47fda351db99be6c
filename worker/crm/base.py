"""What every outbound CRM adapter implements.

An action (built by worker/decide.py) is a plain dict:

    {"id": "hubspot:123:repeated_no:LOST:1790000000000",   # unique, stable: the idempotency key
     "kind": "mark_lost" | "breakup_task" | "reengage_task" | "suppress",
     "crm": "hubspot", "lead_id": "123", "rule": "repeated_no",
     "reason": "not_interested" | None, "at": "2026-11-20T10:00:00Z", "dry_run": false}

`Executor.execute` carries out a list of actions for its CRM (coalescing them into
batch calls where the CRM allows), and returns one `ActionOutcome` per action. It
raises `TransientCrmError` when the CRM is unavailable after bounded retries: the
drain job then fails, RQ retries it, and in the end it lands in the failed registry
for `pruner replay`. A per-record permanent failure (a deleted contact, a validation
error) is an `ActionOutcome(ok=False)`: recorded as dead, never blocking the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker.errors import PrunerError


class CrmError(PrunerError):
    """A CRM call failed."""


class TransientCrmError(CrmError):
    """The CRM is unavailable or rate limiting after bounded retries; try the whole drain later."""


@dataclass(frozen=True)
class ActionOutcome:
    action_id: str
    ok: bool
    detail: str = ""


class Executor(Protocol):
    crm: str

    def execute(self, actions: Sequence[dict[str, Any]]) -> list[ActionOutcome]:
        """Carry out `actions` (all for this CRM); one outcome per action, any order."""
        ...
