"""GDPR erasure: purge an erased lead from queued job payloads, outboxes and action records.

What is kept after an erasure (keyed hashes on the suppression list) is worker/suppression.py's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from worker import actionrecord
from worker.actions import dead_key, done_key
from worker.crm.progress import forget_progress
from worker.keys import ACTIONS_KEY, outbox_key
from worker.queues import PROCESS_BATCH, PROCESS_BODY, PROCESS_EVENTS, make_queue
from worker.taskcap import deferred_key

log = logging.getLogger(__name__)


def _mentions(event: Any, leads: set[tuple[str, str]]) -> bool:
    return isinstance(event, list) and len(event) >= 4 and (event[2], event[3]) in leads


def purge_payloads(connection: redis.Redis, leads: Iterable[tuple[str, str]], queue_name: str = "pruner") -> int:
    """Remove erased leads from queued, scheduled and failed job payloads, the action outbox and deferred tasks.

    Returns how many job payloads or outbox entries were rewritten or deleted. A job
    holding only erased leads' events is deleted; others are rewritten without them.
    """
    erased = set(leads)
    if not erased:
        return 0
    touched = 0
    queue = make_queue(connection, queue_name)
    job_ids = set(queue.get_job_ids())
    for registry in (queue.scheduled_job_registry, queue.failed_job_registry, queue.deferred_job_registry):
        job_ids.update(registry.get_job_ids())
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        if not job.args or job.func_name not in (PROCESS_EVENTS, PROCESS_BATCH, PROCESS_BODY):
            continue
        if job.func_name in (PROCESS_BATCH, PROCESS_BODY):
            # A batch queued as received: {"events": [{"crm": ..., "lead_id": ...}, ...]}
            # (as JSON text in the older process_body jobs).
            as_text = job.func_name == PROCESS_BODY
            events = (json.loads(job.args[0]) if as_text else job.args[0]).get("events", [])
            kept = [e for e in events if (e.get("crm"), e.get("lead_id")) not in erased]
            new_arg: Any = json.dumps({"events": kept}) if as_text else {"events": kept}
        else:
            events = job.args[0]
            kept = [e for e in events if not _mentions(e, erased)]
            new_arg = kept
        if len(kept) == len(events):
            continue
        touched += 1
        if kept:
            job.args = (new_arg, *job.args[1:])
            job.save()
        else:
            queue.remove(job)
            for registry in (queue.scheduled_job_registry, queue.failed_job_registry, queue.deferred_job_registry):
                registry.remove(job)
            job.delete()
    pending: set[str] = set()  # ids of the erased leads' queued actions
    for list_key in [ACTIONS_KEY, *{outbox_key(crm) for crm, _ in erased}]:
        raw: list[bytes] = connection.lrange(list_key, 0, -1)  # type: ignore[assignment]
        for entry in raw:
            # (An outbox entry is JSON, which the actions record's reader reads too.)
            action = actionrecord.decode(entry)
            if (action.get("crm"), action.get("lead_id")) in erased:
                touched += int(connection.lrem(list_key, 0, entry))  # type: ignore[arg-type]
                pending.add(str(action.get("id", "")))
    for crm in {crm for crm, _ in erased}:
        # Tasks a daily budget held back (worker/taskcap.py): never to be released for an erased lead.
        waiting: list[bytes] = connection.zrange(deferred_key(crm), 0, -1)  # type: ignore[assignment]
        for entry in waiting:
            action = json.loads(entry)
            if (action.get("crm"), action.get("lead_id")) in erased:
                touched += int(connection.zrem(deferred_key(crm), entry))
                pending.add(str(action.get("id", "")))
    for crm in {crm for crm, _ in erased}:
        touched += _purge_action_ids(connection, crm, {lead for c, lead in erased if c == crm}, pending)
    log.info("erasure purge: %d payloads, outbox entries or action records removed", touched)
    return touched


def _purge_action_ids(connection: redis.Redis, crm: str, leads: set[str], pending: set[str]) -> int:
    """Drop the drained-action markers, refused-action records and step progress of the leads.

    Action ids are `crm:lead_id:decision`, and the done set keeps them for 14 days
    after each drain, so an erased lead's id would otherwise outlive its erasure. HubSpot's
    step progress keeps hashes of the same ids for as long; those go too, for every action
    id known here: drained (done), refused (dead) or still queued (`pending`).
    """
    prefixes = tuple(f"{crm}:{lead}:" for lead in leads)
    done = [m for m in connection.sscan_iter(done_key(crm), count=1000) if m.decode().startswith(prefixes)]
    removed = int(connection.srem(done_key(crm), *done)) if done else 0
    action_ids = {m.decode() for m in done} | {a for a in pending if a.startswith(prefixes)}
    entries: list[bytes] = connection.lrange(dead_key(crm), 0, -1)  # type: ignore[assignment]
    for entry in entries:
        action_id = str(json.loads(entry).get("id", ""))
        if action_id.startswith(prefixes):
            removed += int(connection.lrem(dead_key(crm), 0, entry))  # type: ignore[arg-type]
            action_ids.add(action_id)
    return removed + forget_progress(connection, crm, action_ids)
