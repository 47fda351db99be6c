"""`pruner leads` against the real Redis: a store from before the index, the backfill, filters, formats."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import redis

from rules.events import Crm, Event, EventType
from tests.integration.support import BIN, ROOT, base_env
from worker import leadindex
from worker.decide import Decider
from worker.policyfile import default_policy
from worker.store import LeadStore

pytestmark = pytest.mark.integration


def pruner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "pruner"), *args], cwd=ROOT, capture_output=True, text=True, env=base_env(), timeout=60
    )


def test_leads_lists_a_store_from_before_the_index_once_backfilled(redis_db: redis.Redis) -> None:
    now = datetime.now(tz=UTC)
    at = int((now - timedelta(days=3)).timestamp() * 1000)
    events = []
    for i in range(4):
        lead = f"cli-{i}"
        profile = {"source": "webinar" if i < 3 else "referral", "email": f"person{i}@example.org"}
        events.append(Event(f"{lead}-p", EventType.LEAD_PROFILE, Crm.HUBSPOT, lead, at, profile))
        if i < 3:  # three say no twice, an hour apart per lead: LOST, not_interested
            no = at + i * 3_600_000
            events += [Event(f"{lead}-n{k}", EventType.NOT_INTERESTED, Crm.HUBSPOT, lead, no + k, {}) for k in (1, 2)]
    LeadStore(redis_db).apply_batch(events, Decider(default_policy(), int(now.timestamp() * 1000)))
    # What a store written before the index looks like: the leads, and no index at all.
    for key in list(redis_db.scan_iter("pruner:leads:*")):
        redis_db.delete(key)

    before = pruner("leads")
    assert before.returncode == 0 and before.stdout.strip() == "no leads match"
    assert "pruner leads --backfill" in before.stderr

    backfill = pruner("leads", "--backfill")
    assert backfill.returncode == 0, backfill.stderr
    assert "indexed the 4 stored leads" in backfill.stdout and leadindex.is_complete(redis_db)
    assert leadindex.tracked(redis_db) == 4

    table = pruner("leads", "--state", "LOST", "--reason", "not_interested")
    assert table.returncode == 0 and table.stderr == ""
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["crm", "lead_id", "state", "loss_reason", "changed_at", "rules"]
    assert [line.split()[1] for line in lines[1:]] == ["cli-2", "cli-1", "cli-0"]  # newest decision first

    rows = list(csv.DictReader(io.StringIO(pruner("leads", "--source", "webinar", "--format", "csv").stdout)))
    assert [r["lead_id"] for r in rows] == ["cli-2", "cli-1", "cli-0"] and rows[0]["rules"] == "repeated_no"

    page = json.loads(pruner("leads", "--state", "LOST", "--limit", "2", "--format", "json").stdout)
    assert [r["lead_id"] for r in page["leads"]] == ["cli-2", "cli-1"] and page["next_cursor"]
    rest = json.loads(pruner("leads", "--state", "LOST", "--cursor", page["next_cursor"], "--format", "json").stdout)
    assert [r["lead_id"] for r in rest["leads"]] == ["cli-0"] and rest["next_cursor"] is None
    every = json.loads(pruner("leads", "--limit", "1", "--all", "--format", "json").stdout)
    # The referral lead, never decided on, is counted but not listed.
    assert len(every["leads"]) == 3 and every["next_cursor"] is None
    assert "example.org" not in json.dumps(every)  # ids only, never the profile's email

    bad = pruner("leads", "--state", "lost")
    assert bad.returncode == 2 and "--state: state must be one of ACTIVE" in bad.stderr
