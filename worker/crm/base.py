"""What every outbound CRM adapter implements.

The action is `worker.action.Action`.

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
from typing import Protocol

from worker.action import Action
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
    """Carries out a CRM's actions. An executor may also offer `task_owners(actions) -> {lead id:
    owner id}`, who its tasks will be assigned to: the drain then holds tasks past an owner's
    daily budget for the next day (worker/taskcap.py); both CRM executors do."""

    crm: str

    def execute(self, actions: Sequence[Action]) -> list[ActionOutcome]:
        """Carry out `actions` (all for this CRM); one outcome per action, any order."""
        ...
