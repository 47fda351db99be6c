"""GDPR end to end: erase a lead, then search every key and value of the Redis DB for it."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import requests

from tests.helpers import batch_body, event, plain, signed_headers
from tests.integration.support import (
    LOG_DIR,
    REDIS_URL,
    base_env,
    start_web,
    start_worker,
    stop,
    wait_http,
    wait_until,
)
from tests.integration.test_rules_e2e import System
from worker.queues import make_queue
from worker.store import LeadStore

pytestmark = pytest.mark.integration
EMAIL = "Ada.Lovelace@Example.com"
KEY = "integration-suppression-key"
START = datetime.now(tz=UTC) - timedelta(days=2)


def dump(conn: redis.Redis) -> bytes:
    """Every key and value in the DB, RQ job payloads decompressed, lower-cased."""
    out: list[bytes] = []
    for k in conn.scan_iter("*", count=1000):
        out.append(k)
        kind = conn.type(k)
        if kind == b"string":
            out.append(plain(conn.get(k) or b""))  # type: ignore[arg-type]
        elif kind == b"list":
            out.extend(plain(e) for e in conn.lrange(k, 0, -1))  # type: ignore[union-attr]
        elif kind == b"set":
            out.extend(conn.smembers(k))  # type: ignore[arg-type]
        elif kind == b"zset":
            out.extend(conn.zrange(k, 0, -1))  # type: ignore[arg-type]
        elif kind == b"hash":
            for field, value in conn.hgetall(k).items():  # type: ignore[union-attr]
                out.append(field)
                try:
                    out.append(zlib.decompress(value))
                except zlib.error:
                    out.append(value)
    return b"\n".join(out).lower()


def lead_events(lead: str, email: str) -> list[dict[str, object]]:
    events = [event("lead_profile", lead_id=lead, at=START, data={"email": email, "segment": "smb"})]
    events += [event("email_sent", lead_id=lead, at=START + timedelta(hours=h)) for h in range(1, 15)]
    return events


def test_erasure_leaves_no_trace_and_the_person_stays_suppressed(tmp_path: Path) -> None:
    conn = redis.Redis.from_url(REDIS_URL)
    conn.flushdb()
    log_start = set(LOG_DIR.glob("*.log")) if LOG_DIR.exists() else set()
    # 1. Without a suppression key an erasure cannot be recorded: the job fails, keeps its payload.
    env = base_env()
    web, url = start_web(env)
    worker = start_worker(env)
    try:
        wait_http(f"{url}/healthz")
        system = System(url, conn, REDIS_URL)
        system.send(lead_events("gd-1", EMAIL))
        assert b"ada.lovelace" in dump(conn)
        body_events = [event("erasure_requested", lead_id="gd-1", at=START + timedelta(days=1))]

        body = batch_body(body_events)
        assert (
            requests.post(f"{url}/webhooks/events", data=body, headers=signed_headers(body), timeout=10).status_code
            == 202
        )
        queue = make_queue(conn)
        wait_until(lambda: queue.scheduled_job_registry.count + queue.failed_job_registry.count == 1)
    finally:
        stop(worker)
        stop(web)
    # 2. With the key, the erasure goes through and the failed job's payload is purged too.
    env = base_env(PRUNER_SUPPRESSION_KEY=KEY)
    web, url = start_web(env)
    worker = start_worker(env)
    try:
        wait_http(f"{url}/healthz")
        system = System(url, conn, REDIS_URL)
        system.send([event("erasure_requested", lead_id="gd-1", at=START + timedelta(days=1, hours=1))])
        wait_until(lambda: queue.scheduled_job_registry.count + queue.failed_job_registry.count == 0)
        everything = dump(conn)
        assert b"ada.lovelace" not in everything
        assert b"gd-1" not in everything
        assert system.lead("gd-1") == {"crm": "hubspot", "lead_id": "gd-1", "state": "SUPPRESSED", "erased": True}
        # 3. Re-import of the same id: dropped. A new id with the same email in another case: SUPPRESSED.
        system.send(lead_events("gd-1", EMAIL))
        assert system.lead("gd-1")["erased"] is True
        system.send(lead_events("gd-2", "  ADA.LOVELACE@example.COM"))
        doc = system.lead("gd-2")
        assert doc["state"] == "SUPPRESSED"
        assert [a["kind"] for a in LeadStore(conn).actions() if a["lead_id"] == "gd-2"] == ["suppress"]
        assert b"ada.lovelace" not in dump(conn)
    finally:
        stop(worker)
        stop(web)
        conn.flushdb()
    # 4. The worker processes never logged the email.
    for log in set(LOG_DIR.glob("*.log")) - log_start:
        text = log.read_text(errors="replace").lower()
        assert "ada.lovelace" not in text, log
