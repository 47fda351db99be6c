"""`GET /dashboard`: queue health and what lost leads say, one HTML page; rq-dashboard at `/rq`.

Ops people watch the queue; RevOps asks "why did we lose these?" (docs/lifecycle.md, "Loss reasons are data
leads are for"). Charts are inline SVG drawn here, so the page needs no JavaScript and
loads nothing from outside (its Content-Security-Policy says so). Loss analytics come
from the snapshot the clock's `refresh_stats` job stores every 5 minutes, because
`worker.stats.collect` scans every lead; without a snapshot (first boot, no clock) they
are computed on the spot. Only aggregates are shown: no lead id, no personal data.

Auth: `Authorization: Bearer <PRUNER_ADMIN_TOKEN>`, or a session cookie set by the login
form (or once by `GET /dashboard?token=...`, which redirects to drop the token from the
address bar). The cookie holds an expiry and an HMAC keyed by the token, never the
token: it cannot be replayed past its expiry and dies when the token is rotated.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict
from urllib.parse import urlencode

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, render_template, request
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.serializers import JSONSerializer
from werkzeug.wrappers import Response as BaseResponse

from webhooks.auth import COOKIE, SESSION_SECONDS, bearer_ok, session_valid, session_value, token_matches
from webhooks.labels import label as words
from webhooks.labels import titled
from webhooks.services import error, services
from worker import leadindex
from worker import metrics as worker_metrics
from worker.stats import DIMENSIONS, STATS_SNAPSHOT_KEY, collect, store_stats_snapshot

bp = Blueprint("dashboard", __name__)

# Twice the clock's 5-minute interval plus slack: older means the clock is probably down.
STALE_AFTER_SECONDS = 15 * 60
DAYS = 30
MAX_ROWS = 12  # per chart; the rest is folded into "(other)" so a noisy field cannot flood the page
RQ_PREFIX = "/rq"
LIST_PATH = "/dashboard/leads"
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

# Loss reasons, from Tableau's palettes, leaving out the red, orange and green that mean LOST,
# BREAKUP_DUE and won/ACTIVE elsewhere on the page.
PALETTE = ("#4e79a7", "#76b7b2", "#b07aa1", "#edc948", "#9c755f", "#ff9da7", "#a0cbe8", "#8cd17d", "#d4a6c8")
OTHER_COLOR = "#bab0ac"
STATE_COLORS = {
    "LOST": "#e15759",
    "BREAKUP_DUE": "#f28e2b",
    "REENGAGE_DUE": "#4e79a7",
    "SUPPRESSED": "#79706e",
    "ACTIVE": "#59a14f",
    "WON": "#2e7d32",  # a darker green than ACTIVE: customers
}
WON_COLOR, LOST_COLOR = "#59a14f", "#e15759"


class Units(TypedDict):
    unit: str
    empty: str


LOST: Units = {"unit": "lost leads", "empty": "No lost leads yet"}
RULES: Units = {"unit": "decisions", "empty": "No decisions yet"}


# --- auth -------------------------------------------------------------------------------


def _authorized(token: str, now: float) -> bool:
    if bearer_ok(request.headers.get("Authorization", ""), token):
        return True
    cookie = request.cookies.get(COOKIE)
    return bool(cookie) and session_valid(token, cookie or "", now)


def _wants_html() -> bool:
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _login_page(message: str | None, next_path: str, status: int = 401) -> ResponseReturnValue:
    body = render_template("dashboard_login.html", message=message, next_path=next_path)
    return _secured(Response(body, status=status, mimetype="text/html"))


def _refuse(detail: str) -> ResponseReturnValue:
    if _wants_html():
        next_path = RQ_PREFIX + "/" if request.path.startswith(RQ_PREFIX) else "/dashboard"
        if request.path == LIST_PATH:
            next_path = request.full_path.rstrip("?")  # back to the same list once signed in
        return _login_page(None, next_path)
    return error(401, "unauthorized", detail)


def check_admin() -> ResponseReturnValue | None:
    """Return the refusal for this request, or None when it carries the admin token or a valid session."""
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    token = svc.config.admin_token
    if token is None:
        return error(503, "not_configured", "PRUNER_ADMIN_TOKEN is not set, so the dashboard is off")
    if _authorized(token, svc.clock()):
        return None
    return _refuse("send Authorization: Bearer <PRUNER_ADMIN_TOKEN> or log in at /dashboard")


def _secured(response: BaseResponse) -> BaseResponse:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _with_session(response: BaseResponse, token: str, now: float) -> BaseResponse:
    expires = int(now) + SESSION_SECONDS
    # Behind Heroku's router the app sees plain HTTP; the forwarded scheme is enough to mark it Secure.
    secure = request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    response.set_cookie(
        COOKIE,
        session_value(token, expires),
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",  # rq-dashboard's POST routes (requeue) must not be reachable cross-site
        secure=secure,
    )
    return response


def _safe_next(value: str | None) -> str:
    # Only our own pages: a login form must not become an open redirect.
    if not value or "//" in value:
        return "/dashboard"
    if value in ("/dashboard", LIST_PATH) or value.startswith((RQ_PREFIX + "/", LIST_PATH + "?")):
        return value
    return "/dashboard"


@bp.post("/dashboard/login")
def login() -> ResponseReturnValue:
    """Check the token from the login form and set the session cookie."""
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    token = svc.config.admin_token
    if token is None:
        return error(503, "not_configured", "PRUNER_ADMIN_TOKEN is not set, so the dashboard is off")
    next_path = _safe_next(request.form.get("next"))
    if not token_matches(request.form.get("token", ""), token):
        return _login_page("That token is not the admin token.", next_path)
    return _with_session(_secured(redirect(next_path, code=303)), token, svc.clock())


@bp.post("/dashboard/logout")
def logout() -> ResponseReturnValue:
    """Drop the session cookie."""
    response = _secured(redirect("/dashboard", code=303))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response


@bp.get("/dashboard")
def dashboard() -> ResponseReturnValue:
    """Render queue health and loss analytics."""
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    given = request.args.get("token")
    if given is not None and svc.config.admin_token is not None:
        # A bookmarkable login: trade the token for a cookie and redirect, so no address bar or history keeps it.
        if not token_matches(given, svc.config.admin_token):
            return _login_page("That token is not the admin token.", "/dashboard")
        return _with_session(_secured(redirect("/dashboard", code=303)), svc.config.admin_token, svc.clock())
    refused = check_admin()
    if refused is not None:
        return refused
    chosen = request.args.get("range", str(DAYS))
    if chosen not in {str(d) for d in RANGES}:
        return error(
            400, "bad_parameter", f"range must be one of {', '.join(map(str, RANGES))} (days), got {chosen!r:.40}"
        )
    now = svc.clock()
    page = build_page(svc.redis, svc.queue, now, "rq_dashboard" in current_app.blueprints, int(chosen))
    return _secured(Response(render_template("dashboard.html", **page), mimetype="text/html"))


@bp.get(LIST_PATH)
def lead_list() -> ResponseReturnValue:
    """The lead list behind a tile or bar: `GET /leads`'s filters, as a page for the signed-in browser."""
    refused = check_admin()
    if refused is not None:
        return refused
    svc = services(current_app._get_current_object())  # type: ignore[attr-defined]
    params = request.args.to_dict()
    try:
        query = leadindex.parse_query(params)
    except leadindex.QueryError as exc:
        body = render_template("dashboard_leads.html", problem=str(exc), rows=[], filters=[], more=None, indexed=True)
        return _secured(Response(body, status=400, mimetype="text/html"))
    found = leadindex.page(svc.redis, query.filters, query.limit, query.cursor)
    shown = [
        (name, value, titled(value)) for name, value in params.items() if value and name not in ("cursor", "limit")
    ]
    more = list_href(**{**params, "cursor": found.next_cursor}) if found.next_cursor else None
    rows = [
        {
            **row.public(),
            "state_words": words(row.entry.state),
            "reason_words": words(row.entry.loss_reason) if row.entry.loss_reason else "",
            "rules_words": ", ".join(words(r) for r in row.entry.rules),
        }
        for row in found.rows
    ]
    body = render_template(
        "dashboard_leads.html",
        problem=None,
        rows=rows,
        filters=shown,
        more=more,
        indexed=leadindex.is_complete(svc.redis),
    )
    return _secured(Response(body, mimetype="text/html"))


