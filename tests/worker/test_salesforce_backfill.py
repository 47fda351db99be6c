"""`pruner backfill salesforce` against the fake Salesforce over HTTP and the real Redis (DB 12)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from rules.events import Event
from rules.hubspot_map import Versioned
from rules.salesforce_fields import SalesforceMapping
from rules.salesforce_map import map_notifications
from tests.fakes.portal import DAY_MS
from tests.fakes.salesforce import FakeSalesforce, outbound_message
from webhooks.salesforce import parse_message
from worker.backfill import Cursors, SalesforceBackfill, Window
from worker.backfill_sinks import JsonlSink, NullSink
from worker.crm.salesforce_backfill import SalesforceHistory, window_query
from worker.crm.salesforce_client import SalesforceClient
from worker.crm.settings import SalesforceSettings
from worker.simulate import read_events

NOW_MS = 1_790_000_000_000  # the backfill's clock: records are dated from it, never from today
WINDOW = Window(NOW_MS - 100 * DAY_MS, NOW_MS)
TOKEN = "unit-sf-token"
ORG = "00D000000000001EAA"
OWNER = "005000000000001AAA"


def sf_time(ms: int) -> str:
    """A dateTime as the REST API writes it."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def dated(ms: int, **fields: Any) -> dict[str, Any]:
    return {"CreatedDate": sf_time(ms - DAY_MS), "LastModifiedDate": sf_time(ms), **fields}


@pytest.fixture
def sf() -> Iterator[tuple[FakeSalesforce, str]]:
    fake = FakeSalesforce(token=TOKEN)
    url = fake.start()
    yield fake, url
    fake.stop()


def history(url: str) -> SalesforceHistory:
    settings = SalesforceSettings(backoff_initial_s=0.01, backoff_max_s=0.05)
    return SalesforceHistory(SalesforceClient(url, TOKEN, "59.0", None, settings, sleep=lambda _s: None))


def backfill(url: str, sink: Any, conn: redis.Redis | None = None, dest: str = "test") -> SalesforceBackfill:
    cursors = Cursors(conn, WINDOW, dest, "salesforce") if conn is not None else None
    return SalesforceBackfill(history(url), sink, WINDOW, SalesforceMapping(), cursors, clock=lambda: NOW_MS / 1000)


def read_jsonl(path: Path) -> list[Event]:
    with open(path, "rb") as stream:
        return list(read_events(stream))


def seed(fake: FakeSalesforce) -> dict[str, str]:
    """One lead of each kind of record the mapping knows, dated inside the window."""
    at = NOW_MS - 10 * DAY_MS
    lead = fake.add(
        "Lead",
        dated(
            at,
            Status="Closed - Not Interested",
            LeadSource="Web",
            Industry="Retail",
            Email="ada@example.com",
            DoNotCall=True,
            HasOptedOutOfEmail=False,
            OwnerId=OWNER,
        ),
    )
    reopened = fake.add("Lead", dated(at, Status="Working - Contacted", Pruner_Reopened__c=True, OwnerId=OWNER))
    call = fake.add(
        "Task",
        dated(
            at + 1000,
            WhoId=lead,
            TaskSubtype="Call",
            Status="Completed",
            CallDisposition="Connected",
            CallDurationInSeconds=75,
        ),
    )
    email = fake.add(
        "Task", dated(at + 2000, WhoId=reopened, TaskSubtype="Email", Status="Completed", Subject="RE: pricing")
    )
    meeting = fake.add(
        "Event",
        dated(
            at + 3000,
            WhoId=reopened,
            StartDateTime=sf_time(at + DAY_MS),
            EndDateTime=sf_time(at + DAY_MS + 3_600_000),
            Pruner_Rescheduled__c=True,
        ),
    )
    deal = fake.add(
        "Opportunity",
        dated(at + 4000, StageName="Negotiation", Amount=75000.0, IsWon=False, Pruner_Lead_Id__c=reopened),
    )
    person = fake.add(
        "Individual", dated(at + 5000, HasOptedOutSolicit=True, ShouldForget=False, Pruner_Lead_Id__c=lead)
    )
    return {
        "lead": lead,
        "reopened": reopened,
        "call": call,
        "email": email,
        "meeting": meeting,
        "deal": deal,
        "individual": person,
    }


def as_notifications(fake: FakeSalesforce, records: Sequence[tuple[str, str]]) -> list[Event]:
    """What the webhook path makes of an outbound message carrying each record as it is now."""
    notes = []
    for n, (sobject, record_id) in enumerate(records):
        fields = fake.get(sobject, record_id) or {}
        notes.append((f"04l00000000000{n:d}AAA"[:18], sobject, fields))
    message = parse_message(outbound_message(ORG, notes))
    return map_notifications(message.notifications, NOW_MS).events


