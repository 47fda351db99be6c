"""What the first live run over a backfilled history would do: `pruner backfill ... --dry-run`.

The dry run keeps every event it read in memory, per lead, and decides each lead as a live
worker would right now (worker/decide.py `Decider`, with the break-up task clock of
guardrail 7), writing nothing: how many leads end in each state, which CRM actions that
means, and how the roll-out guard spreads the tasks over each owner's days
(worker/taskcap.py). Only counts and owner ids are reported, never personal data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rules.counters import LoggedEvent
from rules.hubspot_map import Versioned
from rules.policy import Policy
from worker.decide import Decider
from worker.eventlog import to_logged
from worker.leadview import LeadView
from worker.taskcap import TASK_KINDS

NO_OWNER = "(no owner)"


class PreviewSink:
    """The dry run's sink: every event read, per lead, deduplicated as the store would."""

    def __init__(self) -> None:
        self.leads: dict[tuple[str, str], dict[bytes, LoggedEvent]] = {}

    def write(self, events: Sequence[Versioned]) -> None:
        for item in events:
            logged = to_logged(item.event)
            self.leads.setdefault((item.event.crm.value, item.event.lead_id), {}).setdefault(logged.key, logged)

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class FirstRun:
    """Counts of what the first live run would decide and ask of the CRM."""

    per_owner_per_day: int
    states: Counter[str] = field(default_factory=Counter)
    rules: Counter[str] = field(default_factory=Counter)  # the rule of each lead's current decision
    actions: Counter[str] = field(default_factory=Counter)
    tasks_per_owner: Counter[str] = field(default_factory=Counter)

    def days_for(self, owner: str) -> int:
        """Days the roll-out guard takes to create this owner's tasks."""
        tasks = self.tasks_per_owner[owner]
        return 1 if self.per_owner_per_day <= 0 else max(1, math.ceil(tasks / self.per_owner_per_day))

    def to_json(self) -> dict[str, Any]:
        return {
            "states": dict(self.states.most_common()),
            "current_rules": dict(self.rules.most_common()),
            "crm_actions": dict(self.actions.most_common()),
            "max_tasks_per_owner_per_day": self.per_owner_per_day,
            "tasks_per_owner": {
                owner: {"tasks": n, "days": self.days_for(owner)} for owner, n in self.tasks_per_owner.most_common()
            },
        }


def first_run(
    leads: Mapping[tuple[str, str], Mapping[bytes, LoggedEvent]],
    policy: Policy,
    now_ms: int,
    owners: Mapping[str, str],
    task_clock: bool = False,
) -> FirstRun:
    """Decide every lead as a live worker would at `now_ms`; `owners` maps a lead id to its owner id.

    `task_clock`: the live workers run with guardrail 7's task clock (PRUNER_BREAKUP_TASK_CLOCK).
    """
    # A key only so that an erasure in the history is decided rather than refused; the hashes
    # it yields live in this process's memory for the length of the report, never stored.
    decide = Decider(policy, now_ms, dry_run=True, grace_from_task=task_clock, suppression_key=b"first-run preview")
    out = FirstRun(policy.max_tasks_per_owner_per_day)
    for (crm, lead_id), events in leads.items():
        history = list(events.values())
        outcome = decide(LeadView(crm, lead_id, history, None, len(history)))
        state = outcome.state["state"] if outcome.state is not None else "ACTIVE"
        out.states[state] += 1
        decisions = outcome.state["decisions"] if outcome.state is not None else []
        if decisions:
            out.rules[decisions[-1]["rule"]] += 1
        for action in outcome.actions:
            out.actions[action["kind"]] += 1
            if action["kind"] in TASK_KINDS:
                out.tasks_per_owner[owners.get(lead_id) or NO_OWNER] += 1
    return out
