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
import signal
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rules.calendar import Calendar
from rules.counters import LoggedEvent
from rules.errors import SchemaError
from rules.events import Event, format_ms, parse_event
from rules.lifecycle import evaluate
from rules.policy import Policy
from worker.errors import PrunerError
from worker.eventlog import to_logged

# Simulations replay old and synthetic histories: no "future" check applies.
_FAR_FUTURE_MS = 2**62


class SimulationError(PrunerError):
    """The simulation itself failed (a shard crashed or died), not the input."""


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


_LEAD_ID = re.compile(rb'"lead_id"\s*:\s*"([^"]*)"')


def _shard_of(item: object, shards: int) -> int:
    lead = item.get("lead_id") if isinstance(item, dict) else None
    # crc32, not hash(): every worker process must agree on the shard of a lead.
    return zlib.crc32(lead.encode()) % shards if isinstance(lead, str) else 0


def _decode(line: str | bytes, number: int) -> Any:
    """Return the JSON value on one line; raise `SchemaError` naming the line if it is not one."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SchemaError(
                f"line {number}", f"is not valid UTF-8: byte 0x{line[exc.start]:02x} at column {exc.start + 1}"
            ) from None
    try:
        return json.loads(line)
    except ValueError as exc:
        raise SchemaError(f"line {number}", f"is not valid JSON: {exc}") from None
    except RecursionError:
        raise SchemaError(f"line {number}", "is nested too deeply to be a canonical event") from None


def read_events(stream: Iterable[str | bytes], shard: int = 0, shards: int = 1) -> Iterator[Event]:
    """Yield validated events from JSONL; a bad line raises `SchemaError` naming line and field.

    `stream` yields text lines, or raw lines (bytes: each is decoded as UTF-8, so a bad byte
    is reported with its line). With `shards` > 1, only events of leads in `shard` are
    validated and yielded.
    """
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if shards > 1:
            # Skip other shards' lines without decoding them when the lead id is plain to see:
            # exactly one `"lead_id": "..."` without escapes. Every line still has exactly one
            # owner, which decodes and validates it, so a bad line (even one that is not
            # UTF-8: the id's raw bytes are hashed) is always reported.
            raw_line = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
            found = _LEAD_ID.findall(raw_line)
            if len(found) == 1 and b"\\" not in found[0] and zlib.crc32(found[0]) % shards != shard:
                continue
        raw = _decode(line, number)
        try:
            if isinstance(raw, dict) and "events" in raw and isinstance(raw["events"], list):
                for i, item in enumerate(raw["events"]):
                    if shards == 1 or _shard_of(item, shards) == shard:
                        yield parse_event(item, f"line {number}: events[{i}]", _FAR_FUTURE_MS)
            elif shards == 1 or _shard_of(raw, shards) == shard:
                yield parse_event(raw, f"line {number}", _FAR_FUTURE_MS)
        except RecursionError:
            raise SchemaError(f"line {number}", "is nested too deeply to be a canonical event") from None


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


def _counting(stream: Iterable[bytes], report: Callable[[int], None]) -> Iterator[bytes]:
    """Yield the stream's lines, reporting bytes read every few thousand lines."""
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

    `progress`, when given, is called with the fraction of the file read so far. A bad line
    raises `SchemaError` naming it; a shard that crashes or dies raises `SimulationError`.
    """
    size = max(1, os.path.getsize(path))
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if size >= PARALLEL_MIN_BYTES else 1
    if workers <= 1:
        # Bytes, decoded line by line: a byte that is not UTF-8 is reported with its line.
        with open(path, "rb") as stream:
            lines: Iterable[bytes] = stream
            if progress is not None:
                lines = _counting(stream, lambda read: progress(min(1.0, read / size)))
            return simulate(read_events(lines), policy, now_ms)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(workers)
    last_seen = ctx.Array("q", workers)
    read = ctx.Value("q", 0)  # bytes shard 0 has read: every shard reads the whole file
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_shard_worker,
            args=(path, policy, now_ms, k, workers, barrier, last_seen, results, read),
            daemon=True,
        )
        for k in range(workers)
    ]
    for proc in procs:
        proc.start()
    finished = False
    try:
        outcomes = _gather(procs, results, lambda: progress(min(1.0, read.value / size)) if progress else None)
        finished = True
    finally:
        if not finished:
            # Wake the shards waiting for the one that died, and stop whatever is left.
            barrier.abort()
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
        for proc in procs:
            proc.join()
    errors = sorted((o[2], o[3]) for o in outcomes.values() if o[0] == "error")
    if errors:
        _, (field, problem) = errors[0]
        raise SchemaError(field, problem)
    crashes = sorted((shard, o[2]) for shard, o in outcomes.items() if o[0] == "crash")
    if crashes:
        shard, what = crashes[0]
        raise SimulationError(f"shard {shard + 1} of {workers} failed: {what}")
    merged = Report()
    for _, _, report in outcomes.values():
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


def _gather(procs: list[Any], results: Any, tick: Callable[[], None]) -> dict[int, tuple[Any, ...]]:
    """Collect one outcome per shard; raise `SimulationError` when a shard ends without one."""
    outcomes: dict[int, tuple[Any, ...]] = {}
    while len(outcomes) < len(procs):
        try:
            outcome = results.get(timeout=0.5)
            outcomes[outcome[1]] = outcome
            continue
        except queue.Empty:
            tick()
        ended = [k for k, proc in enumerate(procs) if proc.exitcode is not None and k not in outcomes]
        if not ended:
            continue
        # A shard's report is in the pipe before its process ends: take what is there.
        try:
            while True:
                outcome = results.get(timeout=0.1)
                outcomes[outcome[1]] = outcome
        except queue.Empty:
            pass
        for k in ended:
            if k not in outcomes:
                code = procs[k].exitcode
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                raise SimulationError(f"shard {k + 1} of {len(procs)} {how} before reporting")
    return outcomes


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
    # Ctrl-C reaches every process of the group; the parent stops the shards.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = Report()
    outcome: tuple[Any, ...] | None = None
    leads: Histories = {}
    # Every failure is reported, never raised: the other shards wait for this one at the barrier.
    try:
        with open(path, "rb") as stream:
            lines: Iterable[bytes] = stream
            if shard == 0:
                lines = _counting(stream, lambda n: setattr(read, "value", n))
            leads, last = _collect(read_events(lines, shard, shards), report)
        last_seen[shard] = last
    except SchemaError as exc:
        line = int(m.group(1)) if (m := re.match(r"line (\d+)", exc.field)) else 0
        outcome = ("error", shard, line, (exc.field, exc.problem))
    except Exception as exc:
        outcome = ("crash", shard, _describe(exc))
    if outcome is not None:
        last_seen[shard] = -1
    # Every shard must know the whole file's last event time before deciding "as of" it.
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        return  # the parent gave up: another shard died
    if outcome is None:
        try:
            if min(last_seen) < 0:
                outcome = ("ok", shard, Report())
            else:
                _decide(leads, policy, now_ms if now_ms is not None else max(last_seen), report)
                outcome = ("ok", shard, report)
        except Exception as exc:
            outcome = ("crash", shard, _describe(exc))
    results.put(outcome)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def format_text(report: Report, max_leads: int = 50) -> str:
    """Render a report for people."""
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
