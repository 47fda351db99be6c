"""Shared pieces of the benchmarks: the Redis DB 13 guard, canonical event builders, child processes.

Every benchmark talks to database 13 of the local Redis (127.0.0.1:6379, or the host:port in
PRUNER_TEST_REDIS) and nothing else: `bench_redis` refuses any other database, and `bench_db`
flushes it before and after.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import redis

from rules.events import Crm, Event, EventType
from webhooks.signatures import sign

BENCH_DB = 13
# The same server as the tests (PRUNER_TEST_REDIS, host:port), so a shared machine can keep them off 6379.
REDIS_URL = f"redis://{os.environ.get('PRUNER_TEST_REDIS', '127.0.0.1:6379')}/{BENCH_DB}"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SENTINEL_KEY = "bench:running"
_sentinel: str | None = None  # this process's run marker in DB 13, while bench_db() is open

# The day-to-day mix of a sales team's CRM touches: (type, data, weight).
EVENT_MIX: tuple[tuple[str, dict[str, Any], int], ...] = (
    ("email_sent", {}, 40),
    ("email_sent", {"follow_up": True}, 15),
    ("call_attempted", {}, 22),
    ("call_connected", {}, 5),
    ("email_replied", {}, 8),
    ("meeting_booked", {"meeting_id": "mtg-20931"}, 4),
    ("time_logged", {"minutes": 15}, 4),
    ("email_bounced", {"hard": False}, 2),
)


def year_of_events(
    leads: Sequence[tuple[str, str]], per_lead: int, end: datetime, rng: random.Random, tag: str
) -> Iterator[list[Event]]:
    """`per_lead` rounds of one EVENT_MIX event for every lead, spread over the year before `end`, oldest first."""
    kinds = [(EventType(t), d) for t, d, _ in EVENT_MIX]
    weights = [w for _, _, w in EVENT_MIX]
    start, step = end - timedelta(days=365), timedelta(days=365) / per_lead
    for k in range(per_lead):
        out = []
        for i, (crm, lead) in enumerate(leads):
            etype, data = rng.choices(kinds, weights=weights)[0]
            at = int((start + step * k + timedelta(seconds=i)).timestamp() * 1000)
            out.append(Event(f"{tag}{k}-{i}", etype, Crm(crm), lead, at, dict(data)))
        yield out


def bench_redis() -> redis.Redis:
    """Return a client for database 13; refuse to hand out anything else."""
    conn = redis.Redis.from_url(REDIS_URL)
    db = conn.connection_pool.connection_kwargs.get("db")
    if db != BENCH_DB:
        raise RuntimeError(f"benchmarks only use Redis DB {BENCH_DB}, got {db}")
    return conn


def flush_bench_db(conn: redis.Redis) -> None:
    """FLUSHDB on database 13 (checked again, since FLUSHDB is irreversible); keep this run's sentinel."""
    if conn.connection_pool.connection_kwargs.get("db") != BENCH_DB:
        raise RuntimeError(f"refusing to flush a database other than {BENCH_DB}")
    conn.flushdb()
    if _sentinel:
        conn.set(SENTINEL_KEY, _sentinel)


@contextmanager
def bench_db() -> Iterator[redis.Redis]:
    """Yield a client on an empty database 13, and leave it empty.

    A sentinel key marks the run: when another process flushes DB 13 meanwhile (another
    benchmark, say), the numbers are worthless, and this says so instead of printing them as valid.
    """
    global _sentinel
    conn = bench_redis()
    conn.ping()
    _sentinel = f"{os.getpid()}:{secrets.token_hex(8)}"
    flush_bench_db(conn)
    intact = False
    try:
        yield conn
    finally:
        intact = conn.get(SENTINEL_KEY) == _sentinel.encode()
        _sentinel = None
        flush_bench_db(conn)
        conn.close()
    if not intact:
        raise RuntimeError(
            f"Redis DB {BENCH_DB} was flushed by another process during this run (another benchmark?): "
            "the numbers above are not valid; run the benchmarks one at a time"
        )


def new_secret() -> str:
    """Return a fresh `whsec_` secret for this run."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# Never let a benchmark reach a real CRM or reuse the operator's settings: these are dropped from the
# environment of every process under test, and PRUNER_DRY_RUN=1 keeps decisions out of the outbox.
_DROPPED_ENV = (
    "PRUNER_ADMIN_TOKEN",
    "PRUNER_POLICY",
    "PRUNER_SUPPRESSION_KEY",
    "PRUNER_TRUST_PROXY",
    "HUBSPOT_ACCESS_TOKEN",
    "HUBSPOT_API_BASE",
    "HUBSPOT_CLIENT_SECRET",
    "SALESFORCE_ACCESS_TOKEN",
    "SALESFORCE_API_VERSION",
    "SALESFORCE_INSTANCE_URL",
    "SALESFORCE_ORG_ID",
)


def child_env(secret: str | None = None) -> dict[str, str]:
    """Environment for the processes under test: DB 13, dry run, the run's secret, `bench` importable."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(REDIS_URL=REDIS_URL, PRUNER_DRY_RUN="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    if secret is not None:
        env["PRUNER_WEBHOOK_SECRET"] = secret
    else:
        env.pop("PRUNER_WEBHOOK_SECRET", None)
    return env


