"""`pruner backfill hubspot` end to end: real `pruner` processes, gunicorn, an RQ worker, the fake HubSpot over HTTP.

A fake portal of 300 contacts with realistic histories (tests/fakes/portal.py) is read into a
JSONL file, which `pruner simulate` turns into states; a live backfill must reach the same
states in `/leads`; webhooks for engagements already backfilled, and a second backfill, change
no counter; a backfill interrupted midway continues from its cursors. The fake answers 429
past its rate limits and caps searches at 1,000 results, so both are met on the way.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rules.events import format_ms
from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.fakes.portal import DAY_MS, Portal, seed_portal
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
    return base_env(
        HUBSPOT_ACCESS_TOKEN=TOKEN,
        HUBSPOT_API_BASE=server.url,
        HUBSPOT_RATE_LIMIT="200/1",  # more than the fake allows: its 429s must be honoured
        HUBSPOT_CLIENT_SECRET=SECRET,
        **extra,
    )


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


def test_backfill_to_jsonl_and_live_agree_and_nothing_counts_twice(
    redis_db: redis.Redis, portal: tuple[FakeHubSpotServer, Portal, int], tmp_path: Path
) -> None:
    server, seeded, now_ms = portal
    env = env_for(server)
    out = tmp_path / "history.jsonl"
    done = pruner(env, "backfill", "hubspot", *window(now_ms), "--out", str(out), "--format", "json")
    assert done.returncode == 0, done.stderr
    tally = json.loads(done.stdout)
    assert tally["records"]["contacts"] == CONTACTS and tally["leads"] == CONTACTS
    assert sum(tally["records"][k] for k in ("calls", "emails", "meetings")) == seeded.engagement_count
    assert any(c["status"] == 429 for c in server.fake.api_calls())  # met, waited out, nothing lost

    web, url = start_web(env)
    worker = start_worker(env)
    try:
        wait_http(f"{url}/healthz")
        live = pruner(env, "backfill", "hubspot", *window(now_ms))
        assert live.returncode == 0, live.stderr
        assert "queued in" in live.stdout
        wait_until(drained(redis_db), 120)
        report = simulated(env, out, int(time.time() * 1000))
        expected = {key.split(":", 1)[1]: value for key, value in report["leads_final"].items()}
        assert len(expected) == CONTACTS and len(set(v["state"] for v in expected.values())) >= 4
        docs = lead_docs(url, sorted(expected))
        states = {lead: (d["state"], d["loss_reason"]) for lead, d in docs.items()}
        assert states == {lead: (v["state"], v["loss_reason"]) for lead, v in expected.items()}

        # The webhooks of engagements already backfilled: fetched, mapped to the same ids, not counted again.
        calls = seeded.engagements["calls"][:20]
        hooks = [hs_event("object.creation", int(c), 900 + n, objectTypeId="0-48") for n, c in enumerate(calls)]
        assert post_signed(url, hooks).status_code == 204
        wait_until(drained(redis_db), 60)
        assert lead_docs(url, sorted(expected)) == docs

        # A second backfill: every event a duplicate, no counter moves, nothing written to HubSpot.
        again = pruner(env, "backfill", "hubspot", *window(now_ms))
        assert again.returncode == 0, again.stderr
        wait_until(drained(redis_db), 120)
        assert lead_docs(url, sorted(expected)) == docs
        assert writes(server.fake) == []
    finally:
        stop(web)
        stop(worker)


def test_an_interrupted_backfill_continues_from_its_cursors(
    redis_db: redis.Redis, portal: tuple[FakeHubSpotServer, Portal, int], tmp_path: Path
) -> None:
    server, _, now_ms = portal
    env = env_for(server)
    whole = tmp_path / "whole.jsonl"
    assert pruner(env, "backfill", "hubspot", *window(now_ms), "--out", str(whole)).returncode == 0

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
