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

A won lead (a won deal, a converted lead) is WON: no rule fires for it and nothing is sent;
a new open deal or a rep's reopen returns it to ACTIVE, a do-not-contact still suppresses it.

A suppressed lead only ever leaves SUPPRESSED on a re-consent, but a later
do-not-contact that covers a channel not yet covered (phone after email) is a
decision of its own, `do_not_contact_channels`, carrying every channel so far:
the CRM must set that opt-out too.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from rules.calendar import Calendar, calendar_for
from rules.counters import LoggedEvent, sort_events
from rules.events import RECORD_KEY
from rules.policy import Policy
from rules.replay import Replay
from rules.running import (
    KEPT_DECISIONS,
    Evaluation,
    Running,
    can_resume,
    encode_checkpoint,
    start,
)
from rules.states import State


def relist(replay: Replay, suppressed: bool, channels: Collection[str], at: int, now_ms: int) -> bool:
    """Bring a fold's running state to today's suppression listing, which may have changed since.

    A replay from the first event would be SUPPRESSED from that event on; the events before
    the fold are gone, so the listing takes effect from the first event kept (`at`).
    """
    r, wanted = replay.r, tuple(sorted(channels))
    if (r.listed, r.listed_channels) == (suppressed, wanted):
        return False
    r.listed, r.listed_channels = suppressed, wanted
    if suppressed and r.state is State.SUPPRESSED:
        # Suppressed already, on fewer channels maybe: the CRM must hear of the others.
        replay.advance(min(at, now_ms))
        replay.widen_suppression(wanted or ["all"], at)
    elif suppressed:
        replay.advance(min(at, now_ms))
        replay.move(
            "suppression_list", State.SUPPRESSED, "do_not_contact", at, {"channels": list(wanted)} if wanted else {}
        )
    return True


def evaluate(
    history: Iterable[LoggedEvent],
    policy: Policy,
    now_ms: int,
    calendar: Calendar | None = None,
    suppressed: bool = False,
    suppressed_channels: Collection[str] = (),
    since: Running | None = None,
    grace_from_task: bool = False,
    start_from: Running | None = None,
    fold_at_ms: int | None = None,
) -> Evaluation:
    """Replay a lead's event set through `policy` up to `now_ms`; pure and order-independent.

    `suppressed`: the person is on the suppression list (an erased person re-created
    under a new id, or a suppressed record restored in the CRM): SUPPRESSED from the first
    event, until an explicit re-consent; on `suppressed_channels` only, when given.

    `since`: a checkpoint from an earlier evaluation under the same policy (see
    `can_resume`); `history` is then only the events after its `at_ms`, and the result is
    the same as replaying every event from the start. `since` is moved on in place: the
    caller passes a checkpoint it just decoded.

    `grace_from_task`: a break-up's grace runs from its `breakup_task_created` event, and not
    at all until there is one (guardrail 7: a lead found silent late gets its break-up task
    before it can be lost); without it, from the break-up decision (simulations, dry runs).

    `start_from`: a log's fold (worker/eventlog.py): the running state after its older events,
    which are gone; `history` is the kept events, all dated after it. Unlike `since`, it may
    be replayed under another policy or listing: it is all there is of those events.
    `fold_at_ms`: also hand back the running state after the last instant at or before it
    (`Evaluation.fold_bytes`), for the store to fold the events up to there away.
    """
    events = sort_events(history)
    checkpoint: bytes | None = None
    checkpoint_at: int | None = None
    fold, fold_at = None, None
    if since is not None:
        if not can_resume(since, now_ms, suppressed, suppressed_channels):
            raise ValueError("this checkpoint cannot be continued at this time or listing")
        if events and events[0].occurred_ms <= since.at_ms:
            raise ValueError("an event at or before the checkpoint needs a full replay")
        if since.supersedes(events):
            raise ValueError("a new version of a record the checkpoint holds needs a full replay")
        replay = Replay(policy, calendar or calendar_for(policy), since, grace_from_task)
    elif start_from is not None:
        if events and events[0].occurred_ms <= start_from.at_ms:
            raise ValueError("an event at or before the fold is past the retention horizon")
        if start_from.records:
            # A new version of a record the fold counted cannot replace it (the old version's
            # counts are inside the fold): past the horizon, like an event dated before it.
            events = [e for e in events if not (e.data and e.data.get(RECORD_KEY) in start_from.records)]
        unchanged = encode_checkpoint(start_from)
        replay = Replay(policy, calendar or calendar_for(policy), start_from, grace_from_task)
        first = events[0].occurred_ms if events else start_from.at_ms
        if not relist(replay, suppressed, suppressed_channels, first, now_ms) and (not events or first > now_ms):
            # Nothing kept is dated before `now`: the fold itself is where the next replay starts.
            checkpoint, checkpoint_at = unchanged, start_from.at_ms
    else:
        first = events[0].occurred_ms if events else now_ms
        running = start(first, suppressed, suppressed_channels)
        replay = Replay(policy, calendar or calendar_for(policy), running, grace_from_task)
        if events and suppressed:
            inputs = {"channels": sorted(suppressed_channels)} if suppressed_channels else {}
            replay.move("suppression_list", State.SUPPRESSED, "do_not_contact", first, inputs)
    if since is not None and (not events or events[0].occurred_ms > now_ms):
        # No instant of this batch is at or before `now`: the checkpoint stays where it
        # was, so keep a copy of it before the replay moves `since` on.
        checkpoint, checkpoint_at = encode_checkpoint(since), since.at_ms
    for i, ev in enumerate(events):
        replay.advance(min(ev.occurred_ms, now_ms))
        replay.apply(ev)
        # Events of the same instant are simultaneous: rules look at all of them at once,
        # so "LOST beats BREAKUP_DUE" holds even when the last touch and the last "no" coincide.
        last_of_instant = i + 1 == len(events) or events[i + 1].occurred_ms != ev.occurred_ms
        if last_of_instant:
            replay.check(ev.occurred_ms)
            # The checkpoint: after the last instant a replay at any later `now` walks
            # through the same way (events after `now` see time stopped at `now`).
            if ev.occurred_ms <= now_ms and (i + 1 == len(events) or events[i + 1].occurred_ms > now_ms):
                checkpoint, checkpoint_at = replay.snapshot(ev.occurred_ms), ev.occurred_ms
            if fold_at_ms is not None and ev.occurred_ms <= min(fold_at_ms, now_ms):
                if i + 1 == len(events) or events[i + 1].occurred_ms > min(fold_at_ms, now_ms):
                    fold, fold_at = replay.snapshot(ev.occurred_ms), ev.occurred_ms
    as_of = max(now_ms, events[-1].occurred_ms if events else now_ms)
    replay.advance(now_ms)
    due = replay.next_timer()
    r = replay.r
    loss_reason = r.reason if r.state in (State.LOST, State.REENGAGE_DUE) else None
    return Evaluation(
        r.state,
        loss_reason,
        r.decisions[-KEPT_DECISIONS:],
        r.counters,
        due if due is not None and due > now_ms else None,
        as_of,
        checkpoint,
        checkpoint_at,
        replay.progress(),
        since is not None,
        r.decisions_total,
        fold,
        fold_at,
    )
