"""The lead list index: `GET /leads`, `pruner leads` and the dashboard's live numbers.

Listing leads must not scan every lead, so each listed lead has one small index entry,
written in the same Redis transaction as its state record (worker/store.py calls
`queue_update` with the entry it read before MULTI and the one it computed):

    leads:v2:entries                hash {c}{lead_id} -> entry (msgpack: state, changed time, rules, loss
                                    reason, source, deal stage, segment, priority; no personal data)
    leads:v2:by:state:{state}       sorted set {c}{lead_id} -> changed time (ms), one per state
    leads:v2:by:rules:{a,b,...}     the same, one per combination of rules that decided (a lead's
                                    rules, sorted, comma-joined: each lead is in one of them)
    leads:v2:by:reason:{reason}     the same, one per loss reason (leads that have one)
    leads:v2:by:source:{source}     the same, one per source (leads that have one)
    leads:v2:values:{reason|rules}  the loss reasons and rule combinations ever seen
    leads:v2:indexed                set once every stored lead is in the index (worker/reindex.py)
    leads:tracked                   how many leads have an event log (listed or not)

{c} is the CRM's letter (h, s). Listed are the leads a rule has decided on (they have a state
record) and won leads: the ones an operator looks for. A lead that is merely being worked
(ACTIVE, never decided on, no won deal: most leads) costs the index nothing but its share of
`leads:tracked`; it is listed from its first decision on.

Memory is why the index is shaped so (issue #13): a sorted-set membership costs ~100-130 B
and a hash field ~80-190 B, so a listed lead is in at most four sets (its state, its rules,
its loss reason, its source) and its entry stores known words (states, rule names, loss
reasons) as one-byte codes: ~300-400 B a listed lead. The index of the versions before had a
set for every lead, one per outcome and one per rule, and JSON entries: ~1 KB. Its keys
(`leads:entries`, `leads:by:*`, `leads:values:*`, `leads:indexed`) are deleted once, by the
first worker to start (worker/reindex.py), which then indexes every lead anew.

A page reads newest first the sets of the filter that holds the fewest leads (ZCARD): the
one set of a state, a loss reason or a source; the state sets of an outcome (two at most),
or all six when nothing is filtered; the combinations that hold a rule. Several sets are
merged on the way, by time then member, both descending, which is the order one sorted set
holding them all would have: the cursor (a time and how many leads at that time were seen)
means the same whichever sets a page reads. The other filters (crm, segment, priority,
stage too) are checked against the entries: a page with one filter costs O(page); with
several, the scan is bounded and the cursor carries on where it stopped. The dashboard's
counts are sums of ZCARD/ZCOUNT over the same sets.

"changed" is the time of the lead's latest decision (the decision's own time, which is
event time), or of its first event for a won lead no rule has decided on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec
import redis

from rules.counters import LeadCounters, LoggedEvent, Profile, fold
from rules.errors import SchemaError
from rules.events import EventType, parse_rfc3339_ms
from rules.states import outcome_of

PREFIX = "pruner:leads:v2:"
ENTRIES_KEY = PREFIX + "entries"
BY_PREFIX = PREFIX + "by:"
VALUES_PREFIX = PREFIX + "values:"
INDEXED_KEY = PREFIX + "indexed"
TRACKED_KEY = "pruner:leads:tracked"
# The index of the versions before (one set for every lead, per outcome, per rule; JSON entries
# under "{crm}:{lead_id}"): nothing reads it, worker/reindex.py deletes it once.
LEGACY_INDEXED_KEY = "pruner:leads:indexed"
LEGACY_ENTRIES_KEY = "pruner:leads:entries"
LEGACY_PATTERNS = ("pruner:leads:by:*", "pruner:leads:values:*")
DIMENSIONS = ("crm", "state", "reason", "rule", "source", "segment", "priority", "stage", "outcome")
# The dimensions whose values are remembered: the policy's own words (rule names, loss reasons),
# never CRM free text, so nothing of an erased lead can linger there. "rules": the combinations.
VOCABULARIES = ("reason", "rules")
FIXED_VALUES = {
    "crm": ("hubspot", "salesforce"),
    "state": ("ACTIVE", "BREAKUP_DUE", "LOST", "REENGAGE_DUE", "WON", "SUPPRESSED"),
    "outcome": ("open", "won", "lost", "suppressed"),
}
# A member is the CRM's letter and the lead id (a new CRM needs a letter of its own here).
CRM_LETTERS = {"hubspot": "h", "salesforce": "s"}
_CRM_OF_LETTER = {letter: crm for crm, letter in CRM_LETTERS.items()}
# Words an entry stores as their position here (one byte): states, rule names, loss reasons.
# Append only: a stored code keeps its meaning. Any other word is stored as it is.
WORDS = (
    *FIXED_VALUES["state"],
    *("repeated_no", "decisive_no", "pushed_back", "unresponsive", "effort_exceeds_value", "proposal_expired"),
    *("call_cadence_exhausted", "breakup_grace", "reengage", "reply_resets", "consent_given", "do_not_contact"),
    *("erasure_requested", "reopened", "converted", "deal_won", "deal_opened"),
    *("not_interested", "no_response", "deprioritized", "budget", "competitor", "timing", "no_need"),
    *("authority", "other"),
)
_CODES = {word: i for i, word in enumerate(WORDS)}
# Events that can change an entry's source or deal stage; any other new event leaves them be.
PROFILE_TYPES = frozenset({EventType.LEAD_PROFILE, EventType.DEAL_UPDATED})
Lead = tuple[str, str]


def by_key(dimension: str, value: str) -> str:
    """The sorted set of one state, loss reason, source or rule combination ("rules", "a,b")."""
    return f"{BY_PREFIX}{dimension}:{value}"


def member(crm: str, lead_id: str) -> str:
    return CRM_LETTERS[crm] + lead_id


def lead_of(name: bytes | str) -> Lead:
    """The (crm, lead id) of a member made by `member`."""
    text = name.decode() if isinstance(name, bytes) else name
    return _CRM_OF_LETTER[text[0]], text[1:]


def combination(rules: Iterable[str]) -> str:
    """The name of the set of leads decided by exactly these rules ("" for none)."""
    return ",".join(sorted(rules))


def _code(word: str | None) -> int | str | None:
    return _CODES.get(word, word) if word is not None else None


def _word(stored: Any) -> Any:
    return WORDS[stored] if isinstance(stored, int) else stored


_PAD: list[Any] = [None] * 8


@dataclass(frozen=True)
class Entry:
    """What the list shows and filters on for one lead."""

    state: str
    loss_reason: str | None
    rules: tuple[str, ...]
    source: str | None
    deal_stage: str | None
    changed_ms: int
    segment: str | None = None
    priority: str | None = None

    @property
    def outcome(self) -> str:
        return outcome_of(self.state)

    def values(self, crm: str) -> dict[str, set[str]]:
        """The values this entry has, per dimension (what filters match)."""
        return {
            "crm": {crm},
            "state": {self.state},
            "reason": {self.loss_reason} if self.loss_reason else set(),
            "rule": set(self.rules),
            "source": {self.source} if self.source else set(),
            "segment": {self.segment} if self.segment else set(),
            "priority": {self.priority} if self.priority else set(),
            "stage": {self.deal_stage} if self.deal_stage else set(),
            "outcome": {self.outcome},
        }

    def sets(self) -> set[str]:
        """The index's sorted sets this entry is in."""
        keys = {by_key("state", self.state)}
        if self.rules:
            keys.add(by_key("rules", combination(self.rules)))
        if self.loss_reason:
            keys.add(by_key("reason", self.loss_reason))
        if self.source:
            keys.add(by_key("source", self.source))
        return keys

    def encode(self) -> bytes:
        """msgpack, known words as codes, missing fields at the end left out (~20-40 bytes)."""
        fields: list[Any] = [
            _code(self.state),
            self.changed_ms,
            [_code(rule) for rule in self.rules],
            _code(self.loss_reason),
            self.source,
            self.deal_stage,
            self.segment,
            self.priority,
        ]
        while fields[-1] is None:
            fields.pop()
        return msgspec.msgpack.encode(fields)

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        stored: list[Any] = msgspec.msgpack.decode(raw)
        state, changed, rules, reason, source, stage, segment, priority = stored + _PAD[len(stored) :]
        return cls(_word(state), _word(reason), tuple(map(_word, rules)), source, stage, changed, segment, priority)


