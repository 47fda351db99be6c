"""Salesforce REST callbacks: carry out Pruner's decided actions on Leads, Opportunities, Tasks.

REST root: `SALESFORCE_INSTANCE_URL` + `/services/data/v{SALESFORCE_API_VERSION}`, Bearer
`SALESFORCE_ACCESS_TOKEN`. `SalesforceExecutor.execute` takes a drain's batch of actions
and coalesces them:

- `mark_lost`: Lead `Status` (default "Closed - Not Converted") and the reason field
  (default `Pruner_Lost_Reason__c`); the lead's open Opportunities, found with one SOQL
  query on a lead-link field (default `Pruner_Lead_Id__c`, `IsClosed = false`), get
  `StageName` "Closed Lost".
- `forward_erasure` (PRUNER_FORWARD_ERASURE): `ShouldForget` = true on the lead's Individual,
  the flag Salesforce's data-protection automation acts on.
- `suppress`: Lead `HasOptedOutOfEmail` / `DoNotCall` per the action's `channels` (both when
  it names none), and, when they cover every channel, `HasOptedOutSolicit` ("don't market") on
  the lead's Individual where `IndividualId` is set.
- `breakup_task` / `reengage_task`: a `Task` on the lead, owned by the lead's owner when a
  user owns it, else by `SALESFORCE_FALLBACK_OWNER_ID` (or the API user without one), with
  the subject and brief HubSpot tasks get too (rules/tasktext.py). Creating is not idempotent,
  so the subject carries a reference derived from the action id and existing Pruner
  tasks are looked up first: a drain that is retried after a lost answer creates nothing twice.

All updates go through `PATCH composite/sobjects` (≤ 200 records, `allOrNone` false) when
several are pending, a single `PATCH sobjects/{type}/{id}` otherwise; a record Salesforce
refuses is retried alone once, then reported as a failed `ActionOutcome`. A lead both lost
and suppressed in one drain is one update, but retried as two, so a refusal of the loss
(a custom field missing in this org, a validation rule) never takes the opt-out down. Connection
errors, timeouts, 5xx, 429 and 403 `REQUEST_LIMIT_EXCEEDED` are retried with jittered
exponential backoff (honouring `Retry-After`), bounded, then raised as `TransientCrmError`.
A 429 or `REQUEST_LIMIT_EXCEEDED` holds back every worker through the shared limiter (for
its `Retry-After`, ten minutes at most); a `Retry-After` beyond `max_retry_after_s` is not
waited out in the job: `TransientCrmError` is raised at once, so RQ retries the drain later.
A 401 raises `SalesforceAuthError`: every action stays in the outbox for `pruner replay`
once the token is renewed. All requests share one Redis rate budget across workers.

Optional environment (defaults in brackets): `SALESFORCE_RATE_LIMIT` ["25/1"],
`SALESFORCE_LOST_STATUS` ["Closed - Not Converted"], `SALESFORCE_LOST_REASON_FIELD`
["Pruner_Lost_Reason__c"], `SALESFORCE_LOST_STAGE` ["Closed Lost"],
`SALESFORCE_OPPORTUNITY_LEAD_FIELD` ["Pruner_Lead_Id__c"], `SALESFORCE_FALLBACK_OWNER_ID` [unset].
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import redis

from rules.salesforce_ids import is_record_id, to_18
from rules.states import ALL_CHANNELS, ActionKind, covered_channels
from rules.tasktext import TaskText
from worker.action import Action, action_digest
from worker.crm.base import ActionOutcome, CrmError
from worker.crm.http import chunked
from worker.crm.ratelimit import RateLimiter
from worker.crm.salesforce_client import SalesforceClient, SalesforceQueryError, describe
from worker.crm.settings import SalesforceSettings
from worker.errors import ConfigError
from worker.logs import redact
from worker.metrics import count_crm_call, endpoint_template
from worker.tasktexts import TaskTexts, assign_owners, reengage_months

if TYPE_CHECKING:  # annotations only: worker.config imports worker.crm (settings, rate limits)
    from worker.config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")

RATE_KEY = "pruner:ratelimit:salesforce"
MAX_RECORDS = 200  # composite/sobjects limit per request
MAX_IN_IDS = 100  # ids per SOQL `IN (...)`: keeps the query URL far below Salesforce's 16k limit
TASK_PREFIX = "Pruner:"
_REF = re.compile(r"\[pruner-ref ([0-9a-f]{12})\]")

FORWARD_ERASURE = "forward_erasure"  # worker/actions.py: an erasure received elsewhere, carried out here
KINDS = frozenset(kind.value for kind in ActionKind) | {FORWARD_ERASURE}
# Says each task action's text (worker/tasktexts.py): {action id: subject and body}.
TaskTextsFor = Callable[[Sequence[Mapping[str, Any]]], Mapping[str, TaskText]]


def build_executor(config: Config, connection: redis.Redis) -> SalesforceExecutor:
    """Build the executor from the configuration; raise ConfigError when it cannot call Salesforce."""
    client = build_client(config, connection)
    return SalesforceExecutor(client, config.salesforce, texts=TaskTexts(connection, reengage_months(config)))


def build_client(config: Config, connection: redis.Redis, share_percent: int = 100) -> SalesforceClient:
    """Build the API client (shared rate limit, call metrics, login on a 401); raise ConfigError if it cannot be.

    `share_percent` below 100 (a backfill) takes request slots only while the shared window
    holds fewer than that share of the limit: the workers, with the whole limit, still find
    the rest of the window free.
    """
    if not config.salesforce_instance_url:
        raise ConfigError("SALESFORCE_INSTANCE_URL is not set, so Pruner cannot call Salesforce")
    login = config.salesforce_login
    token = config.salesforce_access_token
    if not token:
        if login is None:
            raise ConfigError(
                "neither SALESFORCE_ACCESS_TOKEN nor login credentials (SALESFORCE_USERNAME + SALESFORCE_PASSWORD, "
                "or SALESFORCE_CONSUMER_KEY with a secret or private key) are set, so Pruner "
                "cannot call Salesforce"
            )
        token = login()
    url = urlsplit(config.salesforce_instance_url)
    if url.scheme not in ("https", "http") or not url.netloc:
        raise ConfigError(
            f"SALESFORCE_INSTANCE_URL must be an https:// (or http://) URL, got {config.salesforce_instance_url!r}"
        )
    settings = config.salesforce
    limiter = RateLimiter(
        connection,
        max(1, settings.rate_limit * share_percent // 100),
        settings.rate_window_s,
        key=RATE_KEY,
        margin_s=min(0.5, settings.rate_window_s * 0.05),
    )
    client = SalesforceClient(config.salesforce_instance_url, token, config.salesforce_api_version, limiter, settings)
    client.refresh = login
    client.on_response = lambda method, path, status: count_crm_call(
        connection, "salesforce", f"{method} {endpoint_template(path)}", status
    )
    return client


def _record_error(result: Mapping[str, Any]) -> str:
    errors = result.get("errors") or []
    parts = [f"{e.get('statusCode') or e.get('errorCode') or 'ERROR'}: {e.get('message', '')}" for e in errors]
    return redact("; ".join(parts) or "refused without a reason")[:300]


def _soql_list(values: Iterable[str]) -> str:
    # Ids are checked with is_record_id before they get here; escaping is a second fence.
    return ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)


def task_ref(action_id: str) -> str:
    """A short, stable reference for an action, written into its Task subject to make creation idempotent."""
    return action_digest(action_id)[:12]


RecordKey = tuple[str, str]  # (sObject type, 18-char id)


PartKey = tuple[RecordKey, str]  # (record, the kind of action its fields serve)


@dataclass
class _Plan:
    """Record updates, in parts by action kind that are sent merged but retried apart, and their actions."""

    parts: dict[RecordKey, dict[str, dict[str, Any]]] = field(default_factory=dict)
    owners: dict[PartKey, set[str]] = field(default_factory=dict)

    def update(self, key: RecordKey, values: Mapping[str, Any], action_id: str, part: str) -> None:
        self.parts.setdefault(key, {}).setdefault(part, {}).update(values)
        self.owners.setdefault((key, part), set()).add(action_id)

    def merged(self) -> dict[RecordKey, dict[str, Any]]:
        """Each record's fields, all parts together: one record in one request."""
        return {
            key: {k: v for values in parts.values() for k, v in values.items()} for key, parts in self.parts.items()
        }


