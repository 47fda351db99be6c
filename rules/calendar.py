"""Quiet days and business days (docs/lifecycle.md guardrail 2), in UTC.

A quiet day is a public holiday of the policy's country (the `holidays` package)
or a day inside one of the policy's quiet periods (default Dec 24 - Jan 1).
Silence is not counted on quiet days; grace periods count business days
(Monday-Friday, not quiet).
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache

from rules.policy import Policy

DAY_MS = 86_400_000


class Calendar:
    """Answers "is this day quiet / a business day" for one policy, with caching."""

    def __init__(self, policy: Policy) -> None:
        self._periods = policy.quiet_periods
        self._holidays = None
        if policy.holiday_country:
            import holidays

            self._holidays = holidays.country_holidays(policy.holiday_country)
        self.is_quiet_day = lru_cache(maxsize=4096)(self._is_quiet_day)
        # A lead in BREAKUP_DUE asks for its grace end on every event and sweep: the answer
        # depends only on the day it started, so it is computed once per day and length.
        self._business_end = lru_cache(maxsize=4096)(self._business_end_uncached)
        self._loud_end = lru_cache(maxsize=4096)(self._loud_end_uncached)

    def _is_quiet_day(self, ordinal: int) -> bool:
        day = date.fromordinal(ordinal)
        if any(p.contains(day.month, day.day) for p in self._periods):
            return True
        return self._holidays is not None and day in self._holidays

    def quiet_at(self, ms: int) -> bool:
        """Say whether the instant `ms` falls on a quiet day."""
        return self.is_quiet_day(ordinal_of(ms))

    def is_business_day(self, ordinal: int) -> bool:
        return date.fromordinal(ordinal).weekday() < 5 and not self.is_quiet_day(ordinal)

    def add_business_days(self, start_ms: int, days: int) -> int:
        """Return the instant `days` business days after `start_ms` (same time of day)."""
        start = ordinal_of(start_ms)
        return start_ms + (self._business_end(start, days) - start) * DAY_MS

    def add_loud_days(self, start_ms: int, days: int) -> int:
        """Return the instant `days` non-quiet days after `start_ms` (same time of day)."""
        start = ordinal_of(start_ms)
        return start_ms + (self._loud_end(start, days) - start) * DAY_MS

    def _business_end_uncached(self, ordinal: int, days: int) -> int:
        count = 0
        while count < days:
            ordinal += 1
            count += self.is_business_day(ordinal)
        return ordinal

    def _loud_end_uncached(self, ordinal: int, days: int) -> int:
        count = 0
        while count < days:
            ordinal += 1
            count += not self.is_quiet_day(ordinal)
        return ordinal


@lru_cache(maxsize=16)
def calendar_for(policy: Policy) -> Calendar:
    """The one calendar of a policy: building one costs ~1.5 ms (the holiday tables),
    and a worker decides a batch every few milliseconds with the same policy."""
    return Calendar(policy)


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def ordinal_of(ms: int) -> int:
    """Return the proleptic Gregorian ordinal of the UTC day containing `ms`."""
    return _EPOCH_ORDINAL + ms // DAY_MS


def week_index(ms: int) -> int:
    """Return a number that grows by one per ISO week (weeks start on Monday)."""
    return (ordinal_of(ms) - 1) // 7  # ordinal 1 (0001-01-01) is a Monday
