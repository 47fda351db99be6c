"""worker/redisinfo.py: what `pruner check` and `/readyz` say of a Redis too old for Pruner."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from worker.redisinfo import inspect


class Server:
    """A Redis that answers INFO as a server of `version` would (only the fields inspect reads)."""

    def __init__(self, version: str) -> None:
        self.version = version

    def info(self, section: str) -> dict[str, Any]:
        return {
            "memory": {"maxmemory_policy": "noeviction", "used_memory": 1_000, "maxmemory": 0},
            "persistence": {"aof_enabled": 1},
            "server": {"redis_version": self.version},
        }[section]

    def config_get(self, name: str) -> dict[str, str]:
        return {"save": ""}


@pytest.mark.parametrize("version", ["5.0.7", "6.0.16", "6.1.0"])
def test_a_redis_older_than_6_2_is_a_problem_that_says_what_to_do(version: str) -> None:
    facts = inspect(Server(version))  # type: ignore[arg-type]
    assert facts.version == version
    assert facts.problems == [
        f"Redis {version} is older than 6.2: Pruner adds events to its logs with COPY and RENAME, "
        "which Redis has from 6.2 on; upgrade Redis"
    ]


@pytest.mark.parametrize("version", ["6.2.0", "6.2.14", "7.0.15", "7.2.4-rc1", "10.0.0", "unstable"])
def test_6_2_and_later_or_a_version_it_cannot_read_pass(version: str) -> None:
    assert inspect(Server(version)).problems == []  # type: ignore[arg-type]


def test_the_servers_the_tests_run_on_report_their_version_and_pass(conn: redis.Redis) -> None:
    facts = inspect(conn)
    assert facts.version == conn.info("server")["redis_version"]
    assert not [problem for problem in facts.problems if "older than" in problem]