class SalesforceExecutor:
    """Carries out Pruner's actions in one Salesforce org, coalesced into few calls."""

    crm = "salesforce"

    def __init__(
        self, client: SalesforceClient, settings: SalesforceSettings | None = None, texts: TaskTextsFor | None = None
    ) -> None:
        self.client = client
        self.settings = settings or client.settings
        # Without Redis at hand, a task says its loss reason only (no decision inputs to read).
        self.texts = texts or TaskTexts(None)
        self._individuals = True  # False once the org says Lead.IndividualId does not exist
        # Leads read during this drain (the roll-out guard asks for owners before `execute`).
        self._lead_reads: dict[str, dict[str, Any] | None] = {}

    def execute(self, actions: Sequence[Action]) -> list[ActionOutcome]:
        """Carry out `actions`; one outcome per action. Raises TransientCrmError / SalesforceAuthError."""
        try:
            return self._execute(actions)
        finally:
            self._lead_reads.clear()  # leads are read again for the next batch, as they may change

    def _execute(self, actions: Sequence[Action]) -> list[ActionOutcome]:
        failures: dict[str, list[str]] = {}
        notes: dict[str, list[str]] = {}
        todo: list[Action] = []
        for action in actions:
            if action.get("kind") not in KINDS:
                failures[action["id"]] = [f"unknown action kind {action.get('kind')!r}"]
            elif not is_record_id(action.get("lead_id")):
                failures[action["id"]] = ["lead_id is not a Salesforce record id"]
            else:
                todo.append({**action, "lead_id": to_18(action["lead_id"])})
        lost = [a for a in todo if a["kind"] == "mark_lost"]
        suppress = [a for a in todo if a["kind"] == "suppress"]
        tasks = [a for a in todo if a["kind"] in ("breakup_task", "reengage_task")]
        erasures = [a for a in todo if a["kind"] == FORWARD_ERASURE]
        leads = self._leads({a["lead_id"] for a in suppress + tasks + erasures})
        plan = _Plan()
        # Opt-outs are planned first: when a record is retried part by part, they go first (guardrail 4).
        for action in suppress:
            # docs/lifecycle.md guardrail 5: the channels decide what Salesforce is told.
            covered = covered_channels(action.get("channels") or ["all"])
            values: dict[str, Any] = {}
            if "email" in covered:
                values["HasOptedOutOfEmail"] = True
            if "phone" in covered:
                values["DoNotCall"] = True
            plan.update(("Lead", action["lead_id"]), values, action["id"], "suppress")
            individual = (leads.get(action["lead_id"]) or {}).get("IndividualId")
            # "Don't market" on any channel: only for an objection that covers every channel.
            if covered == ALL_CHANNELS and isinstance(individual, str) and is_record_id(individual):
                plan.update(("Individual", to_18(individual)), {"HasOptedOutSolicit": True}, action["id"], "suppress")
        for action in lost:
            lost_values = {
                "Status": self.settings.lost_status,
                self.settings.lost_reason_field: action.get("reason") or "",
            }
            plan.update(("Lead", action["lead_id"]), lost_values, action["id"], "mark_lost")
        self._plan_opportunities(lost, plan, notes)
        for action_id, error in self._plan_erasures(erasures, leads, plan).items():
            failures.setdefault(action_id, []).append(error)
        for (key, part), error in self._save(plan).items():
            for action_id in plan.owners[(key, part)]:
                failures.setdefault(action_id, []).append(f"{key[0]} update failed: {error}")
        for action_id, error in self._create_tasks(tasks, leads).items():
            failures.setdefault(action_id, []).append(error)
        outcomes = []
        for action in actions:
            errors = failures.get(action["id"])
            detail = "; ".join(errors or notes.get(action["id"], []))
            outcomes.append(ActionOutcome(action["id"], not errors, detail[:500]))
        failed = sum(not o.ok for o in outcomes)
        log.info(
            "salesforce actions done=%d failed=%d lost=%d suppress=%d tasks=%d records=%d",
            len(outcomes) - failed, failed, len(lost), len(suppress), len(tasks), len(plan.parts),
        )  # fmt: skip
        return outcomes

    # -- reads -------------------------------------------------------------------------

    def task_owners(self, actions: Sequence[Action]) -> dict[str, str]:
        """Who gets each task: {lead: owner id}; leads read once per drain (worker/taskcap.py asks first)."""
        # Leads are read by 18-character id (canonical events may carry the 15-character form).
        full = {a["lead_id"]: to_18(a["lead_id"]) if is_record_id(a["lead_id"]) else a["lead_id"] for a in actions}
        read = self._leads(set(full.values()))
        leads = {lead: read[full[lead]] for lead in full if full[lead] in read}
        return self._task_owners([a for a in actions if a["lead_id"] in leads], leads)

    def _leads(self, lead_ids: set[str]) -> dict[str, dict[str, Any]]:
        """OwnerId (and IndividualId where the org has Individuals) of these leads, by 18-char id; read once a drain."""
        unread = {i for i in lead_ids if i not in self._lead_reads}
        if unread:
            found = self._read_leads(unread)
            self._lead_reads.update({i: found.get(i) for i in unread})
        return {i: lead for i in lead_ids if (lead := self._lead_reads.get(i)) is not None}

    def _read_leads(self, lead_ids: set[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        ids = sorted(lead_ids)
        for chunk in chunked(ids, MAX_IN_IDS):
            columns = "Id, OwnerId, IndividualId" if self._individuals else "Id, OwnerId"
            soql = f"SELECT {columns} FROM Lead WHERE Id IN ({_soql_list(chunk)})"
            try:
                records = self.client.query(soql)
            except SalesforceQueryError as exc:
                if not self._individuals or "IndividualId" not in str(exc):
                    raise CrmError(f"Salesforce refused the lead lookup: {exc}") from None
                log.warning("salesforce org has no Lead.IndividualId (data protection off): Individuals not updated")
                self._individuals = False
                records = self.client.query(f"SELECT Id, OwnerId FROM Lead WHERE Id IN ({_soql_list(chunk)})")
            for record in records:
                if is_record_id(record.get("Id")):
                    out[to_18(record["Id"])] = record
        return out

    def _plan_erasures(
        self, erasures: list[Action], leads: Mapping[str, Mapping[str, Any]], plan: _Plan
    ) -> dict[str, str]:
        """Plan `ShouldForget` = true on each forwarded erasure's Individual; return why some cannot be."""
        errors = {}
        for action in erasures:
            lead = leads.get(action["lead_id"])
            individual = (lead or {}).get("IndividualId")
            if lead is None:
                errors[action["id"]] = (
                    "Salesforce did not return the lead (deleted, merged or not visible to the API user)"
                )
            elif isinstance(individual, str) and is_record_id(individual):
                # Salesforce's data-protection flag: the org's own automation carries the forgetting out.
                plan.update(("Individual", to_18(individual)), {"ShouldForget": True}, action["id"], FORWARD_ERASURE)
                continue
            else:
                errors[action["id"]] = "the lead has no Individual record, so there is no ShouldForget to set"
            # Ids only: the lead asked to be forgotten, the log must not say more about them.
            log.warning("salesforce erasure of lead %s not forwarded: %s", action["lead_id"], errors[action["id"]])
        return errors

    def _plan_opportunities(self, lost: list[Action], plan: _Plan, notes: dict[str, list[str]]) -> None:
        """Add `StageName` = lost stage for every open Opportunity linked to a lost lead."""
        by_lead: dict[str, list[str]] = {}
        for action in lost:
            by_lead.setdefault(action["lead_id"], []).append(action["id"])
        link = self.settings.opportunity_lead_field
        for chunk in chunked(sorted(by_lead), MAX_IN_IDS // 2):
            # The link is a text field: it may hold the 15- or the 18-character form of the id.
            values = [form for lead in chunk for form in (lead, lead[:15])]
            soql = f"SELECT Id, {link} FROM Opportunity WHERE {link} IN ({_soql_list(values)}) AND IsClosed = false"
            try:
                records = self.client.query(soql)
            except SalesforceQueryError as exc:
                # The lead is still marked lost; say why its deals were not, without failing it.
                log.warning("salesforce opportunity lookup refused: %s", exc)
                for lead in chunk:
                    for action_id in by_lead[lead]:
                        notes.setdefault(action_id, []).append(f"open opportunities not closed: {exc}")
                continue
            for record in records:
                lead_value = record.get(link)
                if (
                    not is_record_id(record.get("Id"))
                    or not isinstance(lead_value, str)
                    or not is_record_id(lead_value)
                ):
                    continue
                for action_id in by_lead.get(to_18(lead_value), []):
                    plan.update(
                        ("Opportunity", to_18(record["Id"])),
                        {"StageName": self.settings.lost_stage},
                        action_id,
                        "mark_lost",
                    )

    # -- writes ------------------------------------------------------------------------

    def _save(self, plan: _Plan) -> dict[PartKey, str]:
        """Apply the plan's record updates (composite when several); return the errors of parts that still fail."""
        updates = plan.merged()
        keys = sorted(updates)  # grouped by type: Salesforce processes a request in per-type chunks
        failed: dict[RecordKey, str] = {}
        for chunk in chunked(keys, MAX_RECORDS):
            failed.update(self._save_batch(chunk, updates))
        # A refused record may have hit a passing condition (a row lock): once more, alone. A record
        # serving a loss and an opt-out is retried one part at a time (opt-out first): Salesforce
        # refuses a record's update whole, and a refusal of the loss's fields must not keep the
        # do-not-contact from the CRM, nor the other way round.
        errors: dict[PartKey, str] = {}
        for key in failed:
            for part, values in plan.parts[key].items():
                if (error := self._save_one(key, values)) is not None:
                    errors[(key, part)] = error
        return errors

    def _save_batch(
        self, keys: Sequence[RecordKey], updates: Mapping[RecordKey, dict[str, Any]]
    ) -> dict[RecordKey, str]:
        if len(keys) == 1:
            error = self._save_one(keys[0], updates[keys[0]])
            return {} if error is None else {keys[0]: error}
        records = [{"attributes": {"type": t}, "id": i, **updates[(t, i)]} for t, i in keys]
        response = self.client.request("PATCH", "composite/sobjects", json={"allOrNone": False, "records": records})
        if response.status_code != 200:
            return {key: describe(response) for key in keys}
        results = response.json()
        if not isinstance(results, list) or len(results) != len(keys):
            return {key: "Salesforce answered the batch update with an unexpected body" for key in keys}
        return {key: _record_error(r) for key, r in zip(keys, results, strict=True) if not r.get("success")}

    def _save_one(self, key: RecordKey, values: Mapping[str, Any]) -> str | None:
        response = self.client.request("PATCH", f"sobjects/{key[0]}/{key[1]}", json=dict(values))
        return None if response.status_code in (200, 204) else describe(response)

    def _create_tasks(self, actions: list[Action], leads: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Create one Task per action unless it already exists; return errors by action id."""
        if not actions:
            return {}
        errors: dict[str, str] = {}
        wanted = []
        for action in actions:
            if action["lead_id"] not in leads:
                errors[action["id"]] = (
                    "Salesforce did not return the lead (deleted, merged or not visible to the API user)"
                )
            else:
                wanted.append(action)
        owners = self._task_owners(wanted, leads)
        texts = self.texts(wanted)
        records = {a["id"]: self._task(a, texts[a["id"]], owners.get(a["lead_id"])) for a in wanted}
        for chunk in chunked(wanted, MAX_RECORDS):
            # Look-up and create are retried together: a create whose answer was lost is found next time.
            errors.update(self.client.retrying(functools.partial(self._create_tasks_once, chunk, records)))
        return errors

    def _task_owners(self, actions: Sequence[Action], leads: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Return {lead: owner id} for the tasks' leads: the lead's user owner, else the fallback owner.

        As for HubSpot: a lead without a user owner (a queue owns it: tasks cannot belong to
        a queue) gets the fallback owner when one is configured; otherwise the task is left to
        Salesforce's default owner, the API user. Either way a log line says so (ids only).
        """
        # Tasks cannot belong to a queue (00G…): only a user owner (005…) is one.
        owners = {a["lead_id"]: leads[a["lead_id"]].get("OwnerId") for a in actions}
        return assign_owners(
            {lead: o if isinstance(o, str) and o.startswith("005") else None for lead, o in owners.items()},
            self.settings.fallback_owner_id, "salesforce lead", "SALESFORCE_FALLBACK_OWNER_ID", "goes to the API user",
        )  # fmt: skip

    def _create_tasks_once(self, actions: Sequence[Action], tasks: Mapping[str, dict[str, Any]]) -> dict[str, str]:
        existing: set[str] = set()
        lead_ids = sorted({a["lead_id"] for a in actions})
        for chunk in chunked(lead_ids, MAX_IN_IDS):
            soql = (
                f"SELECT Id, Subject FROM Task WHERE WhoId IN ({_soql_list(chunk)}) AND Subject LIKE '{TASK_PREFIX}%'"
            )
            try:
                records = self.client.query(soql, retry=False)
            except SalesforceQueryError as exc:
                raise CrmError(f"Salesforce refused the task lookup: {exc}") from None
            existing.update(m.group(1) for r in records if (m := _REF.search(r.get("Subject") or "")))
        todo = [a for a in actions if task_ref(a["id"]) not in existing]
        if not todo:
            return {}
        records = [tasks[a["id"]] for a in todo]
        if len(records) == 1:
            results = [self._create_one(records[0])]
        else:
            response = self.client.call("POST", "composite/sobjects", json={"allOrNone": False, "records": records})
            if response.status_code == 200 and isinstance(body := response.json(), list) and len(body) == len(todo):
                results = [None if r.get("success") else _record_error(r) for r in body]
            else:
                results = [describe(response)] * len(todo)
        errors = {}
        for action, record, error in zip(todo, records, results, strict=True):
            if error is not None:
                # Once more, alone; a second refusal is final for this action.
                error = self._create_one(record)
            if error is not None:
                errors[action["id"]] = f"Task creation failed: {error}"
        return errors

    def _create_one(self, record: Mapping[str, Any]) -> str | None:
        body = {k: v for k, v in record.items() if k != "attributes"}
        response = self.client.call("POST", "sobjects/Task", json=body)
        return None if response.status_code in (200, 201) else describe(response)

    def _task(self, action: Mapping[str, Any], text: TaskText, owner: str | None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "attributes": {"type": "Task"},
            "WhoId": action["lead_id"],
            "Subject": f"{TASK_PREFIX} {text.subject}"[:230] + f" [pruner-ref {task_ref(action['id'])}]",
            "Description": text.body,
            "Status": "Not Started",
            "ActivityDate": datetime.now(tz=UTC).date().isoformat(),
        }
        if owner:
            record["OwnerId"] = owner
        return record