def entry_for(
    state: Mapping[str, Any] | None,
    history: Sequence[LoggedEvent],
    old: Entry | None = None,
    new: Iterable[LoggedEvent] = (),
    folded: LeadCounters | None = None,
    profile: Profile | None = None,
) -> Entry | None:
    """Compute a lead's entry from its state record and event log (None: not listed).

    `profile`: the lead's (source, deal stage, segment, priority) as its evaluation counted them
    (`Outcome.profile`) or `Log.counters` does, the same counting: used as it is. Without it,
    the profile is folded from `history` onto `folded` (the counters of the log's fold), only
    when `old` is missing or a new event can change it; otherwise the old entry's is kept.
    """
    new = list(new)
    if state is None and (old is None or not (history or folded is not None)):
        if not any(ev.type is EventType.DEAL_UPDATED for ev in new):
            return None  # being worked, never decided on: not listed (see the module's docstring)
    record = state or {}
    decisions = record.get("decisions") or []
    if profile is None:
        if old is None or any(ev.type in PROFILE_TYPES for ev in new):
            profile = fold(history, folded).profile()
        else:
            profile = (old.source, old.deal_stage, old.segment, old.priority)
    if decisions:
        changed = _ms(decisions[-1].get("at"))  # the replay records decisions in time order
    elif old is not None:
        changed = old.changed_ms
    else:
        changed = min((ev.occurred_ms for ev in history), default=0)
    rules = tuple(sorted({str(d["rule"]) for d in decisions if d.get("rule")}))
    source, stage, segment, priority = profile
    state_name, reason = str(record.get("state", "ACTIVE")), record.get("loss_reason")
    entry = Entry(state_name, reason, rules, source, stage, changed, segment, priority)
    return entry if state is not None or entry.outcome == "won" else None


