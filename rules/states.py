"""The lead's states, the actions their transitions ask of the CRM, and a decision as recorded.

The vocabulary every layer shares: the replay (rules/lifecycle.py) moves between these
states, the worker turns a decision's action into CRM calls, the dashboard counts outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import msgspec

from rules.events import format_ms


class State(StrEnum):
    ACTIVE = "ACTIVE"
    BREAKUP_DUE = "BREAKUP_DUE"
    LOST = "LOST"
    REENGAGE_DUE = "REENGAGE_DUE"
    SUPPRESSED = "SUPPRESSED"
    # A customer: a won deal, a converted lead. No rule fires and nothing is sent until a new
    # open deal or a rep's reopen brings the lead back to ACTIVE.
    WON = "WON"


class ActionKind(StrEnum):
    """What a transition asks of the CRM."""

    MARK_LOST = "mark_lost"
    BREAKUP_TASK = "breakup_task"
    REENGAGE_TASK = "reengage_task"
    SUPPRESS = "suppress"


ACTION_FOR_STATE = {
    State.BREAKUP_DUE: ActionKind.BREAKUP_TASK,
    State.LOST: ActionKind.MARK_LOST,
    State.REENGAGE_DUE: ActionKind.REENGAGE_TASK,
    State.SUPPRESSED: ActionKind.SUPPRESS,
}
# Actions that contact the person: never issued for a suppressed lead (guardrail 4).
CONTACT_ACTIONS = frozenset({ActionKind.BREAKUP_TASK, ActionKind.REENGAGE_TASK})
SILENCE_RULES = frozenset({"unresponsive", "call_cadence_exhausted", "proposal_expired", "breakup_grace"})
# What the CRM can be told about a person who objected (docs/lifecycle.md guardrail 5): "all" is both.
ALL_CHANNELS = frozenset({"email", "phone"})


def outcome_of(state: str) -> str:
    """How a lead ended, for the analytics: won (WON), lost, suppressed or open."""
    return {"WON": "won", "LOST": "lost", "REENGAGE_DUE": "lost", "SUPPRESSED": "suppressed"}.get(state, "open")


def covered_channels(channels: Iterable[str]) -> frozenset[str]:
    """Return the opt-outs (email, phone) a do-not-contact's channels ask the CRM to set."""
    named = frozenset(channels)
    # No channels means all, as the CRM adapters read a suppress action.
    return ALL_CHANNELS if not named or "all" in named else named & ALL_CHANNELS


class Decision(msgspec.Struct, frozen=True, array_like=True):
    """One transition, with what the rule compared — enough to explain it later.

    `name` is the decision's identity across re-evaluations (see `Running.name`): the
    replay gives it, since only the replay knows the episode and rank it fired in.
    """

    rule: str
    source: State
    to: State
    reason: str | None
    at_ms: int
    inputs: dict[str, Any]
    name: str = ""

    @property
    def key(self) -> str:
        """The older identity, by time (still read from `acted` lists written before names)."""
        return f"{self.rule}:{self.to.value}:{self.at_ms}"

    @property
    def action(self) -> ActionKind | None:
        return ACTION_FOR_STATE.get(self.to)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "from": self.source.value,
            "to": self.to.value,
            "reason": self.reason,
            "at": format_ms(self.at_ms),
            "inputs": self.inputs,
        }
