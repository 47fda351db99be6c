"""The chaos run: the whole system under faults, then every acknowledged event and CRM effect accounted for.

Real processes, as the Procfile runs them: gunicorn (2 workers), two `pruner worker`, one
`pruner clock`, against a Redis of its own (AOF, `appendfsync always`, its own port and
directory) and the fake HubSpot over HTTP (in this process), which answers some requests 503,
some 429 (past its own rate limit, tighter than Pruner's), and carries some out but answers
504, as a gateway whose upstream timed out (the write happened; the client cannot know).

A sender posts signed batches of canonical events, shuffled, some twice (redeliveries), and
retries every refused or failed post with backoff until it is acknowledged, as HubSpot does.
Meanwhile the faults: a worker SIGKILLed mid-batch, a worker SIGTERMed (as on a deploy),
Redis SIGKILLed and restarted from its AOF, then a worker SIGKILLed while it drains the
outbox. A platform restarts whatever died. Afterwards:

- every acknowledged event is in its lead's history (lost) exactly once (double);
- every lead is in the state its events call for (wrong_state);
- every CRM effect happened, exactly once: one break-up task per break-up lead and none
  elsewhere, one unsubscribe per suppressed person, lost leads UNQUALIFIED with their deal
  closedlost (duplicate_effects, missing_effects);
- recovery: for each fault, the time until every event acknowledged before it is applied;
  and the time from the last fault until the outbox is empty with every effect in HubSpot.

`python -m tests.chaos.harness --leads 400 --seed 3` runs it by hand at any size;
tests/chaos/test_chaos.py runs it in CI at a small, bounded one.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import requests

from tests.fakes.hubspot import TOKEN, FakeHubSpot, FakeHubSpotServer
from tests.helpers import ADMIN_TOKEN, batch_body, event, signed_headers
from tests.integration.support import (
    BIN,
    ROOT,
    base_env,
    free_port,
    redis_answers,
    start_web,
    start_worker,
    stop,
    wait_http,
    wait_until,
)
from worker.actions import lock_key
from worker.eventlog import decode, event_key
from worker.keys import lead_key, outbox_key
from worker.queues import make_queue

KINDS = ("lost", "breakup", "suppressed", "quiet")
EXPECTED_STATE = {"lost": "LOST", "breakup": "BREAKUP_DUE", "suppressed": "SUPPRESSED", "quiet": "ACTIVE"}
PRUNER_RATE = "20/1"  # HUBSPOT_RATE_LIMIT for the workers
FAKE_RATE = (15, 1.0)  # the fake's own, tighter: some 429s are certain


@dataclass
class Plan:
    leads: int = 120
    batch: int = 10
    senders: int = 3
    send_seconds: float = 24.0  # the sending is spread over this long, so the faults fall inside it
    redelivered: float = 0.1  # share of batches posted a second time
    fail_rate: float = 0.15
    lost_answer_rate: float = 0.05
    seed: int = 1
    deadline_s: float = 150.0  # after the last fault, for everything to settle


@dataclass
class Fault:
    name: str
    at: float
    acknowledged: set[tuple[str, bytes]]
    recovered_after: float | None = None
    note: str = ""


@dataclass
class Result:
    leads: int = 0
    events: int = 0
    acknowledged: int = 0
    posts: Counter[int | str] = field(default_factory=Counter)
    lost: int = 0
    double: int = 0
    wrong_state: list[str] = field(default_factory=list)
    duplicate_effects: list[str] = field(default_factory=list)
    missing_effects: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    outbox_empty_after_s: float | None = None
    clock_survived: bool = False
    crm_answers: Counter[int] = field(default_factory=Counter)

    @property
    def worst_recovery_s(self) -> float | None:
        times = [f.recovered_after for f in self.faults]
        return None if not times or None in times else max(t for t in times if t is not None)

    def ok(self, bound_s: float = 60.0) -> bool:
        worst = self.worst_recovery_s
        return (
            self.lost == 0
            and self.double == 0
            and not self.wrong_state
            and not self.duplicate_effects
            and not self.missing_effects
            and worst is not None
            and worst <= bound_s
            and self.outbox_empty_after_s is not None
            and self.outbox_empty_after_s <= bound_s
            and self.clock_survived
        )

    def summary(self) -> str:
        worst = self.worst_recovery_s
        outbox = self.outbox_empty_after_s
        return (
            f"chaos: leads={self.leads} events={self.events} acknowledged={self.acknowledged} "
            f"lost={self.lost} double={self.double} wrong_state={len(self.wrong_state)} "
            f"duplicate_crm_effects={len(self.duplicate_effects)} missing_crm_effects={len(self.missing_effects)} "
            f"worst_recovery={'never' if worst is None else f'{worst:.1f}s'} "
            f"outbox_empty_after_last_fault={'never' if outbox is None else f'{outbox:.1f}s'}"
        )

    def details(self) -> str:
        faults = "; ".join(
            f"{f.name} +{f.at:.1f}s: recovered {'never' if f.recovered_after is None else f'{f.recovered_after:.1f}s'}"
            + (f" ({f.note})" if f.note else "")
            for f in self.faults
        )
        posts = ", ".join(f"{k}: {v}" for k, v in sorted(self.posts.items(), key=str))
        crm = ", ".join(f"{k}: {v}" for k, v in sorted(self.crm_answers.items()))
        return (
            f"faults: {faults}\nposts by answer: {{{posts}}}\nHubSpot answers: {{{crm}}}\n"
            f"clock alive after the Redis outage: {self.clock_survived}\n"
            + (f"wrong states: {self.wrong_state[:10]}\n" if self.wrong_state else "")
            + (f"duplicate effects: {self.duplicate_effects[:10]}\n" if self.duplicate_effects else "")
            + (f"missing effects: {self.missing_effects[:10]}\n" if self.missing_effects else "")
        )


def scenario(kind: str, lead: str, t0: datetime) -> list[dict[str, Any]]:
    """The events of one lead: two ordinary emails, then what makes its kind."""
    events = [event("email_sent", lead, at=t0 - timedelta(days=d)) for d in (9, 8)]
    if kind == "lost":  # said no twice
        events += [event("not_interested", lead, at=t0 + timedelta(days=d)) for d in (0, 1)]
    elif kind == "breakup":  # follow-up meetings pushed back: ask the rep for a break-up message
        events += [
            event("meeting_rescheduled", lead, at=t0 + timedelta(hours=h), data={"first_meeting": h == 0})
            for h in range(3)
        ]
    elif kind == "suppressed":
        events += [event("do_not_contact", lead, at=t0 + timedelta(days=1), data={"channels": ["all"]})]
    return events


class RedisServer:
    """A redis-server of the run's own: AOF fsynced on every write, so a SIGKILL loses no acknowledged write."""

    def __init__(self, directory: Path) -> None:
        self.port, self.directory = free_port(), directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
        wait_until(lambda: redis_answers(self.url), seconds=20)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class System:
    """Web, two workers and the clock against one Redis and the fake HubSpot; restarts what dies."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.web, self.url = start_web(env)
        self.workers = [start_worker(env), start_worker(env)]
        self.clock = subprocess.Popen([str(BIN / "pruner"), "clock"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        wait_http(f"{self.url}/healthz")

    def replace_worker(self, index: int, signum: int) -> int:
        """Signal worker `index`, wait for it to exit, start a new one (the platform's restart); return its code."""
        old = self.workers[index]
        old.send_signal(signum)
        code = old.wait(timeout=60)
        self.workers[index] = start_worker(self.env)
        return code

    def stop(self) -> None:
        for proc in [self.web, *self.workers, self.clock]:
            stop(proc)


class Sender:
    """Posts batches like HubSpot: until acknowledged, with backoff; remembers what was acknowledged."""

    def __init__(self, url: str, plan: Plan, rng: random.Random) -> None:
        self.url, self.plan, self.rng = url, plan, rng
        self.acknowledged: set[tuple[str, bytes]] = set()
        self.posts: Counter[int | str] = Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # the run failed: stop retrying at once

    def snapshot(self) -> set[tuple[str, bytes]]:
        with self.lock:
            return set(self.acknowledged)

    def post_until_acknowledged(self, events: list[dict[str, Any]], give_up_at: float) -> None:
        body = batch_body(events)
        delay = 0.25
        while time.monotonic() < give_up_at and not self.stopping.is_set():
            try:
                answer: int | str = requests.post(
                    f"{self.url}/webhooks/events", data=body, headers=signed_headers(body), timeout=10
                ).status_code
            except requests.RequestException as exc:
                answer = type(exc).__name__
            with self.lock:
                self.posts[answer] += 1
                if answer == 202:
                    self.acknowledged.update((e["lead_id"], event_key("hubspot", e["id"])) for e in events)
                    return
            self.stopping.wait(delay)
            delay = min(delay * 2, 3.0)
        if not self.stopping.is_set():
            raise AssertionError("a batch was never acknowledged")

    def run(self, batches: list[list[dict[str, Any]]], give_up_at: float) -> None:
        start = time.monotonic()
        spacing = self.plan.send_seconds / max(1, len(batches))
        queue = list(enumerate(batches))
        queue_lock = threading.Lock()

        def one_sender() -> None:
            while True:
                with queue_lock:
                    if not queue:
                        return
                    i, batch = queue.pop(0)
                pause = start + i * spacing - time.monotonic()
                if pause > 0 and self.stopping.wait(pause):
                    return
                self.post_until_acknowledged(batch, give_up_at)

        threads = [
            threading.Thread(target=one_sender, name=f"sender-{n}", daemon=True) for n in range(self.plan.senders)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def applied(conn: redis.Redis, wanted: set[tuple[str, bytes]]) -> tuple[int, int] | None:
    """(missing, doubled) among `wanted` (lead, event key) pairs; None while Redis does not answer."""
    leads = sorted({lead for lead, _ in wanted})
    try:
        blobs = conn.mget([lead_key("hubspot", lead) for lead in leads]) if leads else []
    except redis.RedisError:
        return None
    missing = doubled = 0
    by_lead: dict[str, set[bytes]] = {}
    for lead, key in wanted:
        by_lead.setdefault(lead, set()).add(key)
    for lead, blob in zip(leads, blobs, strict=True):
        keys = Counter(e.key for e in decode(blob)) if blob else Counter()
        missing += sum(1 for key in by_lead[lead] if key not in keys)
        doubled += sum(n - 1 for n in keys.values() if n > 1)
    return missing, doubled


class Monitor:
    """Polls, for every fault, until the events acknowledged before it are all applied."""

    def __init__(self, conn: redis.Redis, t0: float, log: Callable[[str], None]) -> None:
        self.conn, self.t0, self.log = conn, t0, log
        self.reported_at = 0.0
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)

    def fault(self, name: str, acknowledged: set[tuple[str, bytes]], note: str = "") -> Fault:
        f = Fault(name, time.monotonic() - self.t0, acknowledged, note=note)
        with self.lock:
            self.faults.append(f)
        return f

    def _run(self) -> None:
        while not self.stopping.wait(0.25):
            with self.lock:
                pending = [f for f in self.faults if f.recovered_after is None]
            for f in pending:
                counts = applied(self.conn, f.acknowledged)
                if counts is not None and counts[0] == 0:
                    f.recovered_after = time.monotonic() - self.t0 - f.at
                elif counts is not None and time.monotonic() - self.reported_at > 10:
                    self.reported_at = time.monotonic()
                    self.log(
                        f"chaos: +{time.monotonic() - self.t0:.0f}s {f.name}: {counts[0]} events missing; "
                        + queues(self.conn)
                    )


def queues(conn: redis.Redis) -> str:
    """The RQ registries, for a post-mortem of a slow recovery."""
    try:
        q = make_queue(conn)
        return (
            f"queued {q.count}, started {q.started_job_registry.count}, scheduled {q.scheduled_job_registry.count}, "
            f"failed {q.failed_job_registry.count}, deferred {q.deferred_job_registry.count}, "
            f"outbox {conn.llen(outbox_key('hubspot'))}"
        )
    except redis.RedisError as exc:
        return f"redis: {type(exc).__name__}"


def busy(conn: redis.Redis, seconds: float) -> bool:
    """Wait until some worker has a batch job started; False if none did in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if make_queue(conn).started_job_registry.count:
                return True
        except redis.RedisError:
            pass
        time.sleep(0.005)
    return False


def draining(conn: redis.Redis, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if conn.exists(lock_key("hubspot")):
                return True
        except redis.RedisError:
            pass
        time.sleep(0.005)
    return False


def inject_faults(
    system: System,
    server: RedisServer,
    conn: redis.Redis,
    sender: Sender,
    monitor: Monitor,
    bulk: list[list[dict[str, Any]]],
    give_up_at: float,
) -> None:
    """The fault schedule: worker SIGKILL mid-batch, worker SIGTERM, Redis SIGKILL + restart, SIGKILL mid-drain.

    Before each worker fault a bulk batch (1,000 events) is posted, so that a worker is busy
    for long enough to be hit in the middle of applying it.
    """

    def hit(name: str, signum: int, index: int) -> None:
        snapshot = sender.snapshot()
        sender.post_until_acknowledged(bulk.pop(), give_up_at)
        note = "mid-batch" if busy(conn, 5) else "no batch was running"
        fault = monitor.fault(name, snapshot | sender.snapshot(), note)
        code = system.replace_worker(index, signum)
        fault.note += f", exit {code}"

    time.sleep(3)
    hit("SIGKILL worker", signal.SIGKILL, 0)
    time.sleep(3)
    hit("SIGTERM worker", signal.SIGTERM, 1)
    time.sleep(3)
    monitor.fault("SIGKILL redis", sender.snapshot(), "down 3 s, restarted from its AOF")
    server.kill()
    time.sleep(3)
    server.start()
    time.sleep(3)
    # Mid-drain: the drain lock is held by one of the workers; which one is not recorded, so both go.
    sender.post_until_acknowledged(bulk.pop(), give_up_at)
    note = "mid-drain" if draining(conn, 10) else "no drain was running"
    monitor.fault("SIGKILL both workers", sender.snapshot(), note)
    for index in (0, 1):
        system.workers[index].kill()
    for index in (0, 1):
        system.workers[index].wait(timeout=10)
        system.workers[index] = start_worker(system.env)


def expected_effects(fake: FakeHubSpot, leads: dict[str, str]) -> tuple[list[str], list[str]]:
    """(duplicate, missing) CRM effects, by the fake's own records."""
    state = fake.state()
    tasks: Counter[str] = Counter(c for t in state["tasks"].values() for c in t["contacts"])
    unsubscribed = Counter(state["unsubscribed"])
    duplicate, missing = [], []
    for lead, kind in leads.items():
        want_tasks = 1 if kind == "breakup" else 0
        if tasks[lead] > want_tasks:
            duplicate.append(f"{lead} ({kind}): {tasks[lead]} tasks")
        elif tasks[lead] < want_tasks:
            missing.append(f"{lead} ({kind}): no break-up task")
        email = f"person{lead}@example.com"
        want_unsub = 1 if kind == "suppressed" else 0
        if unsubscribed[email] > want_unsub:
            duplicate.append(f"{lead} ({kind}): unsubscribed {unsubscribed[email]} times")
        elif unsubscribed[email] < want_unsub:
            missing.append(f"{lead} ({kind}): not unsubscribed")
        if kind == "lost":
            contact, deal = state["contacts"][lead], state["deals"][f"deal-{lead}"]
            if contact.get("hs_lead_status") != "UNQUALIFIED" or deal.get("dealstage") != "closedlost":
                missing.append(f"{lead} (lost): status {contact.get('hs_lead_status')}, deal {deal.get('dealstage')}")
    return duplicate, missing


def settled(conn: redis.Redis, fake: FakeHubSpot, leads: dict[str, str]) -> bool:
    try:
        queue = make_queue(conn)
        if conn.llen(outbox_key("hubspot")) or queue.count or queue.started_job_registry.count:
            return False
    except redis.RedisError:
        return False
    return expected_effects(fake, leads)[1] == []


@contextmanager
def running_system(plan: Plan, fake_url: str, directory: Path) -> Iterator[tuple[System, RedisServer]]:
    server = RedisServer(directory)
    try:
        server.start()
    except BaseException:
        server.stop()  # started but never answered: not left running
        raise
    # The faults are the subject here, not the roll-out guard: every break-up task is wanted
    # today (tests/worker/test_taskcap.py and the e2e test the daily budget).
    policy = directory / "policy.yaml"
    policy.write_text("guardrails:\n  max_tasks_per_owner_per_day: 0\n")
    env = base_env(
        REDIS_URL=server.url,
        PRUNER_POLICY=str(policy),
        PRUNER_DRY_RUN="0",
        HUBSPOT_ACCESS_TOKEN=TOKEN,
        HUBSPOT_API_BASE=fake_url,
        HUBSPOT_RATE_LIMIT=PRUNER_RATE,
        PRUNER_SUPPRESSION_KEY="chaos-suppression-key",
        PRUNER_INBOUND_RATE_LIMIT="off",  # the sender is one address posting as fast as it retries
    )
    try:
        system = System(env)
    except BaseException:
        server.stop()
        raise
    try:
        yield system, server
    finally:
        system.stop()
        server.stop()


def run(plan: Plan, log: Callable[[str], None] = print) -> Result:
    rng = random.Random(plan.seed)
    t0 = datetime.now(tz=UTC) - timedelta(days=3)
    leads = {str(9_000_000 + i): KINDS[i % len(KINDS)] for i in range(plan.leads)}
    events = [e for lead, kind in leads.items() for e in scenario(kind, lead, t0)]
    rng.shuffle(events)
    batches = [events[i : i + plan.batch] for i in range(0, len(events), plan.batch)]
    batches += rng.sample(batches, int(len(batches) * plan.redelivered))  # redeliveries, posted later
    # Three bulk batches of 500 quiet leads x 2 emails, one before each worker fault.
    bulk_leads = [{str(8_000_000 + b * 500 + i): "quiet" for i in range(500)} for b in range(3)]
    bulk = [[e for lead in group for e in scenario("quiet", lead, t0)] for group in bulk_leads]
    for group in bulk_leads:
        leads.update(group)
    result = Result(leads=len(leads), events=len(events) + sum(len(b) for b in bulk))
    with FakeHubSpotServer() as fake_server, tempfile.TemporaryDirectory(prefix="pruner-chaos-") as tmp:
        fake = fake_server.fake
        for lead in leads:  # the bulk leads too: a quiet lead's HubSpot record must stay untouched
            fake.add_contact(lead, f"person{lead}@example.com", hs_lead_status="OPEN")
            fake.add_deal(f"deal-{lead}", lead)
        fake.configure(
            fail_rate=plan.fail_rate,
            lost_answer_rate=plan.lost_answer_rate,
            seed=plan.seed,
            rate_limit=FAKE_RATE[0],
            window_s=FAKE_RATE[1],
            retry_after="1",
        )
        with running_system(plan, fake_server.url, Path(tmp)) as (system, server):
            conn = redis.Redis.from_url(server.url, socket_timeout=2)
            start = time.monotonic()
            monitor = Monitor(conn, start, log)
            monitor.thread.start()
            sender = Sender(system.url, plan, rng)
            give_up_at = start + plan.send_seconds + plan.deadline_s
            sending = threading.Thread(target=sender.run, args=(batches, give_up_at), name="chaos-sender", daemon=True)
            sending.start()
            try:
                inject_faults(system, server, conn, sender, monitor, bulk, give_up_at)
            except BaseException:
                sender.stopping.set()  # nothing keeps posting into a system being torn down
                monitor.stopping.set()
                raise
            last_fault = time.monotonic()
            log(f"chaos: faults done at +{last_fault - start:.1f}s; waiting for the sender and the outbox")
            sending.join()
            deadline = last_fault + plan.deadline_s
            while time.monotonic() < deadline and not settled(conn, fake, leads):
                time.sleep(0.25)
            if settled(conn, fake, leads):
                result.outbox_empty_after_s = time.monotonic() - last_fault
            wait_until(lambda: all(f.recovered_after is not None for f in monitor.faults), seconds=30)
            monitor.stopping.set()
            result.clock_survived = system.clock.poll() is None
            result.faults = monitor.faults
            result.acknowledged = len(sender.acknowledged)
            result.posts = sender.posts
            counts = applied(conn, sender.acknowledged)
            assert counts is not None
            result.lost, result.double = counts
            for lead, kind in leads.items():
                answer = requests.get(
                    f"{system.url}/leads/hubspot/{lead}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
                )
                state = answer.json().get("state") if answer.status_code == 200 else answer.status_code
                if state != EXPECTED_STATE[kind]:
                    result.wrong_state.append(f"{lead} ({kind}): {state}")
            result.duplicate_effects, result.missing_effects = expected_effects(fake, leads)
            result.crm_answers = Counter(c["status"] for c in fake.api_calls())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.harness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=Plan.leads)
    parser.add_argument("--seed", type=int, default=Plan.seed)
    parser.add_argument("--send-seconds", type=float, default=Plan.send_seconds)
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    result = run(Plan(leads=args.leads, seed=args.seed, send_seconds=args.send_seconds))
    print(result.details(), end="")
    print(result.summary())
    if args.json:
        print(json.dumps({"summary": result.summary(), "ok": result.ok()}))
    return 0 if result.ok() else 1


if __name__ == "__main__":
    raise SystemExit(main())
