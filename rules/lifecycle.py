"""The lead lifecycle: replay a lead's event set through the policy up to `now`.

`evaluate` is a pure function of (event set, policy, now). It sorts the events
into their one canonical order and walks time forward: each event updates the
counters and may fire event-driven rules at its own time; between events,
time-based rules (proposal expiry, break-up grace, re-engage) fire at their due
times. So the same events in any delivery order, with any duplicates, give the
same state and the same decisions — and a late event is placed where it
happened, not where it arrived.

Rules fire once per *episode*: an episode starts when the lead is first seen and
again each time it returns to ACTIVE (a reply, a manual reopen, a re-consent).
Counts that rules compare ("not interested" twice, two follow-up reschedules,
minutes invested) are counted within the episode, so a lead that came back to
life is not struck down again at once by what happened before.

A suppressed lead only ever leaves SUPPRESSED on a re-consent, but a later
do-not-contact that covers a channel not yet covered (phone after email) is a
decision of its own, `do_not_contact_channels`, carrying every channel so far:
the CRM must set that opt-out too.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

from rules.calendar import DAY_MS, Calendar, week_index
from rules.counters import RESPONSES, TOUCHES, LeadCounters, LoggedEvent, sort_events
from rules.events import EventType, format_ms
from rules.policy import Policy


class State(StrEnum):
    ACTIVE = "ACTIVE"
    BREAKUP_DUE = "BREAKUP_DUE"
    LOST = "LOST"
    REENGAGE_DUE = "REENGAGE_DUE"
    SUPPRESSED = "SUPPRESSED"


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


def covered_channels(channels: Iterable[str]) -> frozenset[str]:
    """Return the opt-outs (email, phone) a do-not-contact's channels ask the CRM to set."""
    named = frozenset(channels)
    # No channels means all, as the CRM adapters read a suppress action.
    return ALL_CHANNELS if not named or "all" in named else named & ALL_CHANNELS


@dataclass(frozen=True)
class Decision:
    """One transition, with what the rule compared — enough to explain it later."""

    rule: str
    source: State
    to: State
    reason: str | None
    at_ms: int
    inputs: dict[str, Any]

    @property
    def key(self) -> str:
        """Identity of this decision across re-evaluations (dedups its action)."""
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


@dataclass
class Evaluation:
    """Where a lead stands as of `as_of_ms`."""

    state: State
    loss_reason: str | None
    decisions: list[Decision]
    counters: LeadCounters
    next_due_ms: int | None
    as_of_ms: int


@dataclass
class _Episode:
    """Counts since the lead last (re)entered ACTIVE."""

    start_ms: int
    not_interested: int = 0
    decision_no: int = 0
    follow_up_reschedules: int = 0
    minutes: int = 0


@dataclass(frozen=True)
class _Thresholds:
    """The policy flattened once: replays read these on every event."""

    on: frozenset[str]
    min_not_interested: int
    min_reschedules: int
    min_follow_ups: float
    effort_factor: float
    proposal_days: float
    cadence_per_week: int
    cadence_weeks: float
    grace_days: int
    min_touches: int
    reengage_ms: int


@lru_cache(maxsize=16)
def _thresholds(policy: Policy) -> _Thresholds:
    p = policy.param
    return _Thresholds(
        on=frozenset(rule for rule, flag in policy.enabled.items() if flag),
        min_not_interested=int(p("repeated_no", "min_not_interested")),
        min_reschedules=int(p("pushed_back", "min_follow_up_reschedules")),
        min_follow_ups=p("unresponsive", "min_follow_ups"),
        effort_factor=p("effort_exceeds_value", "factor"),
        proposal_days=p("proposal_expired", "days_after_expiry"),
        cadence_per_week=int(p("call_cadence_exhausted", "min_attempts_per_week")),
        cadence_weeks=p("call_cadence_exhausted", "weeks"),
        grace_days=int(p("breakup_grace", "business_days")),
        min_touches=policy.min_touches_for_silence,
        reengage_ms=policy.reengage_after_days * DAY_MS,
    )


