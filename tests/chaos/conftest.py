"""The chaos suite shares the integration suite's process hygiene: nothing it starts may outlive it."""

from tests.integration.conftest import _no_process_left_behind  # noqa: F401  (a session fixture, autouse)