# --- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    note: str = ""
    level: str = "ok"  # ok | warn | bad | info
    href: str = ""  # the lead list behind the number


def queue_health(connection: redis.Redis, queue: Queue, now: float) -> list[Tile]:
    """Read queue depth, failures, workers and lag the way `/metrics` does."""
    failed = queue.failed_job_registry.count
    workers = Worker.count(queue=queue)
    queued = queue.count
    oldest_ids = queue.get_job_ids(0, 1)
    job = queue.fetch_job(oldest_ids[0]) if oldest_ids else None
    oldest = max(0.0, now - job.enqueued_at.timestamp()) if job and job.enqueued_at else 0.0
    raw: dict[bytes, bytes] = connection.hgetall(worker_metrics.LAG_KEY)  # type: ignore[assignment]
    lag = {k.decode(): float(v) for k, v in raw.items()}
    last_at = lag.get("at")
    return [
        Tile("Queued", f"{queued:,}", "jobs waiting", "warn" if queued and not workers else "ok"),
        Tile("Started", f"{queue.started_job_registry.count:,}", "jobs running"),
        Tile("Scheduled", f"{queue.scheduled_job_registry.count:,}", "retries and delayed jobs", "info"),
        Tile("Failed", f"{failed:,}", "run `pruner replay --failed`" if failed else "none", "bad" if failed else "ok"),
        Tile("Workers", f"{workers}", "listening on the queue", "ok" if workers else "bad"),
        Tile("Oldest job waiting", duration(oldest), "0 s when the queue is empty", _lag_level(oldest)),
        Tile(
            "Last batch: queue lag",
            duration(lag["queue_seconds"]) if "queue_seconds" in lag else "–",
            f"processed {duration(now - last_at)} ago" if last_at else "no batch yet",
            _lag_level(lag.get("queue_seconds", 0.0)),
        ),
        Tile(
            "Last batch: event age",
            duration(lag["event_seconds"]) if "event_seconds" in lag else "–",
            "newest event's time to processing",
            "info",
        ),
    ]


