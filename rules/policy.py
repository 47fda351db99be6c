"""The policy: every threshold of docs/lifecycle.md, parsed strictly from YAML text.

Unknown keys are errors, not silently ignored: a typo in a threshold name would
otherwise leave the default in force while the team believes it changed it.
`PolicyError` names the key path and shows the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date
from typing import Any

import yaml

from rules.errors import PolicyError
from rules.hubspot_map import HubSpotMapping

RULE_IDS = (
    "repeated_no",
    "decisive_no",
    "pushed_back",
    "unresponsive",
    "effort_exceeds_value",
    "proposal_expired",
    "call_cadence_exhausted",
    "breakup_grace",
)
# Upper bounds keep every date the rules compute (a threshold x the largest multiplier, from
# today) inside what `datetime` can represent, and every calendar walk short: a policy that
# `pruner check` accepts must not crash or stall the worker.
MAX_COUNT = 1000  # touches, follow-ups, attempts, "no"s
MAX_DAYS = 3650  # ten years
MIN_HORIZON_DAYS = 30  # retention.horizon_days: a month of lateness at least
MAX_WEEKS = 520
MAX_MULTIPLIER = 10
MAX_FACTOR = 1000
MAX_MINUTES = 525_600  # a year
MAX_AMOUNT = 1e15
MAX_QUIET_DAYS = 200  # of the year: silence must still be able to elapse
# Rule parameters: name -> (minimum, maximum). All are integers except `factor`.
_RULE_PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    "repeated_no": {"min_not_interested": (1, MAX_COUNT)},
    "decisive_no": {},
    "pushed_back": {"min_follow_up_reschedules": (1, MAX_COUNT)},
    "unresponsive": {"min_follow_ups": (1, MAX_COUNT)},
    "effort_exceeds_value": {"factor": (0.1, MAX_FACTOR)},
    "proposal_expired": {"days_after_expiry": (0, MAX_DAYS)},
    "call_cadence_exhausted": {"min_attempts_per_week": (1, MAX_COUNT), "weeks": (1, MAX_WEEKS)},
    "breakup_grace": {"business_days": (0, MAX_DAYS)},
}


@dataclass(frozen=True)
class Tier:
    """A deal-size tier: from `min_amount` up, silence thresholds x `multiplier`."""

    min_amount: float
    multiplier: float
    typical_minutes: int


@dataclass(frozen=True)
class QuietPeriod:
    """An inclusive month-day range (`12-24` .. `01-01` wraps over the new year)."""

    start: tuple[int, int]
    end: tuple[int, int]

    def contains(self, month: int, day: int) -> bool:
        md = (month, day)
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end


DEFAULT_WON_STAGES = frozenset({"closedwon", "closed won"})
DEFAULT_LOST_STAGES = frozenset({"closedlost", "closed lost"})


@dataclass(frozen=True, eq=False)  # identity equality: hashable, so derived tables can be cached
class Policy:
    """A validated policy; build it with `parse_policy`."""

    enabled: Mapping[str, bool]
    params: Mapping[str, Mapping[str, float]]
    min_touches_for_silence: int
    holiday_country: str | None
    quiet_periods: tuple[QuietPeriod, ...]
    tiers: tuple[Tier, ...]
    reengage_after_days: int
    loss_reason_categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Portal-specific HubSpot property names and values (rules/hubspot_map.py).
    hubspot: HubSpotMapping = field(default_factory=HubSpotMapping)
    # Deal stages that make the lead a customer (WON), and those that close a deal as lost;
    # any other stage is an open deal. Compared lowercased and trimmed.
    won_stages: frozenset[str] = DEFAULT_WON_STAGES
    lost_stages: frozenset[str] = DEFAULT_LOST_STAGES
    # Break-up and check-in tasks created per owner per UTC day; the rest wait for the next
    # days, oldest decision first (guardrail 7's roll-out guard). 0: no limit.
    max_tasks_per_owner_per_day: int = 20
    # A lead's events older than this many days are folded into a running state (the log
    # stays bounded); one that arrives that late is counted and ignored. 0: keep everything.
    retention_horizon_days: int = 180

    def deal_outcome(self, stage: str | None, won: bool | None = None) -> str | None:
        """Classify a deal update: "won", "lost", "open", or None when it says nothing about it.

        The CRM's own won flag (Salesforce `IsWon`) beats the stage name when it says won.
        """
        if won:
            return "won"
        if stage is None:
            return None
        name = stage.strip().lower()
        if name in self.won_stages:
            return "won"
        return "lost" if name in self.lost_stages else "open"

    def param(self, rule: str, name: str) -> float:
        return self.params[rule][name]

    def tier(self, amount: float | None) -> Tier:
        """Return the tier a deal of `amount` falls in (no amount: the smallest tier)."""
        value = amount or 0.0
        for tier in self.tiers:
            if value >= tier.min_amount:
                return tier
        return self.tiers[-1]

    def loss_category(self, reason: str | None) -> str:
        """Map a decision maker's free-text reason to a loss-reason category."""
        text = (reason or "").lower()
        for category, words in self.loss_reason_categories.items():
            if any(word in text for word in words):
                return category
        return "other"


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(path, f"must be a mapping, got {value!r:.60}")
    return value


