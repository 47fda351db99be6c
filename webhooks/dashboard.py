"""`GET /dashboard`: queue health and what lost leads say, one HTML page; rq-dashboard at `/rq`.

Ops people watch the queue; RevOps asks "why did we lose these?" (docs/lifecycle.md). Charts
are inline SVG (webhooks/charts.py), so the page needs no JavaScript and loads nothing from
outside (its Content-Security-Policy says so); the numbers come from webhooks/dashboard_data.py.
Loss analytics come from the snapshot the clock's `refresh_stats` job stores every 5 minutes;
without a snapshot (first boot, no clock) they are computed on the spot. Only aggregates are
shown: no lead id, no personal data.

Auth: `Authorization: Bearer <PRUNER_ADMIN_TOKEN>`, or a session cookie set by the login
form (or once by `GET /dashboard?token=...`, which redirects to drop the token from the
address bar). The cookie holds an expiry and an HMAC keyed by the token, never the
token: it cannot be replayed past its expiry and dies when the token is rotated.
"""

from __future__ import annotations

from datetime import UTC, datetime
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
    OTHER_COLOR,
    STATE_COLORS,
    WON_COLOR,
    Link,
    columns,
    pct,
    rates_chart,
    stacked_bars,
)
from webhooks.dashboard_data import (
    DAY_MS,
    DAYS,
    Tile,
    daily_decisions,
    decision_days,
    decisions_by_rule,
    duration,
    fold,
    fresh_stats,
    iso_day,
    queue_health,
    reason_colors,
)
from webhooks.labels import label as words
from webhooks.labels import titled
from webhooks.services import error, services
from worker import leadindex, leadquery
from worker.stats import DIMENSIONS

bp = Blueprint("dashboard", __name__)

# Twice the clock's 5-minute interval plus slack: older means the clock is probably down.
STALE_AFTER_SECONDS = 15 * 60
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
        query = leadquery.parse_query(params)
    except leadquery.QueryError as exc:
        body = render_template("dashboard_leads.html", problem=str(exc), rows=[], filters=[], more=None, indexed=True)
        return _secured(Response(body, status=400, mimetype="text/html"))
    found = leadquery.page(svc.redis, query.filters, query.limit, query.cursor)
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


RANGES = (7, 30, 90, 365)  # the time range selector's choices, in days


def list_href(**params: str | None) -> str:
    """The lead list page for these filters (the `GET /leads` parameters)."""
    given = {k: v for k, v in params.items() if v}
    return LIST_PATH + ("?" + urlencode(sorted(given.items())) if given else "")


def build_page(
    connection: redis.Redis, queue: Queue, now: float, rq_mounted: bool = False, days: int = DAYS
) -> dict[str, Any]:
    """Gather everything the template shows: tiles and rendered SVG charts, each linked to its leads."""
    indexed = leadindex.is_complete(connection)
    live_total = leadindex.tracked(connection) if indexed else None
    stats, as_of, from_snapshot = fresh_stats(connection, now, live_total)
    since_ms = (int(now * 1000) // DAY_MS - (days - 1)) * DAY_MS
    since = iso_day(since_ms)
    if indexed:
        outcomes: dict[str, Any] = leadquery.counts(connection, "outcome")
        states = leadquery.counts(connection, "state")
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

        return stacked_bars(f"loss-by-{dim}", f"Loss reasons by {dim}", fold(rows), colors, **LOST, link=link)

    if indexed:
        per_day = decision_days(connection, now, days)
        day_title = f"Decisions by decision date (last {days} days, UTC)"
        day_note = (
            "Each lead on the day of its latest decision (the decision's own time, not when it was processed), "
            "by the state it moved to. Click a column for its leads."
        )

        def day_link(day: str, state: str) -> str | None:
            start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)
            return list_href(state=state, since=iso_day(start), until=iso_day(start + DAY_MS))

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
        reason_counts = leadquery.counts(connection, "reason", since_ms)
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
                fold(loss_rows),
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
                fold(rule_rows),
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
                fold(stage_rows),
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
                "lost-from-state", "Lost leads by the state they were in", fold(state_rows), one, **LOST
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
