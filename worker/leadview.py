"""What the store hands a decider (`LeadView`), what it takes back (`Outcome`), what it reports.

The types that cross between worker/store.py, worker/identity.py and the decider
(worker/decide.py): a module of their own so that the decider needs none of the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rules.counters import LoggedEvent, Profile
from worker.action import Action
from worker.checkpoint import Stored
from worker.eventlog import Fold, Log
from worker.keys import Lead
from worker.staterecord import StateRecord


def _no_more_history() -> Log:
    return Log(None, [])


@dataclass(frozen=True)
class LeadView:
    """What a decider sees of one lead inside the transaction.

    `history` is the whole event set kept (`fold` holds what is left of older events) when
    `checkpoint` is None; otherwise only the events dated after the checkpoint, and
    `everything()` reads the rest (the whole log) should the decider find it cannot
    continue the checkpoint, or should fold the log.
    """

    crm: str
    lead_id: str
    history: list[LoggedEvent]
    state: StateRecord | None
    added: int
    # An email of this lead is on the suppression list (a re-created erased person).
    listed: bool = False
    # The channels a restored record objected to (empty: all of them).
    listed_channels: tuple[str, ...] = ()
    checkpoint: Stored | None = None
    everything: Callable[[], Log] = _no_more_history
    fold: Fold | None = None

    def full_log(self) -> Log:
        """The lead's whole log with this batch's events (read when only the tail is at hand)."""
        return Log(self.fold, self.history) if self.checkpoint is None else self.everything()

    def full_history(self) -> list[LoggedEvent]:
        """The lead's kept events (those older than its fold are gone)."""
        return self.full_log().events


@dataclass
class Outcome:
    """What a decider wants persisted for one lead."""

    state: StateRecord | None = None  # None: no state record (plain ACTIVE lead)
    due_ms: int | None = None
    actions: list[Action] = field(default_factory=list)
    # Decisions this evaluation added (rule, to, reason): aggregate metrics only.
    new_decisions: list[tuple[str, str, str | None]] = field(default_factory=list)
    # Erasure: delete everything about the lead, keep these keyed hashes and one audit record.
    erase: bool = False
    suppress_hashes: list[str] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    # The new checkpoint (worker/checkpoint.py), and how the lead was evaluated:
    # "checkpoint" (continued), "replay" (the whole log) or "new" (no history before).
    checkpoint: bytes | None = None
    path: str | None = None
    # The lead's row in the aggregates, kept in `checkpoint` (None: not counted).
    row: list[str] | None = None
    # (source, deal stage, segment, priority) as the evaluation's counters hold them after every
    # event of the lead: what its list-index entry shows, without reading its log again.
    profile: Profile | None = None
    # The whole log, rewritten: its oldest events folded away (worker/eventlog.py `Fold`).
    log: bytes | None = None
    folded: int = 0
    # `state` is the lead's state record as read, unchanged: nothing to write, nothing to re-index.
    unchanged: bool = False


# What the store calls to decide a lead (worker.decide.Decider is the one the workers pass).
Decide = Callable[[LeadView], Outcome]


@dataclass(frozen=True)
class LeadUpdate:
    """What one batch did to one lead."""

    crm: str
    lead_id: str
    history: list[LoggedEvent]
    added: int
    duplicates: int
    outcome: Outcome | None
    # Ids merged into this lead earlier (or in this merge): an erasure covers them too.
    aliases: tuple[str, ...] = ()
    # Events dated at or before the lead's fold: past the retention horizon, ignored.
    past_horizon: int = 0


@dataclass(frozen=True)
class BatchResult:
    leads: list[LeadUpdate]
    # Events dropped because their lead was erased before (a re-import of an erased person).
    dropped: int = 0
    # Write conflicts (another writer changed a watched key first), and the leads decided
    # again because of them: only those whose data had changed, not the whole batch.
    conflicts: int = 0
    redecided: int = 0

    @property
    def erased(self) -> list[Lead]:
        return [
            (u.crm, lead_id) for u in self.leads if u.outcome and u.outcome.erase for lead_id in (u.lead_id, *u.aliases)
        ]

    @property
    def added(self) -> int:
        return sum(u.added for u in self.leads)

    @property
    def duplicates(self) -> int:
        return sum(u.duplicates for u in self.leads)

    @property
    def actions(self) -> list[Action]:
        return [a for u in self.leads if u.outcome for a in u.outcome.actions]

    @property
    def new_decisions(self) -> list[tuple[str, str, str | None]]:
        return [d for u in self.leads if u.outcome for d in u.outcome.new_decisions]

    @property
    def retention(self) -> dict[str, int]:
        """Events folded away by this batch, and events ignored as past the retention horizon."""
        folded = sum(u.outcome.folded for u in self.leads if u.outcome is not None)
        return {"folded": folded, "past_horizon": sum(u.past_horizon for u in self.leads)}

    @property
    def paths(self) -> dict[str, int]:
        """How many leads were evaluated each way (`Outcome.path`)."""
        out: dict[str, int] = {}
        for u in self.leads:
            if u.outcome is not None and u.outcome.path:
                out[u.outcome.path] = out.get(u.outcome.path, 0) + 1
        return out
