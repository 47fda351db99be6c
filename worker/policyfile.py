"""Load the policy: the bundled default, overlaid by `PRUNER_POLICY` when set."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from rules.errors import PolicyError
from rules.policy import Policy, parse_policy


def default_policy_text() -> str:
    return resources.files("rules").joinpath("policies/default.yaml").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def default_policy() -> Policy:
    return parse_policy(default_policy_text())


def load_policy(path: str | None) -> Policy:
    """Return the policy at `path` (keys it leaves out keep their defaults), or the default."""
    if path is None:
        return default_policy()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError("(file)", f"{path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PolicyError(
            "(file)", f"{path} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        ) from None
    return parse_policy(text, defaults=default_policy())


@lru_cache(maxsize=4)
def cached_policy(path: str | None) -> Policy:
    """`load_policy`, once per process: workers evaluate thousands of leads per second."""
    return load_policy(path)