def _no_unknown(value: Mapping[str, Any], allowed: set[str] | tuple[str, ...], path: str) -> None:
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise PolicyError(where, f"is not a known key (known: {', '.join(sorted(allowed))})")


def _number(value: object, path: str, low: float, high: float, integer: bool) -> float:
    """Return `value` as a float if it is a finite number (an integer if `integer`) in [low, high]."""
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value) or not low <= value <= high:  # type: ignore[arg-type,operator]
        kind = "an integer" if integer else "a finite number"
        raise PolicyError(path, f"must be {kind} between {low:g} and {high:g}, got {value!r:.60}")
    return float(value)  # type: ignore[arg-type]


def _month_day(value: object, path: str) -> tuple[int, int]:
    try:
        month, day = (int(part) for part in str(value).split("-"))
        date(2000, month, day)  # a leap year: 02-29 is a day, 02-30 is not
    except ValueError:
        raise PolicyError(path, f'must be "MM-DD", got {value!r:.60}') from None
    return month, day


def _quiet_days(periods: tuple[QuietPeriod, ...]) -> int:
    """Count the days of a (leap) year that `periods` make quiet."""
    days = (date.fromordinal(date(2000, 1, 1).toordinal() + i) for i in range(366))
    return sum(any(p.contains(d.month, d.day) for p in periods) for d in days)