@dataclass
class _Replay:
    policy: Policy
    calendar: Calendar
    t: _Thresholds
    state: State = State.ACTIVE
    reason: str | None = None
    entered_ms: int = 0
    counters: LeadCounters = field(default_factory=LeadCounters)
    episode: _Episode = field(default_factory=lambda: _Episode(0))
    decisions: list[Decision] = field(default_factory=list)
    # Silence, as the silence rules see it: follow-ups on quiet days do not count.
    silent_follow_ups: int = 0
    # ISO week index -> call attempts, since the last response.
    weekly_calls: dict[int, int] = field(default_factory=dict)
    last_response_ms: int | None = None
    proposal_fired_for: int | None = None
    # While SUPPRESSED: the channels the suppress decisions so far carry, and what they cover.
    dnc_channels: frozenset[str] = frozenset()
    dnc_covered: frozenset[str] = frozenset()

    # -- transitions ---------------------------------------------------------------

    def move(self, rule: str, to: State, reason: str | None, at: int, inputs: dict[str, Any]) -> None:
        self.decisions.append(Decision(rule, self.state, to, reason, at, inputs))
        self.state, self.reason, self.entered_ms = to, reason, at
        if to is State.ACTIVE:
            self.episode = _Episode(at)
        elif to is State.SUPPRESSED:
            # Read as `worker.decide` builds the suppress action: no channels means all.
            self._suppress_channels(frozenset(inputs.get("channels", ["all"])))

    def widen_suppression(self, channels: Iterable[str], at: int) -> None:
        """Record a do-not-contact on a suppressed lead that covers channels not yet covered.

        Channels only grow until a re-consent, and the new decision carries all of them:
        whichever decision is the last, its suppress action tells the CRM every opt-out so
        far, so the CRM ends up told the union whatever order the objections arrived in.
        """
        added = covered_channels(channels) - self.dnc_covered
        if not added:
            return  # a restated objection: nothing new for the CRM, so no decision
        union = self.dnc_channels | frozenset(channels)
        inputs = {"channels": sorted(union), "added": sorted(added)}
        # Not `move`: the lead stays SUPPRESSED since it first objected.
        self.decisions.append(
            Decision("do_not_contact_channels", State.SUPPRESSED, State.SUPPRESSED, "do_not_contact", at, inputs)
        )
        self._suppress_channels(union)

    def _suppress_channels(self, channels: frozenset[str]) -> None:
        self.dnc_channels, self.dnc_covered = channels, covered_channels(channels)

    # -- the policy ------------------------------------------------------------------

    def enabled(self, rule: str) -> bool:
        return rule in self.t.on

    def silence_allowed(self) -> bool:
        return self.counters.outbound_touches >= self.t.min_touches

    def multiplier(self) -> float:
        return self.policy.tier(self.counters.deal_amount).multiplier

    def proposal_due(self) -> int | None:
        c = self.counters
        if c.proposal_expires_ms is None or self.proposal_fired_for == c.proposal_expires_ms:
            return None
        if self.last_response_ms is not None and self.last_response_ms >= c.proposal_expires_ms:
            return None  # the lead answered after expiry: "no call returned" does not hold
        days = round(self.t.proposal_days * self.multiplier())
        return self.calendar.add_loud_days(c.proposal_expires_ms, days)

    def grace_due(self) -> int:
        return self.calendar.add_business_days(self.entered_ms, self.t.grace_days)

    def next_timer(self) -> int | None:
        """The next instant at which a time-based rule could fire, given the state now."""
        due: list[int] = []
        if self.state in (State.ACTIVE, State.BREAKUP_DUE) and self.enabled("proposal_expired"):
            if self.silence_allowed() and (p := self.proposal_due()) is not None:
                due.append(p)
        if self.state is State.BREAKUP_DUE and self.enabled("breakup_grace") and self.silence_allowed():
            due.append(self.grace_due())
        if self.state is State.LOST:
            due.append(self.entered_ms + self.t.reengage_ms)
        return min(due) if due else None

    def check(self, at: int) -> None:
        """Fire whatever rules hold at instant `at`, LOST rules before BREAKUP_DUE ones."""
        for _ in range(4):  # a chain (e.g. ACTIVE -> LOST) settles in a few steps
            if not self._check_once(at):
                return

    def _check_once(self, at: int) -> bool:
        # Cheap numeric tests come first: this runs once per event of every replay.
        state, c, ep, p, t = self.state, self.counters, self.episode, self.policy, self.t
        on = t.on
        if state in (State.ACTIVE, State.BREAKUP_DUE):
            if ep.not_interested >= t.min_not_interested and "repeated_no" in on:
                inputs = {"not_interested": ep.not_interested, "threshold": t.min_not_interested}
                self.move("repeated_no", State.LOST, "not_interested", at, inputs)
                return True
            if ep.decision_no and c.decision_no_reason and "decisive_no" in on:
                category = p.loss_category(c.decision_no_reason)
                self.move(
                    "decisive_no", State.LOST, category, at, {"decision_no": ep.decision_no, "category": category}
                )
                return True
            if self.weekly_calls and "call_cadence_exhausted" in on and self.silence_allowed():
                need = t.cadence_per_week
                weeks = round(t.cadence_weeks * self.multiplier())
                current = week_index(at)
                streak = 0
                while self.weekly_calls.get(current - streak, 0) >= need:
                    streak += 1
                if streak >= weeks:
                    self.move(
                        "call_cadence_exhausted",
                        State.LOST,
                        "no_response",
                        at,
                        {
                            "weeks_at_cadence": streak,
                            "min_attempts_per_week": need,
                            "weeks_threshold": weeks,
                            "outbound_touches": c.outbound_touches,
                        },
                    )
                    return True
            if c.proposal_expires_ms is not None and "proposal_expired" in on and self.silence_allowed():
                due = self.proposal_due()
                if due is not None and due <= at:
                    self.proposal_fired_for = c.proposal_expires_ms
                    days = round(t.proposal_days * self.multiplier())
                    self.move(
                        "proposal_expired",
                        State.LOST,
                        "proposal_expired",
                        at,
                        {
                            "expired_at": format_ms(c.proposal_expires_ms or 0),
                            "days_threshold": days,
                            "outbound_touches": c.outbound_touches,
                        },
                    )
                    return True
        if state is State.BREAKUP_DUE and "breakup_grace" in on and self.silence_allowed():
            due = self.grace_due()
            if due <= at:
                self.move(
                    "breakup_grace",
                    State.LOST,
                    self.reason,
                    at,
                    {
                        "breakup_since": format_ms(self.entered_ms),
                        "business_days": t.grace_days,
                        "outbound_touches": c.outbound_touches,
                    },
                )
                return True
        if state is State.ACTIVE:
            if ep.follow_up_reschedules >= t.min_reschedules and "pushed_back" in on:
                inputs = {"follow_up_reschedules": ep.follow_up_reschedules, "threshold": t.min_reschedules}
                self.move("pushed_back", State.BREAKUP_DUE, "deprioritized", at, inputs)
                return True
            # multiplier >= 1, so below the base threshold nothing can fire
            if self.silent_follow_ups >= t.min_follow_ups and "unresponsive" in on and self.silence_allowed():
                need = round(t.min_follow_ups * self.multiplier())
                if self.silent_follow_ups >= need:
                    self.move(
                        "unresponsive",
                        State.BREAKUP_DUE,
                        "no_response",
                        at,
                        {
                            "follow_ups_since_reply": self.silent_follow_ups,
                            "threshold": need,
                            "outbound_touches": c.outbound_touches,
                        },
                    )
                    return True
            if ep.minutes and "effort_exceeds_value" in on:
                tier = p.tier(c.deal_amount)
                factor = t.effort_factor
                limit = factor * tier.typical_minutes
                if ep.minutes > limit:
                    self.move(
                        "effort_exceeds_value",
                        State.BREAKUP_DUE,
                        "effort_exceeds_value",
                        at,
                        {
                            "minutes_invested": ep.minutes,
                            "threshold_minutes": limit,
                            "typical_minutes": tier.typical_minutes,
                            "factor": factor,
                            "deal_amount": c.deal_amount,
                        },
                    )
                    return True
        if state is State.LOST:
            due = self.entered_ms + p.reengage_after_days * DAY_MS
            if due <= at:
                self.move(
                    "reengage",
                    State.REENGAGE_DUE,
                    self.reason,
                    at,
                    {"lost_since": format_ms(self.entered_ms), "after_days": p.reengage_after_days},
                )
                return True
        return False

    # -- events ------------------------------------------------------------------------

    def advance(self, until: int) -> None:
        """Fire time-based rules due up to `until`, at their own due times."""
        if self.state is State.ACTIVE and self.counters.proposal_expires_ms is None:
            return  # the common case: nothing time-based can be pending
        for _ in range(16):
            due = self.next_timer()
            if due is None or due > until:
                return
            self.check(due)

    def apply(self, ev: LoggedEvent) -> None:
        """Fold one event in; the caller runs `check` once all events of that instant are in."""
        c, at, etype = self.counters, ev.occurred_ms, ev.type
        was_first_touch = c.first_touch_ms is None
        c.apply(ev)
        if self.state is State.SUPPRESSED:
            if etype is EventType.CONSENT_GIVEN:
                self._reset_silence(at)
                self.move("consent_given", State.ACTIVE, None, at, {})
            elif etype is EventType.DO_NOT_CONTACT:
                self.widen_suppression(ev.data.get("channels", ["all"]), at)
            return
        if etype is EventType.DO_NOT_CONTACT:
            channels = sorted(ev.data.get("channels", ["all"]))
            self.move("do_not_contact", State.SUPPRESSED, "do_not_contact", at, {"channels": channels})
            return
        if etype is EventType.ERASURE_REQUESTED:
            self.move("erasure_requested", State.SUPPRESSED, "erasure_requested", at, {})
            return
        ep = self.episode
        if etype in RESPONSES:
            self._reset_silence(at)
            if self.state is not State.ACTIVE:
                self.move("reply_resets", State.ACTIVE, None, at, {"event": etype.value})
            return
        if etype in TOUCHES:
            is_follow_up = (
                bool(ev.data.get("follow_up", not was_first_touch))
                if etype is EventType.EMAIL_SENT
                else (etype is EventType.CALL_ATTEMPTED and not was_first_touch)
            )
            if is_follow_up and not self.calendar.quiet_at(at):
                self.silent_follow_ups += 1
            if etype is EventType.CALL_ATTEMPTED:
                week = week_index(at)
                self.weekly_calls[week] = self.weekly_calls.get(week, 0) + 1
        elif etype is EventType.NOT_INTERESTED:
            ep.not_interested += 1
        elif etype is EventType.DECISION_NO:
            ep.decision_no += 1
        elif etype is EventType.MEETING_RESCHEDULED and not ev.data.get("first_meeting", False):
            ep.follow_up_reschedules += 1
        elif etype is EventType.TIME_LOGGED:
            ep.minutes += int(ev.data["minutes"])

    def _reset_silence(self, at: int) -> None:
        self.silent_follow_ups = 0
        self.weekly_calls.clear()
        self.last_response_ms = at


