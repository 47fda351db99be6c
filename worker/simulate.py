"""`pruner simulate`: replay a history of canonical events through a policy, offline.

No Redis, no CRM: events are read from a JSONL file (one canonical event per
line, or one `{"events": [...]}` batch per line), deduplicated on (crm, id),
grouped per lead, and each lead is evaluated as of `--now` (default: the last
event's time). The report counts decisions per rule and loss reason and gives
each lead's final state — what the policy *would* have done.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from rules.calendar import Calendar
from rules.counters import LoggedEvent
from rules.errors import SchemaError
from rules.events import Event, parse_event
from rules.lifecycle import evaluate
from rules.policy import Policy
from worker.eventlog import to_logged

# Simulations replay old and synthetic histories: no "future" check applies.
_FAR_FUTURE_MS = 2**62


@dataclass
class Report:
    events: int = 0
    duplicates: int = 0
    leads: int = 0
    as_of_ms: int = 0
    decisions_by_rule: Counter[str] = field(default_factory=Counter)
    loss_reasons: Counter[str] = field(default_factory=Counter)
    final_states: Counter[str] = field(default_factory=Counter)
    lead_states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "duplicates": self.duplicates,
            "leads": self.leads,
            "decisions_by_rule": dict(self.decisions_by_rule.most_common()),
            "loss_reasons": dict(self.loss_reasons.most_common()),
            "final_states": dict(self.final_states.most_common()),
            "leads_final": self.lead_states,
        }


_LEAD_ID = re.compile(r'"lead_id"\s*:\s*"([^"]*)"')


def _shard_of(item: object, shards: int) -> int:
    lead = item.get("lead_id") if isinstance(item, dict) else None
    # crc32, not hash(): every worker process must agree on the shard of a lead.
    return zlib.crc32(lead.encode()) % shards if isinstance(lead, str) else 0


def read_events(stream: Iterable[str], shard: int = 0, shards: int = 1) -> Iterator[Event]:
    """Yield validated events from JSONL; a bad line raises `SchemaError` naming line and field.

    With `shards` > 1, only events of leads in `shard` are validated and yielded.
    """
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if shards > 1:
            # Skip other shards' lines without decoding them when the lead id is plain to see:
            # exactly one `"lead_id": "..."` without escapes. Every line still has exactly one
            # owner, which decodes and validates it, so a bad line is always reported.
            found = _LEAD_ID.findall(line)
            if len(found) == 1 and "\\" not in found[0] and zlib.crc32(found[0].encode()) % shards != shard:
                continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise SchemaError(f"line {number}", f"is not valid JSON: {exc}") from None
        if isinstance(raw, dict) and "events" in raw and isinstance(raw["events"], list):
            for i, item in enumerate(raw["events"]):
                if shards == 1 or _shard_of(item, shards) == shard:
                    yield parse_event(item, f"line {number}: events[{i}]", _FAR_FUTURE_MS)
        elif shards == 1 or _shard_of(raw, shards) == shard:
            yield parse_event(raw, f"line {number}", _FAR_FUTURE_MS)


Histories = dict[tuple[str, str], dict[bytes, LoggedEvent]]


def _collect(events: Iterator[Event], report: Report) -> tuple[Histories, int]:
    leads: Histories = {}
    last = 0
    for event in events:
        report.events += 1
        logged = to_logged(event)
        per_lead = leads.setdefault((event.crm.value, event.lead_id), {})
        if logged.key in per_lead:
            report.duplicates += 1
            continue
        per_lead[logged.key] = logged
        if event.occurred_ms > last:
            last = event.occurred_ms
    return leads, last


def _decide(leads: Histories, policy: Policy, as_of: int, report: Report) -> None:
    report.as_of_ms = as_of
    calendar = Calendar(policy)
    for (crm, lead_id), history in leads.items():
        ev = evaluate(history.values(), policy, as_of, calendar)
        report.leads += 1
        report.final_states[ev.state.value] += 1
        for d in ev.decisions:
            report.decisions_by_rule[d.rule] += 1
        if ev.loss_reason:
            report.loss_reasons[ev.loss_reason] += 1
        report.lead_states[f"{crm}:{lead_id}"] = {
            "state": ev.state.value,
            "loss_reason": ev.loss_reason,
            "rules": [d.rule for d in ev.decisions],
        }


def simulate(events: Iterator[Event], policy: Policy, now_ms: int | None = None) -> Report:
    """Evaluate every lead in `events` under `policy`, as of `now_ms` (default: the last event)."""
    report = Report()
    leads, last = _collect(events, report)
    _decide(leads, policy, now_ms if now_ms is not None else last, report)
    report.lead_states = dict(sorted(report.lead_states.items()))
    return report


# Below this size one process is faster than starting others.
PARALLEL_MIN_BYTES = 4 * 1024 * 1024


def _counting(stream: IO[str], report: Callable[[int], None]) -> Iterator[str]:
    """Yield the stream's lines, reporting characters read every few thousand lines."""
    read = 0
    for n, line in enumerate(stream, start=1):
        read += len(line)
        if n % 4096 == 0:
            report(read)
        yield line
    report(read)