def _lag_level(seconds: float) -> str:
    return "bad" if seconds > 300 else "warn" if seconds > 30 else "ok"


def duration(seconds: float) -> str:
    """Format a duration for people: `0.4 s`, `42 s`, `3 min`, `5.2 h`, `3 d`."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.0f} d"


def load_stats(connection: redis.Redis, now: float) -> tuple[dict[str, Any], float, bool]:
    """Return the stats, when they were computed, and whether they came from the clock's snapshot."""
    raw = connection.get(STATS_SNAPSHOT_KEY)
    if raw:
        try:
            snapshot = json.loads(raw)
            at = datetime.fromisoformat(snapshot["computed_at"].replace("Z", "+00:00")).timestamp()
            return dict(snapshot["stats"]), at, True
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # an unreadable snapshot is no worse than none: compute below
    return collect(connection).to_json(), now, False


def decisions_by_rule(connection: redis.Redis) -> list[tuple[str, dict[str, int]]]:
    """Return decision counts per rule, by target state, from the workers' aggregate hash."""
    raw: dict[bytes, bytes] = connection.hgetall(worker_metrics.DECISIONS_KEY)  # type: ignore[assignment]
    rules: dict[str, dict[str, int]] = {}
    for field, count in raw.items():
        parts = field.decode().split("|")
        if len(parts) == 3:
            by_state = rules.setdefault(parts[0], {})
            by_state[parts[1]] = by_state.get(parts[1], 0) + int(count)
    return list(rules.items())