def lead_ids(count: int) -> list[tuple[str, str]]:
    """Return `count` distinct (crm, lead id): 4 in 5 HubSpot (11 digits), 1 in 5 Salesforce (18 chars)."""
    out = []
    for i in range(count):
        if i % 5 == 4:
            out.append(("salesforce", f"00Q5g00000{i:08X}"))
        else:
            out.append(("hubspot", str(51_000_000_000 + i * 37)))
    return out


def iso(dt: datetime) -> str:
    """Format like tests.helpers.iso: UTC, microseconds, `Z`."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class BatchBuilder:
    """Builds canonical `{"events": [...]}` batches quickly, each event with a fresh random id.

    Bodies are byte-for-byte what `tests.helpers.batch_body` (plain `json.dumps`) would produce for the
    same events, built by string formatting because helpers.event costs ~18 us per event here and the
    ingest benchmark needs tens of thousands of batches right before each run.
    """

    def __init__(self, leads: Sequence[tuple[str, str]], events_per_batch: int = 100, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.leads = list(leads)
        self.size = events_per_batch
        self.kinds = [(etype, json.dumps(data)) for etype, data, _ in EVENT_MIX]
        self.weights = [weight for _, _, weight in EVENT_MIX]
        now = datetime.now(tz=UTC)
        # Touches from the last few days, like a CRM's batched deliveries.
        self.stamps = [iso(now - timedelta(hours=1, seconds=97 * k)) for k in range(2000)]

    def body(self) -> bytes:
        """One batch as the JSON body a sender POSTs."""
        n, rng = self.size, self.rng
        hexes = os.urandom(16 * n).hex()
        kinds = rng.choices(self.kinds, weights=self.weights, k=n)
        leads = rng.choices(self.leads, k=n)
        stamps = rng.choices(self.stamps, k=n)
        parts = [
            f'{{"id": "evt-{hexes[32 * i : 32 * i + 32]}", "type": "{etype}", "crm": "{crm}", '
            f'"lead_id": "{lead}", "occurred_at": "{at}", "data": {data}}}'
            for i, ((etype, data), (crm, lead), at) in enumerate(zip(kinds, leads, stamps, strict=True))
        ]
        return ('{"events": [' + ", ".join(parts) + "]}").encode()

    def check(self) -> None:
        """Assert the fast bodies are exactly json.dumps of the same events (as tests.helpers builds them)."""
        body = self.body()
        decoded = json.loads(body)
        assert json.dumps(decoded).encode() == body, "BatchBuilder drifted from json.dumps formatting"
        assert len(decoded["events"]) == self.size
        assert len({e["id"] for e in decoded["events"]}) == self.size


def signed_headers(key: bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers for `body`, timestamped now unless told otherwise."""
    msg_id = f"msg_{secrets.token_hex(16)}"
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(key, msg_id, stamp, body),
        "content-type": "application/json",
    }


def raw_post(host: str, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """Return a complete HTTP/1.1 POST, ready to write on a socket."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PLAIN_CONFIG = "python:bench.gunicorn_plain"


@dataclass(frozen=True)
class GunicornSettings:
    """One gunicorn configuration, used unchanged for every target of a run.

    `config` is the file the Procfile passes (`-c gunicorn.conf.py`: access log, timeouts, hooks) or
    PLAIN_CONFIG for gunicorn's defaults; bind, workers, worker class, threads and log level are set
    on the command line and override it.
    """

    workers: int = 2
    worker_class: str = "sync"
    threads: int = 1
    config: str = PLAIN_CONFIG

    def args(self) -> list[str]:
        out = ["-c", self.config, "--workers", str(self.workers), "--worker-class", self.worker_class]
        return out + ["--threads", str(self.threads), "--log-level", "warning"]

    def describe(self) -> str:
        threads = f" x {self.threads} threads" if self.worker_class == "gthread" else ""
        config = "gunicorn defaults (no access log)" if self.config == PLAIN_CONFIG else f"-c {self.config}"
        return f"{self.workers} {self.worker_class} workers{threads}, {config}, --log-level warning"


@contextmanager
def gunicorn(
    app_spec: str, port: int, settings: GunicornSettings, env: Mapping[str, str], log: IO[bytes]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `gunicorn app_spec` on 127.0.0.1:port until the block ends; wait until it answers."""
    cmd = [sys.executable, "-m", "gunicorn", app_spec, "--bind", f"127.0.0.1:{port}", *settings.args()]
    proc = subprocess.Popen(cmd, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(port, "/healthz", proc)
        yield proc
    finally:
        stop(proc)


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until GET path answers 200, or fail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered 200 on 127.0.0.1:{port}{path} within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM one child we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load_note() -> str:
    """The 1/5/15-minute load averages: other work on the 2 cores skews every number here."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"
