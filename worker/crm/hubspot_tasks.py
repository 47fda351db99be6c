"""Creating HubSpot tasks without ever creating one twice, whatever answers are lost.

HubSpot has no idempotency key for creates. Each task's body carries a marker derived from
its action id (`task_marker`); after any attempt that may have written (a timeout, a dropped
connection, a 5xx, a 207 silent about a task) the markers are searched for first, and only
tasks not found are sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import requests

from worker.action import action_digest
from worker.crm.http import Retryable, chunked
from worker.crm.hubspot_responses import HubSpotApiError, RecordError, body_of, message_of, named_ids

if TYPE_CHECKING:  # annotations only: the client creates its tasks through this module
    from worker.crm.hubspot_client import HubSpotClient

BATCH_LIMIT = 100  # records per batch request (HubSpot's limit)
# Ids per association batch read (v3 and v4 `…/batch/read`): HubSpot caps it at 1,000, not at the
# objects' 100 (developer changelog, "Batch Read Limit for HubSpot Associations API", 2025-02-10).
ASSOCIATION_BATCH_LIMIT = 1_000
TASK_TO_CONTACT = 204  # HUBSPOT_DEFINED association type: task -> contact
SEARCH_GROUPS = 5  # filterGroups per search request: HubSpot's limit (they are ORed)
TaskResults = Callable[[Mapping[str, "RecordError | None"]], None]


def task_marker(action_id: str) -> str:
    """Return the word a task's body carries so a search can tell whether the task exists.

    One alphanumeric token: CONTAINS_TOKEN matches whole tokens, and how HubSpot splits an
    action id full of ':' and '#' into tokens is unconfirmed.
    """
    return "pruner" + action_digest(action_id)[:24]


def _marked(trace: str, properties: Mapping[str, str]) -> dict[str, str]:
    marker = task_marker(trace)
    body = properties.get("hs_task_body", "")
    if marker in body:
        return dict(properties)
    return {**properties, "hs_task_body": f"{body}\n\nref {marker}".lstrip()}


class TaskCreation:
    """One `create` call's work on a client: batches, searches for markers, and the results reported."""

    def __init__(self, client: HubSpotClient) -> None:
        self.client = client

    def create(
        self,
        tasks: Sequence[tuple[str, str, Mapping[str, str]]],
        *,
        unsure: Collection[str] = (),
        on_result: TaskResults | None = None,
    ) -> dict[str, RecordError | None]:
        """Create tasks (trace id, contact id, properties) associated to their contacts; return {trace id: error}.

        One task: `POST /crm/v3/objects/tasks`; several: `batch/create`, each input carrying
        its trace id as `objectWriteTraceId` so a 207 says which ones were created. Each
        task's `hs_task_body` carries `task_marker(trace)` (appended when missing).

        A create is never simply sent again: after an attempt that may have created tasks
        (timeout, dropped connection, 5xx, a 207 silent about one) their markers are searched
        for, and only the tasks not found are sent. `unsure` names tasks an earlier run may
        have created: they are searched for before anything is sent. `on_result` gets results
        as soon as HubSpot gives them, so they can be recorded before a later request raises.
        """
        out: dict[str, RecordError | None] = {}

        def report(results: Mapping[str, RecordError | None]) -> None:
            out.update(results)
            if on_result is not None and results:
                on_result(results)

        doubtful = set(unsure)
        for chunk in chunked(list(tasks), BATCH_LIMIT):
            self._create_chunk([(t, c, _marked(t, p)) for t, c, p in chunk], doubtful, report)
        return out

    def _create_chunk(
        self, chunk: Sequence[tuple[str, str, dict[str, str]]], doubtful: Collection[str], report: TaskResults
    ) -> None:
        """Create ≤ 100 tasks, first searching for those in `doubtful`; report every result."""
        pending = {t: (c, p) for t, c, p in chunk}
        check = {t for t in pending if t in doubtful}  # may exist already: search before sending
        fresh = False  # the last attempt may just have written: the search waits for the index

        def attempt() -> tuple[list[str], requests.Response] | None:
            nonlocal fresh
            fresh = False
            while check:
                group = sorted(check)[:SEARCH_GROUPS]
                found = self._find_tasks(group)
                check.difference_update(group)
                for trace in found:
                    del pending[trace]
                report(dict.fromkeys(found))
            if not pending:
                return None
            sent = list(pending)
            inputs = [
                {"properties": pending[t][1], "associations": self._task_associations(pending[t][0]),
                 "objectWriteTraceId": t}
                for t in sent
            ]  # fmt: skip
            try:
                if len(inputs) == 1:
                    del inputs[0]["objectWriteTraceId"]
                    return sent, self.client.send_once("POST", "/crm/v3/objects/tasks", None, inputs[0])
                return sent, self.client.send_once(
                    "POST", "/crm/v3/objects/tasks/batch/create", None, {"inputs": inputs}
                )
            except Retryable as exc:
                if not exc.unsent:
                    check.update(sent)
                    fresh = True
                raise

        if check:
            self.client.sleep(self.client.search_delay_s)  # the earlier attempt may have been moments ago
        label = "POST /crm/v3/objects/tasks" + ("" if len(pending) == 1 else "/batch/create")
        try:
            answer = self.client.retrying(attempt, label, lambda: self.client.search_delay_s if fresh else 0.0)
        except HubSpotApiError as exc:
            # HubSpot refused the search: those tasks may exist, and a second one is worse than none.
            report(
                {t: RecordError(exc.status, f"{exc}; the task may exist, so it was not created again") for t in check}
            )
            rest = [(t, c, p) for t, (c, p) in pending.items() if t not in check]
            if rest:
                self._create_chunk(rest, (), report)
            return
        if answer is None:
            return
        sent, response = answer
        if len(sent) == 1:
            report({sent[0]: self._task_error(pending[sent[0]][0], response)})
            return
        body = body_of(response)
        if response.status_code == 207:
            created = {str(r.get("objectWriteTraceId")) for r in body.get("results", [])}
            refused = named_ids(body, "objectWriteTraceId")
            report({t: None for t in sent if t in created})
            # Those HubSpot said nothing about are searched for first (together); refused ones go alone to learn why.
            unknown = [(t, *pending[t]) for t in sent if t not in created and t not in refused]
            if unknown:
                self._create_chunk(unknown, {t for t, _, _ in unknown}, report)
            for trace in sent:
                if trace in refused and trace not in created:
                    self._create_chunk([(trace, *pending[trace])], (), report)
            return
        if response.ok:
            report(dict.fromkeys(sent))
            return
        # A refused batch created nothing: find the culprits one by one, each reported as it is done.
        for trace in sent:
            contact, properties = pending[trace]
            self._create_chunk([(trace, contact, properties)], (), report)

    def _find_tasks(self, traces: Sequence[str]) -> set[str]:
        """Return which of these tasks (≤ SEARCH_GROUPS) exist: one search for their markers, not retried here."""
        markers = {task_marker(t): t for t in traces}
        body = {
            "filterGroups": [
                {"filters": [{"propertyName": "hs_task_body", "operator": "CONTAINS_TOKEN", "value": marker}]}
                for marker in markers
            ],
            "properties": ["hs_task_body"],
            "limit": 100,
        }
        response = self.client.send_once("POST", "/crm/v3/objects/tasks/search", None, body)
        if not response.ok:
            raise HubSpotApiError(response.status_code, f"HubSpot refused to search tasks (HTTP "
                                  f"{response.status_code}): {message_of(response)}")  # fmt: skip
        # The token match is HubSpot's; the exact match is ours, so a loose tokenizer cannot mislead.
        found = [
            str((r.get("properties") or {}).get("hs_task_body") or "") for r in body_of(response).get("results", [])
        ]
        return {trace for marker, trace in markers.items() if any(marker in text for text in found)}

    @staticmethod
    def _task_associations(contact_id: str) -> list[dict[str, Any]]:
        return [
            {
                "to": {"id": contact_id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}],
            }
        ]

    @staticmethod
    def _task_error(contact_id: str, response: requests.Response) -> RecordError | None:
        if response.ok:
            return None
        return RecordError(
            response.status_code,
            f"HubSpot refused a task for contact {contact_id} (HTTP {response.status_code}): {message_of(response)}",
        )
