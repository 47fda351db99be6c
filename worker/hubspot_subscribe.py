"""`pruner hubspot subscribe`: create the app's webhook subscriptions through HubSpot's Webhooks API v3.

HubSpot documents (developers.hubspot.com, "Webhooks v3 API"), authenticated with the app's
developer API key as the `hapikey` query parameter:

    GET  /webhooks/v3/{appId}/settings                       target URL and throttling
    PUT  /webhooks/v3/{appId}/settings                       {"targetUrl", "throttling": {...}}
    GET  /webhooks/v3/{appId}/subscriptions                  {"results": [{"id", "eventType",
                                                              "propertyName"?, "objectTypeId"?, "active"}]}
    POST /webhooks/v3/{appId}/subscriptions                  one {"eventType", "propertyName"?,
                                                              "objectTypeId"?, "active"}
    POST /webhooks/v3/{appId}/subscriptions/batch/update     {"inputs": [{"id", "active"}]}

Idempotent: the existing subscriptions are read first; only missing ones are created, and
paused ones among those Pruner needs are re-activated in one batch call. Running it twice
changes nothing the second time. Nothing is deleted: subscriptions Pruner does not use are
left alone (another integration of the same app may need them). `dry_run` reads only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests

from rules.errors import PrunerError
from rules.hubspot_map import Subscription

TIMEOUT_S = 15.0
# HubSpot's own example: at most 10 concurrent webhook requests per account.
DEFAULT_THROTTLING = {"maxConcurrentRequests": 10, "period": "SECONDLY"}


class SubscribeError(PrunerError):
    """HubSpot refused or could not be reached; the message says which call and why (never the key)."""


@dataclass
class Plan:
    """What it takes to make the app's subscriptions cover `wanted`."""

    create: list[Subscription] = field(default_factory=list)
    activate: list[tuple[int | str, Subscription]] = field(default_factory=list)
    present: list[Subscription] = field(default_factory=list)


def _key(item: dict[str, Any]) -> Subscription:
    def text(name: str) -> str | None:
        value = item.get(name)
        return str(value) if value not in (None, "") else None

    return Subscription(str(item.get("eventType", "")), text("propertyName"), text("objectTypeId"))


def plan(existing: Iterable[dict[str, Any]], wanted: Iterable[Subscription]) -> Plan:
    """Compare HubSpot's subscriptions with the wanted ones (pure: no I/O)."""
    by_key = {_key(item): item for item in existing}
    out = Plan()
    for sub in wanted:
        item = by_key.get(sub)
        if item is None:
            out.create.append(sub)
        elif not item.get("active", False):
            out.activate.append((item["id"], sub))
        else:
            out.present.append(sub)
    return out


def describe(sub: Subscription) -> str:
    """`contact.propertyChange hs_lead_status`, `object.creation (0-48)`."""
    text = sub.event_type
    if sub.property_name:
        text += f" {sub.property_name}"
    if sub.object_type_id:
        text += f" ({sub.object_type_id})"
    return text


class WebhooksApi:
    """HubSpot's Webhooks API v3 for one app, over a `requests` session."""

    def __init__(self, base_url: str, app_id: int, api_key: str, session: requests.Session | None = None) -> None:
        self.root = f"{base_url.rstrip('/')}/webhooks/v3/{app_id}"
        self.api_key = api_key
        self.session = session or requests.Session()

    def _call(self, method: str, path: str, body: Any = None, missing_ok: bool = False) -> Any:
        what = f"{method} /webhooks/v3/{{appId}}{path}"
        try:
            response = self.session.request(
                method, self.root + path, params={"hapikey": self.api_key}, json=body, timeout=TIMEOUT_S
            )
        except requests.RequestException as exc:
            # The exception's text can hold the URL, and so the key: name the kind only.
            raise SubscribeError(f"{what}: HubSpot could not be reached ({type(exc).__name__})") from None
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code >= 400:
            try:
                message = str(response.json().get("message", ""))[:300]
            except (ValueError, AttributeError):
                message = ""
            hint = " (check HUBSPOT_DEVELOPER_API_KEY and HUBSPOT_APP_ID)" if response.status_code in (401, 403) else ""
            raise SubscribeError(f"{what}: HubSpot answered {response.status_code}{hint}: {message or 'no message'}")
        return response.json() if response.content else None

    def settings(self) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._call("GET", "/settings", missing_ok=True)
        return result

    def put_settings(self, target_url: str, throttling: dict[str, Any]) -> None:
        self._call("PUT", "/settings", {"targetUrl": target_url, "throttling": throttling})

    def subscriptions(self) -> list[dict[str, Any]]:
        result = self._call("GET", "/subscriptions") or {}
        items = result.get("results", [])
        return [item for item in items if isinstance(item, dict)]

    def create(self, sub: Subscription) -> None:
        body: dict[str, Any] = {"eventType": sub.event_type, "active": True}
        if sub.property_name:
            body["propertyName"] = sub.property_name
        if sub.object_type_id:
            body["objectTypeId"] = sub.object_type_id
        self._call("POST", "/subscriptions", body)

    def activate(self, ids: list[int | str]) -> None:
        self._call("POST", "/subscriptions/batch/update", {"inputs": [{"id": i, "active": True} for i in ids]})


def subscribe(
    api: WebhooksApi,
    wanted: list[Subscription],
    target_url: str | None,
    dry_run: bool,
    say: Callable[[str], None],
) -> int:
    """Bring the app's settings and subscriptions up to `wanted`; return how many changes were (or would be) made."""
    verb = "would" if dry_run else "did"
    changes = 0
    settings = api.settings()
    current_url = (settings or {}).get("targetUrl")
    if target_url is not None and current_url != target_url:
        throttling = (settings or {}).get("throttling") or DEFAULT_THROTTLING
        if not dry_run:
            api.put_settings(target_url, throttling)
        say(f"{verb} set the target URL to {target_url} (was {current_url or 'unset'})")
        changes += 1
    elif current_url is None:
        say("no target URL is set for this app: pass --target-url https://<your-app>/webhooks/hubspot")
    else:
        say(f"target URL already {current_url}")
    todo = plan(api.subscriptions(), wanted)
    for sub in todo.present:
        say(f"already subscribed: {describe(sub)}")
    if todo.activate:
        if not dry_run:
            api.activate([i for i, _ in todo.activate])
        for _, sub in todo.activate:
            say(f"{verb} re-activate (was paused): {describe(sub)}")
    for sub in todo.create:
        if not dry_run:
            api.create(sub)
        say(f"{verb} create: {describe(sub)}")
    changes += len(todo.activate) + len(todo.create)
    say(
        f"{len(wanted)} subscriptions needed: {len(todo.present)} already there, "
        f"{len(todo.activate)} {'to re-activate' if dry_run else 're-activated'}, "
        f"{len(todo.create)} {'to create' if dry_run else 'created'}"
    )
    return changes
