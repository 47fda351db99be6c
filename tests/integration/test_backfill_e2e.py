"""`pruner backfill hubspot` end to end: real `pruner` processes, gunicorn, an RQ worker, the fake HubSpot over HTTP.

Under rate limits (`seed_portal`: 300 contacts, 4,400 engagements; the fake answers 429 past
its limits and caps a search at 1,000 results): every record is read, and a backfill stopped
with Ctrl-C continues from its cursors into the same JSONL file.

At full scale (`seed_outcomes`: 300 contacts, over 10,000 calls, so that HubSpot's real cap of
10,000 results a search splits the calls' window; no rate limits, to stay quick), each contact
was built to end in a known state, and the backfill must reach exactly those: killed outright
midway and resumed into a file for `simulate`, and live (not a dry run) into `/leads`; webhooks
for engagements already backfilled, and a second backfill, change no lead and write nothing.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rules.events import format_ms
from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.fakes.portal import DAY_MS, OutcomePortal, Portal, seed_outcomes, seed_portal
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
from tests.integration.test_hubspot_inbound_e2e import SECRET, hs_event, post_signed
from worker.crm.hubspot_backfill import SEARCH_CAP
from worker.taskcap import action_of, deferred_key

pytestmark = pytest.mark.integration
CONTACTS = 300


@pytest.fixture
def portal() -> Iterator[tuple[FakeHubSpotServer, Portal, int]]:
    now_ms = int(time.time() * 1000)  # the worker decides on the wall clock: the histories are dated from it
    with FakeHubSpotServer() as server:
        seeded = seed_portal(server.fake, now_ms, contacts=CONTACTS)
        # HubSpot's limits, scaled down so that they are met: 429s past them, a search pages 1,000 results at most.
        server.fake.configure(rate_limit=8, window_s=1.0, retry_after="1", search_rate_limit=5, search_cap=1000)
        yield server, seeded, now_ms


def env_for(server: FakeHubSpotServer, **extra: str) -> dict[str, str]:
    settings = {
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "HUBSPOT_API_BASE": server.url,
        "HUBSPOT_RATE_LIMIT": "200/1",  # more than the fake allows: its 429s must be honoured
        "HUBSPOT_CLIENT_SECRET": SECRET,
    }
    return base_env(**{**settings, **extra})


def pruner(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "pruner"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def window(now_ms: int) -> list[str]:
    return ["--since", format_ms(now_ms - 200 * DAY_MS), "--until", format_ms(now_ms)]


def simulated(env: dict[str, str], path: Path, now_ms: int) -> dict[str, Any]:
    done = pruner(env, "simulate", str(path), "--now", format_ms(now_ms), "--format", "json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def lead_docs(url: str, leads: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for lead in leads:
        response = get_lead(url, lead)
        assert response.status_code == 200, (lead, response.text)
        doc = response.json()
        out[lead] = {k: doc.get(k) for k in ("state", "loss_reason", "counters", "events")}
    return out


def writes(fake: FakeHubSpot) -> list[dict[str, Any]]:
    return [c for c in fake.api_calls() if c["method"] in ("PATCH", "DELETE") or c["path"].endswith("/batch/update")]


def test_an_interrupted_backfill_continues_from_its_cursors(
    redis_db: redis.Redis, portal: tuple[FakeHubSpotServer, Portal, int], tmp_path: Path
) -> None:
    server, seeded, now_ms = portal
    env = env_for(server)
    whole = tmp_path / "whole.jsonl"
    done = pruner(env, "backfill", "hubspot", *window(now_ms), "--out", str(whole), "--format", "json")
    assert done.returncode == 0, done.stderr
    tally = json.loads(done.stdout)
    assert tally["records"]["contacts"] == CONTACTS and tally["leads"] == CONTACTS
    assert sum(tally["records"][k] for k in ("calls", "emails", "meetings")) == seeded.engagement_count
    assert any(c["status"] == 429 for c in server.fake.api_calls())  # met, waited out, nothing lost
    assert len(search_starts(server.fake, "calls")) >= 2  # the fake's cap of 1,000 split the calls' window

    server.fake.configure(rate_limit=2, window_s=1.0)  # slow enough to be stopped midway
    path = tmp_path / "resumed.jsonl"
    args = [str(BIN / "pruner"), "backfill", "hubspot", *window(now_ms), "--out", str(path)]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(redis_db.hget(k, "deals") for k in redis_db.scan_iter("pruner:backfill:hubspot:*")), 120)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "run the same command again" in err
    [key] = list(redis_db.scan_iter("pruner:backfill:hubspot:*"))
    cursors = {k.decode(): json.loads(v) for k, v in redis_db.hgetall(key).items()}
    assert cursors["contacts"]["done"] is True

    server.fake.configure(rate_limit=8)
    server.fake.calls.clear()
    done = pruner(env, "backfill", "hubspot", *window(now_ms), "--out", str(path))
    assert done.returncode == 0, done.stderr
    assert "continued from the cursors of: contacts" in done.stdout
    assert not server.fake.api_calls(method="GET", contains="/crm/v3/objects/contacts")  # not read again
    assert not redis_db.exists(key)
    as_of = now_ms + DAY_MS
    assert simulated(env, path, as_of)["leads_final"] == simulated(env, whole, as_of)["leads_final"]


@pytest.fixture
def large_portal() -> Iterator[tuple[FakeHubSpotServer, OutcomePortal, int]]:
    now_ms = int(time.time() * 1000)  # the worker decides on the wall clock: the histories are dated from it
    with FakeHubSpotServer() as server:
        yield server, seed_outcomes(server.fake, now_ms, contacts=CONTACTS), now_ms


def calls_cursor(conn: redis.Redis) -> dict[str, Any] | None:
    for key in conn.scan_iter("pruner:backfill:hubspot:*"):
        raw = conn.hget(key, "calls")
        if raw:
            cursor: dict[str, Any] = json.loads(raw)
            return cursor
    return None


def search_starts(fake: FakeHubSpot, object_type: str) -> list[int]:
    """The lower bound of each new query (no `after`) the backfill sent for `object_type`, in order."""
    return [
        int(f["value"])
        for c in fake.api_calls("POST", f"/crm/v3/objects/{object_type}/search")
        if c["status"] == 200 and not c["body"].get("after")
        for f in c["body"]["filterGroups"][0]["filters"]
        if f["operator"] == "GTE"
    ]


def test_a_portal_past_the_search_cap_backfills_into_the_states_its_histories_were_built_for(
    redis_db: redis.Redis, large_portal: tuple[FakeHubSpotServer, OutcomePortal, int], tmp_path: Path
) -> None:
    server, seeded, now_ms = large_portal
    fake = server.fake
    assert len(seeded.engagements["calls"]) > SEARCH_CAP  # more than one search query can page through
    # No rate limits at this scale (the tests above meet them), HubSpot's search limit lifted too.
    env = env_for(server, HUBSPOT_RATE_LIMIT="100000/1", HUBSPOT_SEARCH_RATE_LIMIT="100000/1")

    # Killed outright (no handler runs) once it is reading calls, then run again: it continues.
    out = tmp_path / "history.jsonl"
    args = [str(BIN / "pruner"), "backfill", "hubspot", *window(now_ms), "--out", str(out), "--format", "json"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: calls_cursor(redis_db) is not None, 60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    cursor = calls_cursor(redis_db)
    assert cursor is not None and "from_ms" in cursor
    fake.calls.clear()
    done = pruner(env, "backfill", "hubspot", *window(now_ms), "--out", str(out), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert {"contacts", "deals", "calls"} <= set(json.loads(done.stdout)["resumed"])
    assert not fake.api_calls("GET", "/crm/v3/objects/contacts")  # done before the kill: not read again
    assert search_starts(fake, "calls")[0] == cursor["from_ms"]  # the calls continue where the cursor says

    # Nothing lost: every engagement of the portal is in the file, under its own id or (a reply) its time.
    events = [json.loads(line) for line in out.read_text().splitlines()]
    ids = {e["id"] for e in events}
    engaged = {i.split(":")[2] for i in ids if i.split(":")[1] in ("calls", "emails", "meetings")}
    replied = {(e["lead_id"], e["occurred_at"]) for e in events if e["type"] == "email_replied"}
    for object_type, records in seeded.engagements.items():
        for eid in records:
            if eid in seeded.replies:
                contact, at = seeded.replies[eid]
                assert (contact, format_ms(at)) in replied, eid
            else:
                assert eid in engaged, (object_type, eid)

    # The states each contact's history was built for (tests/fakes/portal.py OUTCOMES), not Pruner's own say.
    expected = seeded.expected
    assert len(Counter(state for state, _ in expected.values())) == 5
    report = simulated(env, out, int(time.time() * 1000))
    simulated_states = {k.split(":", 1)[1]: (v["state"], v["loss_reason"]) for k, v in report["leads_final"].items()}
    assert simulated_states == expected

    live_env = {**env, "PRUNER_DRY_RUN": "0"}  # the CRM is written to: tasks, lost marks
    web, url = start_web(live_env)
    worker = start_worker(live_env)
    try:
        wait_http(f"{url}/healthz")
        fake.calls.clear()
        live = pruner(live_env, "backfill", "hubspot", *window(now_ms))
        assert live.returncode == 0, live.stderr
        # The calls' window was split: a second query began where the first had got to, and no page went past the cap.
        assert len(search_starts(fake, "calls")) >= 2
        assert all(c["status"] == 200 for c in fake.api_calls(contains="/search"))
        wait_until(drained(redis_db), 120)
        docs = lead_docs(url, sorted(expected))
        # Guardrail 7 (docs/lifecycle.md): live, a lead long silent is not lost on the spot, as
        # `simulate` (grace from the decision) shows it: its break-up task is created now, and
        # it waits in BREAKUP_DUE for the grace that runs from then.
        first_run = {
            lead: ("BREAKUP_DUE", None) if state == "LOST" else (state, why) for lead, (state, why) in expected.items()
        }
        assert {lead: (d["state"], d["loss_reason"]) for lead, d in docs.items()} == first_run
        # Every event of the file, once; and the record of each break-up task created. Each rep
        # gets at most the daily budget today (the roll-out guard); the rest wait for the next days.
        tasked = Counter(c for task in fake.state()["tasks"].values() for c in task["contacts"])
        waiting = {action_of(raw)["lead_id"] for raw in redis_db.zrange(deferred_key("hubspot"), 0, -1)}
        breakups = {lead for lead, (state, _) in first_run.items() if state == "BREAKUP_DUE"}
        assert tasked and set(tasked) | waiting == breakups and not set(tasked) & waiting
        per_owner = Counter(t["properties"].get("hubspot_owner_id") for t in fake.state()["tasks"].values())
        assert max(per_owner.values()) <= 20
        per_lead = Counter(lead for _, lead in {(e["id"], e["lead_id"]) for e in events}) + tasked
        assert {lead: d["events"] for lead, d in docs.items()} == per_lead
        written = writes(fake)
        assert written  # do-not-contact flags went to HubSpot

        # Webhooks for calls already backfilled, then a second backfill: no counter moves, nothing written.
        calls = random.Random(14).sample(seeded.engagements["calls"], 60)
        hooks = [hs_event("object.creation", int(c), 5_000 + n, objectTypeId="0-48") for n, c in enumerate(calls)]
        assert post_signed(url, hooks).status_code == 204
        wait_until(drained(redis_db), 60)
        assert lead_docs(url, sorted(expected)) == docs
        again = pruner(live_env, "backfill", "hubspot", *window(now_ms))
        assert again.returncode == 0, again.stderr
        wait_until(drained(redis_db), 120)
        assert lead_docs(url, sorted(expected)) == docs
        assert (
            writes(fake) == written
            and Counter(c for task in fake.state()["tasks"].values() for c in task["contacts"]) == tasked
        )
    finally:
        stop(web)
        stop(worker)
    # Only what each lead's whole history decides reached HubSpot: queued object type after object
    # type, a lead whose reply is an email was decided on its calls alone and marked lost (78 of
    # these 300) before the reply arrived. A live backfill now queues each lead's events together.
    assert lost_marked(written) == set()  # not one lead lost before its break-up
    assert {lead for lead in tasked if first_run[lead][0] != "BREAKUP_DUE"} == set()


def lost_marked(written: list[dict[str, Any]]) -> set[str]:
    """Contacts a batch update set to the lost lead status (worker/crm/hubspot.py `mark_lost`)."""
    return {
        str(item["id"])
        for call in written
        for item in call["body"].get("inputs", [])
        if (item.get("properties") or {}).get("hs_lead_status") == "UNQUALIFIED"
    }
