"""Pruner's worker side: RQ jobs, the Redis lead store, CRM callbacks, scheduling, CLI."""
