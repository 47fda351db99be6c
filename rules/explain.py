"""Decisions as sentences: why a lead is where it is, and how close it is to the next rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return _words([_fmt(v) for v in value])
    return str(value)


def _words(items: list[str]) -> str:
    """Join as a person would: "email", "email and phone", "a, b and c"."""
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def plural(n: int, noun: str) -> str:
    """Say a count with its noun: "1 event", "2 events"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _deal(amount: Any) -> str:
    return "a deal of unknown size" if amount in (None, "None") else f"a deal of {_fmt(amount)}"


# What a decision's reason is called, by the state it moved the lead to: only a LOST lead has a
# loss reason; a break-up is asked for a reason that becomes the loss reason if no reply comes.
_REASON_LABEL = {"LOST": "loss reason", "BREAKUP_DUE": "break-up reason", "REENGAGE_DUE": "lost for"}


def sentence(decision: Mapping[str, Any]) -> str:
    """Say one stored decision (`Decision.to_json()` form) as a sentence."""
    rule, to, at = decision["rule"], decision["to"], decision["at"]
    i = {k: _fmt(v) for k, v in decision.get("inputs", {}).items()}
    reason = decision.get("reason")
    deal = _deal(decision.get("inputs", {}).get("deal_amount"))
    text = {
        "repeated_no": f"the lead said not interested {i.get('not_interested')} times (threshold {i.get('threshold')})",
        "decisive_no": f"a decision maker said no, giving a reason of category {i.get('category')!s}",
        "pushed_back": f"follow-up meetings were rescheduled {i.get('follow_up_reschedules')} times "
        f"(threshold {i.get('threshold')})",
        "unresponsive": f"{i.get('follow_ups_since_reply')} follow-ups since the last reply went unanswered "
        f"(threshold {i.get('threshold')}; {i.get('outbound_touches')} touches in all)",
        "effort_exceeds_value": f"{i.get('minutes_invested')} minutes were invested, "
        f"more than {i.get('threshold_minutes')} "
        f"({i.get('factor')} x {i.get('typical_minutes')} typical minutes for {deal})",
        "proposal_expired": f"the proposal expired at {i.get('expired_at')} and {i.get('days_threshold')} days passed "
        "with no call returned",
        "call_cadence_exhausted": f"{i.get('weeks_at_cadence')} consecutive weeks had at least "
        f"{i.get('min_attempts_per_week')} call attempts with no response (threshold {i.get('weeks_threshold')} weeks)",
        "breakup_grace": f"no reply came in {i.get('business_days')} business days after the break-up task "
        f"(since {i.get('grace_since') or i.get('breakup_since')})",
        "reengage": f"the lead has been LOST since {i.get('lost_since')}, {i.get('after_days')} days: time to check in",
        "reply_resets": f"the lead showed signs of life ({i.get('event')})",
        "do_not_contact": f"the lead asked not to be contacted (channels: {i.get('channels')})",
        "do_not_contact_channels": f"the lead also asked not to be contacted by {i.get('added')} "
        f"(channels now: {i.get('channels')})",
        "erasure_requested": "the lead asked for erasure",
        "consent_given": "the lead gave explicit consent again",
        "suppression_list": "the person's email is on the suppression list (an earlier erasure)",
        "deal_won": f"deal {i.get('deal_id', '(no id)')} was won (stage {i.get('stage', 'marked won')}): "
        "a customer, so no rule fires and nothing is sent until a new deal opens or a rep reopens the lead",
        "converted": "the lead became a customer (converted): no rule fires and nothing is sent "
        "until a new deal opens or a rep reopens the lead",
        "deal_opened": f"a new deal opened for the customer (deal {i.get('deal_id', '(no id)')}, "
        f"stage {i.get('stage')}): the rules watch it again",
        "reopened": "a rep reopened the customer's record",
    }.get(rule, f"rule {rule} fired")
    why = f" ({_REASON_LABEL[to]}: {reason})" if reason and to in _REASON_LABEL else ""
    return f"{at}: {to} because {text}{why}"


def progress(rules: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Say how far a lead is from each count-based rule ("why not yet").

    `rules` is what the evaluation itself computed (`Evaluation.progress`, kept with the
    lead's checkpoint): counts within the current episode, thresholds after the deal-size
    multiplier. Nothing here re-derives a rule from the policy, so explain cannot disagree
    with the engine.
    """
    lines = []
    if (u := rules.get("unresponsive")) is not None:
        quiet = u.get("quiet_days_skipped", 0)
        skipped = f" ({quiet} more fell on quiet days and do not count)" if quiet else ""
        lines.append(
            f"unresponsive: {u['count']} of {u['threshold']} follow-ups since the last reply{skipped}, "
            f"{u['outbound_touches']} of {u['touches_needed']} touches needed before silence counts"
        )
    if (r := rules.get("repeated_no")) is not None:
        lines.append(f"repeated_no: not interested {r['count']} of {r['threshold']} in this episode")
    if (p := rules.get("pushed_back")) is not None:
        lines.append(f"pushed_back: {p['count']} of {p['threshold']} follow-up meeting reschedules in this episode")
    if (e := rules.get("effort_exceeds_value")) is not None:
        lines.append(f"effort_exceeds_value: {e['count']} of {_fmt(e['threshold'])} minutes in this episode")
    if (g := rules.get("breakup_grace")) is not None:
        if g.get("since") is None:
            lines.append("breakup_grace: waiting for the break-up task to be created in the CRM; "
                         f"{g['business_days']} business days without a reply from then")  # fmt: skip
        else:
            since = "the break-up task" if g.get("task_created") else "the break-up decision"
            lines.append(f"breakup_grace: {g['business_days']} business days from {since} ({g['since']}), "
                         f"until {g['until']}, unless the lead replies")  # fmt: skip
    return lines
