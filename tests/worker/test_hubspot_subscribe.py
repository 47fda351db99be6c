"""`pruner hubspot subscribe` against the fake HubSpot's Webhooks API v3, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rules.hubspot_map import HubSpotMapping, Subscription, wanted_subscriptions
from tests.fakes.hubspot import DEVELOPER_API_KEY, FakeHubSpotServer
from worker.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, main
from worker.hubspot_subscribe import plan

APP_ID = 424242
TARGET = "https://pruner.example/webhooks/hubspot"
WANTED = wanted_subscriptions(HubSpotMapping())


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHubSpotServer]:
    with FakeHubSpotServer() as srv:
        monkeypatch.setenv("HUBSPOT_API_BASE", srv.url)
        monkeypatch.setenv("HUBSPOT_APP_ID", str(APP_ID))
        monkeypatch.setenv("HUBSPOT_DEVELOPER_API_KEY", DEVELOPER_API_KEY)
        monkeypatch.delenv("PRUNER_POLICY", raising=False)
        yield srv


def subscriptions(srv: FakeHubSpotServer) -> set[tuple[str, str | None, str | None, bool]]:
    return {
        (s["eventType"], s.get("propertyName"), s.get("objectTypeId"), s["active"])
        for s in srv.fake.webhook_subscriptions.get(str(APP_ID), [])
    }


def as_rows(wanted: list[Subscription], active: bool = True) -> set[tuple[str, str | None, str | None, bool]]:
    return {(s.event_type, s.property_name, s.object_type_id, active) for s in wanted}


def test_the_wanted_subscriptions_are_what_the_readme_lists() -> None:
    kinds = {(s.event_type, s.property_name, s.object_type_id) for s in WANTED}
    assert ("contact.propertyChange", "hs_email_optout", None) in kinds
    assert ("contact.privacyDeletion", None, None) in kinds
    assert ("deal.propertyChange", "dealstage", None) in kinds
    assert ("object.creation", None, "0-48") in kinds  # calls
    assert ("object.propertyChange", "hs_meeting_outcome", "0-47") in kinds
    renamed = wanted_subscriptions(HubSpotMapping(optout_property="portal_optout"))
    assert Subscription("contact.propertyChange", "portal_optout") in renamed
    assert Subscription("contact.propertyChange", "hs_email_optout") not in renamed


def test_a_fresh_app_gets_its_target_url_and_every_subscription(
    server: FakeHubSpotServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hubspot", "subscribe", "--target-url", TARGET]) == EXIT_OK
    out = capsys.readouterr().out
    assert server.fake.webhook_settings[str(APP_ID)]["targetUrl"] == TARGET
    assert subscriptions(server) == as_rows(WANTED)
    assert f"{len(WANTED)} subscriptions needed: 0 already there, 0 re-activated, {len(WANTED)} created" in out
    assert "did create: object.creation (0-48)" in out
    # Every call carried the developer key as `hapikey`, as HubSpot documents.
    calls = server.fake.api_calls(contains="/webhooks/v3/")
    assert calls and all(c["query"].get("hapikey") == DEVELOPER_API_KEY for c in calls)


def test_a_second_run_changes_nothing(server: FakeHubSpotServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hubspot", "subscribe", "--target-url", TARGET]) == EXIT_OK
    before = subscriptions(server)
    writes = len(server.fake.api_calls("POST")) + len(server.fake.api_calls("PUT"))
    capsys.readouterr()
    assert main(["hubspot", "subscribe", "--target-url", TARGET]) == EXIT_OK
    out = capsys.readouterr().out
    assert subscriptions(server) == before
    assert len(server.fake.api_calls("POST")) + len(server.fake.api_calls("PUT")) == writes
    assert f"{len(WANTED)} already there, 0 re-activated, 0 created" in out
    assert f"target URL already {TARGET}" in out


def test_dry_run_reads_and_reports_only(server: FakeHubSpotServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hubspot", "subscribe", "--dry-run", "--target-url", TARGET]) == EXIT_OK
    out = capsys.readouterr().out
    assert subscriptions(server) == set()
    assert str(APP_ID) not in server.fake.webhook_settings
    assert {c["method"] for c in server.fake.api_calls()} == {"GET"}
    assert f"would set the target URL to {TARGET}" in out
    assert f"{len(WANTED)} to create" in out


def test_paused_subscriptions_are_reactivated_in_one_batch_and_others_are_kept(
    server: FakeHubSpotServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = server.fake
    fake.webhook_subscriptions[str(APP_ID)] = [
        {"id": "7", "eventType": "contact.propertyChange", "propertyName": "hs_email_optout", "active": False},
        {"id": "8", "eventType": "contact.deletion", "active": True},
        {"id": "9", "eventType": "company.creation", "active": True},  # not Pruner's: left alone
    ]
    assert main(["hubspot", "subscribe"]) == EXIT_OK
    out = capsys.readouterr().out
    batch = fake.api_calls("POST", "/subscriptions/batch/update")
    assert [c["body"] for c in batch] == [{"inputs": [{"id": "7", "active": True}]}]
    assert subscriptions(server) == as_rows(WANTED) | {("company.creation", None, None, True)}
    assert len(fake.api_calls("POST", contains=f"/webhooks/v3/{APP_ID}/subscriptions")) == len(WANTED) - 2 + 1
    assert "did re-activate (was paused): contact.propertyChange hs_email_optout" in out
    assert "no target URL is set for this app" in out


def test_a_wrong_key_fails_with_a_sentence_and_never_prints_the_key(
    server: FakeHubSpotServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HUBSPOT_DEVELOPER_API_KEY", "wrong-secret-key")
    assert main(["hubspot", "subscribe"]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "HubSpot answered 401 (check HUBSPOT_DEVELOPER_API_KEY and HUBSPOT_APP_ID)" in captured.err
    assert "wrong-secret-key" not in captured.err + captured.out


def test_without_app_id_or_key_it_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HUBSPOT_APP_ID", raising=False)
    monkeypatch.delenv("HUBSPOT_DEVELOPER_API_KEY", raising=False)
    assert main(["hubspot", "subscribe"]) == EXIT_CONFIG
    assert "set HUBSPOT_APP_ID and HUBSPOT_DEVELOPER_API_KEY" in capsys.readouterr().err


def test_plan_matches_on_event_property_and_object_type() -> None:
    existing = [
        {"id": 1, "eventType": "object.creation", "objectTypeId": "0-48", "active": True},
        {"id": 2, "eventType": "object.creation", "objectTypeId": "0-49", "active": False},
        {"id": 3, "eventType": "deal.propertyChange", "propertyName": "amount", "active": True},
    ]
    wanted = [
        Subscription("object.creation", None, "0-48"),
        Subscription("object.creation", None, "0-49"),
        Subscription("object.creation", None, "0-47"),
        Subscription("deal.propertyChange", "dealstage"),
    ]
    result = plan(existing, wanted)
    assert result.present == [Subscription("object.creation", None, "0-48")]
    assert result.activate == [(2, Subscription("object.creation", None, "0-49"))]
    assert result.create == [
        Subscription("object.creation", None, "0-47"),
        Subscription("deal.propertyChange", "dealstage"),
    ]
