"""HubSpot's answers read: its errors as exceptions, and the helpers that read a response.

Shared by the client (worker/crm/hubspot_client.py) and its task creation
(worker/crm/hubspot_tasks.py). Messages are redacted: HubSpot's may quote property values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from worker.crm.base import CrmError
from worker.crm.http import body_of, retry_after_s
from worker.logs import redact


class HubSpotApiError(CrmError):
    """HubSpot refused a request for good (a 4xx other than 401/403/429)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HubSpotNotFound(HubSpotApiError):
    """The record does not exist (deleted or merged)."""


class HubSpotAuthError(CrmError):
    """HubSpot refused the access token or its scopes: no record can be written until that is fixed."""


@dataclass(frozen=True)
class RecordError:
    """Why HubSpot refused one record."""

    status: int
    message: str


def not_found(object_type: str, object_id: str) -> RecordError:
    return RecordError(404, f"HubSpot {object_type} record {object_id} was not found (deleted or merged?)")


def q(segment: str) -> str:
    # Lead ids come from webhooks: quote every path segment so none can climb the URL.
    return quote(str(segment), safe="")


def message_of(response: requests.Response) -> str:
    """HubSpot's human sentence for an error, redacted (messages may quote property values)."""
    body = body_of(response)
    text = str(body.get("message") or "").strip() or f"HTTP {response.status_code}"
    return redact(text)[:300]


def header_seconds(response: requests.Response) -> float | None:
    """The wait a 429/5xx asks for: `Retry-After` seconds, else HubSpot's rate-limit interval."""
    asked = retry_after_s(response.headers.get("Retry-After"))
    if asked is not None:
        return asked
    if response.status_code == 429:
        interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
        if interval:
            try:
                return max(0.0, int(interval) / 1000)
            except ValueError:
                pass
    return None


def named_ids(body: Mapping[str, Any], key: str = "ids", category: str | None = None) -> set[str]:
    """Ids a HubSpot error body names in `context` (top level or per error), of one error category if given."""
    out: set[str] = set()
    for error in [body, *[e for e in body.get("errors", []) if isinstance(e, dict)]]:
        if category is not None and error.get("category") != category:
            continue
        context = error.get("context")
        if isinstance(context, dict):
            values = context.get(key)
            if isinstance(values, list):
                out.update(str(v) for v in values)
    return out
