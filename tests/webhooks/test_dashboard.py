"""/dashboard and /rq: auth (header, cookie, 503), charts with seeded numbers, no personal data."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from rules.events import Crm, Event, EventType
from tests.helpers import ADMIN_TOKEN, SECRET
from webhooks import create_app
from webhooks.auth import COOKIE, session_valid, session_value
from webhooks.charts import axis
from worker import leadindex
from worker import metrics as worker_metrics
from worker.config import Config
from worker.decide import Decider
from worker.policyfile import default_policy
from worker.queues import make_queue
from worker.stats import STATS_SNAPSHOT_KEY, store_stats_snapshot
from worker.store import LeadStore

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
EMAIL = "dana.secret@example.com"


def lead_events(lead: str, at: int, profile: dict[str, str], ending: str) -> list[Event]:
    """One lead: a profile, then how it ends (two "not interested", a competitor no, a won deal, or nothing)."""
    events = [Event(f"{lead}-p", EventType.LEAD_PROFILE, Crm.HUBSPOT, lead, at, profile)]
    if ending == "not_interested":
        events += [Event(f"{lead}-n{k}", EventType.NOT_INTERESTED, Crm.HUBSPOT, lead, at + k, {}) for k in (1, 2)]
    elif ending == "competitor":
        events.append(Event(f"{lead}-s", EventType.DEAL_UPDATED, Crm.HUBSPOT, lead, at + 1, {"stage": "proposal"}))
        reason = {"reason": "We went with a competitor"}
        events.append(Event(f"{lead}-d", EventType.DECISION_NO, Crm.HUBSPOT, lead, at + 2, reason))
    elif ending == "won":
        events.append(Event(f"{lead}-w", EventType.DEAL_UPDATED, Crm.HUBSPOT, lead, at + 1, {"stage": "closedwon"}))
    return events


SEED = [
    ("dash-lead-001", {"source": "webinar", "segment": "smb", "priority": "high", "email": EMAIL}, "not_interested"),
    ("dash-lead-002", {"source": "webinar", "segment": "smb", "priority": "low"}, "not_interested"),
    ("dash-lead-003", {"source": "webinar", "segment": "enterprise", "priority": "high"}, "competitor"),
    ("dash-lead-004", {"source": "referral", "segment": "enterprise", "priority": "high"}, "won"),
    ("dash-lead-005", {"source": "referral", "segment": "smb", "priority": "low"}, "open"),
]


def seed(conn: fakeredis.FakeRedis) -> None:
    now = datetime.now(tz=UTC)
    at = int((now - timedelta(days=3)).timestamp() * 1000)
    events = [e for lead, profile, ending in SEED for e in lead_events(lead, at, profile, ending)]
    LeadStore(conn).apply_batch(events, Decider(default_policy(), int(now.timestamp() * 1000)))
    LeadStore(conn).reindex()  # what the first worker does at start: the index is then complete
    decisions = [
        ("repeated_no", "LOST", "not_interested"),
        ("repeated_no", "LOST", "not_interested"),
        ("decisive_no", "LOST", "competitor"),
    ]
    worker_metrics.record_batch(conn, decisions, [("events", "lead_profile")], time.time() - 2, None)


def app_with(conn: fakeredis.FakeRedis, clock: Callable[[], float] = time.time, **env: str) -> Flask:
    return create_app(Config.from_env({"PRUNER_WEBHOOK_SECRET": SECRET, **env}), conn, clock=clock)


@pytest.fixture
def seeded(fake_redis: fakeredis.FakeRedis) -> fakeredis.FakeRedis:
    seed(fake_redis)
    return fake_redis


def charts(page: str) -> dict[str, str]:
    """Map each chart's id to its SVG text."""
    return dict(re.findall(r"<svg class='chart' data-chart='([^']+)'.*?>(.*?)</svg>", page, flags=re.S))


# --- auth --------------------------------------------------------------------------------


