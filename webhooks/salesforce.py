"""`POST /webhooks/salesforce`: Salesforce Outbound Messages (SOAP 1.1).

Salesforce signs nothing, so the view checks what it can: the XML is parsed with
defusedxml (no DTD, no entities, no external references: a billion-laughs or XXE body
is refused before anything expands), the `OrganizationId` must be ours, and nothing
is acknowledged before the mapped events are in Redis. Every answer on this route is
SOAP: Salesforce reads faults, not JSON. Unknown sObjects are acknowledged and counted,
never refused, or Salesforce would retry them for 24 hours. The blueprint's error handlers
keep that true for anything the view raises: Flask consults a blueprint's handlers before
the app's JSON ones (webhooks/app.py).

The mapping (rules/salesforce_map.py) takes overrides from `SALESFORCE_MAPPING`, a
JSON object such as `{"open_statuses": ["Open"], "opportunity_lead_field": "Lead__c"}`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import redis
from defusedxml import DefusedXmlException
from flask import Blueprint, Flask, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

from rules.salesforce_ids import is_record_id, to_15
from rules.salesforce_map import Notification, map_notifications
from webhooks.errors import QueueUnavailable, WebhookError
from webhooks.services import MAX_BODY_BYTES, admission, services
from worker.queues import enqueue_events

log = logging.getLogger(__name__)

bp = Blueprint("salesforce", __name__)

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
ACK = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack>'
    "</notificationsResponse></soapenv:Body></soapenv:Envelope>"
)
MAPPING_EXTENSION = "pruner_salesforce_mapping"

_ENV, _OM = f"{{{SOAP_NS}}}", f"{{{OUTBOUND_NS}}}"
_XSI_TYPE, _XSI_NIL = f"{{{XSI_NS}}}type", f"{{{XSI_NS}}}nil"


class MalformedMessage(WebhookError):
    """The body is not a well-formed, entity-free Salesforce outbound message."""


@dataclass(frozen=True)
class OutboundMessage:
    """A parsed outbound message: the sending org and its notifications."""

    organization_id: str
    notifications: list[Notification]


def parse_message(body: bytes) -> OutboundMessage:
    """Parse a SOAP outbound message with entities and DTDs refused; raise MalformedMessage."""
    if not body.strip():
        raise MalformedMessage("the body is empty; expected a SOAP outbound message")
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        # Fixed wording: the exception names the DTD's system id, which is the sender's text.
        raise MalformedMessage(
            "the body declares a DTD or entities, which are refused; send a plain SOAP envelope"
        ) from None
    except ParseError as exc:
        line, column = exc.position
        raise MalformedMessage(f"the body is not well-formed XML (line {line}, column {column})") from None
    except (ValueError, LookupError):
        raise MalformedMessage("the body is not XML in a supported encoding") from None
    if root.tag != f"{_ENV}Envelope":
        raise MalformedMessage("the root element is not a SOAP 1.1 Envelope")
    soap_body = root.find(f"{_ENV}Body")
    if soap_body is None:
        raise MalformedMessage("the SOAP Envelope has no Body")
    message = soap_body.find(f"{_OM}notifications")
    if message is None:
        raise MalformedMessage(f"the SOAP Body holds no <notifications> element in namespace {OUTBOUND_NS}")
    org = (message.findtext(f"{_OM}OrganizationId") or "").strip()
    if not is_record_id(org):
        raise MalformedMessage("the message has no valid OrganizationId")
    notifications = []
    for i, item in enumerate(message.findall(f"{_OM}Notification")):
        notification_id = (item.findtext(f"{_OM}Id") or "").strip()
        if not is_record_id(notification_id):
            raise MalformedMessage(f"Notification {i} has no valid Id")
        sobject = item.find(f"{_OM}sObject")
        if sobject is None:
            raise MalformedMessage(f"Notification {i} has no sObject")
        notifications.append(Notification(notification_id, _sobject_type(sobject), _fields(sobject)))
    return OutboundMessage(org, notifications)


def _sobject_type(sobject: Element) -> str:
    # `xsi:type="sf:Lead"`: the prefix is whatever the sender declared, the name is what counts.
    return sobject.get(_XSI_TYPE, "").rpartition(":")[2].strip()


def _fields(sobject: Element) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for child in sobject:
        if len(child):
            continue  # a nested relationship record: the mapping reads plain fields only
        name = child.tag.rpartition("}")[2]
        out[name] = None if child.get(_XSI_NIL) == "true" else (child.text or "")
    return out


def same_org(received: str, configured: str) -> bool:
    """Compare org ids by their case-sensitive 15-character form (18-char ids add a checksum).

    An 18-character id is case-insensitive by design, so one configured in lowercase still
    matches: its checksum restores the case.
    """
    return len(received) >= 15 and to_15(received) == to_15(configured.strip())


def fault(status: int, code: Literal["Client", "Server"], message: str) -> Response:
    """Return a SOAP 1.1 fault with `message` (a sentence of ours, never request content)."""
    body = (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>soapenv:{code}</faultcode><faultstring>{escape(message)}</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return Response(body, status, mimetype="text/xml")


@bp.errorhandler(HTTPException)
def _http_fault(exc: HTTPException) -> Response:
    status = exc.code or 500
    # The status's standard phrase, not `exc.description`: whoever raised it may have put
    # request content there.
    reason = HTTP_STATUS_CODES.get(status, "Error")
    return fault(status, "Client" if status < 500 else "Server", f"the request could not be handled: {status} {reason}")


@bp.errorhandler(redis.RedisError)
@bp.errorhandler(QueueUnavailable)
def _queue_fault(exc: Exception) -> Response:
    # Without this the Exception handler below would answer 500 where the app answers 503.
    log.warning("salesforce message: redis unavailable: %s", type(exc).__name__)
    return fault(503, "Server", "the queue (Redis) is unavailable; nothing was accepted, retry later")


@bp.errorhandler(Exception)
def _server_fault(exc: Exception) -> Response:
    # A bug of ours must still answer SOAP: Salesforce retries a fault, and a JSON body
    # tells it nothing. Nothing from the request or the exception goes into the answer.
    log.exception("salesforce message failed")
    return fault(500, "Server", "the server failed; nothing was acknowledged, retry later")


@bp.record_once
def _configure(state: BlueprintSetupState) -> None:
    # Parsed by Config.from_env, so a bad SALESFORCE_MAPPING stops the deploy instead of a request.
    state.app.extensions.setdefault(MAPPING_EXTENSION, services(state.app).config.salesforce_mapping)  # type: ignore[arg-type]


@bp.post("/webhooks/salesforce")
def receive_salesforce() -> Response:
    """Check, map and queue one outbound message; answer the SOAP Ack once it is in Redis."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    svc = services(app)
    org_id = svc.config.salesforce_org_id
    if org_id is None:
        return fault(503, "Server", "not configured: SALESFORCE_ORG_ID is not set, so no message can be accepted")
    refused = admission(svc, request.path, request)
    if refused is not None:  # Salesforce retries an outbound message for 24 h
        answer = fault(refused.status, "Server", refused.detail)
        answer.headers["Retry-After"] = str(refused.retry_after_s)
        return answer
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return fault(413, "Client", f"the body is larger than the {MAX_BODY_BYTES} bytes allowed")
    try:
        message = parse_message(body)
    except MalformedMessage as exc:
        return fault(400, "Client", str(exc))
    if not same_org(message.organization_id, org_id):
        log.warning("salesforce message refused: OrganizationId is not the configured one")
        return fault(403, "Client", "this endpoint does not accept messages from that OrganizationId")
    now_ms = int(svc.clock() * 1000)
    result = map_notifications(message.notifications, now_ms, app.extensions[MAPPING_EXTENSION])
    if result.events:
        try:
            enqueue_events(svc.queue, [e.to_wire() for e in result.events], source="salesforce")
        except redis.RedisError as exc:
            log.warning("enqueue failed: %s", type(exc).__name__)
            return fault(503, "Server", "the queue (Redis) is unavailable; nothing was accepted, retry later")
    skipped = " ".join(f"{reason}={count}" for reason, count in sorted(result.skipped.items()))
    log.info(
        "salesforce message accepted notifications=%d events=%d skipped=%s",
        len(message.notifications), len(result.events), skipped or "0",
    )  # fmt: skip
    return Response(ACK, 200, mimetype="text/xml")