def evaluate(
    history: Iterable[LoggedEvent],
    policy: Policy,
    now_ms: int,
    calendar: Calendar | None = None,
    suppressed: bool = False,
    suppressed_channels: Collection[str] = (),
) -> Evaluation:
    """Replay a lead's event set through `policy` up to `now_ms`; pure and order-independent.

    `suppressed`: the person is on the suppression list (an erased person re-created
    under a new id, or a suppressed record restored in the CRM): SUPPRESSED from the first
    event, until an explicit re-consent; on `suppressed_channels` only, when given.
    """
    replay = _Replay(policy, calendar or Calendar(policy), _thresholds(policy))
    events = sort_events(history)
    if events:
        replay.entered_ms = events[0].occurred_ms
        replay.episode = _Episode(events[0].occurred_ms)
        if suppressed:
            inputs = {"channels": sorted(suppressed_channels)} if suppressed_channels else {}
            replay.move("suppression_list", State.SUPPRESSED, "do_not_contact", events[0].occurred_ms, inputs)
    for i, ev in enumerate(events):
        replay.advance(min(ev.occurred_ms, now_ms))
        replay.apply(ev)
        # Events of the same instant are simultaneous: rules look at all of them at once,
        # so "LOST beats BREAKUP_DUE" holds even when the last touch and the last "no" coincide.
        if i + 1 == len(events) or events[i + 1].occurred_ms != ev.occurred_ms:
            replay.check(ev.occurred_ms)
    as_of = max(now_ms, events[-1].occurred_ms if events else now_ms)
    replay.advance(now_ms)
    due = replay.next_timer()
    state = replay.state
    loss_reason = replay.reason if state in (State.LOST, State.REENGAGE_DUE) else None
    return Evaluation(
        state, loss_reason, replay.decisions, replay.counters, due if due is not None and due > now_ms else None, as_of
    )