def _ms(value: object) -> int:
    return _parsed_ms(value) if isinstance(value, str) else _parse_ms(value)


@lru_cache(maxsize=4096)
def _parsed_ms(value: str) -> int:
    # A listed lead's latest decision is the same one batch after batch: parsed once.
    return _parse_ms(value)


def _parse_ms(value: object) -> int:
    try:
        return parse_rfc3339_ms(value, "decision time")
    except SchemaError:
        return 0


def read(connection: Any, leads: Sequence[Lead]) -> list[Entry | None]:
    """Read the leads' current entries (one HMGET; on a watching pipeline, before MULTI)."""
    if not leads:
        return []
    raw: list[bytes | None] = connection.hmget(ENTRIES_KEY, [member(*lead) for lead in leads])
    return [Entry.decode(r) if r is not None else None for r in raw]


def queue_update(pipe: Any, lead: Lead, old: Entry | None, new: Entry | None, rewrite: bool = False) -> None:
    """Queue the writes that move a lead's index entry from `old` to `new` (None: remove it).

    Nothing is written when the entry did not change, which is what most batches see; a set
    the lead stays in at the same time is left alone. `rewrite` (the rebuild, worker/reindex.py)
    writes the entry and every set it belongs in all the same: an entry can outlive a set
    dropped under it (a batch committed while the old index was being deleted).
    """
    if old == new and not rewrite:
        return
    name = member(*lead)
    before = old.sets() if old else set()
    after = new.sets() if new else set()
    for key in sorted(before - after):
        pipe.zrem(key, name)
    if new is None:
        pipe.hdel(ENTRIES_KEY, name)
        return
    pipe.hset(ENTRIES_KEY, name, new.encode())
    moved = rewrite or old is None or old.changed_ms != new.changed_ms
    for key in sorted(after if moved else after - before):
        pipe.zadd(key, {name: new.changed_ms})
    if new.loss_reason and (rewrite or old is None or old.loss_reason != new.loss_reason):
        pipe.sadd(VALUES_PREFIX + "reason", new.loss_reason)
    if new.rules and (rewrite or old is None or old.rules != new.rules):
        pipe.sadd(VALUES_PREFIX + "rules", combination(new.rules))


def queue_tracked(pipe: Any, delta: int) -> None:
    """Count leads whose event log was created (+1) or deleted (-1), in the same transaction."""
    if delta:
        pipe.incrby(TRACKED_KEY, int(delta))


def tracked(connection: redis.Redis) -> int:
    """How many leads have an event log (listed or not)."""
    return int(connection.get(TRACKED_KEY) or 0)


def is_complete(connection: redis.Redis) -> bool:
    """Say whether every lead is indexed (the backfill ran, or the store began with the index)."""
    return bool(connection.exists(INDEXED_KEY))
