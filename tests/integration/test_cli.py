"""The `pruner` command line as a user runs it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.integration.support import BIN, ROOT, base_env, free_port, redis_answers, wait_until

pytestmark = pytest.mark.integration


def test_dev_runs_everything_and_its_printed_example_works(redis_db: redis.Redis) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "pruner"), "dev", "--port", str(port)],
        cwd=ROOT,
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        assert f"ready on http://127.0.0.1:{port}" in text, text
        snippet = text.split("read the lead back:\n\n", 1)[1].split("\n\nand ask why", 1)[0]
        out = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=30, check=True).stdout
        accepted, lead = [line for line in out.splitlines() if line.strip()]
        assert json.loads(accepted) == {"accepted": 1}
        assert json.loads(lead)["counters"]["outbound_touches"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
    # Ctrl-C stopped the web process too: nothing listens on the port any more.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_check_names_the_bad_setting() -> None:
    result = subprocess.run(
        [str(BIN / "pruner"), "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=base_env(PRUNER_WEBHOOK_SECRET="whsec_not base64!"),
        timeout=30,
    )
    assert result.returncode == 3
    assert "PRUNER_WEBHOOK_SECRET" in result.stderr
    assert "not base64" not in result.stderr  # a secret's value is never echoed


def test_check_reports_what_is_enabled() -> None:
    result = subprocess.run(
        [str(BIN / "pruner"), "check"], cwd=ROOT, capture_output=True, text=True, env=base_env(), timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "on   /webhooks/events" in result.stdout
    assert "off  /webhooks/hubspot" in result.stdout


def test_replay_reruns_a_failed_erasure_once_the_key_is_set(redis_db: redis.Redis) -> None:
    from datetime import UTC, datetime

    from rules.events import Crm, Event, EventType
    from tests.integration.support import start_worker, stop, wait_until
    from worker.queues import PROCESS_EVENTS, make_queue

    queue = make_queue(redis_db)
    at = int(datetime.now(tz=UTC).timestamp() * 1000) - 60_000
    wire = [Event("er-1", EventType.ERASURE_REQUESTED, Crm.HUBSPOT, "rp-1", at, {}).to_wire()]
    queue.enqueue(PROCESS_EVENTS, args=(wire,), kwargs={"source": "events"}, result_ttl=0)  # no retries
    worker = start_worker(base_env())
    try:
        wait_until(lambda: queue.failed_job_registry.count == 1)
    finally:
        stop(worker)
    env = base_env(PRUNER_SUPPRESSION_KEY="replay-key")
    result = subprocess.run(
        [str(BIN / "pruner"), "replay", "--failed"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "requeued 1 of 1 failed jobs" in result.stdout
    worker = start_worker(env)
    try:
        wait_until(lambda: queue.failed_job_registry.count == 0 and redis_db.scard("pruner:suppressed") == 1)
    finally:
        stop(worker)


def test_stats_report_loss_and_conversion_by_source(redis_db: redis.Redis) -> None:
    from datetime import UTC, datetime, timedelta

    from rules.events import Crm, Event, EventType
    from worker.decide import Decider
    from worker.policyfile import default_policy
    from worker.store import LeadStore

    now = datetime.now(tz=UTC)
    at = int((now - timedelta(days=3)).timestamp() * 1000)
    store = LeadStore(redis_db)
    events = []
    for i, source in enumerate(["webinar", "webinar", "referral"]):
        lead = f"st-{i}"
        events.append(Event(f"{lead}-p", EventType.LEAD_PROFILE, Crm.HUBSPOT, lead, at, {"source": source}))
        if i < 2:
            events += [Event(f"{lead}-n{k}", EventType.NOT_INTERESTED, Crm.HUBSPOT, lead, at + k, {}) for k in (1, 2)]
        else:
            events.append(Event(f"{lead}-d", EventType.DEAL_UPDATED, Crm.HUBSPOT, lead, at + 1, {"stage": "closedwon"}))
    store.apply_batch(events, Decider(default_policy(), int(now.timestamp() * 1000)))
    result = subprocess.run(
        [str(BIN / "pruner"), "stats", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["leads"] == 3
    assert stats["by"]["source"]["webinar"] == {
        "leads": 2,
        "won": 0,
        "lost": 2,
        "loss_rate": 1.0,
        "conversion_rate": 0.0,
        "reasons": {"not_interested": 2},
    }
    assert stats["by"]["source"]["referral"]["conversion_rate"] == 1.0
    assert stats["lost_from_state"] == {"ACTIVE": 2}
    text = subprocess.run(
        [str(BIN / "pruner"), "stats"], cwd=ROOT, capture_output=True, text=True, env=base_env(), timeout=30
    ).stdout
    assert "webinar" in text and "not_interested" in text


def test_dev_with_the_fake_hubspot_writes_a_lost_lead_back(redis_db: redis.Redis) -> None:
    import re

    import requests

    from tests.helpers import batch_body, event, signed_headers
    from tests.integration.support import wait_until

    port = free_port()
    env = base_env()
    env.pop("PRUNER_DRY_RUN")  # let dev decide: with a CRM to talk to, it writes
    proc = subprocess.Popen(
        [str(BIN / "pruner"), "dev", "--port", str(port), "--fake-hubspot"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        text = ""
        deadline = time.monotonic() + 40
        while "Ctrl-C stops everything" not in text and time.monotonic() < deadline:
            text += proc.stdout.readline()
        found = re.search(r"Fake HubSpot on (http://127\.0\.0\.1:\d+)", text)
        assert found, text
        fake = found.group(1)
        body = batch_body([event("not_interested", lead_id="demo-1"), event("not_interested", lead_id="demo-1")])
        sent = requests.post(
            f"http://127.0.0.1:{port}/webhooks/events", data=body, headers=signed_headers(body), timeout=10
        )
        assert sent.status_code == 202

        def unqualified() -> bool:
            contact = requests.get(f"{fake}/_fake/state", timeout=5).json()["contacts"]["demo-1"]
            return bool(contact.get("hs_lead_status") == "UNQUALIFIED")

        wait_until(unqualified, 40)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_check_refuses_a_redis_that_evicts_and_reports_its_memory_and_persistence(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: redis_answers(url), seconds=10)

        def check() -> subprocess.CompletedProcess[str]:
            env = base_env(REDIS_URL=url)
            return subprocess.run([str(BIN / "pruner"), "check"], cwd=ROOT, capture_output=True, text=True, env=env)

        refused = check()
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "maxmemory-policy is allkeys-lru" in refused.stderr and "noeviction" in refused.stderr
        assert "neither AOF nor RDB" in refused.stdout and "of 67108864 bytes" in refused.stdout
        redis.Redis.from_url(url).config_set("maxmemory-policy", "noeviction")
        redis.Redis.from_url(url).config_set("appendonly", "yes")
        accepted = check()
        assert accepted.returncode == 0, accepted.stderr
        assert "maxmemory-policy noeviction" in accepted.stdout and "AOF, no RDB" in accepted.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)
