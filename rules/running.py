"""A replay's running state, packed as a lead's checkpoint, and what decides whether it can be continued.

`Running` is everything the replay (rules/lifecycle.py) carries from one event to the next;
the store keeps it, packed, beside the lead. It is only continued under the policy it was
computed with (`policy_fingerprint`) and with the same fields (`CHECKPOINT_SCHEMA`).
`Thresholds` is the policy flattened once for the replay; `Evaluation` is what a replay
hands back: where the lead stands, and the checkpoint to continue from next time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec

from rules.calendar import DAY_MS
from rules.counters import LeadCounters, LoggedEvent
from rules.events import RECORD_KEY
from rules.policy import Policy
from rules.states import ACTION_FOR_STATE, ActionKind, Decision, State


class Episode(msgspec.Struct, array_like=True):
    """Counts since the lead last (re)entered ACTIVE."""

    start_ms: int
    not_interested: int = 0
    decision_no: int = 0
    follow_up_reschedules: int = 0
    minutes: int = 0


class Running(msgspec.Struct, array_like=True):
    """Everything a replay carries from one event to the next: a checkpoint, when saved.

    Continuing a replay from a `Running` taken after instant `at_ms` with the events after
    `at_ms` is the same computation as replaying every event from the start (see
    `evaluate`). To add a state or a counter, add a field at the end with a default:
    `CHECKPOINT_SCHEMA` changes with the fields, so older checkpoints are replayed from
    the log once instead of being read with a counter that was never counted.
    """

    at_ms: int
    # The suppression listing the replay started from (the first decision depends on it).
    listed: bool
    listed_channels: tuple[str, ...]
    state: State
    reason: str | None
    entered_ms: int
    counters: LeadCounters
    episode: Episode
    # Silence, as the silence rules see it: follow-ups on quiet days do not count.
    silent_follow_ups: int = 0
    # ...and those that did not, for explain ("2 more fell on quiet days").
    quiet_follow_ups: int = 0
    # ISO week index -> call attempts, since the last response.
    weekly_calls: dict[int, int] = msgspec.field(default_factory=dict)
    last_response_ms: int | None = None
    proposal_fired_for: int | None = None
    # While SUPPRESSED: the channels the suppress decisions so far carry, and what they cover.
    dnc_channels: frozenset[str] = frozenset()
    dnc_covered: frozenset[str] = frozenset()
    # Decision identities: returns to ACTIVE so far, and (rule, state) -> moves in this episode.
    episode_no: int = 0
    ranks: dict[str, int] = msgspec.field(default_factory=dict)
    # The latest decisions only (KEPT_DECISIONS at least): all an evaluation hands on.
    decisions: list[Decision] = msgspec.field(default_factory=list)
    decisions_total: int = 0
    events: int = 0
    # Deal id ("" when the CRM gave none) -> its latest outcome ("won", "lost", "open"): a WON
    # lead returns to ACTIVE when a deal *becomes* open (new, or reopened), not when an open
    # deal it already had is edited.
    deal_outcomes: dict[str, str] = msgspec.field(default_factory=dict)
    # Versioned CRM records folded in so far (`~r` of rules/events.py `versioned`): another
    # version of one of them cannot be added to this state, only replayed with it.
    records: set[str] = msgspec.field(default_factory=set)
    # When the current break-up's task was created in the CRM (guardrail 7: its grace runs
    # from then); None until a `breakup_task_created` after entering BREAKUP_DUE.
    breakup_task_ms: int | None = None
    # A task created for this episode's break-up, seen while the lead is still ACTIVE: late
    # events moved that break-up past its task's creation. The break-up, when it comes,
    # starts its grace at once (the task exists) instead of waiting for one that never will.
    task_early_ms: int | None = None

    def supersedes(self, history: Iterable[LoggedEvent]) -> bool:
        """Whether some event of `history` is another version of a record already folded in."""
        return bool(self.records) and any(ev.data.get(RECORD_KEY) in self.records for ev in history if ev.data)

    def name(self, rule: str, to: State, inputs: dict[str, Any]) -> str:
        """Name the next decision by its rule, target state, episode and rank there.

        An episode is the stretch between two returns to ACTIVE (a reply, a reopen, a
        re-consent); the rank counts that rule's moves to that state within it. Not the
        time: a late or reordered event can move the moment a rule fired (a follow-up
        delivered after the ones it preceded), and a name that moved would send the same
        action again. A suppression's channels are part of the name, so an earlier-dated
        "all channels" arriving after "email" is still sent.
        """
        if to is State.ACTIVE:
            self.episode_no += 1
            self.ranks.clear()
        slot = f"{rule}:{to.value}"
        self.ranks[slot] = self.ranks.get(slot, 0) + 1
        out = f"{slot}@{self.episode_no}#{self.ranks[slot]}"
        if ACTION_FOR_STATE.get(to) is ActionKind.SUPPRESS:
            out += ":" + "+".join(sorted(inputs.get("channels", ["all"])))
        return out


# What an evaluation keeps of its decisions: an action is only ever wanted for the last
# two (the current one and the loss it follows), and the state record shows these 5
# (`worker.decide` remembers the names of more, as acted on). Older ones are only
# counted (`decisions_total`): a checkpoint, decoded for every event of a lead, stays
# small however long the story.
KEPT_DECISIONS = 5
# ...and only the latest few with the inputs their rule compared (what an action's task text
# and `explain` quote); older ones are summaries: rule, states, reason, time, name.
FULL_DECISIONS = 3


def summary(decision: Decision) -> Decision:
    """A decision without its inputs, but the channels a suppression covered (read by erasures)."""
    if not decision.inputs:
        return decision
    kept = {"channels": decision.inputs["channels"]} if "channels" in decision.inputs else {}
    return msgspec.structs.replace(decision, inputs=kept)


CHECKPOINT_CODEC = msgspec.msgpack.Encoder()


def _schema(*types: type[msgspec.Struct]) -> str:
    fields = ";".join(f"{t.__name__}:{','.join(t.__struct_fields__)}" for t in types)
    return hashlib.blake2b(fields.encode(), digest_size=4).hexdigest()


# Bumped when the replay changes meaning without a field name changing (2: the WON state; 3:
# calls counted by calendar week number, not ISO week string; 4: the break-up grace runs from
# the task's creation; 5: older decisions kept as summaries, call weeks kept for a quarter;
# 6: a task names the break-up it was created for, by its decision's time),
# so that checkpoints computed by the previous rules are replayed from the
# log once, not continued.
ENGINE_VERSION = 6
# Changes whenever a running-state field is added, removed or renamed.
CHECKPOINT_SCHEMA = _schema(Running, LeadCounters, Episode, Decision)


@lru_cache(maxsize=16)
def policy_fingerprint(policy: Policy) -> str:
    """A short digest of everything in `policy` a replay reads: a checkpoint is only
    continued under the policy it was computed with."""
    body = json.dumps(
        [
            sorted(policy.enabled.items()),
            {rule: sorted(params.items()) for rule, params in policy.params.items()},
            policy.min_touches_for_silence,
            policy.holiday_country,
            [(q.start, q.end) for q in policy.quiet_periods],
            [(t.min_amount, t.multiplier, t.typical_minutes) for t in policy.tiers],
            policy.reengage_after_days,
            {category: list(words) for category, words in policy.loss_reason_categories.items()},
            sorted(policy.won_stages),
            sorted(policy.lost_stages),
            ENGINE_VERSION,
            CHECKPOINT_SCHEMA,
        ],
        sort_keys=True,
    )
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Thresholds:
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
def thresholds(policy: Policy) -> Thresholds:
    p = policy.param
    return Thresholds(
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


_RUNNING_DECODER = msgspec.msgpack.Decoder(Running)


def decode_running(blob: bytes) -> Running:
    """Unpack a running state written with these fields (msgspec.DecodeError otherwise)."""
    return _RUNNING_DECODER.decode(blob)


def encode_checkpoint(run: Running) -> bytes:
    """Pack a running state (msgpack arrays, no field names)."""
    return CHECKPOINT_CODEC.encode(run)


def decode_checkpoint(blob: bytes) -> Running | None:
    """Unpack a running state; None when it was written with other fields (replay instead)."""
    try:
        return decode_running(blob)
    except msgspec.DecodeError:  # ValidationError included
        return None


def start(first_ms: int, listed: bool = False, listed_channels: Collection[str] = ()) -> Running:
    """The running state before a lead's first event (at `first_ms`)."""
    return Running(
        at_ms=first_ms,
        listed=listed,
        listed_channels=tuple(sorted(listed_channels)),
        state=State.ACTIVE,
        reason=None,
        entered_ms=first_ms,
        counters=LeadCounters(),
        episode=Episode(first_ms),
    )


