"""Turn a lead's evaluation into what the store persists: state record, checkpoint, due time, CRM actions.

The evaluation continues the lead's checkpoint when it can (a batch of events dated
after it, under the same policy), and replays the whole log otherwise: the same result
either way (tests/worker/test_checkpoint.py). Which actions to emit is the one stateful choice:
a decision's action is emitted once, keyed by the decision's identity
(`rule:state@episode#n`, see `Running.name`) in the lead's `acted` list. Only the action
that matches where the lead stands *now* is emitted — a backfill that replays
ACTIVE -> BREAKUP_DUE -> LOST in one go marks the lead lost, it does not also ask
the rep for a break-up message that is already moot. A suppressed lead gets no
contact action of any kind (docs/lifecycle.md guardrail 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from rules.calendar import DAY_MS, Calendar, calendar_for
from rules.counters import effective
from rules.events import EventType, format_ms, parse_rfc3339_ms
from rules.lifecycle import evaluate
from rules.policy import Policy
from rules.running import Evaluation, Running, can_resume, policy_fingerprint
from rules.states import CONTACT_ACTIONS, ActionKind, Decision, State
from worker import aggregates, checkpoint, eventlog, suppression
from worker.action import Action
from worker.errors import ConfigError
from worker.eventlog import Fold, Log
from worker.leadview import LeadView, Outcome
from worker.staterecord import StateRecord

# The state record shows the latest 5 decisions (and counts them all; it showed 10 until
# 2026-12, which doubled what every batch of a decided lead reads and writes);
# `acted` keeps both names of the last 10 decisions acted on, the evaluation's latest
# (KEPT_DECISIONS) always among them: only those can still call for an action. (It kept 64
# until 2026-12; a state record then grew to ~5 KB on a long story.)
MAX_DECISIONS_KEPT = 5
MAX_ACTED_KEPT = 20
# A log is folded once its oldest event is this far past the retention horizon: a rewrite
# of the log every couple of weeks per lead, not one with every event.
FOLD_SLACK_MS = 14 * DAY_MS


def identities(decisions: Sequence[Decision]) -> list[str]:
    """Each decision's identity, as the replay named it (see `rules.running.Running.name`)."""
    return [d.name for d in decisions]


def _was_acted(decision: Decision, identity: str, acted: set[str]) -> bool:
    # Either name: the identity survives a moved time, the `rule:state:time` key a story
    # re-told with an extra episode before it (late events that add a reply earlier on).
    # Versions before 2026-11-25 recorded only the key.
    return identity in acted or decision.key in acted


def carried_over(prev: StateRecord, ev: Evaluation, acted: set[str]) -> set[str]:
    """Names under which the current decision was already acted on, when a late batch re-told it.

    Late events can renumber the episode a decision fired in (a reply delivered late adds an
    episode before it) and move its time (a late follow-up makes it fire earlier) at once:
    neither of its names then matches what was acted on. It is the same decision when the
    lead sat in that state by that rule before this batch, that was acted on, and nothing has
    happened since the earlier of the two times — no later transition that a real second
    cycle (a reply after the break-up, then pushed back again) would have.
    """
    decisions = prev.get("decisions") or []
    if not decisions or not ev.decisions:
        return set()
    last, current = decisions[-1], ev.decisions[-1]
    if prev.get("state") != last.get("to") or (last.get("rule"), last.get("to")) != (current.rule, current.to.value):
        return set()
    if current.action is ActionKind.SUPPRESS and current.inputs.get("channels") != last.get("inputs", {}).get(
        "channels"
    ):
        return set()  # other opt-outs to tell the CRM: a new suppression, whatever its time
    last_ms = parse_rfc3339_ms(last["at"], "state.decisions.at")
    if f"{last['rule']}:{last['to']}:{last_ms}" not in acted:
        return set()  # it was never acted on (dry run does act; a brand-new lead has nothing here)
    since = min(last_ms, current.at_ms)
    if any(d.at_ms > since for d in ev.decisions[:-1]):
        return set()
    return {current.name, current.key}


def _remember(before: Sequence[str], names: list[str]) -> list[str]:
    """`names` last (the current decision's are never trimmed away), after those remembered
    from before: older than the evaluation keeps, still known."""
    latest = set(names)
    return ([key for key in before if key not in latest] + names)[-MAX_ACTED_KEPT:]


