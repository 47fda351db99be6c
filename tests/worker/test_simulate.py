"""`pruner simulate` on malformed input and crashing shards: a sentence and an exit code, never a hang."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from rules.errors import SchemaError
from tests.helpers import event
from worker import simulate as sim
from worker.cli import main
from worker.policyfile import default_policy


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail the test, and kill the shards it started, instead of waiting forever."""

    def expire(signum: int, frame: FrameType | None) -> None:
        for child in multiprocessing.active_children():
            child.kill()
        raise TimeoutError("simulate_file did not return within 30 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
    assert not multiprocessing.active_children()


def history(path: Path, bad: bytes | None = None, at: int = 3, leads: int = 20) -> Path:
    lines = [json.dumps(event(lead_id=f"L{i}", event_id=f"e{i}")).encode() for i in range(leads)]
    if bad is not None:
        lines[at - 1] = bad
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


NOT_UTF8 = json.dumps(event(lead_id="L2", event_id="e2")).encode().replace(b'"L2"', b'"L\xe9"')
DEEP = b"[" * 200_000


@pytest.mark.parametrize(("bad", "problem"), [(NOT_UTF8, "is not valid UTF-8"), (DEEP, "is nested too deeply")])
def test_a_bad_line_is_named_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: bytes, problem: str
) -> None:
    path = history(tmp_path / "events.jsonl", bad)
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"line 3 {problem}" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("bad", [NOT_UTF8, DEEP])
@pytest.mark.parametrize("at", [1, 3, 20])
def test_sharded_simulation_names_a_bad_line_instead_of_hanging(
    tmp_path: Path, no_hang: None, bad: bytes, at: int
) -> None:
    path = history(tmp_path / "events.jsonl", bad, at)
    with pytest.raises(SchemaError, match=rf"^line {at} is not valid UTF-8|^line {at} is nested too deeply"):
        sim.simulate_file(str(path), default_policy(), workers=3)


def test_sharded_cli_names_a_bad_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_hang: None
) -> None:
    monkeypatch.setattr(sim, "PARALLEL_MIN_BYTES", 1)  # shard this small file as if it were > 4 MiB
    path = history(tmp_path / "events.jsonl", NOT_UTF8)
    assert main(["simulate", str(path)]) == 2
    assert "line 3 is not valid UTF-8" in capsys.readouterr().err


def test_sharded_simulation_still_equals_one_process_with_non_ascii_ids(tmp_path: Path) -> None:
    lines = [event(lead_id=lead, event_id=f"e{i}") for i, lead in enumerate(["é", "a\\b", 'q"x', "plain", "日本"] * 4)]
    path = tmp_path / "events.jsonl"
    path.write_text("\r\n".join(json.dumps(x, ensure_ascii=i % 2 == 0) for i, x in enumerate(lines)) + "\n")
    with path.open() as stream:
        single = sim.simulate(sim.read_events(stream), default_policy())
    assert single.leads == 5
    assert sim.simulate_file(str(path), default_policy(), workers=3).to_json() == single.to_json()


def test_a_shard_that_dies_fails_the_simulation_with_a_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_hang: None
) -> None:
    real = sim._shard_worker

    def dies(*args: Any) -> None:
        if args[3] == 1:  # shard 1 is killed outright: no report, no barrier
            os._exit(9)
        real(*args)

    monkeypatch.setattr(sim, "_shard_worker", dies)
    monkeypatch.setattr(sim, "PARALLEL_MIN_BYTES", 1)
    path = history(tmp_path / "events.jsonl")
    assert main(["simulate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "shard 2 of" in err and "exited with code 9" in err
    assert "Traceback" not in err


def test_a_shard_that_raises_fails_the_simulation_with_a_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hang: None
) -> None:
    def boom(*args: Any) -> None:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(sim, "_decide", boom)
    path = history(tmp_path / "events.jsonl")
    with pytest.raises(sim.SimulationError, match=r"shard \d of 2 failed: OverflowError: date value out of range"):
        sim.simulate_file(str(path), default_policy(), workers=2)
