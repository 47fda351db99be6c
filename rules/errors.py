"""Errors raised by the pure core.

RulesError
└── SchemaError    an event or batch does not match the canonical schema
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
