"""Errors raised by the pure core.

RulesError
├── SchemaError    an event or batch does not match the canonical schema
└── PolicyError    a policy file is invalid (names the key and shows the value)
"""

from __future__ import annotations


class RulesError(Exception):
    """Base class for errors of the rules core."""


class SchemaError(RulesError):
    """An event or batch does not match the canonical schema; `field` names where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class PolicyError(RulesError):
    """A policy file is invalid; `path` names the key (`rules.unresponsive.min_follow_ups`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem
