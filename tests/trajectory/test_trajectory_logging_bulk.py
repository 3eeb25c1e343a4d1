"""The bulk parts of the logging fast path: steps stored by the compiled layout function wait in
per-field lists (arrays as bytes) and move into the buffer's columns, marked valid, only when
the buffer is next read or changed; episode metadata columns reuse the Arrow types found for
the same keys and value types. These tests break steady runs at every point that must move the
pending rows first (another layout, a read of the return, a hand-off, a widened field) and
compare everything read back with a per-step reference, and push metadata values the cached
types cannot hold."""

from __future__ import annotations

import numpy as np
import pytest

from persisting.errors import SchemaError
from persisting.trajectory import TrajectoryStore


def _steady(t: int, obs: np.ndarray) -> dict:
    obs[:] = (t, -t, t / 2)  # the caller reuses its array: the stored step must be a copy
    return {"obs": obs, "action": np.int64(t % 3), "reward": t * 0.25, "done": False}


def test_steady_runs_broken_at_every_kind_of_point_read_back_exactly(tmp_path):
    obs = np.zeros(3, np.float32)
    ref: list[dict] = []
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=64) as store:
        ep = store.begin_episode()
        for t in range(400):
            step = _steady(t, obs)
            if t % 50 in (17, 20):
                del step["action"]  # a field less, mid-run
            if t % 50 == 33:
                step["note"] = t  # a field more, mid-run
            if t % 50 == 41 or 200 <= t < 260:
                step["obs"] = obs.astype(">f4")  # another dtype object (byte order) for the same column
            if t % 97 == 5:
                assert ep.return_ == sum(r["reward"] for r in ref)  # a read moves the pending rows
            ref.append({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in step.items()})
            ep.add_step(step)
        ep.end()
        got = store.episode(ep.id)
    assert got["obs"].tolist() == [r["obs"].astype(np.float32).tolist() for r in ref]
    assert [None if np.isnan(v) else v for v in got["action"].astype(float).tolist()] == [
        float(r["action"]) if "action" in r else None for r in ref]
    assert got["reward"].tolist() == [r["reward"] for r in ref]
    assert [bool(v) for v in got["done"]] == [False] * 400
    notes = got["note"]
    assert [int(v) for v, r in zip(notes, ref) if "note" in r] == [r["note"] for r in ref if "note" in r]


def test_pending_rows_survive_a_field_widened_by_another_episode(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=1000) as store:
        a = store.begin_episode()
        for t in range(20):
            a.add_step(score=t, flag=True)  # int column, compiled path from the 3rd step
        b = store.begin_episode()
        b.add_step(score=0.5, flag=False)  # the store's spec widens to float while a's rows wait
        for t in range(20, 30):
            a.add_step(score=t, flag=t % 2 == 0)
        a.end()
        b.end()
        got = store.episode(a.id)
    assert got["score"].tolist() == list(range(30))
    assert got["flag"].tolist() == [True] * 20 + [t % 2 == 0 for t in range(20, 30)]


def test_steps_pending_at_a_crash_free_close_are_kept(tmp_path):
    obs = np.zeros(3, np.float32)
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=256) as store:
        ep = store.begin_episode()
        for t in range(100):  # no hand-off: every row still waits in the pending lists
            ep.add_step(_steady(t, obs))
        assert ep.pending_steps == 100
    with TrajectoryStore(str(tmp_path / "s"), read_only=True) as store:
        got = store.episode(ep.id)
        status = store.episodes().to_pylist()[0]["status"]
    assert status == "incomplete" and got["obs"][:, 0].tolist() == list(range(100))


def test_metadata_values_the_cached_types_cannot_hold(tmp_path):
    with TrajectoryStore(str(tmp_path / "s")) as store:
        ids = []
        for seed in [1, 2, 3, -(1 << 62), (1 << 63) - 1]:
            with store.episode(env="CartPole-v1", seed=seed, temperature=0.5, greedy=False) as ep:
                ep.add_step(reward=1.0)
            ids.append(ep.id)
        with store.episode(env="CartPole-v1", seed=7, temperature=1, greedy=True) as ep:  # int offered to a float column
            ep.add_step(reward=1.0)
        ids.append(ep.id)
        with pytest.raises(SchemaError):  # a str offered to the int column: refused, as without the cache
            store.begin_episode(env="CartPole-v1", seed="nine", temperature=0.5, greedy=False)
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
    assert [rows[i]["seed"] for i in ids] == [1, 2, 3, -(1 << 62), (1 << 63) - 1, 7]
    assert [rows[i]["temperature"] for i in ids] == [0.5] * 5 + [1.0]
    assert [rows[i]["greedy"] for i in ids] == [False] * 5 + [True]
    assert {rows[i]["env"] for i in ids} == {"CartPole-v1"}


def test_repeated_metadata_values_reuse_columns_but_keep_every_value(tmp_path):
    values = [0.0, -0.0, -0.0, float("nan"), 2.5, 2.5]
    with TrajectoryStore(str(tmp_path / "s")) as store:
        ids = []
        for i, x in enumerate(values):
            with store.episode(env="Hopper-v5", temperature=x, run=i // 2) as ep:
                ep.add_step(reward=1.0)
            ids.append(ep.id)
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
    got = [rows[i]["temperature"] for i in ids]
    assert [str(v) for v in got] == [str(v) for v in values]  # the sign of -0.0 and the NaN kept
    assert [rows[i]["run"] for i in ids] == [0, 0, 1, 1, 2, 2]
