"""Fixtures the worker tests share: the real Redis (DB 12 of the test Redis) and the fake HubSpot over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.fakes.hubspot import FakeHubSpot, FakeHubSpotServer
from tests.helpers import redis_url_for_tests


@pytest.fixture
def conn() -> Iterator[redis.Redis]:
    """DB 12, flushed before and after: these tests need Redis's Lua and TIME as they really are."""
    connection = redis.Redis.from_url(redis_url_for_tests(12))
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def server() -> Iterator[FakeHubSpotServer]:
    with FakeHubSpotServer() as running:
        yield running


@pytest.fixture
def fake(server: FakeHubSpotServer) -> FakeHubSpot:
    return server.fake
