"""What the integration tests share: real processes (gunicorn, workers), HTTP helpers, waits, Redis.

The fixtures that use these are in conftest.py; tests import the helpers from here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import requests

from rules.calendar import Calendar
from tests.helpers import ADMIN_TOKEN, SECRET, batch_body, redis_url_for_tests, signed_headers
from worker.policyfile import default_policy

REDIS_URL = redis_url_for_tests(15)


ROOT = Path(__file__).resolve().parents[2]


BIN = Path(sys.executable).parent


def loud_day(now: datetime, days_ago: int, span: int) -> datetime:
    """The latest day at least `days_ago` before `now` that starts `span` non-quiet days, at 08:00 UTC.

    The processes under test run on the wall clock, so histories are dated from today: they
    must avoid the default policy's holidays and Dec 24 - Jan 1, where touches do not count as
    silence, or a test would pass on one day and fail on another.
    """
    calendar = Calendar(default_policy())
    day = (now - timedelta(days=days_ago)).replace(hour=8, minute=0, second=0, microsecond=0)
    while any(calendar.quiet_at(int((day + timedelta(days=i)).timestamp() * 1000)) for i in range(span)):
        day -= timedelta(days=1)
    return day


def days_past_grace(now: datetime, business_days: int) -> int:
    """Whole days from `now` to just past `business_days` business days after it (weekends,
    holidays and Dec 24 - Jan 1 skipped, as the break-up grace counts them)."""
    start = int(now.timestamp() * 1000)
    end = Calendar(default_policy()).add_business_days(start, business_days)
    return (end - start) // 86_400_000 + 1


def send(url: str, events: list[dict[str, Any]]) -> requests.Response:
    """POST a signed canonical batch to `/webhooks/events`."""
    body = batch_body(events)
    return requests.post(f"{url}/webhooks/events", data=body, headers=signed_headers(body), timeout=10)


def get_lead(url: str, lead_id: str, crm: str = "hubspot") -> requests.Response:
    """GET `/leads/<crm>/<lead_id>` with the admin token."""
    return requests.get(f"{url}/leads/{crm}/{lead_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)


def wait_until(check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {seconds} s")


def drained(conn: redis.Redis) -> Callable[[], bool]:
    """True once every queued job has finished: jobs are deleted on success (result_ttl=0),
    so no `rq:job:*` key is left; a failed job keeps its key and makes the wait fail loudly."""
    return lambda: not any(True for _ in conn.scan_iter("rq:job:*", count=1000))


def redis_answers(url: str) -> bool:
    """Whether a Redis at `url` answers PING within a second."""
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {seconds} s")


# The processes the tests start keep their temporary files (gunicorn's metrics directories)


# here, apart from anything else on the machine, so what they leave behind can be checked.
SESSION_TMP = Path(tempfile.mkdtemp(prefix="pruner-tests-"))


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRUNER_", "REDIS_", "HUBSPOT_", "SALESFORCE_"))}
    env["TMPDIR"] = str(SESSION_TMP)
    # Dry run unless a test says otherwise: decisions are recorded, no CRM is called.
    env.update(REDIS_URL=REDIS_URL, PRUNER_WEBHOOK_SECRET=SECRET, PRUNER_ADMIN_TOKEN=ADMIN_TOKEN, PRUNER_DRY_RUN="1")
    # No reconciliation unless a test turns it on: its searches would show among the calls a
    # test counts on the fake CRM.
    env["PRUNER_RECONCILE_MINUTES"] = "0"
    env.update(extra)
    return env


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def our_processes() -> dict[int, str]:
    """Processes started from this checkout's virtualenv, other than this test run and its parents."""
    mine = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        mine.add(pid)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if any(arg.decode(errors="replace").startswith(str(BIN)) for arg in argv[:2]):
            found[int(entry.name)] = " ".join(a.decode(errors="replace") for a in argv if a)
    return found


def start_web(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "gunicorn"), "webhooks:create_app()", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


LOG_DIR = Path(tempfile.gettempdir()) / "pruner-test-logs"


def serving(env: dict[str, str]) -> Iterator[str]:
    """Start the web with `env`, yield its URL once /healthz answers, stop it after (`yield from` in a fixture)."""
    proc, url = start_web(env)
    try:
        wait_http(f"{url}/healthz")
        yield url
    finally:
        stop(proc)


def start_worker(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `pruner worker`; its log goes to $TMPDIR/pruner-test-logs/ for post-mortems."""
    LOG_DIR.mkdir(exist_ok=True)
    with open(LOG_DIR / f"worker-{time.time_ns()}.log", "wb") as log:
        return subprocess.Popen(
            [str(BIN / "pruner"), "worker"], cwd=ROOT, env=env or base_env(), stdout=log, stderr=subprocess.STDOUT
        )
