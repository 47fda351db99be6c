"""Integration fixtures: the real Redis (DB 15, flushed), real gunicorn and RQ worker processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from tests.integration.support import (
    REDIS_URL,
    SESSION_TMP,
    base_env,
    our_processes,
    serving,
    start_worker,
    stop,
)


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Fail the run if a test leaves a worker, scheduler, gunicorn or clock process (or a metrics dir) behind."""
    before = set(our_processes())
    yield
    stray = set(SESSION_TMP.glob("pruner-prometheus-*"))
    deadline = time.monotonic() + 10
    left = {p: cmd for p, cmd in our_processes().items() if p not in before}
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {p: cmd for p, cmd in our_processes().items() if p not in before}
    for pid in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not left, f"processes left running by the tests (now killed): {left}"
    shutil.rmtree(SESSION_TMP, ignore_errors=True)
    assert not stray, f"gunicorn metrics directories left behind: {sorted(map(str, stray))}"


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(REDIS_URL)
    conn.flushdb()
    yield conn
    conn.flushdb()


@pytest.fixture
def web(redis_db: redis.Redis) -> Iterator[str]:
    yield from serving(base_env())


@pytest.fixture
def worker(redis_db: redis.Redis) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker()
    yield proc
    stop(proc)