def can_resume(
    checkpoint: Running, now_ms: int, suppressed: bool = False, suppressed_channels: Collection[str] = ()
) -> bool:
    """Say whether `evaluate(..., since=checkpoint)` may continue from it at `now_ms`.

    The checkpoint must have been started from the same suppression listing, and `now`
    must not be before it (a replay's view of events after `now` differs).
    """
    return (
        checkpoint.listed == suppressed
        and checkpoint.listed_channels == tuple(sorted(suppressed_channels))
        and now_ms >= checkpoint.at_ms
    )


@dataclass
class Evaluation:
    """Where a lead stands as of `as_of_ms`.

    `decisions` are the latest ones only (KEPT_DECISIONS); `checkpoint` is the running
    state after the last instant at or before `now` (None: no event that old yet), to be
    continued next time with the events after it.
    """

    state: State
    loss_reason: str | None
    decisions: list[Decision]
    counters: LeadCounters
    next_due_ms: int | None
    as_of_ms: int
    # The checkpoint, packed (`encode_checkpoint`): a snapshot is an encode, and the store
    # keeps exactly these bytes. `checkpoint_at` is its `at_ms`.
    checkpoint_bytes: bytes | None = None
    checkpoint_at: int | None = None
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: bool = False
    decisions_total: int = 0
    # The running state after the last instant at or before the fold time asked for, packed,
    # and that instant (`evaluate(fold_at_ms=...)`): what the store keeps of older events.
    fold_bytes: bytes | None = None
    fold_at: int | None = None

    @property
    def checkpoint(self) -> Running | None:
        return None if self.checkpoint_bytes is None else decode_running(self.checkpoint_bytes)
