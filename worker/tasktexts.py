"""Task texts for a drain's actions: the decision behind each, read from the lead's state record.

An action names its rule and the time it fired; the lead's state record keeps the
decisions with what each rule compared (`inputs`). Both CRM executors call
`TaskTexts` with their task actions and put the result (rules/tasktext.py) on the
task, so a rep reads the same sentence in HubSpot and Salesforce. One MGET per call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

from rules.tasktext import REENGAGE, TaskText, task_text
from worker import staterecord
from worker.keys import state_key
from worker.policyfile import cached_policy

if TYPE_CHECKING:  # annotations only: worker.config imports worker.crm, whose adapters import this module
    from worker.config import Config

log = logging.getLogger(__name__)


def _decision(decisions: list[dict[str, Any]], action: Mapping[str, Any]) -> int | None:
    """Index of the decision behind `action` (same rule and time; the latest such), or None."""
    for index in range(len(decisions) - 1, -1, -1):
        d = decisions[index]
        if d.get("rule") == action.get("rule") and d.get("at") == action.get("at"):
            return index
    return None


def text_for(action: Mapping[str, Any], state: Mapping[str, Any] | None, default_months: int = 4) -> TaskText:
    """Return the task text for one action, with the inputs its lead's state record holds (if any)."""
    decisions = [d for d in (state or {}).get("decisions", []) if isinstance(d, dict)]
    index = _decision(decisions, action)
    inputs = decisions[index].get("inputs") if index is not None else None
    loss = None
    months = default_months
    if action.get("kind") == REENGAGE:
        before = decisions[:index] if index is not None else decisions
        loss = next((d for d in reversed(before) if d.get("to") == "LOST"), None)
        after_days = (inputs or {}).get("after_days")
        if isinstance(after_days, int) and not isinstance(after_days, bool):
            months = max(1, round(after_days / 30))
    return task_text(
        str(action["kind"]),
        action.get("rule"),
        action.get("reason"),
        inputs if isinstance(inputs, dict) else None,
        months_since_loss=months,
        loss=loss,
    )


class TaskTexts:
    """Look the task actions' decisions up in Redis and say them as task texts."""

    def __init__(self, connection: redis.Redis | None, default_months: int = 4) -> None:
        self.redis = connection
        self.default_months = default_months

    def __call__(self, actions: Sequence[Mapping[str, Any]]) -> dict[str, TaskText]:
        """Return {action id: text}; leads without a state record get the text their reason alone gives."""
        if not actions:
            return {}
        raw: list[bytes | None] = (
            self.redis.mget([state_key(a["crm"], a["lead_id"]) for a in actions])  # type: ignore[assignment]
            if self.redis is not None
            else [None] * len(actions)
        )
        out = {}
        for action, blob in zip(actions, raw, strict=True):
            state = staterecord.decode_or_none(blob)
            out[action["id"]] = text_for(action, state if isinstance(state, dict) else None, self.default_months)
        return out


def reengage_months(config: Config) -> int:
    """Months between a loss and its check-in under the configured policy (the text's fallback)."""
    return max(1, round(cached_policy(config.policy_path).reengage_after_days / 30))


def assign_owners(
    owners: Mapping[str, str | None], fallback: str | None, record: str, setting: str, unowned: str
) -> dict[str, str]:
    """Return who gets each record's task: its (user) owner, else `fallback`; records left out get the CRM's default.

    `owners` maps each record id to its user owner, None when it has none; `record` names
    the kind in log lines ("hubspot contact"), `setting` the fallback's variable, `unowned`
    what the CRM does with a task nobody is given. Both CRMs decide the same way here, and
    say so in a log line naming ids only.
    """
    out: dict[str, str] = {}
    for record_id, owner in sorted(owners.items()):
        if owner:
            out[record_id] = owner
        elif fallback:
            out[record_id] = fallback
            log.info("%s %s has no owner: its task goes to the fallback owner %s", record, record_id, fallback)
        else:
            log.warning("%s %s has no owner and no fallback owner is set (%s): its task %s",
                        record, record_id, setting, unowned)  # fmt: skip
    return out