def actions_for(view: LeadView, ev: Evaluation, acted: set[str], dry_run: bool) -> list[Action]:
    """Return the CRM actions this evaluation newly implies for the lead."""
    if not ev.decisions:
        return []
    names = {id(d): d.name for d in ev.decisions}
    current = ev.decisions[-1]
    if _was_acted(current, names[id(current)], acted):
        return []
    wanted: list[Decision] = []
    if current.to is State.REENGAGE_DUE:
        # Lost and due for a check-in in one evaluation: the CRM must learn of the loss too.
        lost = next((d for d in reversed(ev.decisions) if d.to is State.LOST), None)
        if lost is not None and not _was_acted(lost, names[id(lost)], acted):
            wanted.append(lost)
    wanted.append(current)
    out: list[Action] = []
    for decision in wanted:
        kind = decision.action
        if kind is None or (ev.state is State.SUPPRESSED and kind in CONTACT_ACTIONS):
            continue
        action: Action = {
            "id": f"{view.crm}:{view.lead_id}:{names[id(decision)]}",
            "kind": kind.value,
            "crm": view.crm,
            "lead_id": view.lead_id,
            "rule": decision.rule,
            "reason": decision.reason,
            "at": format_ms(decision.at_ms),
            "dry_run": dry_run,
        }
        if kind is ActionKind.SUPPRESS:
            # Tells the CRM which opt-outs to set: email opt-out, do-not-call, or both.
            action["channels"] = list(decision.inputs.get("channels", ["all"]))
        out.append(action)
    return out


def _as_of_kept(state: StateRecord, prev: StateRecord) -> StateRecord:
    """`state`, with the previous `as_of_ms` when nothing else in it changed.

    `as_of_ms` is the `now` of the evaluation that last changed the record: what a later
    `now` decided (a sweep run ahead of the clock) is never undone by an earlier one, and a
    live batch that changes nothing leaves the record's bytes as they were, so the store
    need not write them again (most batches of a decided lead: ~1.3 KB less per lead).
    """
    if "as_of_ms" not in prev:
        return state
    kept: StateRecord = {**state, "as_of_ms": prev["as_of_ms"]}
    # As JSON: the stored record was decoded from it (lists, not tuples).
    return kept if msgspec.json.decode(_RECORD.encode(kept)) == prev else state


_RECORD = msgspec.json.Encoder()


