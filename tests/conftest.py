from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import ADMIN_TOKEN, SECRET
from webhooks import create_app
from worker.config import Config

# `make test-next-year`: the whole run sees a wall clock this many days ahead (time-machine:
# time.time, datetime.now and friends; the monotonic clock, sleeps and timed waits are left
# alone). Started at configure time, before test modules are imported, so a module-level
# "now" moves too. A test that mixes a pinned date with the real clock fails here today.
_AHEAD = os.environ.get("PRUNER_TEST_CLOCK_AHEAD_DAYS")
_travel: Any = None


def pytest_configure(config: pytest.Config) -> None:
    global _travel
    if _AHEAD:
        import time_machine

        _travel = time_machine.travel(datetime.now(tz=UTC) + timedelta(days=int(_AHEAD)), tick=True)
        _travel.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _travel is not None:
        _travel.stop()


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    conn = fakeredis.FakeRedis()
    yield conn
    conn.flushall()


@pytest.fixture
def config() -> Config:
    # No rate limit: property tests send thousands of requests a second from one test client.
    env = {"PRUNER_WEBHOOK_SECRET": SECRET, "PRUNER_ADMIN_TOKEN": ADMIN_TOKEN, "PRUNER_INBOUND_RATE_LIMIT": "off"}
    return Config.from_env(env)


@pytest.fixture
def app(config: Config, fake_redis: fakeredis.FakeRedis) -> Flask:
    return create_app(config, fake_redis)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(autouse=True)
def _fresh_job_config() -> Iterator[None]:
    # RQ jobs read the environment once per worker process (worker.jobs._config). Tests that run
    # jobs in-process (SimpleWorker) each set their own environment: drop what an earlier test cached.
    from worker import jobs

    jobs._config.cache_clear()
    yield
    jobs._config.cache_clear()