def test_a_record_and_its_outbound_message_give_the_same_events(sf: tuple[FakeSalesforce, str], tmp_path: Path) -> None:
    fake, url = sf
    ids = seed(fake)
    out = tmp_path / "history.jsonl"
    tally = backfill(url, JsonlSink(str(out), append=False)).run()
    assert tally.records == {"Lead": 2, "Opportunity": 1, "Individual": 1, "Task": 2, "Event": 1}
    written = read_jsonl(out)  # back through simulate's reader: the canonical JSON form
    kinds = {"lead": "Lead", "reopened": "Lead", "call": "Task", "email": "Task", "meeting": "Event",
             "deal": "Opportunity", "individual": "Individual"}  # fmt: skip
    webhook = as_notifications(fake, [(kinds[k], i) for k, i in ids.items()])
    assert sorted(written, key=lambda e: e.id) == sorted(webhook, key=lambda e: e.id)
    assert {e.type.value for e in written} == {
        "not_interested", "lead_profile", "do_not_contact", "reopened", "call_connected", "email_replied",
        "meeting_booked", "meeting_held", "meeting_rescheduled", "deal_updated",
    }  # fmt: skip
    assert tally.owners == {OWNER: 2} and tally.contact_owner == {ids["lead"]: OWNER, ids["reopened"]: OWNER}