def parse_policy(text: str, defaults: Policy | None = None) -> Policy:
    """Parse and validate policy YAML; keys left out take the values of `defaults`."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError("(file)", f"is not valid YAML: {exc}") from None
    raw = _mapping(raw if raw is not None else {}, "(file)")
    _no_unknown(
        raw,
        {"version", "rules", "guardrails", "reengage", "loss_reason_categories", "hubspot", "outcomes", "retention"},
        "",
    )
    if raw.get("version", 1) != 1:
        raise PolicyError("version", f"must be 1, got {raw.get('version')!r}")

    enabled = dict(defaults.enabled) if defaults else {}
    params = {r: dict(p) for r, p in defaults.params.items()} if defaults else {}
    rules = _mapping(raw.get("rules", {}), "rules")
    _no_unknown(rules, RULE_IDS, "rules")
    for rule_id in RULE_IDS:
        body = _mapping(rules.get(rule_id, {}), f"rules.{rule_id}")
        _no_unknown(body, {"enabled", *_RULE_PARAMS[rule_id]}, f"rules.{rule_id}")
        flag = body.get("enabled", enabled.get(rule_id, True))
        if not isinstance(flag, bool):
            raise PolicyError(f"rules.{rule_id}.enabled", f"must be true or false, got {flag!r:.60}")
        enabled[rule_id] = flag
        params.setdefault(rule_id, {})
        for name, (low, high) in _RULE_PARAMS[rule_id].items():
            if name in body:
                params[rule_id][name] = _number(body[name], f"rules.{rule_id}.{name}", low, high, name != "factor")
            elif name not in params[rule_id]:
                raise PolicyError(f"rules.{rule_id}.{name}", "is required")

    guards = _mapping(raw.get("guardrails", {}), "guardrails")
    _no_unknown(
        guards,
        {
            "min_touches_for_silence",
            "holiday_country",
            "quiet_periods",
            "deal_size_tiers",
            "max_tasks_per_owner_per_day",
        },
        "guardrails",
    )
    default_cap = defaults.max_tasks_per_owner_per_day if defaults else 20
    cap = int(_number(guards.get("max_tasks_per_owner_per_day", default_cap), "guardrails.max_tasks_per_owner_per_day",
                      0, MAX_COUNT, True))  # fmt: skip
    min_touches = guards.get("min_touches_for_silence", defaults.min_touches_for_silence if defaults else None)
    if min_touches is None:
        raise PolicyError("guardrails.min_touches_for_silence", "is required")
    min_touches = int(_number(min_touches, "guardrails.min_touches_for_silence", 0, MAX_COUNT, True))

    country = guards.get("holiday_country", defaults.holiday_country if defaults else None)
    if country is not None:
        import holidays  # only when a calendar is configured: the package loads ~100 country modules

        if not isinstance(country, str) or country.upper() not in holidays.list_supported_countries():
            raise PolicyError(
                "guardrails.holiday_country",
                f"must be a country code the holidays package knows (e.g. US, GB, DE), got {country!r:.60}",
            )
        country = country.upper()

    if "quiet_periods" in guards:
        periods_raw = guards["quiet_periods"]
        if not isinstance(periods_raw, list):
            raise PolicyError("guardrails.quiet_periods", f"must be a list, got {periods_raw!r:.60}")
        periods = []
        for i, item in enumerate(periods_raw):
            where = f"guardrails.quiet_periods[{i}]"
            item = _mapping(item, where)
            _no_unknown(item, {"from", "to"}, where)
            if "from" not in item or "to" not in item:
                raise PolicyError(where, 'needs both "from" and "to"')
            start = _month_day(item["from"], f"{where}.from")
            periods.append(QuietPeriod(start, _month_day(item["to"], f"{where}.to")))
        quiet = tuple(periods)
        if (n := _quiet_days(quiet)) > MAX_QUIET_DAYS:
            raise PolicyError(
                "guardrails.quiet_periods", f"leave no time for silence: they cover {n} days, at most {MAX_QUIET_DAYS}"
            )
    else:
        quiet = defaults.quiet_periods if defaults else ()

    if "deal_size_tiers" in guards:
        tiers_raw = guards["deal_size_tiers"]
        if not isinstance(tiers_raw, list) or not tiers_raw:
            raise PolicyError("guardrails.deal_size_tiers", f"must be a non-empty list, got {tiers_raw!r:.60}")
        tiers = []
        for i, item in enumerate(tiers_raw):
            where = f"guardrails.deal_size_tiers[{i}]"
            item = _mapping(item, where)
            _no_unknown(item, {"min_amount", "multiplier", "typical_minutes"}, where)
            for key in ("min_amount", "multiplier", "typical_minutes"):
                if key not in item:
                    raise PolicyError(f"{where}.{key}", "is required")
            tiers.append(
                Tier(
                    _number(item["min_amount"], f"{where}.min_amount", 0, MAX_AMOUNT, False),
                    _number(item["multiplier"], f"{where}.multiplier", 1, MAX_MULTIPLIER, False),
                    int(_number(item["typical_minutes"], f"{where}.typical_minutes", 1, MAX_MINUTES, True)),
                )
            )
        tiers.sort(key=lambda t: -t.min_amount)
        tier_tuple = tuple(tiers)
    elif defaults:
        tier_tuple = defaults.tiers
    else:
        raise PolicyError("guardrails.deal_size_tiers", "is required")

    reengage = _mapping(raw.get("reengage", {}), "reengage")
    _no_unknown(reengage, {"after_days"}, "reengage")
    after = reengage.get("after_days", defaults.reengage_after_days if defaults else None)
    if after is None:
        raise PolicyError("reengage.after_days", "is required")
    after_days = int(_number(after, "reengage.after_days", 1, MAX_DAYS, True))

    retention = _mapping(raw.get("retention", {}), "retention")
    _no_unknown(retention, {"horizon_days"}, "retention")
    horizon = retention.get("horizon_days", defaults.retention_horizon_days if defaults else 180)
    horizon_days = int(_number(horizon, "retention.horizon_days", 0, MAX_DAYS, True))
    if 0 < horizon_days < MIN_HORIZON_DAYS:
        # Redeliveries (the CRMs retry for a day), reconciliation and edits of recent
        # activities must all land inside the horizon, or they would be ignored.
        raise PolicyError("retention.horizon_days", f"must be 0 (keep everything) or at least {MIN_HORIZON_DAYS}")

    if "loss_reason_categories" in raw:
        cats_raw = _mapping(raw["loss_reason_categories"], "loss_reason_categories")
        cats: dict[str, tuple[str, ...]] = {}
        for name, words in cats_raw.items():
            where = f"loss_reason_categories.{name}"
            if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
                raise PolicyError(where, f"must be a list of words, got {words!r:.60}")
            cats[str(name)] = tuple(w.lower() for w in words)
    else:
        cats = dict(defaults.loss_reason_categories) if defaults else {}

    hubspot = (
        _hubspot(raw["hubspot"], defaults.hubspot if defaults else HubSpotMapping())
        if "hubspot" in raw
        else (defaults.hubspot if defaults else HubSpotMapping())
    )
    outcomes = _mapping(raw.get("outcomes", {}), "outcomes")
    _no_unknown(outcomes, {"won_stages", "lost_stages"}, "outcomes")
    stages = {}
    for key in ("won_stages", "lost_stages"):
        if key in outcomes:
            stages[key] = frozenset(s.strip().lower() for s in _words(outcomes[key], f"outcomes.{key}"))
        elif defaults:
            stages[key] = getattr(defaults, key)
    if "won_stages" in stages and "lost_stages" in stages and stages["won_stages"] & stages["lost_stages"]:
        both = sorted(stages["won_stages"] & stages["lost_stages"])
        raise PolicyError("outcomes", f"a stage cannot be both won and lost: {both}")
    return Policy(
        enabled, params, min_touches, country, quiet, tier_tuple, after_days, cats, hubspot, **stages,
        max_tasks_per_owner_per_day=cap, retention_horizon_days=horizon_days,
    )  # fmt: skip


_PROFILE_FIELDS = {"source", "segment", "priority", "email"}


def _words(value: object, path: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PolicyError(path, f"must be a list of non-empty strings, got {value!r:.60}")
    return frozenset(value)


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(path, f"must be a property name, got {value!r:.60}")
    return value


def _hubspot(value: object, base: HubSpotMapping) -> HubSpotMapping:
    body = _mapping(value, "hubspot")
    known = {f.name for f in fields(HubSpotMapping)}
    _no_unknown(body, known, "hubspot")
    changes: dict[str, Any] = {}
    for key, item in body.items():
        where = f"hubspot.{key}"
        if key in ("lead_status_property", "optout_property", "lifecycle_property"):
            changes[key] = _name(item, where)
        elif key == "profile_properties":
            props = _mapping(item, where)
            for prop, target in props.items():
                if target not in _PROFILE_FIELDS:
                    raise PolicyError(
                        f"{where}.{prop}", f"must be one of {sorted(_PROFILE_FIELDS)}, got {target!r:.40}"
                    )
            changes[key] = dict(props)
        elif key in ("open_lead_statuses", "not_interested_lead_statuses"):
            changes[key] = frozenset(v.upper() for v in _words(item, where))
        elif key == "customer_lifecycle_stages":
            changes[key] = frozenset(v.strip().lower() for v in _words(item, where))
        else:
            changes[key] = _words(item, where)
    mapping = replace(base, **changes)
    both = mapping.open_lead_statuses & mapping.not_interested_lead_statuses
    if both:
        raise PolicyError("hubspot.not_interested_lead_statuses", f"cannot also be open statuses: {sorted(both)}")
    return mapping
