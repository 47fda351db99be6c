"""Outbound CRM adapters: one module per CRM, each building an `Executor` (worker/crm/base.py)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import redis

from worker.crm.base import Executor
from worker.errors import ConfigError

if TYPE_CHECKING:  # worker.config imports worker.crm.ratelimit, so not at run time
    from worker.config import Config

ADAPTERS = {"hubspot": "worker.crm.hubspot", "salesforce": "worker.crm.salesforce"}


def executor_for(crm: str, config: Config, connection: redis.Redis) -> Executor:
    """Build the executor for `crm` from the configuration; raise ConfigError if it cannot act."""
    if crm not in ADAPTERS:
        raise ConfigError(f"no CRM adapter for {crm!r}")
    module = importlib.import_module(ADAPTERS[crm])
    executor: Executor = module.build_executor(config, connection)
    return executor
