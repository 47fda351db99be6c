"""Salesforce backfill, REST pages against Bulk API 2.0 jobs: requests and time for one large object (issue #14).

A fake org (tests/fakes/salesforce.py over real HTTP) with `--tasks` completed calls in the
window, read by `pruner backfill salesforce`'s reader in a dry run (nothing queued), once with
REST SOQL pages (2,000 records a page, Salesforce's maximum) and once with a Bulk API 2.0 job
(result sets of 10,000). No rate limit: what matters under the org's limits is the number of
requests each way (every one counts against the daily API requests and the shared rate budget),
and the time shows what this machine, the fake and the mapping manage.

    PRUNER_TEST_REDIS=127.0.0.1:6393 .venv/bin/python -m bench.salesforce_bulk [--tasks 30000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from rules.salesforce_fields import SalesforceMapping
from tests.fakes.salesforce import FakeSalesforce
from worker.backfill import BulkChoice, SalesforceBackfill, Window
from worker.backfill_sinks import NullSink
from worker.crm.salesforce_backfill import SalesforceHistory
from worker.crm.salesforce_bulk import BulkHistory
from worker.crm.salesforce_client import SalesforceClient

DAY_MS = 86_400_000
NOW_MS = 1_790_000_000_000
TOKEN = "bench-sf-token"


def sf_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def seed(fake: FakeSalesforce, tasks: int) -> None:
    leads = [fake.add("Lead", {"LastModifiedDate": sf_time(NOW_MS - 90 * DAY_MS), "LeadSource": "Web"})
             for _ in range(max(1, tasks // 100))]  # fmt: skip
    for n in range(tasks):
        at = NOW_MS - 60 * DAY_MS + n * (60 * DAY_MS // tasks)  # spread over the 60 days before now
        fake.add("Task", {"CreatedDate": sf_time(at), "LastModifiedDate": sf_time(at), "WhoId": leads[n % len(leads)],
                          "TaskSubtype": "Call", "Status": "Completed", "CallDisposition": "No answer"})  # fmt: skip


def one(url: str, fake: FakeSalesforce, mode: str) -> tuple[float, int, int]:
    """(seconds, requests, records) of reading the Tasks once."""
    client = SalesforceClient(url, TOKEN, "59.0", None)
    run = SalesforceBackfill(SalesforceHistory(client), NullSink(), Window(NOW_MS - 90 * DAY_MS, NOW_MS),
                             SalesforceMapping(), None, clock=lambda: NOW_MS / 1000, bulk=BulkHistory(client),
                             bulk_choice=BulkChoice(mode))  # fmt: skip
    fake.calls.clear()
    began = time.perf_counter()
    tally = run.run(["Task"])
    seconds = time.perf_counter() - began
    client.close()
    return seconds, len(fake.calls), tally.records["Task"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30_000)
    args = parser.parse_args(argv)
    fake = FakeSalesforce(token=TOKEN)
    url = fake.start()
    try:
        seed(fake, args.tasks)
        for mode in ("never", "always"):
            seconds, requests, records = one(url, fake, mode)
            label = "REST pages" if mode == "never" else "Bulk API 2.0"
            print(f"{label:13} {records:,} tasks: {requests} requests ({records / max(1, requests):,.0f} records a "
                  f"request), {seconds:.1f} s, {records / seconds:,.0f} records/s")  # fmt: skip
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
