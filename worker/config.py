"""One configuration object, read from the environment (docs/http.md "Environment").

Tests pass a plain mapping to `Config.from_env`. Secrets are excluded from `repr`
so a logged config never leaks them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import redis
from limits import parse_many

from rules.errors import SchemaError
from rules.salesforce_fields import SalesforceMapping
from rules.salesforce_ids import is_record_id
from worker.crm.hubspot_backfill import SEARCH_RATE
from worker.crm.ratelimit import DEFAULT_LIMIT, DEFAULT_WINDOW_S, parse_rate
from worker.crm.settings import HubSpotSettings, SalesforceSettings, credentials_login
from worker.errors import ConfigError
from worker.secrets import decode_secret

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _signature_versions(env: Mapping[str, str]) -> frozenset[str]:
    raw = _text(env, "HUBSPOT_SIGNATURE_VERSIONS") or "v1,v2,v3"
    versions = frozenset(v.strip().lower() for v in raw.split(",") if v.strip())
    if not versions or not versions <= {"v1", "v2", "v3"} or "v3" not in versions:
        raise ConfigError(f"HUBSPOT_SIGNATURE_VERSIONS must list v3 and optionally v1, v2, got {raw!r}")
    return versions


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def policy_path_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """Return `PRUNER_POLICY` (None: the bundled default), as every process reads it."""
    return _text(os.environ if env is None else env, "PRUNER_POLICY")


def redis_location(url: str) -> str:
    """Return `url` as scheme, host, port and db only: safe to print, whatever the URL holds."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        db = query.get("db", [""])[0]
        return f"unix://{parts.path}" + (f"?db={db}" if db.isdigit() else "")
    try:
        port = parts.port or 6379
    except ValueError:
        port = None
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    path = parts.path.strip("/")
    db = path if path.isdigit() else query.get("db", ["0"])[0]
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "") + (f"/{db}" if db.isdigit() else "")


def _check_redis_url(url: str) -> None:
    """Build, without connecting, the connection every process will make; raise ConfigError if it cannot be."""
    scheme, sep, _ = url.partition("://")
    if not sep or "@" in scheme or ":" in scheme:
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://, got a value without a scheme")
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, got {scheme}://")
    shown = redis_location(url)
    parts = urlsplit(url)
    if scheme == "unix" and not parts.path:
        raise ConfigError(f"REDIS_URL must name the socket path (unix:///run/redis.sock), got {shown}")
    if scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        # redis-py would silently use database 0: another app's data, perhaps.
        raise ConfigError(f"REDIS_URL database must be a number (redis://host:6379/0), got {parts.path!r}")
    decode = parse_qs(parts.query).get("decode_responses", ["false"])[-1].strip().lower()
    if decode not in ("", "0", "f", "false", "n", "no"):  # what redis-py reads as false
        # RQ and the event log read bytes: decoded replies would fail every job.
        raise ConfigError(f"REDIS_URL {shown} must not set decode_responses: RQ and Pruner read raw bytes")
    # As worker.queues.connect builds it (this module cannot import that one).
    kwargs: dict[str, object] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    if scheme == "rediss":
        kwargs["ssl_cert_reqs"] = "none"
    try:
        pool = redis.ConnectionPool.from_url(url, **kwargs)
        pool.make_connection()  # validates every option; connects only on first use
    except (ValueError, TypeError, redis.RedisError) as exc:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc)) if isinstance(exc, TypeError) else None
        problem = f"{unknown.group(1)!r} is not a Redis connection option" if unknown else str(exc)
        secrets = [parts.password or "", parts.username or "", *parse_qs(parts.query).get("password", [])]
        for secret in secrets:
            if secret:
                problem = problem.replace(secret, "***")
        raise ConfigError(f"REDIS_URL {shown} cannot be used: {problem}") from None
    pool.disconnect()


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    """Return the http(s) URL in `name` without a trailing slash, None if unset; raise ConfigError if unusable."""
    raw = _text(env, name)
    if raw is None:
        return None
    parts = urlsplit(raw)
    try:
        usable = parts.scheme in ("https", "http") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:
        usable = False
    if not usable:
        # Whatever credentials a URL holds stay out of the message.
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if parts.netloc else raw
        shown = shown.rpartition("@")[2] if "@" in shown else shown
        raise ConfigError(f"{name} must be an https:// (or http://) URL such as https://host.example, got {shown!r}")
    return raw.rstrip("/")


