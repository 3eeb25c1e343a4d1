"""A writer SIGKILLed mid-episode: complete episodes intact, the open one `incomplete` with
every step acknowledged before its last sync, and no episode id ever handed out twice."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import numpy as np


from persisting.trajectory import TrajectoryStore

_CHILD = Path(__file__).with_name("trajectory_child.py")
_spec = importlib.util.spec_from_file_location("_persisting_trajectory_child", _CHILD)
assert _spec is not None and _spec.loader is not None
_child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_child)
step_fields = _child.step_fields


def test_sigkill_mid_episode(tmp_path, spawn_child):
    path = str(tmp_path / "crash")
    child = spawn_child("crash", path)
    assert child.stdout is not None
    complete: list[int] = []
    acked = (None, 0)
    ghost = None
    for line in child.stdout:
        word, *rest = line.split()
        if word == "ghost":
            ghost = int(rest[0])
        elif word == "complete":
            complete = [int(x) for x in rest]
        elif word == "ack":
            acked = (int(rest[0]), int(rest[1]))
            if acked[1] >= 400:
                break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert complete and acked[0] is not None, child.stderr.read() if child.stderr else ""
    open_id, n_acked = acked

    with TrajectoryStore(path) as store:
        assert store.recovered == [open_id]
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
        for e in complete:
            assert rows[e]["status"] == "complete" and rows[e]["kind"] == "done"
            ep = store.episode(e)
            assert ep["step"].tolist() == list(range(30 + e))
            assert ep["action"].tolist() == [step_fields(e, t)["action"] for t in range(30 + e)]
        row = rows[open_id]
        assert row["status"] == "incomplete" and row["kind"] == "open"
        assert row["length"] >= n_acked
        ep = store.episode(open_id)
        n = len(ep["step"])
        assert n == row["length"] and ep["step"].tolist() == list(range(n))
        expect = np.stack([step_fields(open_id, t)["obs"] for t in range(n)])
        np.testing.assert_array_equal(ep["obs"], expect)
        assert row["return"] == sum(step_fields(open_id, t)["reward"] for t in range(n))
        # the ghost left no trace, and no new episode reuses an id the dead writer handed out
        assert ghost is not None and ghost not in rows
        with store.episode() as fresh:
            fresh.add_step(action=0)
        assert fresh.id > max(max(rows), ghost, open_id)
    with TrajectoryStore(path, read_only=True) as store:  # recovery was recorded, not redone
        assert store.episodes(f"episode_id = {open_id}").column("status").to_pylist() == ["incomplete"]