class Decider:
    """Evaluate a lead with one policy at one `now`; used by batches and sweeps alike."""

    def __init__(
        self,
        policy: Policy,
        now_ms: int,
        dry_run: bool = False,
        calendar: Calendar | None = None,
        suppression_key: bytes | None = None,
        source: str = "events",
        grace_from_task: bool = False,
        release_by_ms: int | None = None,
    ) -> None:
        self.policy = policy
        self.now_ms = now_ms
        self.dry_run = dry_run
        self.calendar = calendar or calendar_for(policy)
        self.suppression_key = suppression_key
        self.source = source
        # Live, a break-up's grace waits for its task to exist in the CRM (guardrail 7); a dry
        # run creates none. Part of the fingerprint: a checkpoint is only continued in its mode.
        self.grace_from_task = grace_from_task
        self.fingerprint = policy_fingerprint(policy) + ("/task" if grace_from_task else "")
        self.horizon_ms = policy.retention_horizon_days * DAY_MS
        # Holding decisions (a dry run that stands for a live backfill, worker/held.py): a lead
        # with held decisions is due by then at the latest, so that it is acted on for real
        # even if nothing releases it (the backfill command was killed before its release).
        self.release_by_ms = release_by_ms

    def _resumable(self, view: LeadView, now: int, listed: bool, channels: tuple[str, ...]) -> Running | None:
        """The lead's checkpoint, when this evaluation may continue it."""
        stored = view.checkpoint
        if stored is None or stored.policy != self.fingerprint:
            return None
        running = stored.state()
        if running is None or not can_resume(running, now, listed, channels):
            return None
        if running.supersedes(view.history):
            return None  # an edited activity the checkpoint already counted: replay, so it counts once
        return running

    @staticmethod
    def _oldest(view: LeadView, since: Running | None) -> int | None:
        """When the oldest event the lead's log keeps (this batch's included) happened; UNKNOWN."""
        stored = view.checkpoint.oldest if view.checkpoint is not None and since is not None else checkpoint.UNKNOWN
        if stored == checkpoint.UNKNOWN and since is not None and not view.added:
            return checkpoint.UNKNOWN  # nothing to fold without new events: not worth reading the log
        if stored == checkpoint.UNKNOWN:
            # The log is read (or about to be, for a replay): the same answer, from the events.
            return min((e.occurred_ms for e in view.full_history()), default=None)
        dates = [e.occurred_ms for e in view.history]
        return min(dates + ([stored] if stored is not None else []), default=None)

    def _fold_at(self, oldest: int | None, now: int) -> int | None:
        """The time up to which to fold the log now (None: not yet).

        Only once its oldest event is FOLD_SLACK past the horizon, so that a lead's log is
        rewritten about once a fortnight, not with every event. Both evaluation paths ask
        the same question of the same events, so they fold alike.
        """
        if self.horizon_ms == 0 or oldest is None or oldest == checkpoint.UNKNOWN:
            return None
        if oldest >= now - self.horizon_ms - FOLD_SLACK_MS:
            return None
        return now - self.horizon_ms

    def _refold(
        self, log: Log, fold_at: int, now: int, listed: bool, channels: tuple[str, ...]
    ) -> tuple[bytes | None, int | None] | None:
        """The running state a replay of `log` would fold at `fold_at`, replaying only what it folds.

        The checkpoint carries the lead on; the fold needs the events up to `fold_at` alone,
        from the previous fold: the same steps, so the same bytes, as the full replay's (the
        versions in force are chosen over the whole log first, as that replay chooses them).
        """
        older = [e for e in effective(log.events) if e.occurred_ms <= fold_at]
        if not older:
            return None
        start_from = log.fold.state() if log.fold is not None else None
        ev = evaluate(
            older,
            self.policy,
            now,
            self.calendar,
            suppressed=listed,
            suppressed_channels=channels,
            grace_from_task=self.grace_from_task,
            start_from=start_from,
            fold_at_ms=fold_at,
        )
        return ev.fold_bytes, ev.fold_at

    @staticmethod
    def _fold(log: Log, running: bytes, at_ms: int) -> tuple[bytes, int | None, int]:
        """The log with its events up to `at_ms` folded into `running`; its oldest kept event; how many went."""
        gone = [e for e in log.events if e.occurred_ms <= at_ms]
        kept = [e for e in log.events if e.occurred_ms > at_ms]
        before = log.fold.events if log.fold is not None else 0
        emails = sorted(Log(log.fold, gone).emails())
        fold = Fold(at_ms, msgspec.Raw(running), before + len(gone), emails)
        oldest = min((e.occurred_ms for e in kept), default=None)
        return eventlog.write(Log(fold, kept)), oldest, len(gone)

    def __call__(self, view: LeadView) -> Outcome:
        if any(e.type is EventType.ERASURE_REQUESTED for e in view.history):
            return self.erase(view)
        prev = view.state or {}
        # Time only moves forward for a lead: what a sweep run with `--now` in the future
        # decided is not undone by a batch processed at wall-clock time afterwards.
        now = max(self.now_ms, int(prev.get("as_of_ms", 0)))
        listed = view.listed or bool(prev.get("suppression_list"))
        listed_channels = view.listed_channels if view.listed else tuple(prev.get("suppression_channels", ()))
        since = self._resumable(view, now, listed, listed_channels)
        oldest = self._oldest(view, since)
        # Only a batch that adds events folds: a log grows with them alone, and a sweep (or a
        # batch of redeliveries) then never reads and rewrites a whole log.
        fold_at = self._fold_at(oldest, now) if view.added else None
        told = since.decisions_total if since is not None else -1
        log = None
        if since is not None:
            history, path, start_from, since_arg = view.history, "checkpoint", None, since
        else:
            log = view.full_log()
            history, since_arg = log.events, None
            start_from = log.fold.state() if log.fold is not None else None
            path = (
                "replay" if view.checkpoint is not None or len(history) > view.added or log.fold is not None else "new"
            )
        ev = evaluate(
            history,
            self.policy,
            now,
            self.calendar,
            suppressed=listed,
            suppressed_channels=listed_channels,
            since=since_arg,
            grace_from_task=self.grace_from_task,
            start_from=start_from,
            fold_at_ms=fold_at if since is None else None,
        )
        rewritten, folded = None, 0
        fold = (ev.fold_bytes, ev.fold_at) if since is None else None
        if fold_at is not None and since is not None:
            log = view.full_log()
            fold = self._refold(log, fold_at, now, listed, listed_channels)
        if log is not None and fold is not None and fold[0] is not None and fold[1] is not None:
            rewritten, oldest, folded = self._fold(log, fold[0], fold[1])
        row = aggregates.row_of(ev.state.value, ev.loss_reason, ev.counters, aggregates.lost_from(ev.decisions))
        profile = ev.counters.profile()
        if ev.checkpoint_bytes is not None and ev.checkpoint_at is not None:
            tail = [e for e in history if e.occurred_ms > ev.checkpoint_at]
            packed = checkpoint.pack(
                self.fingerprint, ev.checkpoint_at, ev.checkpoint_bytes, tail, ev.progress, row, oldest, ev.next_due_ms
            )
        else:
            # Nothing to continue from yet, but the lead counts in the aggregates all the same.
            packed = checkpoint.pack(
                self.fingerprint,
                checkpoint.NO_CHECKPOINT,
                checkpoint.NO_STATE,
                [],
                ev.progress,
                row,
                oldest,
                ev.next_due_ms,
            )

        def outcome(
            state: StateRecord | None,
            actions: list[Action],
            new: list[tuple[str, str, str | None]],
            unchanged: bool = False,
        ) -> Outcome:
            due = ev.next_due_ms if state is not None else None
            if state is not None and state.get("dry_acted") and self.release_by_ms is not None:
                due = min(due, self.release_by_ms) if due is not None else self.release_by_ms
            return Outcome(
                state,
                due,
                actions,
                new,
                checkpoint=packed,
                path=path,
                row=row,
                profile=profile,
                log=rewritten,
                folded=folded,
                unchanged=unchanged,
            )

        going_live = not self.dry_run and bool(prev.get("dry_acted"))  # what a dry run decided is still to send
        if (
            told == ev.decisions_total
            and prev.get("decisions_total") == told
            and "decisions" in prev
            and not going_live
        ):
            # The live case: no decision since the checkpoint, whose decisions the state record
            # shows and has acted on already. Nothing new to act on or to re-render.
            # Without a decision, neither the state nor the loss reason can have moved; the due
            # time, which moves with every touch, is kept in the checkpoint (written anyway).
            state: StateRecord = {**prev}
            state.pop("next_due", None)  # (written there until 2026-12-05)
            state["state"], state["loss_reason"] = ev.state.value, ev.loss_reason
            if state == prev:
                return outcome(prev, [], [], unchanged=True)
            state["as_of_ms"] = now
            return outcome(state, [], [])
        # A dry run acts on nothing for real: what it "acted" on is remembered apart, so that
        # it does not log the same would-be action twice, and a live worker sends it after all
        # (the lead's current decision: a break-up a dry run decided gets its task at go-live).
        live_acted = prev.get("acted", [])
        dry_acted = prev.get("dry_acted", []) if self.dry_run else []
        # A decision re-told under new names (late events renumbered and moved it) that was
        # acted on for real stays acted on for real, whoever re-tells it: a held batch too.
        retold = carried_over(prev, ev, set(live_acted))
        acted = set(live_acted) | set(dry_acted) | retold
        acted |= carried_over(prev, ev, acted)
        actions = actions_for(view, ev, acted, self.dry_run)
        # Only the latest decisions can still call for an action (the current one, and the
        # loss a check-in follows): `acted` is rebuilt from them, both names of each, so it
        # neither grows with a long story nor loses what the current decision needs.
        recent = [(d, d.name) for d in ev.decisions]
        # New decisions (counted in the metrics): not one a dry run or a backfill already held.
        seen = acted | set(prev.get("dry_acted", []))
        fresh = [(d, name) for d, name in recent if not _was_acted(d, name, seen)]
        names = [key for d, name in recent for key in (name, d.key)]
        if self.dry_run:
            # A dry run adds to what was really acted on only the new names of what was.
            acted_list = _remember(live_acted, [key for key in names if key in retold]) if retold else list(live_acted)
            dry_list = _remember(dry_acted, [key for key in names if key not in set(acted_list)])
        else:
            acted_list, dry_list = _remember(live_acted, names), []
        new = [(d.rule, d.to.value, d.reason) for d, _ in fresh]
        if not ev.decisions and ev.next_due_ms is None and not listed:
            return outcome(None, actions, new)
        state = StateRecord(
            state=ev.state.value,
            loss_reason=ev.loss_reason,
            decisions=[d.to_json() for d in ev.decisions[-MAX_DECISIONS_KEPT:]],
            decisions_total=ev.decisions_total,
            acted=acted_list,
            as_of_ms=now,
        )
        if dry_list:
            state["dry_acted"] = dry_list
        if listed:
            state["suppression_list"] = True
            if listed_channels:
                state["suppression_channels"] = list(listed_channels)
        return outcome(_as_of_kept(state, prev), actions, new)

    def erase(self, view: LeadView) -> Outcome:
        """Forget the lead: keep keyed hashes of its id and emails, and an audit record."""
        if self.suppression_key is None:
            # Fail loudly: the job stays in the failed registry and `pruner replay` re-runs it
            # once the key is set. Never fall back to a bare, dictionary-reversible hash.
            raise ConfigError("PRUNER_SUPPRESSION_KEY is not set: an erasure cannot be recorded safely")
        key = self.suppression_key
        hashes = [suppression.lead_hash(key, view.crm, view.lead_id)]
        for email in view.full_log().emails():
            hashes.append(suppression.email_hash(key, email))
        hashes = sorted(set(hashes))
        lead = suppression.lead_hash(key, view.crm, view.lead_id)
        emails = sorted({h for h in hashes if h != lead})
        audit = {"at": format_ms(self.now_ms), "source": self.source, "crm": view.crm, "lead": lead, "emails": emails}
        return Outcome(erase=True, suppress_hashes=hashes, audit=audit)