def _app_id(env: Mapping[str, str]) -> int | None:
    raw = _text(env, "HUBSPOT_APP_ID")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise ConfigError(f"HUBSPOT_APP_ID must be the app's numeric id, got {raw[:40]!r}")
    return int(raw)


_API_VERSION = re.compile(r"[vV]?\d{1,3}\.\d")


@dataclass(frozen=True)
class Config:
    """Everything Pruner reads from its environment, validated."""

    port: int = 5000
    redis_url: str = DEFAULT_REDIS_URL
    admin_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    policy_path: str | None = None
    dry_run: bool = False
    suppression_key: str | None = field(default=None, repr=False)
    # Carry an erasure received from another channel out in the lead's CRM too (PRUNER_FORWARD_ERASURE).
    forward_erasure: bool = False
    hubspot_client_secret: str | None = field(default=None, repr=False)
    # Signature versions /webhooks/hubspot accepts (HUBSPOT_SIGNATURE_VERSIONS, default all three).
    hubspot_signature_versions: frozenset[str] = frozenset({"v1", "v2", "v3"})
    hubspot_access_token: str | None = field(default=None, repr=False)
    hubspot_api_base: str = "https://api.hubapi.com"
    # `pruner hubspot subscribe` only: the public app and its developer API key (`hapikey`).
    hubspot_app_id: int | None = None
    hubspot_developer_api_key: str | None = field(default=None, repr=False)
    salesforce_org_id: str | None = None
    salesforce_instance_url: str | None = None
    salesforce_access_token: str | None = field(default=None, repr=False)
    salesforce_api_version: str = "59.0"
    # Rebuild the URL HubSpot signed from X-Forwarded-Proto/Host: only behind a proxy you run.
    trust_proxy: bool = False
    queue_name: str = "pruner"
    # Seconds a Redis call may take before the web answers 503: HubSpot gives up
    # on a webhook after 5 s, so a hung Redis must fail well before that.
    redis_timeout: float = 2.0
    # Backpressure: the webhooks answer 503 + Retry-After (the CRMs retry for a day) rather than
    # accept what Redis may not keep (memory nearly full) or the workers cannot reach soon.
    backpressure_queue_lag_s: int = 600  # 0: off
    backpressure_memory_percent: int = 95  # of maxmemory; 100: off
    # Per sender and webhook route, in limits' notation (`200/second;5000/minute`); "" is off.
    # Checked again by the web (webhooks/ratelimit.py), parsed here so a typo stops the deploy.
    inbound_rate_limit: str = "200/second"
    # Where the counts live: memory:// (per web process) or a limits storage URI (redis://…).
    inbound_rate_limit_storage: str = "memory://"
    # The optional per-CRM settings, parsed here too so that a bad value stops the
    # deploy (web, worker, `pruner check`) instead of the first callback.
    hubspot: HubSpotSettings = field(default_factory=lambda: _hubspot_settings({}))
    hubspot_rate_limit: tuple[int, float] = (DEFAULT_LIMIT, DEFAULT_WINDOW_S)
    # HubSpot's separate budget for search requests, per portal (HUBSPOT_SEARCH_RATE_LIMIT): the
    # backfill's and reconciliation's engagement searches.
    hubspot_search_rate_limit: tuple[int, float] = SEARCH_RATE
    # The share (percent) of HUBSPOT_RATE_LIMIT a backfill may take: the rest stays for the
    # workers' callbacks and engagement fetches running meanwhile (PRUNER_BACKFILL_RATE_SHARE).
    backfill_rate_share: int = 80
    # Guardrail 7's task clock: a break-up's grace runs from its task's creation in the CRM
    # (PRUNER_BREAKUP_TASK_CLOCK; 0 turns it off: the grace runs from the decision).
    breakup_task_clock: bool = True
    # Minutes between reconciliation runs (worker/reconcile.py); 0 turns it off (PRUNER_RECONCILE_MINUTES).
    reconcile_minutes: int = 15
    salesforce: SalesforceSettings = field(default_factory=lambda: _salesforce_settings({}))
    salesforce_mapping: SalesforceMapping = field(default_factory=SalesforceMapping)
    # Logs in with SALESFORCE_USERNAME/PASSWORD, JWT or client credentials; None when none are set.
    salesforce_login: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build the config from `env` (default: `os.environ`); raise `ConfigError` on bad values."""
        env = os.environ if env is None else env
        redis_url = _text(env, "REDIS_URL") or DEFAULT_REDIS_URL
        _check_redis_url(redis_url)
        api_version = _text(env, "SALESFORCE_API_VERSION") or "59.0"
        if not _API_VERSION.fullmatch(api_version):
            raise ConfigError(f"SALESFORCE_API_VERSION must look like 59.0, got {api_version!r}")
        secret = _text(env, "PRUNER_WEBHOOK_SECRET")
        if secret is not None:
            _check_whsec(secret)
        org_id = _text(env, "SALESFORCE_ORG_ID")
        if org_id is not None and not (is_record_id(org_id) and org_id.upper().startswith("00D")):
            # Else every outbound message would get a 403, with nothing saying why.
            raise ConfigError("SALESFORCE_ORG_ID must be an organization id: 00D and 12 or 15 letters or digits")
        return cls(
            port=_int(env, "PORT", 5000, 1, 65535),
            redis_url=redis_url,
            admin_token=_text(env, "PRUNER_ADMIN_TOKEN"),
            webhook_secret=secret,
            policy_path=policy_path_from_env(env),
            dry_run=_flag(env, "PRUNER_DRY_RUN", False),
            suppression_key=_text(env, "PRUNER_SUPPRESSION_KEY"),
            forward_erasure=_flag(env, "PRUNER_FORWARD_ERASURE", False),
            hubspot_client_secret=_text(env, "HUBSPOT_CLIENT_SECRET"),
            hubspot_signature_versions=_signature_versions(env),
            hubspot_access_token=_text(env, "HUBSPOT_ACCESS_TOKEN"),
            hubspot_api_base=_http_url(env, "HUBSPOT_API_BASE") or "https://api.hubapi.com",
            hubspot_app_id=_app_id(env),
            hubspot_developer_api_key=_text(env, "HUBSPOT_DEVELOPER_API_KEY"),
            salesforce_org_id=org_id,
            salesforce_instance_url=_http_url(env, "SALESFORCE_INSTANCE_URL"),
            salesforce_access_token=_text(env, "SALESFORCE_ACCESS_TOKEN"),
            salesforce_api_version=api_version,
            trust_proxy=_flag(env, "PRUNER_TRUST_PROXY", False),
            backpressure_queue_lag_s=_int(env, "PRUNER_BACKPRESSURE_QUEUE_LAG_S", 600, 0, 86_400),
            backpressure_memory_percent=_int(env, "PRUNER_BACKPRESSURE_MEMORY_PERCENT", 95, 50, 100),
            inbound_rate_limit=_inbound_rate_limit(env),
            inbound_rate_limit_storage=_inbound_rate_limit_storage(env, redis_url),
            hubspot=_hubspot_settings(env),
            hubspot_rate_limit=_rate(env, "HUBSPOT_RATE_LIMIT"),
            hubspot_search_rate_limit=_rate(env, "HUBSPOT_SEARCH_RATE_LIMIT", SEARCH_RATE),
            backfill_rate_share=_int(env, "PRUNER_BACKFILL_RATE_SHARE", 80, 1, 100),
            reconcile_minutes=_int(env, "PRUNER_RECONCILE_MINUTES", 15, 0, 24 * 60),
            breakup_task_clock=_flag(env, "PRUNER_BREAKUP_TASK_CLOCK", True),
            salesforce=_salesforce_settings(env),
            salesforce_mapping=salesforce_mapping(env),
            salesforce_login=_salesforce_login(env),
        )

    def enabled(self) -> dict[str, bool]:
        """Say which endpoints and integrations this configuration turns on."""
        return {
            "/webhooks/events": self.webhook_secret is not None,
            "/webhooks/hubspot": self.hubspot_client_secret is not None,
            "/webhooks/salesforce": self.salesforce_org_id is not None,
            "admin routes (/leads, /dashboard)": self.admin_token is not None,
            "hubspot callbacks": self.hubspot_access_token is not None,
            "salesforce callbacks": bool(
                self.salesforce_instance_url and (self.salesforce_access_token or self.salesforce_login)
            ),
            "erasure (suppression key)": self.suppression_key is not None,
            "erasure forwarding to the CRM": self.forward_erasure,
            "dry run": self.dry_run,
        }


def _check_whsec(secret: str) -> None:
    for n, one in enumerate(secret.split(), 1):
        try:
            decode_secret(one)
        except ValueError as exc:
            which = f"secret {n} of PRUNER_WEBHOOK_SECRET" if len(secret.split()) > 1 else "PRUNER_WEBHOOK_SECRET"
            raise ConfigError(f"{which} is not a usable Standard Webhooks secret: {exc}") from None


def _inbound_rate_limit(env: Mapping[str, str]) -> str:
    raw = env.get("PRUNER_INBOUND_RATE_LIMIT")
    spec = "200/second" if raw is None else raw.strip()
    if spec.lower() in ("", "off", "0"):
        return ""
    try:
        parse_many(spec)
    except ValueError:
        raise ConfigError(
            f"PRUNER_INBOUND_RATE_LIMIT must look like 200/second or 200/second;5000/minute (or off), got {spec!r}"
        ) from None
    return spec


def _inbound_rate_limit_storage(env: Mapping[str, str], redis_url: str) -> str:
    raw = (env.get("PRUNER_INBOUND_RATE_LIMIT_STORAGE") or "memory").strip().lower()
    if raw in ("memory", "memory://"):
        return "memory://"
    if raw == "redis":  # the same Redis as the queue, so every web process shares one count
        return redis_url
    raise ConfigError(f"PRUNER_INBOUND_RATE_LIMIT_STORAGE must be memory or redis, got {raw!r}")


def _rate(
    env: Mapping[str, str], name: str, default: tuple[int, float] = (DEFAULT_LIMIT, DEFAULT_WINDOW_S)
) -> tuple[int, float]:
    raw = env.get(name, "").strip()
    return parse_rate(raw, name) if raw else default


def salesforce_mapping(env: Mapping[str, str]) -> SalesforceMapping:
    """Build the inbound mapping from `SALESFORCE_MAPPING` (JSON overrides); raise ConfigError if unusable."""
    raw = env.get("SALESFORCE_MAPPING", "").strip()
    if not raw:
        return SalesforceMapping()
    try:
        decoded = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"SALESFORCE_MAPPING must be a JSON object: {exc}") from None
    if not isinstance(decoded, dict):
        raise ConfigError(f"SALESFORCE_MAPPING must be a JSON object, got {type(decoded).__name__}")
    try:
        return SalesforceMapping.from_dict(decoded)
    except SchemaError as exc:
        raise ConfigError(f"SALESFORCE_MAPPING: {exc}") from None


def _hubspot_settings(env: Mapping[str, str]) -> HubSpotSettings:
    return HubSpotSettings.from_env(env)


def _salesforce_settings(env: Mapping[str, str]) -> SalesforceSettings:
    return SalesforceSettings.from_env(env)


def _salesforce_login(env: Mapping[str, str]) -> Callable[[], str] | None:
    return credentials_login(env)