def test_queries_are_windowed_paged_and_activities_include_archived_ones(
    sf: tuple[FakeSalesforce, str], tmp_path: Path
) -> None:
    fake, url = sf
    lead = fake.add("Lead", dated(NOW_MS - 400 * DAY_MS, LeadSource="Web"))  # older than the window: still read
    inside = [fake.add("Task", dated(NOW_MS - d * DAY_MS, WhoId=lead, TaskSubtype="Call", Status="Completed"))
              for d in range(1, 8)]  # fmt: skip
    archived = fake.add("Task", dated(NOW_MS - 50 * DAY_MS, WhoId=lead, TaskSubtype="Call", Status="Completed",
                                      IsArchived=True))  # fmt: skip
    fake.add("Task", dated(NOW_MS - 200 * DAY_MS, WhoId=lead, TaskSubtype="Call", Status="Completed"))  # before
    fake.add("Task", dated(NOW_MS + DAY_MS, WhoId=lead, TaskSubtype="Call", Status="Completed"))  # after
    gone = fake.add("Task", dated(NOW_MS - 2 * DAY_MS, WhoId=lead, TaskSubtype="Call", Status="Completed"))
    assert requests.delete(f"{url}/services/data/v59.0/sobjects/Task/{gone}",
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 204  # fmt: skip
    fake.configure(page_size=3)
    out = tmp_path / "history.jsonl"
    tally = backfill(url, JsonlSink(str(out), append=False)).run()
    calls = {e.id.split(":")[1] for e in read_jsonl(out) if e.type.value == "call_attempted"}
    assert calls == {*inside, archived}
    assert tally.records["Task"] == 8 and tally.records["Lead"] == 1
    task_calls = [c for c in fake.api_calls(method="GET") if "FROM Task" in (c["query"] or "")]
    assert [c["path"] for c in task_calls] == ["queryAll"]
    assert len(fake.api_calls(method="GET", path="query/")) >= 2  # the rest through nextRecordsUrl
    assert "IsDeleted = false" in task_calls[0]["query"]


def test_the_soql_sent_is_what_the_docs_allow() -> None:
    soql = window_query("Task", ["Id", "WhoId"], NOW_MS - 1, NOW_MS)
    # dateTime literals are unquoted and whole seconds: the edges widen to the second.
    floor, ceil = datetime.fromtimestamp((NOW_MS - 1) // 1000, tz=UTC), datetime.fromtimestamp(NOW_MS // 1000, tz=UTC)
    assert f"SystemModstamp >= {floor:%Y-%m-%dT%H:%M:%SZ}" in soql
    assert f"SystemModstamp < {ceil:%Y-%m-%dT%H:%M:%SZ}" in soql
    assert soql.endswith("ORDER BY SystemModstamp ASC") and "IsDeleted = false" in soql
    assert "IsDeleted" not in window_query("Lead", ["Id"], None, NOW_MS)


def test_fields_and_objects_the_org_lacks_are_left_out_and_counted(sf: tuple[FakeSalesforce, str]) -> None:
    fake, url = sf
    seed(fake)
    fake.configure(missing_fields=["Pruner_Reopened__c", "Pruner_Lead_Id__c"], absent_sobjects=["Individual"])
    tally = backfill(url, NullSink()).run()
    assert tally.ignored["Lead:no_field:Pruner_Reopened__c"] == 1
    assert tally.ignored["Opportunity:no_field:Pruner_Lead_Id__c"] == 1
    assert tally.ignored["Individual:not_in_org"] == 1
    assert tally.records["Lead"] == 2 and "Opportunity" not in tally.records
    assert not any("Pruner_Reopened__c" in (c["query"] or "") for c in fake.api_calls())


class StopAfter:
    """A JSONL sink that stops the run (as Ctrl-C does) when given its `limit`-th page, before writing it."""

    def __init__(self, path: Path, limit: int) -> None:
        self.inner = JsonlSink(str(path), append=path.exists())
        self.pages = 0
        self.limit = limit

    def write(self, events: Sequence[Versioned]) -> None:
        self.pages += 1
        if self.pages == self.limit:
            raise KeyboardInterrupt
        self.inner.write(events)

    def commit(self) -> None:
        self.inner.commit()

    def close(self) -> None:
        self.inner.close()


def test_an_interrupted_run_continues_from_its_cursors_without_rereading(
    sf: tuple[FakeSalesforce, str], conn: redis.Redis, tmp_path: Path
) -> None:
    fake, url = sf
    lead = fake.add("Lead", dated(NOW_MS - DAY_MS, LeadSource="Web"))
    # Ten calls, five of them changed in the same second: a page boundary falls among them.
    same = NOW_MS - 3 * DAY_MS
    for n in range(10):
        fake.add("Task", dated(same if n < 5 else same + n * 60_000, WhoId=lead, TaskSubtype="Call",
                               Status="Completed"))  # fmt: skip
    fake.configure(page_size=3)
    whole = tmp_path / "whole.jsonl"
    backfill(url, JsonlSink(str(whole), append=False)).run()

    path = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        # Pages: Lead, Opportunity, Individual, then Tasks 3 at a time: stopped at the second Task page,
        # the cursor saying 3 of the 5 calls changed in that one second were read.
        backfill(url, StopAfter(path, 5), conn).run()
    [key] = list(conn.scan_iter("pruner:backfill:salesforce:*"))
    fake.calls.clear()
    tally = backfill(url, StopAfter(path, 0), conn).run()
    assert tally.resumed == ["Lead", "Opportunity", "Individual", "Task"]
    assert not any("FROM Lead" in (c["query"] or "") for c in fake.api_calls())  # done: not read again
    resumed = read_jsonl(path)
    assert len({e.id for e in resumed}) == len(resumed)  # nothing written twice, even at the shared second
    assert sorted(e.id for e in resumed) == sorted(e.id for e in read_jsonl(whole))
    assert not conn.exists(key)


def test_the_fake_refuses_queries_outside_its_subset_as_salesforce_does(sf: tuple[FakeSalesforce, str]) -> None:
    _, url = sf
    soql = "SELECT Id FROM Lead WHERE SystemModstamp > 2026-01-01T00:00:00Z OR Id = 'x'"
    answer = requests.get(f"{url}/services/data/v59.0/query", params={"q": soql},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)  # fmt: skip
    assert answer.status_code == 400 and answer.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_reconciliation_recovers_the_records_whose_outbound_messages_never_came(
    sf: tuple[FakeSalesforce, str], conn: redis.Redis
) -> None:
    """What an outbound message delivered is a duplicate; the rest is added and counted (issue #14)."""
    from worker.decide import Decider
    from worker.metrics import RECONCILED_KEY
    from worker.policyfile import default_policy
    from worker.reconcile import SALESFORCE_CURSOR_KEY, reconcile_salesforce
    from worker.store import LeadStore

    fake, url = sf
    ids = seed(fake)
    store, decide = LeadStore(conn), Decider(default_policy(), NOW_MS)
    # The lead's and the call's outbound messages came; the rest were lost (a rule switched off).
    delivered = as_notifications(fake, [("Lead", ids["lead"]), ("Task", ids["call"])])
    store.apply_batch(delivered, decide)
    conn.set(SALESFORCE_CURSOR_KEY, NOW_MS - 20 * DAY_MS)  # the last run, before the records changed
    result = reconcile_salesforce(conn, history(url), store, decide, SalesforceMapping(), NOW_MS)
    assert result.records == 7
    kinds = {"reopened": "Lead", "email": "Task", "meeting": "Event", "deal": "Opportunity", "individual": "Individual"}
    missed = as_notifications(fake, [(sobject, ids[k]) for k, sobject in kinds.items()])
    assert sum(result.added.values()) == len(missed) == 7
    assert result.added == {"Lead": 1, "Task": 1, "Event": 3, "Opportunity": 1, "Individual": 1}
    counted = {k.decode(): int(v) for k, v in conn.hgetall(RECONCILED_KEY).items()}
    assert counted == {k: n for k, n in result.added.items() if n}
    assert int(conn.get(SALESFORCE_CURSOR_KEY) or 0) == result.until_ms
    # The next run reads the same records again (its overlap) and finds nothing new.
    again = reconcile_salesforce(conn, history(url), store, decide, SalesforceMapping(), NOW_MS + 60_000)
    assert sum(again.added.values()) == 0
