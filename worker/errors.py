"""Errors raised by the worker shell.

PrunerError
├── ConfigError      an environment variable has a value we cannot use
└── StoreError       the lead store could not complete a write
"""

from __future__ import annotations


class PrunerError(Exception):
    """Base class for errors of the worker shell."""


class ConfigError(PrunerError):
    """An environment variable is missing or has a value we cannot use."""


class StoreError(PrunerError):
    """The lead store could not complete a write (e.g. endless write conflicts)."""
