"""Builders for pure rules tests: event histories in a quiet-free stretch of 2026."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rules.counters import LoggedEvent
from rules.events import EventType
from worker.eventlog import event_key

# Monday 2 March 2026, 10:00 UTC: no US holiday or quiet period for weeks around it.
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def at(days: float = 0, hours: float = 0) -> int:
    return ms(T0 + timedelta(days=days, hours=hours))


class History:
    """Appends events with distinct ids, one minute apart unless told otherwise."""

    def __init__(self) -> None:
        self.events: list[LoggedEvent] = []

    def add(self, etype: str, when: int, **data: Any) -> History:
        key = event_key("hubspot", f"e{len(self.events)}")
        self.events.append(LoggedEvent(when, EventType(etype), key, data))
        return self

    def touches(self, n: int, start: int, etype: str = "email_sent", step_ms: int = 3_600_000) -> History:
        for i in range(n):
            self.add(etype, start + i * step_ms)
        return self