def test_dashboard_is_off_without_admin_token(fake_redis: fakeredis.FakeRedis) -> None:
    client = app_with(fake_redis).test_client()
    for path in ("/dashboard", "/rq/"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 503
        assert response.json == {
            "error": "not_configured",
            "detail": "PRUNER_ADMIN_TOKEN is not set, so the dashboard is off",
        }
    assert client.post("/dashboard/login", data={"token": "x"}).status_code == 503


def test_missing_or_wrong_token_is_refused(client: FlaskClient) -> None:
    response = client.get("/dashboard")
    assert response.status_code == 401
    assert response.json is not None and response.json["error"] == "unauthorized"
    wrong = client.get("/dashboard", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    browser = client.get("/dashboard", headers=HTML)
    assert browser.status_code == 401 and browser.mimetype == "text/html"
    assert '<form method="post" action="/dashboard/login">' in browser.get_data(as_text=True)
    assert client.get("/dashboard", headers={**HTML, "Cookie": f"{COOKIE}=123.abc"}).status_code == 401


def test_bearer_header_opens_the_page(client: FlaskClient) -> None:
    response = client.get("/dashboard", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_login_form_sets_a_strict_httponly_cookie_without_the_token(client: FlaskClient) -> None:
    bad = client.post("/dashboard/login", data={"token": "wrong"})
    assert bad.status_code == 401 and "not the admin token" in bad.get_data(as_text=True)
    assert "Set-Cookie" not in bad.headers
    good = client.post("/dashboard/login", data={"token": ADMIN_TOKEN, "next": "https://evil.example/"})
    assert good.status_code == 303 and good.headers["Location"] == "/dashboard"
    cookie = good.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert ADMIN_TOKEN not in cookie
    assert client.get("/dashboard").status_code == 200  # the test client keeps the cookie
    assert client.get("/rq/").status_code == 200
    out = client.post("/dashboard/logout")
    assert out.status_code == 303
    assert client.get("/dashboard").status_code == 401


def test_token_in_the_url_is_traded_for_a_cookie_and_dropped(client: FlaskClient) -> None:
    response = client.get(f"/dashboard?token={ADMIN_TOKEN}")
    assert response.status_code == 303 and response.headers["Location"] == "/dashboard"
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard?token=wrong").status_code == 401


def test_session_cookie_expires_and_dies_with_the_token() -> None:
    now = 1_800_000_000.0
    value = session_value("token-a", int(now) + 60)
    assert session_valid("token-a", value, now)
    assert not session_valid("token-a", value, now + 61)
    assert not session_valid("token-b", value, now)
    assert not session_valid("token-a", value.replace(".", ".0", 1), now)
    assert not session_valid("token-a", "soon." + value.split(".")[1], now)


def test_expired_cookie_is_refused(fake_redis: fakeredis.FakeRedis) -> None:
    clock = [1_800_000_000.0]
    client = app_with(fake_redis, lambda: clock[0], PRUNER_ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    assert client.post("/dashboard/login", data={"token": ADMIN_TOKEN}).status_code == 303
    assert client.get("/dashboard").status_code == 200
    clock[0] += 13 * 3600
    assert client.get("/dashboard").status_code == 401


# --- content -----------------------------------------------------------------------------


def test_page_draws_every_chart_with_the_seeded_numbers(client: FlaskClient, seeded: fakeredis.FakeRedis) -> None:
    page = client.get("/dashboard", headers=AUTH).get_data(as_text=True)
    found = charts(page)
    assert set(found) == {
        "decisions-per-day",
        "loss-reasons",
        "conversion-by-source",
        "loss-by-source",
        "loss-by-segment",
        "loss-by-priority",
        "decisions-by-rule",
        "lost-at-stage",
        "lost-from-state",
    }
    # Words on the page, the identifiers in the tooltips.
    assert "<title>Webinar (webinar), Not interested (not_interested): 2 lost leads</title>" in found["loss-by-source"]
    assert "<title>Webinar (webinar), Chose a competitor (competitor): 1 lost leads</title>" in found["loss-by-source"]
    assert "<title>Smb (smb), Not interested (not_interested): 2 lost leads</title>" in found["loss-by-segment"]
    assert "<title>High (high), Chose a competitor (competitor): 1 lost leads</title>" in found["loss-by-priority"]
    assert "<title>High (high), Not interested (not_interested): 1 lost leads</title>" in found["loss-by-priority"]
    assert "<title>Referral (referral): 1 of 2 leads won (50%)</title>" in found["conversion-by-source"]
    assert "<title>Webinar (webinar): 3 of 3 leads lost (100%)</title>" in found["conversion-by-source"]
    assert "<title>Proposal (proposal): 1 lost leads</title>" in found["lost-at-stage"]
    assert "<title>(no deal): 2 lost leads</title>" in found["lost-at-stage"]
    assert "<title>Active (ACTIVE): 3 lost leads</title>" in found["lost-from-state"]
    # By the decisions' own date (three days ago), not the day they were processed (today).
    decided = (datetime.now(tz=UTC) - timedelta(days=3)).date().isoformat()
    assert f"<title>{decided}, Lost (LOST): 3</title>" in found["decisions-per-day"]
    assert "<title>Said no repeatedly (repeated_no), Lost (LOST): 2 decisions</title>" in found["decisions-by-rule"]
    assert "<title>Decision maker said no (decisive_no), Lost (LOST): 1 decisions</title>" in found["decisions-by-rule"]
    assert f"<title>{decided}, Won (WON): 1</title>" in found["decisions-per-day"]  # the won deal
    assert found["decisions-per-day"].count("class='bar'") == 2  # one day, two states
    assert all(f"aria-labelledby='{cid}-t {cid}-d'" in page for cid in found)
    assert "live; click a number for its leads" in page
    # Queue health: the tiles are there (nothing queued on a fresh fake Redis, no workers).
    for label in ("Queued", "Started", "Scheduled", "Failed", "Workers", "Oldest job waiting", "Last batch: queue lag"):
        assert f'<div class="label">{label}</div>' in page
    # record_batch above said the batch waited 2 s in the queue.
    assert re.search(r'Last batch: queue lag</div><div class="value">2\.\d s</div>\s*<div class="note">processed', page)
    assert re.search(r'Recovered by reconciliation</div><div class="value">0</div>\s*<div class="note">every', page)


def test_page_holds_no_lead_id_no_email_and_loads_nothing_external(
    client: FlaskClient, seeded: fakeredis.FakeRedis
) -> None:
    page = client.get("/dashboard", headers=AUTH).get_data(as_text=True)
    for lead, _, _ in SEED:
        assert lead not in page
    assert EMAIL not in page and "example.com" not in page
    assert "<script" not in page and '<link rel="stylesheet"' not in page and "@import" not in page
    # The only URL is the SVG namespace, an identifier that is never fetched.
    assert set(re.findall(r"https?://[^\s'\"<>]+", page)) == {"http://www.w3.org/2000/svg"}


def test_a_lead_after_the_snapshot_shows_at_once(fake_redis: fakeredis.FakeRedis) -> None:
    seed(fake_redis)
    store_stats_snapshot(fake_redis)
    more = lead_events("dash-lead-006", int(time.time() * 1000) - 10_000, {"source": "ads"}, "not_interested")
    LeadStore(fake_redis).apply_batch(more, Decider(default_policy(), int(time.time() * 1000)))
    client = app_with(fake_redis, PRUNER_ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    page = client.get("/dashboard", headers=AUTH).get_data(as_text=True)
    # The live index counts 6 leads, the snapshot 5: a small store is recomputed on the spot.
    assert "<title>Ads (ads), Not interested (not_interested): 1 lost leads</title>" in charts(page)["loss-by-source"]
    assert re.search(r'data-tile="Leads tracked"><div class="label">Leads tracked</div>\s*<div class="value">6<', page)
    assert re.search(r'data-tile="Lost"><div class="label">Lost</div>\s*<div class="value">4<', page)
    # Kept as the snapshot, so the next views do not rescan.
    snapshot = json.loads(fake_redis.get(STATS_SNAPSHOT_KEY) or b"{}")
    assert snapshot["by"] == "dashboard" and snapshot["stats"]["leads"] == 6


def test_page_reads_the_snapshot_and_flags_a_stale_one(fake_redis: fakeredis.FakeRedis) -> None:
    seed(fake_redis)
    fake_redis.delete(leadindex.INDEXED_KEY)  # a store from before the list index: the snapshot serves
    snapshot = store_stats_snapshot(fake_redis)
    assert snapshot["stats"]["leads"] == 5 and json.loads(fake_redis.get(STATS_SNAPSHOT_KEY) or b"{}") == snapshot
    # A lead arriving after the snapshot shows only once the snapshot is refreshed.
    seed_more = lead_events("dash-lead-006", int(time.time() * 1000) - 10_000, {"source": "ads"}, "not_interested")
    LeadStore(fake_redis).apply_batch(seed_more, Decider(default_policy(), int(time.time() * 1000)))
    clock = [time.time()]
    client = app_with(fake_redis, lambda: clock[0], PRUNER_ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    page = client.get("/dashboard", headers=AUTH).get_data(as_text=True)
    assert "<title>Ads (ads), " not in charts(page)["loss-by-source"]
    assert "The lead index is being built" in page
    assert "as of " + snapshot["computed_at"][:10] in page and "no snapshot yet" not in page
    assert "may be down" not in page
    assert (
        "<title>Ads (ads), Not interested (not_interested): 1 lost leads</title>"
        in charts(client_page_after_refresh(fake_redis))["loss-by-source"]
    )
    clock[0] += 3600
    assert "the <code>clock</code> process may be down" in client.get("/dashboard", headers=AUTH).get_data(as_text=True)


def client_page_after_refresh(conn: fakeredis.FakeRedis) -> str:
    store_stats_snapshot(conn)
    conn.delete(leadindex.INDEXED_KEY)
    client = app_with(conn, PRUNER_ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    return client.get("/dashboard", headers=AUTH).get_data(as_text=True)


def test_refresh_stats_runs_as_an_rq_job_and_skips_when_one_is_running(fake_redis: fakeredis.FakeRedis) -> None:
    seed(fake_redis)
    queue = make_queue(fake_redis)
    job = queue.enqueue("worker.jobs.refresh_stats", result_ttl=60)
    SimpleWorker([queue], connection=fake_redis, serializer=JSONSerializer).work(burst=True)
    job.refresh()
    assert job.return_value() == {"leads": 5}
    assert json.loads(fake_redis.get(STATS_SNAPSHOT_KEY) or b"{}")["stats"]["outcomes"] == {
        "lost": 3,
        "won": 1,
        "open": 1,
    }
    fake_redis.set("pruner:stats:lock", "1")
    job = queue.enqueue("worker.jobs.refresh_stats", result_ttl=60)
    SimpleWorker([queue], connection=fake_redis, serializer=JSONSerializer).work(burst=True)
    job.refresh()
    assert job.return_value() == {"skipped": 1}


def test_empty_install_shows_placeholders(client: FlaskClient) -> None:
    page = client.get("/dashboard", headers=AUTH).get_data(as_text=True)
    assert len(charts(page)) == 9
    assert (
        "No lost leads yet" in page
        and "No decisions yet" in page
        and "No decisions in this period" in page
        and "No leads yet" in page
    )


def test_axis_ticks_are_whole_counts() -> None:
    values = (0, 1, 3, 7, 10, 11, 49, 51, 240)
    expected = [(1, 1), (1, 1), (3, 1), (8, 2), (10, 2), (15, 5), (50, 10), (60, 20), (250, 50)]
    assert [axis(v) for v in values] == expected


# --- rq-dashboard --------------------------------------------------------------------------


def test_rq_dashboard_is_behind_the_admin_check(client: FlaskClient) -> None:
    assert client.get("/rq/").status_code == 401
    assert client.get("/rq/0/data/queues.json").status_code == 401
    assert client.get("/rq/", headers=HTML).status_code == 401
    assert 'name="next" value="/rq/"' in client.get("/rq/", headers=HTML).get_data(as_text=True)
    assert client.post("/rq/requeue/pruner").status_code == 401
    response = client.get("/rq/", headers=AUTH)
    assert response.status_code == 200 and "RQ" in response.get_data(as_text=True)


def test_rq_dashboard_reads_json_jobs_and_busy_workers(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    queue = make_queue(fake_redis)
    job = queue.enqueue(
        "worker.jobs.process_events",
        args=([["evt", "email_sent", "hubspot", "dash-lead-001", 0, {}]],),
        description="process_events: 1 events",
    )
    queues = client.get("/rq/0/data/queues.json", headers=AUTH)
    assert queues.status_code == 200 and queues.json is not None
    assert [(q["name"], q["count"]) for q in queues.json["queues"]] == [("pruner", 1)]
    jobs = client.get("/rq/0/data/jobs/pruner/queued/8/asc/1.json", headers=AUTH)
    assert jobs.status_code == 200 and jobs.json is not None
    assert [j["description"] for j in jobs.json["jobs"]] == ["process_events: 1 events"]
    info = client.get(f"/rq/0/data/job/{job.id}.json", headers=AUTH)
    assert info.status_code == 200 and "dash-lead-001" not in info.get_data(as_text=True)
    # A worker busy with a JSON job: rq-dashboard's own workers.json would unpickle it and fail.
    worker = SimpleWorker([queue], connection=fake_redis, serializer=JSONSerializer)
    worker.register_birth()
    worker.prepare_execution(job)
    worker.set_state("busy")
    try:
        workers = client.get("/rq/0/data/workers.json", headers=AUTH)
        assert workers.status_code == 200, workers.get_data(as_text=True)
        assert workers.json is not None
        [row] = workers.json["workers"]
        assert row["state"] == "busy" and row["queues"] == ["pruner"]
        assert row["current_job"]["call_string"] == "process_events: 1 events"
        assert "dash-lead-001" not in workers.get_data(as_text=True)
    finally:
        worker.register_death()
    assert client.post(f"/rq/job/{job.id}/delete", headers=AUTH).json == {"status": "DISABLED"}


@pytest.mark.parametrize("value", ["\u00b2\u00b2.abc", "\u0661\u0662.abc", "9" * 5000 + ".abc", "-1.abc", ".abc"])
@pytest.mark.parametrize("path", ["/dashboard", "/rq/"])
def test_a_malformed_session_cookie_is_refused_not_a_500(client: FlaskClient, value: str, path: str) -> None:
    assert client.get(path, headers={"Cookie": f"{COOKIE}={value}"}).status_code == 401
    assert not session_valid(ADMIN_TOKEN, value, time.time())


def test_a_tile_says_when_reconciliation_found_what_webhooks_missed(
    client: FlaskClient, seeded: fakeredis.FakeRedis
) -> None:
    seeded.hincrby(worker_metrics.RECONCILED_KEY, "calls", 12)  # what worker/reconcile.py counts
    page = client.get("/dashboard", headers=AUTH).get_data(as_text=True)
    assert re.search(
        r'Recovered by reconciliation</div><div class="value">12</div>\s*<div class="note">webhooks are', page
    )
