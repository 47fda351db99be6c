"""`pruner backfill salesforce` end to end: real `pruner` processes, gunicorn, an RQ worker, the fake org over HTTP.

A small org (leads with calls, emails, a meeting, a deal, opt-outs) is read into a JSONL file,
which `pruner simulate` turns into states; a live backfill must reach the same states in
`/leads`; an outbound message for the same records afterwards, and a second backfill, change no
counter. The fake pages queries 20 records at a time, so `nextRecordsUrl` is followed. The same
org read by Bulk API 2.0 query jobs (`--bulk always`, result sets of 50) writes the same JSONL,
and a live backfill by jobs afterwards moves no counter either.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from rules.events import format_ms
from tests.fakes.portal import DAY_MS
from tests.fakes.salesforce import FakeSalesforce, outbound_message
from tests.integration.support import (
    BIN,
    ROOT,
    base_env,
    drained,
    get_lead,
    start_web,
    start_worker,
    stop,
    wait_http,
    wait_until,
)
from webhooks.salesforce import ACK

pytestmark = pytest.mark.integration

ORG = "00D000000000001EAA"
TOKEN = "backfill-sf-token"


def sf_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def seed(fake: FakeSalesforce, now_ms: int) -> list[tuple[str, str]]:
    """A few hundred records over 60 days: (sObject, id) of each."""
    made: list[tuple[str, str]] = []

    def add(sobject: str, days_ago: float, **fields: Any) -> str:
        at = now_ms - int(days_ago * DAY_MS)
        record_id = fake.add(sobject, {"CreatedDate": sf_time(at - 60_000), "LastModifiedDate": sf_time(at), **fields})
        made.append((sobject, record_id))
        return record_id

    for n in range(40):
        lead = add("Lead", 60, Status="Working - Contacted", LeadSource="Web", OwnerId="005000000000001AAA")
        kind = n % 4
        if kind == 0:  # called again and again, never reached
            for d in range(14):  # past guardrail 1's 13 touches before silence counts
                add(
                    "Task",
                    50 - d * 3.5,
                    WhoId=lead,
                    TaskSubtype="Call",
                    Status="Completed",
                    CallDisposition="No answer",
                )
        elif kind == 1:  # said no
            for d in (20, 12):  # twice: LOST (repeated_no)
                add("Task", d, WhoId=lead, TaskSubtype="Call", Status="Completed", CallDisposition="Not interested")
            add("Lead", 19, Status="Closed - Not Interested", LeadSource="Web")  # another lead, closed
        elif kind == 2:  # talking: a call, a reply, a meeting held, a deal
            add("Task", 9, WhoId=lead, TaskSubtype="Call", Status="Completed", CallDisposition="Connected")
            add("Task", 8, WhoId=lead, TaskSubtype="Email", Status="Completed", Subject="RE: next steps")
            add("Event", 7, WhoId=lead, StartDateTime=sf_time(now_ms - 3 * DAY_MS),
                EndDateTime=sf_time(now_ms - 3 * DAY_MS + 3_600_000))  # fmt: skip
            add("Opportunity", 2, StageName="Negotiation", Amount=12000, Pruner_Lead_Id__c=lead)
        else:  # asked not to be called
            fake.records["Lead"][lead]["DoNotCall"] = True
            add("Task", 30, WhoId=lead, TaskSubtype="Email", Status="Completed", Subject="Intro")
    return made


@pytest.fixture
def org() -> Iterator[tuple[FakeSalesforce, str, list[tuple[str, str]], int]]:
    now_ms = int(time.time() * 1000)  # the worker decides on the wall clock: the records are dated from it
    fake = FakeSalesforce(token=TOKEN)
    url = fake.start()
    made = seed(fake, now_ms)
    fake.configure(page_size=20)  # Salesforce pages by 2,000: scaled down to the org
    yield fake, url, made, now_ms
    fake.stop()


def pruner(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "pruner"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def lead_docs(url: str, leads: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for lead in leads:
        response = get_lead(url, lead, "salesforce")
        assert response.status_code == 200, (lead, response.text)
        doc = response.json()
        out[lead] = {k: doc.get(k) for k in ("state", "loss_reason", "counters", "events")}
    return out


def test_backfill_simulates_like_it_runs_live_and_a_later_webhook_counts_nothing(
    redis_db: redis.Redis, org: tuple[FakeSalesforce, str, list[tuple[str, str]], int], tmp_path: Path
) -> None:
    fake, fake_url, made, now_ms = org
    env = base_env(SALESFORCE_ORG_ID=ORG, SALESFORCE_INSTANCE_URL=fake_url, SALESFORCE_ACCESS_TOKEN=TOKEN)
    window = ["--since", format_ms(now_ms - 90 * DAY_MS), "--until", format_ms(now_ms)]
    out = tmp_path / "history.jsonl"
    done = pruner(env, "backfill", "salesforce", *window, "--out", str(out), "--format", "json")
    assert done.returncode == 0, done.stderr
    tally = json.loads(done.stdout)
    assert sum(tally["records"].values()) == len(made)
    assert len(fake.api_calls(method="GET", path="query/")) >= 1  # paged through nextRecordsUrl

    # The same org through Bulk API 2.0 query jobs (CSV result sets paged by locator): the same file.
    fake.configure(bulk_page_size=50)
    bulk_out = tmp_path / "bulk.jsonl"
    by_bulk = pruner(env, "backfill", "salesforce", *window, "--bulk", "always", "--out", str(bulk_out),
                     "--format", "json")  # fmt: skip
    assert by_bulk.returncode == 0, by_bulk.stderr
    bulk_tally = json.loads(by_bulk.stdout)
    assert bulk_tally["bulk"] == ["Lead", "Opportunity", "Individual", "Task", "Event"]
    assert bulk_tally["records"] == tally["records"] and bulk_tally["events"] == tally["events"]
    assert sorted(bulk_out.read_text().splitlines()) == sorted(out.read_text().splitlines())
    assert len(fake.api_calls(method="GET", path="jobs/query/")) > 10  # status reads, then several result sets

    preview = pruner(env, "backfill", "salesforce", *window, "--dry-run", "--format", "json")
    assert preview.returncode == 0, preview.stderr
    dry = json.loads(preview.stdout)
    assert dry["leads"] == tally["leads"] and sum(dry["first_run"]["states"].values()) == tally["leads"]
    unset = pruner(base_env(), "backfill", "salesforce", *window)
    assert unset.returncode == 3 and "SALESFORCE_INSTANCE_URL" in unset.stderr

    web, url = start_web(env)
    worker = start_worker(env)
    try:
        wait_http(f"{url}/healthz")
        live = pruner(env, "backfill", "salesforce", *window)
        assert live.returncode == 0, live.stderr
        assert "queued in" in live.stdout
        wait_until(drained(redis_db), 30)
        simulated = pruner(env, "simulate", str(out), "--now", format_ms(int(time.time() * 1000)), "--format", "json")
        assert simulated.returncode == 0, simulated.stderr
        expected = {k.split(":", 1)[1]: v for k, v in json.loads(simulated.stdout)["leads_final"].items()}
        assert len({v["state"] for v in expected.values()}) >= 3
        docs = lead_docs(url, sorted(expected))
        assert {lead: (d["state"], d["loss_reason"]) for lead, d in docs.items()} == {
            lead: (v["state"], v["loss_reason"]) for lead, v in expected.items()
        }

        # The outbound messages of the same record versions: the same event ids, no counter moves.
        notes = [(fake.new_id("Notification"), sobject, fake.get(sobject, rid) or {}) for sobject, rid in made]
        for start in range(0, len(notes), 100):
            body = outbound_message(ORG, notes[start : start + 100])
            response = requests.post(f"{url}/webhooks/salesforce", data=body, headers={"Content-Type": "text/xml"},
                                     timeout=10)  # fmt: skip
            assert response.status_code == 200 and response.text == ACK
        wait_until(drained(redis_db), 30)
        assert lead_docs(url, sorted(expected)) == docs

        again = pruner(env, "backfill", "salesforce", *window)
        assert again.returncode == 0, again.stderr
        wait_until(drained(redis_db), 30)
        assert lead_docs(url, sorted(expected)) == docs

        # A live backfill by Bulk API 2.0 jobs afterwards: the same event ids, so no counter moves either.
        by_jobs = pruner(env, "backfill", "salesforce", *window, "--bulk", "always")
        assert by_jobs.returncode == 0, by_jobs.stderr
        assert "read by Bulk API 2.0 query jobs: Lead, Opportunity, Individual, Task, Event" in by_jobs.stdout
        wait_until(drained(redis_db), 30)
        assert lead_docs(url, sorted(expected)) == docs
    finally:
        stop(web)
        stop(worker)
