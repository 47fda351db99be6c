"""HubSpot outbound adapter: carry out decided actions through HubSpot's CRM API.

What HubSpot sees (docs/crm.md "HubSpot: callbacks"):

    mark_lost       contact hs_lead_status=UNQUALIFIED + pruner_lost_reason; the contact's open
                    deals -> dealstage=closedlost + closed_lost_reason
    breakup_task    a task on the contact, for its owner: send a polite break-up message
    reengage_task   a task on the contact, for its owner: a friendly check-in

Tasks go to the contact's owner (`hubspot_owner_id`, read in one batch with the contacts);
a contact nobody owns gets `HUBSPOT_FALLBACK_OWNER_ID`, or stays unassigned without one.
Their subject and body say which rule fired and why (rules/tasktext.py, shared with Salesforce).
    suppress        unsubscribe the contact's email from everything + pruner_do_not_contact=true
    forward_erasure GDPR-delete the contact (PRUNER_FORWARD_ERASURE: an erasure received elsewhere)

`HubSpotExecutor.execute` gets every pending action of a drain at once and coalesces
them: one `batch/update` per 100 contacts or deals (a single PATCH when only one is
pending), one batch association read, one batch deal read, one batch task create.

Exactly once: the drain (worker/actions.py) only trims actions off the outbox after
`execute` returns, so a drain that fails half-way runs them again. Updates are
idempotent; creating a task or unsubscribing is not something to repeat, so each
action's finished steps are recorded in Redis (`pruner:hubspot:progress`) as soon as
HubSpot confirms them, and skipped on the next run.

A task create that may have happened without HubSpot saying so (a timeout, a dropped
connection, a 5xx: HubSpot may have written the task and lost the answer) is never
simply sent again. Each task's body carries a marker, one word derived from its action
id (`task_marker`); before sending such a task again, the tasks search
(`POST /crm/v3/objects/tasks/search`, `hs_task_body` CONTAINS_TOKEN the marker) looks
for it. A create is recorded as sent (`task_sent`) before it goes out, so a drain that
dies or gives up before the answer makes the next run search first too. HubSpot's
search index lags behind writes (by how much is unconfirmed: vendors advise ~10 s), so
the search waits `search_delay_s` after the doubtful attempt.

Errors: connection errors, timeouts, 429 and 5xx are retried by `HubSpotClient` with
backoff, then raise `TransientCrmError` (the whole drain is retried by RQ). A 401/403
raises `HubSpotAuthError`: the token or its scopes are wrong for every record, so the
actions stay queued until an operator fixes it. Any other 4xx is a per-record failure:
an `ActionOutcome(ok=False)` whose detail says what HubSpot refused.

Emails and names are never logged: log lines carry counts and record ids only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis

from rules.tasktext import TaskText
from worker.action import Action
from worker.crm.base import ActionOutcome
from worker.crm.http import chunked
from worker.crm.hubspot_client import CRM, OWNER_PROPERTY, HubSpotClient, TaskTextsFor, build_client
from worker.crm.hubspot_responses import HubSpotApiError, RecordError
from worker.crm.hubspot_tasks import BATCH_LIMIT, task_marker
from worker.crm.progress import STEPS, StepProgress
from worker.crm.settings import HubSpotSettings
from worker.errors import ConfigError
from worker.tasktexts import TaskTexts, assign_owners, reengage_months

if TYPE_CHECKING:  # annotations only: worker.config imports worker.crm (settings, rate limits)
    from worker.config import Config

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """Bookkeeping of one `execute` call."""

    failures: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)  # contacts HubSpot does not have

    def fail(self, action_id: str, detail: str) -> None:
        self.failures.setdefault(action_id, detail)  # the first failure is the cause

    def note(self, action_id: str, text: str) -> None:
        self.notes.setdefault(action_id, []).append(text)


class HubSpotExecutor:
    """Carry out Pruner's actions in HubSpot, coalesced into batch calls (worker/crm/base.py `Executor`)."""

    crm = CRM

    def __init__(
        self,
        client: HubSpotClient,
        connection: redis.Redis,
        settings: HubSpotSettings | None = None,
        clock: Callable[[], float] = time.time,
        texts: TaskTextsFor | None = None,
    ) -> None:
        self.client = client
        self.progress = StepProgress(connection)
        self.settings = settings or HubSpotSettings()
        self.clock = clock
        self.texts = texts or TaskTexts(connection, self.settings.reengage_months)
        # Contacts' owner properties read during this drain (the roll-out guard asks first).
        self._owner_reads: dict[str, dict[str, Any] | None] = {}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HubSpotExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def execute(self, actions: Sequence[Action]) -> list[ActionOutcome]:
        """Carry out `actions`; one outcome per action. Raises TransientCrmError when HubSpot stays unavailable."""
        try:
            return self._execute(actions)
        finally:
            self._owner_reads.clear()  # owners are read again for the next batch, as they may change

    def _execute(self, actions: Sequence[Action]) -> list[ActionOutcome]:
        run = _Run()
        valid: list[Action] = []
        for action in actions:
            if action.get("crm") != CRM:
                run.fail(action["id"], f"not a HubSpot action (crm {action.get('crm')!r})")
            elif action.get("kind") not in STEPS:
                run.fail(action["id"], f"unknown action kind {action.get('kind')!r}")
            else:
                valid.append(action)
        steps = [(a["id"], s) for a in valid for s in STEPS[a["kind"]]]
        done = self.progress.done(steps)
        sent_before = self.client.requests_sent
        self._suppress(valid, done, run)
        self._contacts(valid, done, run)
        self._deals(valid, done, run)
        self._tasks(valid, done, run)
        self._erasures(valid, done, run)
        outcomes = []
        for action in actions:
            detail = run.failures.get(action["id"])
            if detail is not None:
                log.warning("hubspot %s for contact %s failed: %s", action.get("kind"), action.get("lead_id"), detail)
                outcomes.append(ActionOutcome(action["id"], False, detail))
            else:
                outcomes.append(ActionOutcome(action["id"], True, "; ".join(run.notes.get(action["id"], []))))
        log.info(
            "hubspot actions executed=%d ok=%d failed=%d http_requests=%d",
            len(actions), len(actions) - len(run.failures), len(run.failures), self.client.requests_sent - sent_before,
        )  # fmt: skip
        return outcomes

    def _finish(self, pairs: list[tuple[str, str]]) -> None:
        # Recorded right after each phase: a later phase failing must not make this one repeat.
        self.progress.mark(pairs)

    # -- phases ------------------------------------------------------------------------------

    def _suppress(self, actions: list[Action], done: set[tuple[str, str]], run: _Run) -> None:
        todo = [a for a in actions if a["kind"] == "suppress" and (a["id"], "unsub") not in done]
        if not todo:
            return
        try:
            found = self.client.batch_read("contacts", [a["lead_id"] for a in todo], ["email"])
        except HubSpotApiError as exc:
            for action in todo:
                run.fail(action["id"], str(exc))
            return
        results: dict[str, RecordError | None] = {}  # per contact: one unsubscribe, however many actions
        finished: list[tuple[str, str]] = []
        try:
            for action in todo:
                contact = action["lead_id"]
                if contact not in found:
                    run.fail(action["id"], f"HubSpot contact {contact} was not found (deleted or merged?)")
                    run.missing.add(contact)
                    continue
                email = str(found[contact].get("email") or "").strip()
                channels = set(action.get("channels") or ["all"])
                if not channels & {"email", "all"}:
                    # docs/lifecycle.md guardrail 5: a phone-only objection does not opt the person out of email.
                    run.note(action["id"], "do-not-contact by phone only: email subscriptions left as they are")
                    finished.append((action["id"], "unsub"))
                    continue
                if not email:
                    run.note(action["id"], "the contact has no email address: nothing to unsubscribe")
                    finished.append((action["id"], "unsub"))
                    continue
                if contact not in results:
                    results[contact] = self._unsubscribe(action["id"], email, contact, done)
                error = results[contact]
                if error is not None:
                    run.fail(action["id"], error.message)
                else:
                    # At once, not after the loop: a drain killed between two contacts (SIGKILL,
                    # OOM, Redis gone) must not unsubscribe the first one again (FINDINGS item 1).
                    self._finish([(action["id"], "unsub")])
        finally:
            self._finish(finished)

    def _unsubscribe(self, action_id: str, email: str, contact: str, done: set[tuple[str, str]]) -> RecordError | None:
        """Unsubscribe once: a request an earlier run sent but never heard back about is looked up first."""
        if (action_id, "unsub_sent") in done and self.client.unsubscribed_all(email):
            log.info("hubspot unsubscribe for contact %s already carried out by an earlier drain", contact)
            return None
        self._finish([(action_id, "unsub_sent")])  # before sending: a run that dies now leaves the doubt
        return self.client.unsubscribe_all(email, contact)

    def _contacts(self, actions: list[Action], done: set[tuple[str, str]], run: _Run) -> None:
        s = self.settings
        updates: dict[str, dict[str, str]] = {}
        # Per contact, per action kind: the properties and the actions wanting them.
        parts: dict[str, dict[str, tuple[dict[str, str], list[str]]]] = {}
        for action in actions:
            # A refused unsubscribe still gets the do-not-contact flag: the more of it HubSpot knows, the better.
            if action["lead_id"] in run.missing or (action["id"], "contact") in done:
                continue
            if action["kind"] == "mark_lost":
                props = {s.lead_status_property: s.lost_status}
                if action.get("reason"):
                    props[s.lost_reason_property] = str(action["reason"])
            elif action["kind"] == "suppress":
                props = {s.do_not_contact_property: "true"}
            else:
                continue
            # One input per contact: HubSpot refuses a batch naming an id twice. Later actions win.
            updates.setdefault(action["lead_id"], {}).update(props)
            kind_props, owners = parts.setdefault(action["lead_id"], {}).setdefault(action["kind"], ({}, []))
            kind_props.update(props)
            owners.append(action["id"])
        if not updates:
            return
        results = self.client.batch_update("contacts", updates)
        finished: list[tuple[str, str]] = []
        try:
            for contact, error in results.items():
                kinds = parts.get(contact, {})
                if error is not None and error.status != 404 and len(kinds) > 1:
                    # HubSpot refuses a record's update as a whole: one property it lacks (say the lost
                    # reason nobody created) must not keep a do-not-contact out. Each kind alone, then.
                    errors = {
                        k: self.client.update("contacts", contact, kinds[k][0])
                        for k in sorted(kinds, key=lambda k: k != "suppress")
                    }
                else:
                    errors = dict.fromkeys(kinds, error)
                for kind, (_, owners) in kinds.items():
                    for action_id in owners:
                        if (kind_error := errors[kind]) is None:
                            finished.append((action_id, "contact"))
                        else:
                            run.fail(action_id, kind_error.message)
        finally:
            self._finish(finished)

    def _deals(self, actions: list[Action], done: set[tuple[str, str]], run: _Run) -> None:
        s = self.settings
        todo = [
            a
            for a in actions
            if a["kind"] == "mark_lost" and a["id"] not in run.failures and (a["id"], "deals") not in done
        ]
        if not todo:
            return
        try:
            deals_of = self.client.batch_associated_ids("contacts", [a["lead_id"] for a in todo], "deals")
            all_deals = sorted({d for a in todo for d in deals_of.get(a["lead_id"], [])})
            stages = self.client.batch_read("deals", all_deals, [s.deal_stage_property]) if all_deals else {}
        except HubSpotApiError as exc:
            for action in todo:
                run.fail(action["id"], str(exc))
            return
        updates: dict[str, dict[str, str]] = {}
        owned: dict[str, list[str]] = {}
        for action in todo:
            open_deals = [
                d
                for d in deals_of.get(action["lead_id"], [])
                if d in stages and stages[d].get(s.deal_stage_property) not in s.closed_stages
            ]
            owned[action["id"]] = open_deals
            for deal in open_deals:
                props = {s.deal_stage_property: s.deal_lost_stage}
                if action.get("reason"):
                    props[s.deal_reason_property] = str(action["reason"])
                updates.setdefault(deal, {}).update(props)
        results = self.client.batch_update("deals", updates) if updates else {}
        finished = []
        for action in todo:
            # A deal deleted since we read it has nothing left to close: not a failure.
            errors = [e for d in owned[action["id"]] if (e := results.get(d)) is not None and e.status != 404]
            if errors:
                run.fail(action["id"], errors[0].message)
            else:
                finished.append((action["id"], "deals"))
                closed = len(owned[action["id"]])
                run.note(action["id"], f"{closed} open deal{'s' if closed != 1 else ''} closed lost")
        self._finish(finished)

    def _tasks(self, actions: list[Action], done: set[tuple[str, str]], run: _Run) -> None:
        suppressed_at = {a["lead_id"]: i for i, a in enumerate(actions) if a["kind"] == "suppress"}
        todo = []
        for i, action in enumerate(actions):
            if action["kind"] not in ("breakup_task", "reengage_task") or (action["id"], "task") in done:
                continue
            if suppressed_at.get(action["lead_id"], -1) > i:
                # Do-not-contact wins (docs/lifecycle.md guardrail 4), even inside one batch.
                run.note(action["id"], "skipped: the lead asked not to be contacted")
                continue
            todo.append(action)
        if not todo:
            return
        owners = self._task_owners(todo, run)
        todo = [a for a in todo if a["id"] not in run.failures]
        if not todo:
            return
        texts = self.texts(todo)
        now_ms = str(int(self.clock() * 1000))
        # Sent by an earlier run that never heard back: HubSpot may have them, so they are searched for first.
        unsure = {a["id"] for a in todo if (a["id"], "task_sent") in done}

        def record(results: Mapping[str, RecordError | None]) -> None:
            # Each task as soon as HubSpot confirms it: should a later request raise, the tasks already
            # created must not be created again when the drain is retried.
            self._finish([(trace, "task") for trace, error in results.items() if error is None])
            for trace, error in results.items():
                if error is not None:
                    run.fail(trace, error.message)

        for chunk in chunked(todo, BATCH_LIMIT):
            # Before sending: should this run die or give up before HubSpot answers, the next one searches first.
            self._finish([(a["id"], "task_sent") for a in chunk])
            self.client.create_tasks(
                [(a["id"], a["lead_id"], self._task(a, now_ms, texts[a["id"]], owners.get(a["lead_id"])))
                 for a in chunk],
                unsure=unsure, on_result=record,
            )  # fmt: skip

    def _erasures(self, actions: list[Action], done: set[tuple[str, str]], run: _Run) -> None:
        """Forwarded erasures: a GDPR delete per contact (HubSpot has no batch form of it)."""
        for action in actions:
            if action["kind"] != "forward_erasure" or (action["id"], "gdpr") in done:
                continue
            error = self.client.gdpr_delete(action["lead_id"])
            if error is None:
                self._finish([(action["id"], "gdpr")])  # at once: a later one raising must not repeat it
            else:
                run.fail(action["id"], error.message)

    def _task_owners(self, actions: list[Action], run: _Run) -> dict[str, str]:
        """Return {contact: owner id} for the tasks' contacts: the contact's owner, else the fallback owner.

        A contact HubSpot does not have fails its task here (no task could be associated to
        it). A contact without an owner gets the fallback owner when one is configured, and
        its task is left unassigned otherwise; either way a log line says so (ids only).
        """
        owners = self.task_owners(actions)
        for action in actions:
            if self._owner_reads.get(action["lead_id"]) is None:
                run.fail(action["id"], f"HubSpot contact {action['lead_id']} was not found (deleted or merged?)")
                run.missing.add(action["lead_id"])
        return owners

    def task_owners(self, actions: Sequence[Action]) -> dict[str, str]:
        """Who gets each task: {contact: owner id}; contacts read once per drain (worker/taskcap.py asks first)."""
        wanted = sorted({a["lead_id"] for a in actions})
        unread = [c for c in wanted if c not in self._owner_reads]
        if unread:
            try:
                found = self.client.batch_read("contacts", unread, [OWNER_PROPERTY])
            except HubSpotApiError as exc:
                # A portal refusing the read (a scope missing) still gets its tasks, as fallback would assign them.
                log.warning("hubspot contact owners could not be read (HTTP %s): tasks get the fallback owner",
                            exc.status)  # fmt: skip
                found = {c: {} for c in unread}
            self._owner_reads.update({c: found.get(c) for c in unread})
        known = {c: props for c in wanted if (props := self._owner_reads[c]) is not None}
        return assign_owners(
            {c: str(props.get(OWNER_PROPERTY) or "").strip() or None for c, props in known.items()},
            self.settings.fallback_owner_id, "hubspot contact", "HUBSPOT_FALLBACK_OWNER_ID", "is unassigned",
        )  # fmt: skip

    def _task(self, action: Action, now_ms: str, text: TaskText, owner: str | None) -> dict[str, str]:
        properties = {
            "hs_task_subject": text.subject,
            "hs_task_body": f"{text.body}\n\nPruner action {action['id']} (ref {task_marker(action['id'])})",
            "hs_timestamp": now_ms,
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "MEDIUM",
            "hs_task_type": "EMAIL" if action["kind"] == "breakup_task" else "TODO",
        }
        if owner:
            properties[OWNER_PROPERTY] = owner
        return properties


def build_executor(config: Config, connection: redis.Redis) -> HubSpotExecutor:
    """Build the HubSpot executor from the configuration; raise ConfigError when it cannot act."""
    if not config.hubspot_access_token:
        raise ConfigError(
            "HUBSPOT_ACCESS_TOKEN is not set, so Pruner cannot write its decisions back to HubSpot "
            "(set the private app token, or PRUNER_DRY_RUN=1 to only record decisions)"
        )
    months = reengage_months(config)
    client = build_client(config, connection)
    settings = replace(config.hubspot, reengage_months=months)
    return HubSpotExecutor(client, connection, settings, texts=TaskTexts(connection, months))
