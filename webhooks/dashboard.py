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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict
from urllib.parse import urlencode

import redis
from flask import Blueprint, Response, current_app, redirect, render_template, request
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from rq import Queue
from werkzeug.wrappers import Response as BaseResponse

from webhooks.auth import COOKIE, SESSION_SECONDS, bearer_ok, session_valid, session_value, token_matches
from webhooks.charts import (
    LOST_COLOR,
    MAX_ROWS,
    OTHER_COLOR,
    PALETTE,
    STATE_COLORS,
    WON_COLOR,
    Link,
    columns,
    pct,
    rates_chart,
    stacked_bars,
)
from webhooks.labels import label as words
from webhooks.labels import titled
from webhooks.services import error, services
from worker import leadindex, queuehealth
from worker import metrics as worker_metrics
from worker.stats import DIMENSIONS, STATS_SNAPSHOT_KEY, collect, store_stats_snapshot

bp = Blueprint("dashboard", __name__)

# Twice the clock's 5-minute interval plus slack: older means the clock is probably down.
STALE_AFTER_SECONDS = 15 * 60
DAYS = 30
RQ_PREFIX = "/rq"
LIST_PATH = "/dashboard/leads"
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


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
    """Queue depth, failures, workers and lag as tiles: the same reading as `/metrics` (worker/queuehealth.py)."""
    health = queuehealth.read(connection, queue, now)
    failed, workers, queued, oldest = health.failed, health.workers, health.queued, health.oldest_wait_s
    lag = health.last_batch
    last_at = lag.get("at")
    return [
        Tile("Queued", f"{queued:,}", "jobs waiting", "warn" if queued and not workers else "ok"),
        Tile("Started", f"{health.started:,}", "jobs running"),
        Tile("Scheduled", f"{health.scheduled:,}", "retries and delayed jobs", "info"),
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


RANGES = (7, 30, 90, 365)  # the time range selector's choices, in days
# Below this many leads a snapshot that disagrees with the live index is recomputed on the
# spot (a SCAN of that size takes well under a second); above, the clock's snapshot serves.
LIVE_RECOMPUTE_MAX = 20_000
RECOMPUTE_SECONDS = 15
DAY_MS = 86_400_000


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
        Tile("Won", f"{won:,}", f"{pct(won / leads) if leads else '0%'} conversion", "ok", list_href(outcome="won")),
        Tile(
            "Lost",
            f"{lost:,}",
            f"{pct(lost / leads) if leads else '0%'} loss rate",
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