def simulate_file(
    path: str,
    policy: Policy,
    now_ms: int | None = None,
    workers: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> Report:
    """`simulate` over a JSONL file, sharding leads across processes for large files.

    `progress`, when given, is called with the fraction of the file read so far.
    """
    size = max(1, os.path.getsize(path))
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if size >= PARALLEL_MIN_BYTES else 1
    if workers <= 1:
        with open(path, encoding="utf-8") as stream:
            lines: Iterable[str] = stream
            if progress is not None:
                lines = _counting(stream, lambda read: progress(min(1.0, read / size)))
            return simulate(read_events(lines), policy, now_ms)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(workers)
    last_seen = ctx.Array("q", workers)
    read = ctx.Value("q", 0)  # characters shard 0 has read: every shard reads the whole file
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_shard_worker, args=(path, policy, now_ms, k, workers, barrier, last_seen, results, read))
        for k in range(workers)
    ]
    for proc in procs:
        proc.start()
    outcomes: list[Any] = []
    while len(outcomes) < len(procs):
        try:
            outcomes.append(results.get(timeout=0.5))
        except queue.Empty:
            if progress is not None:
                progress(min(1.0, read.value / size))
    for proc in procs:
        proc.join()
    errors = sorted((o[1], o[2]) for o in outcomes if o[0] == "error")
    if errors:
        line, (field, problem) = errors[0]
        raise SchemaError(field, problem)
    merged = Report()
    for _, report in outcomes:
        merged.events += report.events
        merged.duplicates += report.duplicates
        merged.leads += report.leads
        merged.as_of_ms = report.as_of_ms
        merged.decisions_by_rule.update(report.decisions_by_rule)
        merged.loss_reasons.update(report.loss_reasons)
        merged.final_states.update(report.final_states)
        merged.lead_states.update(report.lead_states)
    merged.lead_states = dict(sorted(merged.lead_states.items()))
    return merged


def _shard_worker(
    path: str,
    policy: Policy,
    now_ms: int | None,
    shard: int,
    shards: int,
    barrier: Any,
    last_seen: Any,
    results: Any,
    read: Any,
) -> None:
    report = Report()
    try:
        with open(path, encoding="utf-8") as stream:
            lines: Iterable[str] = stream
            if shard == 0:
                lines = _counting(stream, lambda n: setattr(read, "value", n))
            leads, last = _collect(read_events(lines, shard, shards), report)
        last_seen[shard] = last
    except SchemaError as exc:
        last_seen[shard] = -1
        barrier.wait()
        line = int(m.group(1)) if (m := re.match(r"line (\d+)", exc.field)) else 0
        results.put(("error", line, (exc.field, exc.problem)))
        return
    # Every shard must know the whole file's last event time before deciding "as of" it.
    barrier.wait()
    if min(last_seen) < 0:
        results.put(("ok", Report()))
        return
    _decide(leads, policy, now_ms if now_ms is not None else max(last_seen), report)
    results.put(("ok", report))


def format_text(report: Report, max_leads: int = 50) -> str:
    """Render a report for people."""
    from rules.events import format_ms

    lines = [
        f"{report.events} events ({report.duplicates} duplicates ignored), {report.leads} leads, "
        f"as of {format_ms(report.as_of_ms) if report.as_of_ms else '-'}",
        "",
        "decisions by rule:",
        *(f"  {rule:<24} {n:>8}" for rule, n in report.decisions_by_rule.most_common()),
        "loss reasons (leads LOST or REENGAGE_DUE at the end):",
        *(f"  {reason:<24} {n:>8}" for reason, n in report.loss_reasons.most_common()),
        "final states:",
        *(f"  {state:<24} {n:>8}" for state, n in report.final_states.most_common()),
    ]
    if report.lead_states:
        lines += ["", f"leads (first {min(max_leads, len(report.lead_states))}):"]
        for lead, st in list(report.lead_states.items())[:max_leads]:
            reason = f" ({st['loss_reason']})" if st["loss_reason"] else ""
            lines.append(f"  {lead:<32} {st['state']}{reason}  {' -> '.join(st['rules'])}")
    return "\n".join(lines)
