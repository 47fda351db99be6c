"""Inbound HTTP: the Flask app factory and per-source receivers."""

from __future__ import annotations

from webhooks.app import create_app

__all__ = ["create_app"]
