"""What Pruner needs of its Redis, read from the server: 6.2 or later, no eviction, some persistence, memory left.

`pruner check` (the release phase) refuses an evicting `maxmemory-policy`: an evicted event log
or outbox entry is an acknowledged event or a CRM action silently lost. `/readyz` and `/metrics`
report the same facts. Managed Redis services often refuse `CONFIG`; `INFO` is enough for all
but the RDB schedule, which is then reported as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

# COPY (the log appends, worker/transaction.py), GETDEL (worker/upgrades.py) and RQ's BLMOVE.
MIN_VERSION = (6, 2)


@dataclass(frozen=True)
class RedisFacts:
    policy: str | None  # None: INFO refused, so unknown
    used_bytes: int
    max_bytes: int  # 0: no limit
    aof: bool
    rdb: bool | None  # None: CONFIG GET refused, so unknown
    problems: list[str] = field(default_factory=list)  # what makes the deploy fail
    warnings: list[str] = field(default_factory=list)
    version: str | None = None  # INFO's redis_version (None: not given)

    @property
    def headroom(self) -> float:
        """The share of maxmemory still free (1.0 without a limit)."""
        return 1.0 if not self.max_bytes else max(0.0, 1.0 - self.used_bytes / self.max_bytes)


def inspect(connection: redis.Redis) -> RedisFacts:
    """Read the server's eviction policy, memory and persistence; judge them for Pruner."""
    warnings = []
    try:
        memory = connection.info("memory")
        persistence = connection.info("persistence")
        version = connection.info("server").get("redis_version")
    except redis.ResponseError:  # a proxy or emulator without INFO: nothing to judge
        return RedisFacts(None, 0, 0, False, None, [], ["this Redis refuses INFO, so its settings are unknown"])
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    aof = bool(int(persistence.get("aof_enabled", 0)))
    rdb: bool | None
    try:
        rdb = bool(str(connection.config_get("save").get("save", "")).strip())
    except redis.ResponseError:
        rdb = None
        warnings.append("this Redis refuses CONFIG GET, so whether RDB snapshots are on is unknown")
    problems = []
    if version is not None and _older(str(version)):
        wanted = ".".join(map(str, MIN_VERSION))
        problems.append(
            f"Redis {version} is older than {wanted}: Pruner adds events to its logs with COPY and RENAME, "
            f"which Redis has from {wanted} on; upgrade Redis"
        )
    if policy != "noeviction":
        problems.append(
            f"Redis maxmemory-policy is {policy}: it may evict event logs and queued CRM actions under "
            "memory pressure; set it to noeviction (Redis then refuses writes, and Pruner answers 503 "
            "so the CRM retries)"
        )
    if not aof and rdb is False:
        warnings.append("Redis has neither AOF nor RDB persistence on: a restart loses every event and queued job")
    if limit and used / limit > 0.8:
        warnings.append(f"Redis uses {used / limit:.0%} of its maxmemory ({used} of {limit} bytes)")
    return RedisFacts(policy, used, limit, aof, rdb, problems, warnings, str(version) if version else None)


def _older(version: str) -> bool:
    """Whether `version` ("6.0.16", "7.2.4-rc1") is below MIN_VERSION; an unreadable one is not."""
    try:
        parts = tuple(int(part) for part in version.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return parts < MIN_VERSION