def daily_decisions(connection: redis.Redis, now: float, days: int = DAYS) -> list[tuple[str, dict[str, int]]]:
    """Return decisions per UTC day (oldest first), by target state, from the workers' daily hashes."""
    today = datetime.fromtimestamp(now, tz=UTC).date()
    dates = [(today - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]
    with connection.pipeline(transaction=False) as pipe:
        for day in dates:
            pipe.hgetall(worker_metrics.DAILY_PREFIX + day)
        hashes: list[dict[bytes, bytes]] = pipe.execute()
    result = []
    for day, fields in zip(dates, hashes, strict=True):
        by_state: dict[str, int] = {}
        for field, count in fields.items():
            to = field.decode().split("|", 1)[0]
            by_state[to] = by_state.get(to, 0) + int(count)
        result.append((day, by_state))
    return result


def _fold(rows: list[tuple[str, dict[str, int]]], limit: int = MAX_ROWS) -> list[tuple[str, dict[str, int]]]:
    """Keep the `limit - 1` biggest rows and sum the rest into "(other)"."""
    rows = sorted(rows, key=lambda r: (-sum(r[1].values()), r[0]))
    if len(rows) <= limit:
        return rows
    other: dict[str, int] = {}
    for _, values in rows[limit - 1 :]:
        for k, v in values.items():
            other[k] = other.get(k, 0) + v
    return rows[: limit - 1] + [("(other)", other)]


def reason_colors(stats: Mapping[str, Any]) -> dict[str, str]:
    """Give each loss reason one colour on every chart, the most frequent first."""
    reasons = list(stats.get("loss_reasons", {}))
    for dim in DIMENSIONS:
        for row in stats.get("by", {}).get(dim, {}).values():
            reasons += [r for r in row.get("reasons", {}) if r not in reasons]
    return {r: PALETTE[i] if i < len(PALETTE) else OTHER_COLOR for i, r in enumerate(reasons)}


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%" if x * 100 >= 10 or x == 0 else f"{x * 100:.1f}%"


RANGES = (7, 30, 90, 365)  # the time range selector's choices, in days
# Below this many leads a snapshot that disagrees with the live index is recomputed on the
# spot (a SCAN of that size takes well under a second); above, the clock's snapshot serves.
LIVE_RECOMPUTE_MAX = 20_000
RECOMPUTE_SECONDS = 15
DAY_MS = 86_400_000
Link = Callable[[str, str], str | None]


def list_href(**params: str | None) -> str:
    """The lead list page for these filters (the `GET /leads` parameters)."""
    given = {k: v for k, v in params.items() if v}
    return LIST_PATH + ("?" + urlencode(sorted(given.items())) if given else "")


def _iso_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decision_days(connection: redis.Redis, now: float, days: int) -> list[tuple[str, dict[str, int]]]:
    """Leads per UTC day of their latest decision (its own time), by the state it moved them to."""
    today = datetime.fromtimestamp(now, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = int(today.timestamp() * 1000) - (days - 1) * DAY_MS
    spans = [(_iso_day(first + i * DAY_MS)[:10], first + i * DAY_MS, first + (i + 1) * DAY_MS) for i in range(days)]
    # ACTIVE is left out: most ACTIVE leads were never decided on (their time is their first event's).
    decided = [state for state in STATE_COLORS if state != "ACTIVE"]
    return leadindex.per_day(connection, "state", decided, spans)


def _snapshot_author(connection: redis.Redis) -> str | None:
    """Who stored the stats snapshot: "clock" (its job), "dashboard" (a page that found it behind)."""
    try:
        return str(json.loads(connection.get(STATS_SNAPSHOT_KEY) or b"{}").get("by"))
    except (ValueError, AttributeError):
        return None


def fresh_stats(connection: redis.Redis, now: float, live_total: int | None) -> tuple[dict[str, Any], float, bool]:
    """The detail charts' stats: the clock's snapshot, recomputed now when it disagrees with the live index."""
    stats, as_of, from_snapshot = load_stats(connection, now)
    behind = live_total is not None and from_snapshot and int(stats.get("leads", 0)) != live_total
    # Stored as the snapshot, and redone by a page at most every RECOMPUTE_SECONDS: a page
    # reloading every minute (or a count a lead off after a backfill raced a worker) does not
    # rescan on every view. A clock's snapshot that is behind is redone at once.
    by_page = behind and _snapshot_author(connection) == "dashboard"
    small = live_total is not None and live_total <= LIVE_RECOMPUTE_MAX
    if behind and small and (not by_page or now - as_of > RECOMPUTE_SECONDS):
        snapshot = store_stats_snapshot(connection, by="dashboard")
        return dict(snapshot["stats"]), now, False
    return stats, as_of, from_snapshot


def build_page(
    connection: redis.Redis, queue: Queue, now: float, rq_mounted: bool = False, days: int = DAYS
) -> dict[str, Any]:
    """Gather everything the template shows: tiles and rendered SVG charts, each linked to its leads."""
    indexed = leadindex.is_complete(connection)
    live_total = leadindex.tracked(connection) if indexed else None
    stats, as_of, from_snapshot = fresh_stats(connection, now, live_total)
    since_ms = (int(now * 1000) // DAY_MS - (days - 1)) * DAY_MS
    since = _iso_day(since_ms)
    if indexed:
        outcomes: dict[str, Any] = leadindex.counts(connection, "outcome")
        states = leadindex.counts(connection, "state")
        leads = int(live_total or 0)
        # Leads no rule has decided on are not listed, only counted: they are all open.
        closed = sum(int(outcomes.get(o, 0)) for o in ("won", "lost", "suppressed"))
        outcomes["open"] = max(0, leads - closed)
    else:
        outcomes, states, leads = stats.get("outcomes", {}), {}, int(stats.get("leads", 0))
    colors = reason_colors(stats)
    won, lost = int(outcomes.get("won", 0)), int(outcomes.get("lost", 0))
    outcome_tiles = [
        Tile("Leads tracked", f"{leads:,}", "all leads with events", "info", list_href()),
        Tile("Open", f"{int(outcomes.get('open', 0)):,}", "still being worked", "info", list_href(outcome="open")),
        Tile("Won", f"{won:,}", f"{_pct(won / leads) if leads else '0%'} conversion", "ok", list_href(outcome="won")),
        Tile(
            "Lost",
            f"{lost:,}",
            f"{_pct(lost / leads) if leads else '0%'} loss rate",
            "warn" if lost else "ok",
            list_href(outcome="lost"),
        ),
        Tile(
            "Do not contact",
            f"{int(outcomes.get('suppressed', 0)):,}",
            "suppressed",
            "info",
            list_href(outcome="suppressed"),
        ),
    ]
    if indexed:
        pending = int(states.get("BREAKUP_DUE", 0))
        outcome_tiles.append(
            Tile(
                "Break-ups pending",
                f"{pending:,}",
                "break-up email due or sent",
                "warn" if pending else "ok",
                list_href(state="BREAKUP_DUE"),
            )
        )
        checkins = int(states.get("REENGAGE_DUE", 0))
        outcome_tiles.append(
            Tile(
                "Check-ins due", f"{checkins:,}", "lost leads to look at again", "info", list_href(state="REENGAGE_DUE")
            )
        )
    by = stats.get("by", {})
    charts: list[dict[str, Any]] = []
    one = {"lost": LOST_COLOR}

    def listable(value: str) -> str | None:
        return None if value.startswith("(") else value  # "(unknown)", "(other)": no filter names them

    def reasons_by(dim: str) -> Markup:
        rows = [(value, dict(row.get("reasons", {}))) for value, row in by.get(dim, {}).items() if row.get("reasons")]

        def link(value: str, reason: str) -> str | None:
            return list_href(**{dim: listable(value), "reason": reason}) if listable(value) else None

        return stacked_bars(f"loss-by-{dim}", f"Loss reasons by {dim}", _fold(rows), colors, **LOST, link=link)

    if indexed:
        per_day = decision_days(connection, now, days)
        day_title = f"Decisions by decision date (last {days} days, UTC)"
        day_note = (
            "Each lead on the day of its latest decision (the decision's own time, not when it was processed), "
            "by the state it moved to. Click a column for its leads."
        )

        def day_link(day: str, state: str) -> str | None:
            start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)
            return list_href(state=state, since=_iso_day(start), until=_iso_day(start + DAY_MS))

        day_links: Link | None = day_link
    else:
        per_day = daily_decisions(connection, now, days)
        day_title = f"Decisions per day processed (last {days} days, UTC)"
        day_note = "By the day the workers processed them, until the lead index is built (see the banner)."
        day_links = None
    day_states = [s for s in STATE_COLORS if any(s in d for _, d in per_day)]
    day_states += sorted({s for _, d in per_day for s in d} - set(day_states))
    charts.append(
        {
            "title": day_title,
            "note": day_note,
            "wide": True,
            "svg": columns(
                "decisions-per-day",
                day_title,
                per_day,
                {s: STATE_COLORS.get(s, OTHER_COLOR) for s in day_states},
                link=day_links,
            ),
            "legend": [(words(s), STATE_COLORS.get(s, OTHER_COLOR)) for s in day_states],
        }
    )
    if indexed:
        reason_counts = leadindex.counts(connection, "reason", since_ms)
        loss_rows = [(reason, {reason: n}) for reason, n in reason_counts.items()]
        loss_note = f"Why leads were marked lost, by their latest decision in the last {days} days."
    else:
        loss_rows = [(reason, {reason: int(n)}) for reason, n in stats.get("loss_reasons", {}).items()]
        loss_note = "Why leads were marked lost, all sources."
    charts.append(
        {
            "title": "Loss reasons",
            "note": loss_note,
            "svg": stacked_bars(
                "loss-reasons",
                "Loss reasons",
                _fold(loss_rows),
                colors,
                **LOST,
                link=lambda reason, _: list_href(reason=reason, since=since if indexed else None),
            ),
        }
    )
    charts.append(
        {
            "title": "Conversion vs loss by source",
            "note": "Share of each source's leads won and lost; the rest are open or suppressed.",
            "svg": rates_chart(
                "conversion-by-source",
                "Conversion and loss rate by source",
                by.get("source", {}),
                link=lambda source, outcome: (
                    list_href(source=listable(source), outcome=outcome) if listable(source) else None
                ),
            ),
            "legend": [("won (conversion)", WON_COLOR), ("lost", LOST_COLOR)],
        }
    )
    for dim in DIMENSIONS:
        used = {r for row in by.get(dim, {}).values() for r in row.get("reasons", {})}
        charts.append(
            {
                "title": f"Loss reasons by {dim}",
                "note": f"Lost leads per {dim}, split by reason.",
                "svg": reasons_by(dim),
                "legend": [(words(r), c) for r, c in colors.items() if r in used],
            }
        )
    rule_rows = decisions_by_rule(connection)
    rule_states = [s for s in STATE_COLORS if any(s in v for _, v in rule_rows)]
    charts.append(
        {
            "title": "Decisions by rule",
            "note": "Which rules fire, by the state they moved leads to (since the counters began). "
            "A bar lists the leads the rule decided on.",
            "svg": stacked_bars(
                "decisions-by-rule",
                "Decisions by rule",
                _fold(rule_rows),
                STATE_COLORS,
                **RULES,
                link=lambda rule, _: list_href(rule=listable(rule)) if listable(rule) else None,
            ),
            "legend": [(words(s), STATE_COLORS[s]) for s in rule_states],
        }
    )
    stage_rows = [(stage, {"lost": int(n)}) for stage, n in stats.get("lost_at_deal_stage", {}).items()]
    charts.append(
        {
            "title": "Where leads die: deal stage",
            "note": "The deal stage lost leads were in when they were lost.",
            "svg": stacked_bars(
                "lost-at-stage",
                "Lost leads by deal stage",
                _fold(stage_rows),
                one,
                **LOST,
                link=lambda stage, _: list_href(stage=listable(stage), outcome="lost") if listable(stage) else None,
            ),
        }
    )
    state_rows = [(state, {"lost": int(n)}) for state, n in stats.get("lost_from_state", {}).items()]
    charts.append(
        {
            "title": "Where leads die: lifecycle state",
            "note": "The state a lead was in when a rule marked it lost.",
            "svg": stacked_bars(
                "lost-from-state", "Lost leads by the state they were in", _fold(state_rows), one, **LOST
            ),
        }
    )
    age = now - as_of
    return {
        "queue_tiles": queue_health(connection, queue, now),
        "outcome_tiles": outcome_tiles,
        "charts": charts,
        "as_of": datetime.fromtimestamp(as_of, tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "as_of_age": duration(age),
        "from_snapshot": from_snapshot,
        "stale": from_snapshot and age > STALE_AFTER_SECONDS,
        "now": datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "rq_mounted": rq_mounted,
        "indexed": indexed,
        "ranges": RANGES,
        "days": days,
        "list_path": LIST_PATH,
    }


# --- SVG charts -------------------------------------------------------------------------
# Pure functions from numbers to SVG text; every string that came from data is escaped.

FONT = "font-family='system-ui, -apple-system, Segoe UI, Roboto, sans-serif'"
WIDTH = 560
LABEL_W = 170  # room for a 22-character label in words ("Decision maker bought…")
ROW_H = 26
BAR_H = 16


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ink(fill: str) -> str:
    """Pick dark or white text for a label drawn on `fill` (#rrggbb), whichever reads better."""
    r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    return "#111827" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#fff"


def _linked(element: str, href: str | None) -> str:
    """Wrap an SVG element in a link to `href` (a lead list), or leave it be."""
    if not href:
        return element
    return f"<a class='to-leads' href='{_e(href)}'>{element}</a>"


def _short(label: str, limit: int = 22) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def axis(value: float) -> tuple[int, int]:
    """Return (axis maximum, tick step) for counts up to `value`: whole steps of 1, 2 or 5 times 10^k, at most 5."""
    if value <= 0:
        return 1, 1
    power = 10 ** math.floor(math.log10(value))
    for step in (power // 10, power // 5, power // 2, power, 2 * power, 5 * power):
        if step >= 1 and value / step <= 5:
            return int(math.ceil(value / step) * step), int(step)
    return int(10 * power), int(2 * power)  # unreachable: 5 * power * 5 > value


def _svg(chart_id: str, title: str, desc: str, width: int, height: int, body: Iterable[str]) -> Markup:
    head = (
        f"<svg class='chart' data-chart='{_e(chart_id)}' role='img' viewBox='0 0 {width} {height}' "
        f"width='100%' preserveAspectRatio='xMinYMin meet' aria-labelledby='{_e(chart_id)}-t {_e(chart_id)}-d' "
        f"xmlns='http://www.w3.org/2000/svg' {FONT}>"
        f"<title id='{_e(chart_id)}-t'>{_e(title)}</title><desc id='{_e(chart_id)}-d'>{_e(desc)}</desc>"
    )
    return Markup(head + "".join(body) + "</svg>")


def _empty(chart_id: str, title: str, message: str) -> Markup:
    body = [
        "<rect x='0.5' y='0.5' width='559' height='79' rx='6' fill='#f6f7f9' stroke='#e3e6ea'/>",
        f"<text x='280' y='45' text-anchor='middle' font-size='13' fill='#6b7280'>{_e(message)}</text>",
    ]
    return _svg(chart_id, title, message, WIDTH, 80, body)


def _grid(x0: float, x1: float, top: float, bottom: float, scale: int, step: int, fmt: str = "{:,}") -> list[str]:
    out = []
    for tick in range(0, scale + 1, step):
        x = x0 + (x1 - x0) * tick / scale
        out.append(f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{bottom}' stroke='#e5e7eb'/>")
        label = fmt.format(tick)
        out.append(
            f"<text x='{x:.1f}' y='{bottom + 13}' text-anchor='middle' font-size='10' fill='#6b7280'>{label}</text>"
        )
    return out


def stacked_bars(
    chart_id: str,
    title: str,
    rows: Sequence[tuple[str, Mapping[str, int]]],
    colors: Mapping[str, str],
    unit: str = "",
    empty: str = "No data yet",
    link: Link | None = None,
) -> Markup:
    """Draw horizontal bars, one per row, stacked by series, each labelled with its total.

    Rows and series are identifiers: drawn in words, with the identifier in the tooltip;
    `link(row, series)` gives the lead list a bar segment opens (None: no link).
    """
    rows = [(label, values) for label, values in rows if sum(values.values()) > 0]
    if not rows:
        return _empty(chart_id, title, empty)
    scale, step = axis(max(sum(v.values()) for _, v in rows))
    x0, x1, top = LABEL_W, WIDTH - 44, 8
    bottom = top + ROW_H * len(rows)
    body = _grid(x0, x1, top, bottom, scale, step)
    for i, (label, values) in enumerate(rows):
        y = top + i * ROW_H + (ROW_H - BAR_H) / 2
        total = sum(values.values())
        body.append(
            f"<text x='{x0 - 8}' y='{y + BAR_H / 2 + 4:.1f}' text-anchor='end' font-size='12' fill='#1f2937'>"
            f"<title>{_e(titled(label))}</title>{_e(_short(words(label)))}</text>"
        )
        x = float(x0)
        for series, color in list(colors.items()) + [(k, OTHER_COLOR) for k in values if k not in colors]:
            n = values.get(series, 0)
            if n <= 0:
                continue
            w = (x1 - x0) * n / scale
            name = (
                f"{titled(label)}: {n} {unit}" if len(colors) == 1 else f"{titled(label)}, {titled(series)}: {n} {unit}"
            )
            bar = (
                f"<rect class='bar' x='{x:.1f}' y='{y:.1f}' width='{max(w, 1):.1f}' height='{BAR_H}' "
                f"fill='{color}'><title>{_e(name.strip())}</title></rect>"
            )
            body.append(_linked(bar, link(label, series) if link else None))
            if w >= 22 and len(values) > 1:
                body.append(
                    f"<text x='{x + w / 2:.1f}' y='{y + BAR_H / 2 + 4:.1f}' text-anchor='middle' font-size='10' "
                    f"fill='{_ink(color)}' aria-hidden='true'>{n}</text>"
                )
            x += w
        body.append(
            f"<text x='{x + 6:.1f}' y='{y + BAR_H / 2 + 4:.1f}' font-size='12' font-weight='600' "
            f"fill='#111827'>{total:,}</text>"
        )
    desc = "; ".join(f"{words(label)}: {sum(v.values())}" for label, v in rows)
    return _svg(chart_id, title, f"{title} ({unit}). {desc}", WIDTH, int(bottom + 20), body)


def rates_chart(chart_id: str, title: str, groups: Mapping[str, Mapping[str, Any]], link: Link | None = None) -> Markup:
    """Draw, per group, a conversion-rate bar and a loss-rate bar on a 0-100 % scale (`link(group, "won"|"lost")`)."""
    rows = sorted(groups.items(), key=lambda kv: (-int(kv[1].get("leads", 0)), kv[0]))[:MAX_ROWS]
    rows = [(label, row) for label, row in rows if int(row.get("leads", 0)) > 0]
    if not rows:
        return _empty(chart_id, title, "No leads yet")
    x0, x1, top, pair_h, bar_h = LABEL_W, WIDTH - 92, 8, 40, 13
    bottom = top + pair_h * len(rows)
    body = _grid(x0, x1, top, bottom, 100, 25, "{}%")
    for i, (label, row) in enumerate(rows):
        y = top + i * pair_h + 6
        leads = int(row.get("leads", 0))
        body.append(
            f"<text x='{x0 - 8}' y='{y + bar_h + 4:.1f}' text-anchor='end' font-size='12' fill='#1f2937'>"
            f"<title>{_e(titled(label))}</title>{_e(_short(words(label)))}</text>"
        )
        for j, (kind, rate_key, count_key, color) in enumerate(
            (("won", "conversion_rate", "won", WON_COLOR), ("lost", "loss_rate", "lost", LOST_COLOR))
        ):
            rate = float(row.get(rate_key, 0.0))
            count = int(row.get(count_key, 0))
            by = y + j * (bar_h + 2)
            w = (x1 - x0) * rate
            bar = (
                f"<rect class='bar' x='{x0}' y='{by:.1f}' width='{max(w, 1):.1f}' height='{bar_h}' fill='{color}'>"
                f"<title>{_e(titled(label))}: {count} of {leads} leads {kind} ({_pct(rate)})</title></rect>"
            )
            body.append(_linked(bar, link(label, kind) if link else None))
            body.append(
                f"<text x='{x0 + w + 5:.1f}' y='{by + bar_h - 2:.1f}' font-size='11' fill='#111827'>"
                f"{_pct(rate)} <tspan fill='#6b7280'>({count}/{leads})</tspan></text>"
            )
    desc = "; ".join(
        f"{words(label)}: {_pct(float(r.get('conversion_rate', 0)))} won, {_pct(float(r.get('loss_rate', 0)))} lost"
        for label, r in rows
    )
    return _svg(chart_id, title, f"{title}. {desc}", WIDTH, int(bottom + 20), body)


def columns(
    chart_id: str,
    title: str,
    days: Sequence[tuple[str, Mapping[str, int]]],
    colors: Mapping[str, str],
    link: Link | None = None,
) -> Markup:
    """Draw one stacked column per day, labelled with its total when there were decisions (`link(day, state)`)."""
    width, height, x0, top, bottom = 1140, 230, 40, 14, 196
    total_max = max((sum(v.values()) for _, v in days), default=0)
    scale, step = axis(total_max)
    slot = (width - x0 - 10) / max(len(days), 1)
    bar_w = min(slot * 0.7, 28)
    body = []
    for tick in range(0, scale + 1, step):
        y = bottom - (bottom - top) * tick / scale
        body.append(f"<line x1='{x0}' y1='{y:.1f}' x2='{width - 10}' y2='{y:.1f}' stroke='#e5e7eb'/>")
        body.append(
            f"<text x='{x0 - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='10' fill='#6b7280'>{tick:,}</text>"
        )
    for i, (day, values) in enumerate(days):
        cx = x0 + slot * i + slot / 2
        y = float(bottom)
        for state, color in list(colors.items()) + [(k, OTHER_COLOR) for k in values if k not in colors]:
            n = values.get(state, 0)
            if n <= 0:
                continue
            h = (bottom - top) * n / scale
            y -= h
            bar = (
                f"<rect class='bar' x='{cx - bar_w / 2:.1f}' y='{y:.1f}' width='{bar_w:.1f}' height='{h:.1f}' "
                f"fill='{color}'><title>{day}, {_e(titled(state))}: {n}</title></rect>"
            )
            body.append(_linked(bar, link(day, state) if link else None))
        total = sum(values.values())
        if total:
            body.append(
                f"<text x='{cx:.1f}' y='{y - 4:.1f}' text-anchor='middle' font-size='10' font-weight='600' "
                f"fill='#111827'>{total}</text>"
            )
        if i % max(1, len(days) // 10) == 0 or i == len(days) - 1:
            body.append(
                f"<text x='{cx:.1f}' y='{bottom + 16}' text-anchor='middle' font-size='10' fill='#6b7280'>"
                f"{day[5:]}</text>"
            )
    if not total_max:
        body.append(
            f"<text x='{width / 2:.0f}' y='{(top + bottom) / 2:.0f}' text-anchor='middle' font-size='13' "
            "fill='#6b7280'>No decisions in this period</text>"
        )
    desc = "; ".join(f"{day}: {sum(v.values())}" for day, v in days if sum(v.values()))
    return _svg(chart_id, title, f"{title}. {desc or 'none'}", width, height, body)


# --- rq-dashboard -----------------------------------------------------------------------


def mount_rq_dashboard(app: Flask) -> None:
    """Serve rq-dashboard at /rq behind the admin check, on Pruner's Redis, reading JSON-serialized jobs."""
    # Here, not at the top: rq-dashboard (and its Flask blueprint) loads only when the app is built.
    import rq_dashboard
    from rq_dashboard import web as rq_web

    svc = services(app)
    # rq-dashboard keeps its serializer in a module-level config; its own CLI sets it the same way.
    rq_web.config.serializer = JSONSerializer
    app.config["RQ_DASHBOARD_REDIS_URL"] = (svc.config.redis_url,)
    app.config["RQ_DASHBOARD_SHOW_FULL_ARGS"] = False  # job arguments name leads and carry emails
    # Deleting a queued process_events job would drop events already acknowledged to the CRM.
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = True
    setattr(app, "redis_conn", svc.redis)  # noqa: B010 (rq-dashboard reads this attribute)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=RQ_PREFIX)

    # First of the blueprint's own before_request functions, so nothing of rq-dashboard runs
    # for a caller without the token; scoped to it, so other routes do not pay for the check.
    def _guard_rq() -> ResponseReturnValue | None:
        return check_admin()

    app.before_request_funcs.setdefault("rq_dashboard", []).insert(0, _guard_rq)

    # Runs after rq-dashboard's own before_request, which builds a client from the URL on
    # some routes: use ours instead (timeouts, `rediss://` with self-signed certificates).
    def _pin_connection() -> None:
        setattr(current_app, "redis_conn", services(current_app._get_current_object()).redis)  # type: ignore[attr-defined] # noqa: B010

    app.before_request_funcs.setdefault("rq_dashboard", []).append(_pin_connection)
    app.view_functions["rq_dashboard.list_workers"] = _rq_workers


def _rq_workers(instance_number: int) -> ResponseReturnValue:
    """Answer rq-dashboard's workers.json (its own reads busy workers' jobs with pickle and shows their arguments)."""
    connection = services(current_app._get_current_object()).redis  # type: ignore[attr-defined]
    workers = []
    for worker in Worker.all(connection=connection, serializer=JSONSerializer):
        try:
            job = worker.get_current_job()
        except NoSuchJobError:
            job = None
        current: str | dict[str, Any] = "idle"
        if job is not None:
            # The description, not the call string: arguments hold lead ids and emails.
            current = {
                "job_id": job.id,
                "description": job.description,
                "created_at": job.created_at.isoformat() if job.created_at else None,
                "call_string": job.description,
            }
        state = worker.get_state()
        workers.append(
            {
                "name": worker.name,
                "pid": worker.pid,
                "queues": [q.name for q in worker.queues],
                "state": getattr(state, "value", str(state)),
                "current_job": current,
                "last_heartbeat": worker.last_heartbeat,
                "birth_date": worker.birth_date,
                "successful_job_count": worker.successful_job_count,
                "failed_job_count": worker.failed_job_count,
                "total_working_time": worker.total_working_time,
                "version": getattr(worker, "version", ""),
                "python_version": getattr(worker, "python_version", ""),
            }
        )
    workers.sort(key=lambda w: (w["state"], w["queues"], w["name"]))
    return jsonify(workers=workers), 200, {"Cache-Control": "no-store"}
