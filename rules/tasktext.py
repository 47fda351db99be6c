"""What a rep reads on a Pruner task, for every CRM (pure; no I/O).

One home for the subject and body of break-up and check-in tasks, so HubSpot and
Salesforce reps read the same thing. The text says which rule fired and why, in the
rep's words, from the decision's inputs (what the rule compared, `Decision.inputs`);
when those are not at hand it falls back to the loss reason. It never holds personal
data: only counts, dates and the rule's own words, so it is as safe to log as an id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BREAKUP = "breakup_task"
REENGAGE = "reengage_task"

_REASONS = {
    "no_response": "no response after many follow-ups",
    "deprioritized": "meetings keep being pushed back",
    "effort_exceeds_value": "the effort has outgrown the size of the deal",
    "not_interested": "they said they are not interested",
    "proposal_expired": "the proposal expired without an answer",
}


@dataclass(frozen=True)
class TaskText:
    subject: str
    body: str


def reason_text(reason: str | None) -> str:
    """Say a loss reason (`no_response`, a portal's own category…) as a rep would."""
    if not reason:
        return "no reason recorded"
    return _REASONS.get(reason, reason.replace("_", " "))


def _n(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _plural(count: str, word: str) -> str:
    return f"{count} {word}" + ("" if count == "1" else "s")


def why(rule: str | None, reason: str | None, inputs: Mapping[str, Any] | None = None) -> str:
    """Say why `rule` fired, from the decision's inputs, in the rep's words; the loss reason when unknown."""
    i = inputs or {}
    date = str(i.get("expired_at") or "")[:10]
    phrases: dict[str, tuple[list[str | None], str]] = {
        "unresponsive": (
            [_n(i.get("follow_ups_since_reply"))],
            "{0} since their last reply, none answered",
        ),
        "pushed_back": ([_n(i.get("follow_up_reschedules"))], "follow-up meetings pushed back {0} times"),
        "effort_exceeds_value": (
            [_n(i.get("minutes_invested")), _n(i.get("typical_minutes"))],
            "{0} minutes spent on a deal that usually takes about {1}",
        ),
        "repeated_no": ([_n(i.get("not_interested"))], "they said they are not interested {0} times"),
        "proposal_expired": ([date or None], "the proposal expired on {0} and nobody answered since"),
        "call_cadence_exhausted": (
            [_n(i.get("weeks_at_cadence"))],
            "{0} weeks of calls without reaching them",
        ),
        "breakup_grace": ([_n(i.get("business_days"))], "no reply in {0} business days after the break-up"),
    }
    if rule == "decisive_no":
        return "a decision maker said no"
    if rule in phrases:
        values, text = phrases[rule]
        if all(v is not None for v in values):
            if rule == "unresponsive":
                return text.format(_plural(str(values[0]), "follow-up"))
            return text.format(*values)
    return reason_text(reason)


def task_text(
    kind: str,
    rule: str | None,
    reason: str | None,
    inputs: Mapping[str, Any] | None = None,
    *,
    months_since_loss: int = 4,
    loss: Mapping[str, Any] | None = None,
) -> TaskText:
    """Return the subject and body of a break-up or check-in task.

    `inputs` are what the firing rule compared; for a check-in, `loss` is the earlier
    loss decision (`Decision.to_json()` form), to say why the lead was lost.
    """
    if kind == BREAKUP:
        reason_why = why(rule, reason, inputs)
        return TaskText(
            f"Send a polite break-up message: {reason_why}",
            f"Pruner's {rule or 'break-up'} rule fired: {reason_why}. Time to close the loop kindly. Write a "
            "short message that thanks them for their time, says plainly that you are stopping your "
            "follow-ups, leaves the door open should their priorities change, and offers one last piece of "
            "value (a useful article, benchmark or introduction). A reply during the grace period makes "
            "the lead active again.",
        )
    if kind == REENGAGE:
        lost_why = why(loss.get("rule"), reason, loss.get("inputs")) if loss else reason_text(reason)
        months = _plural(str(max(1, months_since_loss)), "month")
        return TaskText(
            f"Check in: lost {months} ago ({lost_why})",
            f"Pruner's reengage rule fired: this lead was marked lost about {months} ago ({lost_why}). "
            "Send a light, friendly check-in: say hi, ask how things are going and whether their "
            "priorities have changed, and share something useful. No hard sell; if they are still not "
            "interested, thank them and let it rest.",
        )
    raise ValueError(f"no task text for action kind {kind!r}")
