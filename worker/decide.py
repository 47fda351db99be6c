"""Turn a lead's evaluation into what the store persists: state record, due time, CRM actions.

Which actions to emit is the one stateful choice: the evaluation is recomputed
from the whole history each time, so a decision's action is emitted once, keyed
by the decision's identity (`rule:state#n`, see `identities`) in the lead's `acted` list. Only the action
that matches where the lead stands *now* is emitted — a backfill that replays
ACTIVE -> BREAKUP_DUE -> LOST in one go marks the lead lost, it does not also ask
the rep for a break-up message that is already moot. A suppressed lead gets no
contact action of any kind (docs/lifecycle.md guardrail 4).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rules.calendar import Calendar
from rules.events import EventType, format_ms
from rules.lifecycle import CONTACT_ACTIONS, ActionKind, Decision, Evaluation, State, evaluate
from rules.policy import Policy
from worker import gdpr
from worker.errors import ConfigError
from worker.store import LeadView, Outcome

MAX_DECISIONS_KEPT = 50
MAX_ACTED_KEPT = 200


def identities(decisions: Sequence[Decision]) -> list[str]:
    """Name each decision by its rule, its target state, its episode and its rank there.

    An episode is the stretch between two returns to ACTIVE (a reply, a reopen, a
    re-consent); the rank counts that rule's moves to that state within it. Not the time:
    a late or reordered event can move the moment a rule fired (a follow-up delivered after
    the ones it preceded), and a name that moved would send the same action again. A
    suppression's channels are part of the name, so an earlier-dated "all channels"
    arriving after "email" is still sent.
    """
    episode = 0
    seen: Counter[tuple[str, State]] = Counter()
    out = []
    for d in decisions:
        if d.to is State.ACTIVE:
            episode += 1
            seen.clear()
        seen[d.rule, d.to] += 1
        name = f"{d.rule}:{d.to.value}@{episode}#{seen[d.rule, d.to]}"
        if d.action is ActionKind.SUPPRESS:
            name += ":" + "+".join(sorted(d.inputs.get("channels", ["all"])))
        out.append(name)
    return out


def _was_acted(decision: Decision, identity: str, acted: set[str]) -> bool:
    # Either name: the identity survives a moved time, the `rule:state:time` key a story
    # re-told with an extra episode before it (late events that add a reply earlier on).
    # Versions before 2026-11-25 recorded only the key.
    return identity in acted or decision.key in acted


def actions_for(view: LeadView, ev: Evaluation, acted: set[str], dry_run: bool) -> list[dict[str, Any]]:
    """Return the CRM actions this evaluation newly implies for the lead."""
    if not ev.decisions:
        return []
    names = dict(zip(map(id, ev.decisions), identities(ev.decisions), strict=True))
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
    out = []
    for decision in wanted:
        kind = decision.action
        if kind is None or (ev.state is State.SUPPRESSED and kind in CONTACT_ACTIONS):
            continue
        out.append(
            {
                "id": f"{view.crm}:{view.lead_id}:{names[id(decision)]}",
                "kind": kind.value,
                "crm": view.crm,
                "lead_id": view.lead_id,
                "rule": decision.rule,
                "reason": decision.reason,
                "at": format_ms(decision.at_ms),
                "dry_run": dry_run,
            }
        )
        if kind is ActionKind.SUPPRESS:
            # Tells the CRM which opt-outs to set: email opt-out, do-not-call, or both.
            out[-1]["channels"] = decision.inputs.get("channels", ["all"])
    return out


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
    ) -> None:
        self.policy = policy
        self.now_ms = now_ms
        self.dry_run = dry_run
        self.calendar = calendar or Calendar(policy)
        self.suppression_key = suppression_key
        self.source = source

    def __call__(self, view: LeadView) -> Outcome:
        if any(e.type is EventType.ERASURE_REQUESTED for e in view.history):
            return self.erase(view)
        prev = view.state or {}
        # Time only moves forward for a lead: a sweep run with `--now` in the future
        # is not undone by a batch processed at wall-clock time afterwards.
        now = max(self.now_ms, int(prev.get("as_of_ms", 0)))
        listed = view.listed or bool(prev.get("suppression_list"))
        listed_channels = view.listed_channels if view.listed else tuple(prev.get("suppression_channels", ()))
        ev = evaluate(
            view.history, self.policy, now, self.calendar, suppressed=listed, suppressed_channels=listed_channels
        )
        acted = set(prev.get("acted", []))
        actions = actions_for(view, ev, acted, self.dry_run)
        # Only the latest decisions can still call for an action (the current one, and the
        # loss a check-in follows): `acted` is rebuilt from them, both names of each, so it
        # neither grows with a long story nor loses what the current decision needs.
        recent = list(zip(ev.decisions, identities(ev.decisions), strict=True))[-MAX_ACTED_KEPT // 2 :]
        fresh = [(d, name) for d, name in recent if not _was_acted(d, name, acted)]
        acted_list = [key for d, name in recent for key in (name, d.key)]
        new = [(d.rule, d.to.value, d.reason) for d, _ in fresh]
        if not ev.decisions and ev.next_due_ms is None and not listed:
            return Outcome(None, None, actions, new_decisions=new)
        state = {
            "state": ev.state.value,
            "loss_reason": ev.loss_reason,
            "decisions": [d.to_json() for d in ev.decisions[-MAX_DECISIONS_KEPT:]],
            "acted": acted_list,
            "as_of_ms": now,
            "next_due": format_ms(ev.next_due_ms) if ev.next_due_ms else None,
        }
        if listed:
            state["suppression_list"] = True
            if listed_channels:
                state["suppression_channels"] = list(listed_channels)
        return Outcome(state, ev.next_due_ms, actions, new_decisions=new)

    def erase(self, view: LeadView) -> Outcome:
        """Forget the lead: keep keyed hashes of its id and emails, and an audit record."""
        if self.suppression_key is None:
            # Fail loudly: the job stays in the failed registry and `pruner replay` re-runs it
            # once the key is set. Never fall back to a bare, dictionary-reversible hash.
            raise ConfigError("PRUNER_SUPPRESSION_KEY is not set: an erasure cannot be recorded safely")
        key = self.suppression_key
        hashes = [gdpr.lead_hash(key, view.crm, view.lead_id)]
        for event in view.history:
            email = event.data.get("email") if event.type is EventType.LEAD_PROFILE else None
            if email:
                hashes.append(gdpr.email_hash(key, email))
        hashes = sorted(set(hashes))
        lead = gdpr.lead_hash(key, view.crm, view.lead_id)
        emails = sorted({h for h in hashes if h != lead})
        audit = {"at": format_ms(self.now_ms), "source": self.source, "crm": view.crm, "lead": lead, "emails": emails}
        return Outcome(erase=True, suppress_hashes=hashes, audit=audit)
