"""A live backfill's spool holds personal data (email addresses): readable by its owner alone,
never written through a link someone planted, and never left from an earlier run (worker/backfill_spool.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import fakeredis
import pytest

from worker.backfill_sinks import JsonlSink
from worker.backfill_spool import SpoolSink, spool_path
from worker.queues import make_queue


def test_the_spool_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the common default: files 0644
    try:
        path = spool_path("pruner:backfill:hubspot:run-1", str(tmp_path))
        SpoolSink(path, False, make_queue(fakeredis.FakeRedis())).close()
        JsonlSink(str(tmp_path / "out.jsonl"), False).close()  # an --out file too
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "out.jsonl").st_mode) == 0o600


def test_a_planted_link_is_refused_and_an_earlier_runs_spool_replaced(tmp_path: Path) -> None:
    queue = make_queue(fakeredis.FakeRedis())
    path = spool_path("pruner:backfill:hubspot:run-2", str(tmp_path))
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, path)
    with pytest.raises(OSError):
        SpoolSink(path, False, queue)
    with pytest.raises(OSError):
        SpoolSink(path, True, queue)  # nor continued through it
    assert target.read_text() == ""
    os.remove(path)
    Path(path).write_text('{"left": "by a killed run"}\n')
    SpoolSink(path, False, queue).close()  # ours, from before: removed, and created afresh
    assert Path(path).read_text() == ""
