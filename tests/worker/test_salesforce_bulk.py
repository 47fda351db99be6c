"""`pruner backfill salesforce` through Bulk API 2.0 query jobs, against the fake org over HTTP (Redis DB 12)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from rules.salesforce_fields import SalesforceMapping
from rules.salesforce_history import csv_records
from tests.fakes.portal import DAY_MS
from tests.fakes.salesforce import FakeSalesforce
from tests.worker.test_salesforce_backfill import (
    NOW_MS,
    TOKEN,
    WINDOW,
    StopAfter,
    backfill,
    dated,
    history,
    read_jsonl,
    seed,
)
from worker.backfill import BulkChoice, Cursors, SalesforceBackfill
from worker.backfill_sinks import JsonlSink, NullSink
from worker.crm.salesforce_bulk import BulkHistory, SalesforceBulkJobError
from worker.crm.salesforce_client import SalesforceQueryError

API = "/services/data/v59.0"


@pytest.fixture
def org() -> Iterator[tuple[FakeSalesforce, str]]:
    """The fake org over HTTP (the token the shared `history` client sends)."""
    fake = FakeSalesforce(token=TOKEN)
    yield fake, fake.start()
    fake.stop()


def bulk_backfill(
    url: str, sink: Any, mode: str = "always", conn: redis.Redis | None = None, above: int = 10_000, **bulk: Any
) -> SalesforceBackfill:
    reads = history(url)
    cursors = Cursors(conn, WINDOW, "test", "salesforce") if conn is not None else None
    reader = BulkHistory(reads.client, sleep=bulk.pop("sleep", lambda _s: None), **bulk)
    return SalesforceBackfill(reads, sink, WINDOW, SalesforceMapping(), cursors, clock=lambda: NOW_MS / 1000,
                              bulk=reader, bulk_choice=BulkChoice(mode, above))  # fmt: skip


def job_calls(fake: FakeSalesforce, method: str, suffix: str = "") -> list[dict[str, Any]]:
    return [c for c in fake.api_calls(method=method, path="jobs/query") if c["path"].endswith(suffix)]


def calls_for(fake: FakeSalesforce, n: int) -> list[str]:
    """Ids of `n` completed calls on one lead, changed a minute apart inside the window."""
    lead = fake.add("Lead", dated(NOW_MS - DAY_MS, LeadSource="Web"))
    return [fake.add("Task", dated(NOW_MS - 2 * DAY_MS + k * 60_000, WhoId=lead, TaskSubtype="Call",
                                   Status="Completed")) for k in range(n)]  # fmt: skip


def test_csv_cells_become_the_text_values_the_mapping_reads() -> None:
    columns = ["Id", "IsClosed", "CallDurationInSeconds", "Amount", "Subject", "ActivityDate", "SystemModstamp"]
    text = (
        '"ID","IsClosed","CallDurationInSeconds","Amount","Subject","ActivityDate","SystemModstamp"\n'
        '"00T000000000001AAA","true","75","75000.0","RE: a, ""quoted"" line\nand another","2026-11-20",'
        '"2026-11-20T10:00:00.000Z"\n'
        '"00T000000000002AAA","false","","","","",""\n'
    )
    first, second = csv_records(text, columns)
    assert first == {"Id": "00T000000000001AAA", "IsClosed": "true", "CallDurationInSeconds": "75",
                     "Amount": "75000.0", "Subject": 'RE: a, "quoted" line\nand another',
                     "ActivityDate": "2026-11-20", "SystemModstamp": "2026-11-20T10:00:00.000Z"}  # fmt: skip
    assert second == {"Id": "00T000000000002AAA", "IsClosed": "false", **dict.fromkeys(columns[2:])}
    # A set without its header row (after the first one, say), in the order the job asked for.
    assert csv_records('"00T000000000002AAA","false","","","","",""\n', columns) == [second]
    assert csv_records("", columns) == []
    with pytest.raises(ValueError, match="2 cells for 7 columns"):
        csv_records('"00T000000000003AAA","true"\n', columns)


def test_bulk_and_rest_reads_give_the_same_events(org: tuple[FakeSalesforce, str], tmp_path: Path) -> None:
    """Every field type the mapping reads (booleans, numbers, dates, dateTimes, nulls, markers), every sObject."""
    fake, url = org
    ids = seed(fake)
    fake.add("Task", dated(NOW_MS - 3 * DAY_MS, WhoId=ids["lead"], TaskSubtype="Call", Status="Completed",
                           CallDurationInSeconds=61, CallType=None, ActivityDate="2026-09-01"))  # fmt: skip
    rest, bulk = tmp_path / "rest.jsonl", tmp_path / "bulk.jsonl"
    rest_tally = backfill(url, JsonlSink(str(rest), append=False)).run()
    bulk_tally = bulk_backfill(url, JsonlSink(str(bulk), append=False)).run()
    assert bulk_tally.bulk == ["Lead", "Opportunity", "Individual", "Task", "Event"]
    assert bulk_tally.records == rest_tally.records and bulk_tally.owners == rest_tally.owners
    lines = sorted(bulk.read_text().splitlines())
    assert lines == sorted(rest.read_text().splitlines())  # the canonical JSON, byte for byte
    assert len(read_jsonl(bulk)) == len(lines) == 12
    creates = job_calls(fake, "POST")
    assert [c["json"]["operation"] for c in creates] == ["query", "query", "query", "queryAll", "queryAll"]
    assert all("ORDER BY" not in c["json"]["query"] and c["json"]["contentType"] == "CSV" for c in creates)


def test_results_are_paged_by_locator_and_windowed(org: tuple[FakeSalesforce, str], tmp_path: Path) -> None:
    fake, url = org
    inside = calls_for(fake, 7)
    lead = fake.get("Task", inside[0])["WhoId"]  # type: ignore[index]
    fake.add("Task", dated(NOW_MS + DAY_MS, WhoId=lead, TaskSubtype="Call", Status="Completed"))  # after --until
    fake.configure(bulk_page_size=3)
    out = tmp_path / "bulk.jsonl"
    tally = bulk_backfill(url, JsonlSink(str(out), append=False), page_records=5).run(["Task"])
    assert {e.id.split(":")[1] for e in read_jsonl(out)} == set(inside)
    assert tally.records["Task"] == 7
    results = job_calls(fake, "GET", "/results")
    assert len(results) == 3  # 3 + 3 + 1: the server's smaller sets win over maxRecords=5
    auth = {"Authorization": f"Bearer {TOKEN}"}
    locators: list[dict[str, str]] = [{}, {"locator": "Mw"}, {"locator": "Ng"}]
    pages = [requests.get(f"{url}{API}/{results[0]['path']}", params=p, headers=auth, timeout=5) for p in locators]
    assert [p.headers["Sforce-NumberOfRecords"] for p in pages] == ["3", "3", "1"]
    assert [p.headers["Sforce-Locator"] for p in pages] == ["Mw", "Ng", "null"]  # a locator reads the same set again


def test_a_failed_job_stops_the_run_clearly_and_the_next_run_makes_a_new_one(
    org: tuple[FakeSalesforce, str], conn: redis.Redis, tmp_path: Path
) -> None:
    fake, url = org
    inside = calls_for(fake, 4)
    fake.configure(bulk_fail_next=1, bulk_polls=1)
    naps: list[float] = []
    with pytest.raises(SalesforceBulkJobError, match="ended Failed: InvalidBatch : injected failure"):
        bulk_backfill(url, NullSink(), conn=conn, sleep=naps.append).run(["Task"])
    assert naps == [1.0]  # read at once (InProgress), then after 1 s: Failed
    out = tmp_path / "bulk.jsonl"
    tally = bulk_backfill(url, JsonlSink(str(out), append=False), conn=conn).run(["Task"])
    assert tally.resumed == ["Task"] and len(job_calls(fake, "POST")) == 2
    assert {e.id.split(":")[1] for e in read_jsonl(out)} == set(inside)


def test_a_job_that_never_finishes_stops_the_run_and_polls_back_off(org: tuple[FakeSalesforce, str]) -> None:
    fake, url = org
    calls_for(fake, 1)
    fake.configure(bulk_polls=1000)
    now = [0.0]

    def nap(seconds: float) -> None:
        now[0] += seconds

    run = bulk_backfill(url, NullSink(), sleep=nap, clock=lambda: now[0], max_wait_s=100)
    with pytest.raises(SalesforceBulkJobError, match="still InProgress after 100 s"):
        run.run(["Task"])
    polls = job_calls(fake, "GET")
    assert len(polls) == 9  # at once, then after 1, 2, 4, 8, 16, 30, 30, 30 s: past 100 s, it stops
    assert now[0] == 1 + 2 + 4 + 8 + 16 + 30 + 30 + 30


def test_an_interrupted_bulk_read_continues_from_its_locator(
    org: tuple[FakeSalesforce, str], conn: redis.Redis, tmp_path: Path
) -> None:
    fake, url = org
    calls_for(fake, 10)
    fake.configure(bulk_page_size=3)
    whole = tmp_path / "whole.jsonl"
    bulk_backfill(url, JsonlSink(str(whole), append=False)).run(["Lead", "Task"])
    fake.calls.clear()

    path = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        # Pages: the Lead job (created, its one set), the Task job (created, 3, 3: stopped at the third set).
        bulk_backfill(url, StopAfter(path, 6), conn=conn).run(["Lead", "Task"])
    assert len(job_calls(fake, "POST")) == 2
    fake.calls.clear()
    tally = bulk_backfill(url, StopAfter(path, 0), conn=conn).run(["Lead", "Task"])
    assert tally.resumed == ["Lead", "Task"] and job_calls(fake, "POST") == []  # the same job, read on
    [first] = job_calls(fake, "GET", "/results")[:1]
    assert first["status"] == 200 and len(job_calls(fake, "GET", "/results")) == 2  # the sets from 6 and 9
    resumed = read_jsonl(path)
    assert len({e.id for e in resumed}) == len(resumed)  # nothing lost, nothing twice
    assert sorted(e.id for e in resumed) == sorted(e.id for e in read_jsonl(whole))


def stopped_after_the_first_set(
    fake: FakeSalesforce, url: str, conn: redis.Redis, tmp_path: Path
) -> tuple[list[str], Path]:
    """Five calls read by a job in sets of 2, stopped at the second set: (their ids, the JSONL so far)."""
    inside = calls_for(fake, 5)
    fake.configure(bulk_page_size=2)
    path = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        bulk_backfill(url, StopAfter(path, 3), conn=conn).run(["Task"])  # created, 2 read, stopped
    return inside, path


def test_a_deleted_job_is_made_again_on_resume(
    org: tuple[FakeSalesforce, str], conn: redis.Redis, tmp_path: Path
) -> None:
    fake, url = org
    inside, path = stopped_after_the_first_set(fake, url, conn, tmp_path)
    [job] = list(fake.bulk.jobs)
    deleted = requests.delete(f"{url}{API}/jobs/query/{job}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert deleted.status_code == 204  # as Salesforce deletes a finished job after 7 days
    tally = bulk_backfill(url, StopAfter(path, 0), conn=conn).run(["Task"])
    assert tally.resumed == ["Task"] and len(job_calls(fake, "POST")) == 2
    assert {e.id.split(":")[1] for e in read_jsonl(path)} == set(inside)


def test_auto_uses_bulk_from_the_threshold_after_counting(org: tuple[FakeSalesforce, str]) -> None:
    fake, url = org
    calls_for(fake, 6)
    tally = bulk_backfill(url, NullSink(), mode="auto", above=6).run(["Lead", "Task"])
    assert tally.bulk == ["Task"] and tally.records == {"Lead": 1, "Task": 6}
    counts = [c["query"] for c in fake.api_calls(method="GET") if "COUNT()" in (c["query"] or "")]
    assert len(counts) == 2 and "IsDeleted = false" in counts[1] and "ORDER BY" not in counts[1]
    fake.calls.clear()
    assert bulk_backfill(url, NullSink(), mode="never").run(["Task"]).bulk == []
    assert job_calls(fake, "POST") == [] and not any("COUNT()" in (c["query"] or "") for c in fake.calls)


def test_the_fake_refuses_what_bulk_query_jobs_do_not_support(org: tuple[FakeSalesforce, str]) -> None:
    fake, url = org
    calls_for(fake, 1)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for soql in ("SELECT COUNT() FROM Task", "SELECT Id FROM Task ORDER BY SystemModstamp ASC"):
        answer = requests.post(f"{url}{API}/jobs/query", json={"operation": "query", "query": soql}, headers=auth,
                               timeout=5)  # fmt: skip
        assert answer.status_code == 400, soql
    job = requests.post(f"{url}{API}/jobs/query", json={"operation": "query", "query": "SELECT Id FROM Task"},
                        headers=auth, timeout=5).json()  # fmt: skip
    assert job["state"] == "UploadComplete"
    early = requests.get(f"{url}{API}/jobs/query/{job['id']}/results", headers=auth, timeout=5)
    assert early.status_code == 400  # results only once JobComplete
    assert requests.get(f"{url}{API}/jobs/query/{job['id']}", headers=auth, timeout=5).json()["state"] == "JobComplete"
    other = requests.get(f"{url}/services/data/v60.0/jobs/query/{job['id']}/results", headers=auth, timeout=5)
    assert other.status_code == 409  # another API version than the job's


def test_rate_limits_and_server_errors_on_bulk_calls_are_retried_under_the_shared_policy(
    org: tuple[FakeSalesforce, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = org
    inside = calls_for(fake, 5)
    fake.configure(bulk_page_size=2, retry_after=0)
    handle, failed = fake.bulk.handle, []

    def then_limited(method: str, parts: list[str], body: Any, version: str) -> tuple[Any, int]:
        answer = handle(method, parts, body, version)
        if method == "POST":  # the job exists: its status reads are refused twice
            fake.configure(limit_next=2)
        elif parts[-1:] == ["results"] and not failed:  # the first set read: the next one fails once
            failed.append(True)
            fake.configure(error_next=1)
        return answer

    monkeypatch.setattr(fake.bulk, "handle", then_limited)
    tally = bulk_backfill(url, NullSink()).run(["Task"])
    assert tally.records["Task"] == len(inside)
    statuses = [(c["path"].rsplit("/", 1)[-1][:3], c["status"]) for c in job_calls(fake, "GET")]
    assert statuses == [("750", 403), ("750", 403), ("750", 200), ("res", 200), ("res", 500), ("res", 200),
                        ("res", 200)]  # fmt: skip


def test_a_result_set_shorter_than_its_header_says_stops_the_run(
    org: tuple[FakeSalesforce, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = org
    calls_for(fake, 3)
    answer = fake.bulk._results

    def short(job: dict[str, Any], version: str) -> tuple[Any, int]:
        response, status = answer(job, version)
        response.headers["Sforce-NumberOfRecords"] = "4"  # as if the transfer had lost a row
        return response, status

    monkeypatch.setattr(fake.bulk, "_results", short)
    with pytest.raises(SalesforceQueryError, match="held 3 records where Sforce-NumberOfRecords said 4"):
        bulk_backfill(url, NullSink()).run(["Task"])


def test_a_bulk_mode_is_auto_always_or_never() -> None:
    assert BulkChoice().mode == "auto" and BulkChoice().above == 10_000
    with pytest.raises(ValueError, match="auto, always or never"):
        BulkChoice("sometimes")


def test_a_continued_job_is_read_by_its_own_columns_when_the_orgs_fields_changed(
    org: tuple[FakeSalesforce, str], conn: redis.Redis, tmp_path: Path
) -> None:
    fake, url = org
    inside, path = stopped_after_the_first_set(fake, url, conn, tmp_path)
    fake.configure(missing_fields=["CallDisposition"])  # an admin removed a field meanwhile
    tally = bulk_backfill(url, StopAfter(path, 0), conn=conn).run(["Task"])
    assert tally.ignored["Task:no_field:CallDisposition"] == 1 and len(job_calls(fake, "POST")) == 1
    assert {e.id.split(":")[1] for e in read_jsonl(path)} == set(inside)
