"""The replay's state machine: one lead's running state moved on event by event, rules firing as they come due.

`Replay` is what `rules.lifecycle.evaluate` drives: it applies an event (`apply`), fires the
time-based rules due up to an instant (`advance`, `check`), records decisions with their
identities (`move`), and says how far the lead is from each rule (`progress`). Here, apart
from `evaluate`, so that the order in which events are fed (and checkpoints and folds are
taken) reads on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rules.calendar import DAY_MS, Calendar, week_index
from rules.counters import RESPONSES, TOUCHES, LoggedEvent, is_follow_up
from rules.events import RECORD_KEY, EventType, format_ms, parse_rfc3339_ms
from rules.policy import Policy
from rules.running import (
    CHECKPOINT_CODEC,
    FULL_DECISIONS,
    KEPT_DECISIONS,
    Episode,
    Running,
    summary,
    thresholds,
)
from rules.states import Decision, State, covered_channels


class Replay:
    """A replay in progress: the policy it reads, and the running state `r` it moves on."""

    def __init__(self, policy: Policy, calendar: Calendar, run: Running, grace_from_task: bool = False) -> None:
        self.policy, self.calendar, self.t, self.r = policy, calendar, thresholds(policy), run
        self.grace_from_task = grace_from_task

    # -- transitions ---------------------------------------------------------------

    def record(self, decision: Decision) -> None:
        r = self.r
        r.decisions.append(decision)
        r.decisions_total += 1
        if len(r.decisions) > FULL_DECISIONS:
            r.decisions[-FULL_DECISIONS - 1] = summary(r.decisions[-FULL_DECISIONS - 1])
        if len(r.decisions) > KEPT_DECISIONS:
            del r.decisions[0]

    def move(self, rule: str, to: State, reason: str | None, at: int, inputs: dict[str, Any]) -> None:
        r = self.r
        self.record(Decision(rule, r.state, to, reason, at, inputs, r.name(rule, to, inputs)))
        r.state, r.reason, r.entered_ms = to, reason, at
        # A task belongs to the break-up it was created for: this one's may exist already.
        r.breakup_task_ms = at if to is State.BREAKUP_DUE and r.task_early_ms is not None else None
        r.task_early_ms = None  # one break-up per episode: after this move, no other can use it
        if to is State.ACTIVE:
            r.episode = Episode(at)
        elif to is State.SUPPRESSED:
            # Read as `worker.decide` builds the suppress action: no channels means all.
            self._suppress_channels(frozenset(inputs.get("channels", ["all"])))

    def widen_suppression(self, channels: Iterable[str], at: int) -> None:
        """Record a do-not-contact on a suppressed lead that covers channels not yet covered.

        Channels only grow until a re-consent, and the new decision carries all of them:
        whichever decision is the last, its suppress action tells the CRM every opt-out so
        far, so the CRM ends up told the union whatever order the objections arrived in.
        """
        r = self.r
        added = covered_channels(channels) - r.dnc_covered
        if not added:
            return  # a restated objection: nothing new for the CRM, so no decision
        union = r.dnc_channels | frozenset(channels)
        inputs: dict[str, Any] = {"channels": sorted(union), "added": sorted(added)}
        # Not `move`: the lead stays SUPPRESSED since it first objected.
        name = r.name("do_not_contact_channels", State.SUPPRESSED, inputs)
        self.record(
            Decision("do_not_contact_channels", State.SUPPRESSED, State.SUPPRESSED, "do_not_contact", at, inputs, name)
        )
        self._suppress_channels(union)

    def _suppress_channels(self, channels: frozenset[str]) -> None:
        self.r.dnc_channels, self.r.dnc_covered = channels, covered_channels(channels)

    # -- the policy ------------------------------------------------------------------

    def enabled(self, rule: str) -> bool:
        return rule in self.t.on

    def silence_allowed(self) -> bool:
        return self.r.counters.outbound_touches >= self.t.min_touches

    def multiplier(self) -> float:
        return self.policy.tier(self.r.counters.deal_amount).multiplier

    def silence_needed(self) -> int:
        """Follow-ups since the last reply that make a lead unresponsive, after the deal-size multiplier."""
        return round(self.t.min_follow_ups * self.multiplier())

    def effort_limit(self) -> float:
        return self.t.effort_factor * self.policy.tier(self.r.counters.deal_amount).typical_minutes

    def proposal_days(self) -> int:
        return round(self.t.proposal_days * self.multiplier())

    def cadence_weeks(self) -> int:
        return round(self.t.cadence_weeks * self.multiplier())

    def proposal_due(self) -> int | None:
        r = self.r
        c = r.counters
        if c.proposal_expires_ms is None or r.proposal_fired_for == c.proposal_expires_ms:
            return None
        if r.last_response_ms is not None and r.last_response_ms >= c.proposal_expires_ms:
            return None  # the lead answered after expiry: "no call returned" does not hold
        return self.calendar.add_loud_days(c.proposal_expires_ms, self.proposal_days())

    def grace_start(self) -> int | None:
        """When the break-up's grace began: its task's creation (guardrail 7), or, where no task
        is created (a dry run, a simulation), the break-up decision itself; None: no task yet."""
        r = self.r
        if not self.grace_from_task:
            return r.entered_ms  # the task clock off: a recorded task changes nothing
        return r.breakup_task_ms

    def grace_due(self) -> int | None:
        start = self.grace_start()
        return None if start is None else self.calendar.add_business_days(start, self.t.grace_days)

    def next_timer(self) -> int | None:
        """The next instant at which a time-based rule could fire, given the state now."""
        state = self.r.state
        due: list[int] = []
        if state in (State.ACTIVE, State.BREAKUP_DUE) and self.enabled("proposal_expired"):
            if self.silence_allowed() and (p := self.proposal_due()) is not None:
                due.append(p)
        if state is State.BREAKUP_DUE and self.enabled("breakup_grace") and self.silence_allowed():
            if (grace := self.grace_due()) is not None:
                due.append(grace)
        if state is State.LOST:
            due.append(self.r.entered_ms + self.t.reengage_ms)
        return min(due) if due else None

    def check(self, at: int) -> None:
        """Fire whatever rules hold at instant `at`, LOST rules before BREAKUP_DUE ones."""
        for _ in range(4):  # a chain (e.g. ACTIVE -> LOST) settles in a few steps
            if not self._check_once(at):
                return

    def _check_once(self, at: int) -> bool:
        # Cheap numeric tests come first: this runs once per event of every replay.
        r, p, t = self.r, self.policy, self.t
        state, c, ep, on = r.state, r.counters, r.episode, t.on
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
            if r.weekly_calls and "call_cadence_exhausted" in on and self.silence_allowed():
                need = t.cadence_per_week
                weeks = self.cadence_weeks()
                current = week_index(at)
                streak = 0
                while r.weekly_calls.get(current - streak, 0) >= need:
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
                    r.proposal_fired_for = c.proposal_expires_ms
                    self.move(
                        "proposal_expired",
                        State.LOST,
                        "proposal_expired",
                        at,
                        {
                            "expired_at": format_ms(c.proposal_expires_ms or 0),
                            "days_threshold": self.proposal_days(),
                            "outbound_touches": c.outbound_touches,
                        },
                    )
                    return True
        if state is State.BREAKUP_DUE and "breakup_grace" in on and self.silence_allowed():
            grace = self.grace_due()
            if grace is not None and grace <= at:
                self.move(
                    "breakup_grace",
                    State.LOST,
                    r.reason,
                    at,
                    {
                        "breakup_since": format_ms(r.entered_ms),
                        "grace_since": format_ms(self.grace_start() or r.entered_ms),
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
            if r.silent_follow_ups >= t.min_follow_ups and "unresponsive" in on and self.silence_allowed():
                need = self.silence_needed()
                if r.silent_follow_ups >= need:
                    self.move(
                        "unresponsive",
                        State.BREAKUP_DUE,
                        "no_response",
                        at,
                        {
                            "follow_ups_since_reply": r.silent_follow_ups,
                            "threshold": need,
                            "outbound_touches": c.outbound_touches,
                        },
                    )
                    return True
            if ep.minutes and "effort_exceeds_value" in on:
                tier = p.tier(c.deal_amount)
                limit = self.effort_limit()
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
                            "factor": t.effort_factor,
                            "deal_amount": c.deal_amount,
                        },
                    )
                    return True
        if state is State.LOST:
            due = r.entered_ms + p.reengage_after_days * DAY_MS
            if due <= at:
                self.move(
                    "reengage",
                    State.REENGAGE_DUE,
                    r.reason,
                    at,
                    {"lost_since": format_ms(r.entered_ms), "after_days": p.reengage_after_days},
                )
                return True
        return False

    def progress(self) -> dict[str, dict[str, Any]]:
        """How far the lead is from each count-based rule, as the rules themselves count.

        Episode counts, thresholds after the deal-size multiplier, follow-ups that fell on
        quiet days: `explain` and `/leads` print this and derive nothing themselves.
        """
        r, t = self.r, self.t
        out: dict[str, dict[str, Any]] = {}
        if self.enabled("unresponsive"):
            out["unresponsive"] = {
                "count": r.silent_follow_ups,
                "threshold": self.silence_needed(),
                "quiet_days_skipped": r.quiet_follow_ups,
                "outbound_touches": r.counters.outbound_touches,
                "touches_needed": t.min_touches,
            }
        if self.enabled("repeated_no"):
            out["repeated_no"] = {"count": r.episode.not_interested, "threshold": t.min_not_interested}
        if self.enabled("pushed_back"):
            out["pushed_back"] = {"count": r.episode.follow_up_reschedules, "threshold": t.min_reschedules}
        if self.enabled("effort_exceeds_value"):
            out["effort_exceeds_value"] = {"count": r.episode.minutes, "threshold": self.effort_limit()}
        if r.state is State.BREAKUP_DUE and self.enabled("breakup_grace"):
            # Guardrail 7: the grace may not have started, because the task does not exist yet.
            start, due = self.grace_start(), self.grace_due()
            out["breakup_grace"] = {
                "task_created": self.grace_from_task and r.breakup_task_ms is not None,
                "since": format_ms(start) if start is not None else None,
                "until": format_ms(due) if due is not None else None,
                "business_days": t.grace_days,
            }
        return out

    # -- events ------------------------------------------------------------------------

    def task_created(self, at: int, decision_at: str | None) -> None:
        """A break-up task exists in the CRM since `at`: start the grace of the break-up it is for.

        The drain names that break-up by its decision's time (`decision_at`). BREAKUP_DUE is
        entered only from ACTIVE, so an episode (the stretch since the lead last returned to
        ACTIVE) holds one break-up at most: a task whose decision lies in this episode is this
        episode's break-up's, even when late events have moved that decision since, to before
        or after the task's creation. A task decided before this episode began is an earlier
        break-up's (the lead replied since) and changes nothing; so does a repeat.

        A task without `decision_at` (recorded before tasks named their break-up, or sent by
        tooling outside Pruner) starts the grace of the break-up the lead is in, if it came
        after that break-up.
        """
        r = self.r
        if decision_at is None:
            if r.state is State.BREAKUP_DUE and r.breakup_task_ms is None and at >= r.entered_ms:
                r.breakup_task_ms = at
            return
        if parse_rfc3339_ms(decision_at, "data.decision_at") < r.episode.start_ms:
            return
        if r.state is State.BREAKUP_DUE:
            if r.breakup_task_ms is None:
                r.breakup_task_ms = max(at, r.entered_ms)
        elif r.state is State.ACTIVE and r.task_early_ms is None:
            r.task_early_ms = at

    def advance(self, until: int) -> None:
        """Fire time-based rules due up to `until`, at their own due times."""
        if self.r.state is State.ACTIVE and self.r.counters.proposal_expires_ms is None:
            return  # the common case: nothing time-based can be pending
        for _ in range(16):
            due = self.next_timer()
            if due is None or due > until:
                return
            self.check(due)

    def apply(self, ev: LoggedEvent) -> None:
        """Fold one event in; the caller runs `check` once all events of that instant are in."""
        r = self.r
        c, at, etype = r.counters, ev.occurred_ms, ev.type
        if etype is EventType.BREAKUP_TASK_CREATED:
            r.events += 1
            self.task_created(at, ev.data.get("decision_at") if ev.data else None)
            return
        if ev.data and RECORD_KEY in ev.data:
            r.records.add(ev.data[RECORD_KEY])
        was_first_touch = c.first_touch_ms is None
        c.apply(ev)
        r.events += 1
        if r.state is State.SUPPRESSED:
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
        if etype is EventType.DEAL_UPDATED or (etype is EventType.LEAD_PROFILE and "converted" in ev.data):
            self._outcome(ev)
        ep = r.episode
        if etype in RESPONSES:
            self._reset_silence(at)
            if r.state is State.WON:
                # A customer who writes back is still a customer; only a rep's reopen reopens.
                if etype is EventType.REOPENED:
                    self.move("reopened", State.ACTIVE, None, at, {})
            elif r.state is not State.ACTIVE:
                self.move("reply_resets", State.ACTIVE, None, at, {"event": etype.value})
            return
        if etype in TOUCHES:
            if is_follow_up(etype, ev.data, was_first_touch):
                if self.calendar.quiet_at(at):
                    r.quiet_follow_ups += 1
                else:
                    r.silent_follow_ups += 1
            if etype is EventType.CALL_ATTEMPTED:
                week = week_index(at)
                r.weekly_calls[week] = r.weekly_calls.get(week, 0) + 1
        elif etype is EventType.NOT_INTERESTED:
            ep.not_interested += 1
        elif etype is EventType.DECISION_NO:
            ep.decision_no += 1
        elif etype is EventType.MEETING_RESCHEDULED and not ev.data.get("first_meeting", False):
            ep.follow_up_reschedules += 1
        elif etype is EventType.TIME_LOGGED:
            ep.minutes += int(ev.data["minutes"])

    def _outcome(self, ev: LoggedEvent) -> None:
        """A deal won or a lead converted makes the lead WON; a new open deal brings a WON lead back."""
        r, data, at = self.r, ev.data, ev.occurred_ms
        if ev.type is EventType.LEAD_PROFILE:
            if data["converted"] and r.state is not State.WON:
                self.move("converted", State.WON, None, at, {"converted": True})
            return
        outcome = self.policy.deal_outcome(data.get("stage"), data.get("won"))
        if outcome is None:
            return
        deal = str(data.get("deal_id", ""))
        before = r.deal_outcomes.get(deal)
        r.deal_outcomes[deal] = outcome
        inputs = {k: data[k] for k in ("deal_id", "stage") if k in data}
        if outcome == "won" and r.state is not State.WON:
            self.move("deal_won", State.WON, None, at, inputs)
        elif outcome == "open" and before != "open" and r.state is State.WON:
            self._reset_silence(at)
            self.move("deal_opened", State.ACTIVE, None, at, inputs)

    def _reset_silence(self, at: int) -> None:
        r = self.r
        r.silent_follow_ups = r.quiet_follow_ups = 0
        r.weekly_calls.clear()
        r.last_response_ms = at

    def snapshot(self, at: int) -> bytes:
        """The running state after instant `at`, packed: a deep copy, and what is stored."""
        self.r.at_ms = at
        return CHECKPOINT_CODEC.encode(self.r)
