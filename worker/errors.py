"""Errors of the worker shell; the whole tree, with its root, is drawn in rules/errors.py."""

from __future__ import annotations

from rules.errors import PrunerError

__all__ = ["ConfigError", "PrunerError", "StoreError"]


class ConfigError(PrunerError):
    """An environment variable is missing or has a value we cannot use."""


class StoreError(PrunerError):
    """The lead store could not complete a write (e.g. endless write conflicts)."""
