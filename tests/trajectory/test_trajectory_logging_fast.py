"""The per-step logging fast path: a step of the layout the episode last accepted is stored by a
compiled function; anything else goes through the full checks. These tests change the layout
mid-episode in every way the fast path tests for and compare what is read back, and check the
return and end status (kept from the buffer once per hand-off) against a per-step reference."""

from __future__ import annotations

import numpy as np
import pytest

from persisting.errors import InvalidRecordError, SchemaError
from persisting.trajectory import TrajectoryStore


def test_steady_layout_takes_the_compiled_path(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=64) as store:
        ep = store.begin_episode()
        obs = np.zeros(3, np.float32)
        for t in range(10):
            obs[0] = t  # the caller reuses its array: each step is copied
            ep.add_step(obs=obs, action=np.int64(t % 2), reward=0.5, terminated=False, truncated=False)
        assert ep._buffer.unsealed == 8  # steps 3-10 went through the function compiled for their layout
        ep.end()
        got = store.episode(ep.id)
    assert got["obs"][:, 0].tolist() == list(range(10))
    assert got["action"].tolist() == [t % 2 for t in range(10)]


def test_layout_changes_mid_episode_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    steps, expect_obs, expect_act, expect_note = [], [], [], []
    for t in range(300):
        kind = t % 7
        obs = rng.standard_normal(4).astype(np.float32)
        step: dict = {"obs": obs, "action": t, "reward": float(t)}
        if kind == 1:
            step["action"] = np.int32(t)  # another int type, same column
        if kind == 2:
            del step["reward"]  # a field less: null for this step
        if kind == 3:
            step["note"] = t  # a field more, only now and then
        if kind == 4:
            step["obs"] = obs.astype(obs.dtype.newbyteorder(">"))  # same values, another dtype
        if kind == 5:
            step["reward"] = np.float32(t)  # numpy scalar into the float column
        steps.append(step)
        expect_obs.append(obs)
        expect_act.append(t)
        expect_note.append(t if kind == 3 else None)
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=50) as store:
        with store.episode() as ep:
            for s in steps:
                ep.add_step(s)
        got = store.episode(ep.id)
    np.testing.assert_array_equal(got["obs"], np.stack(expect_obs))
    assert got["action"].tolist() == expect_act
    reward = got["reward"]
    for t in range(300):
        assert np.isnan(reward[t]) if t % 7 == 2 else reward[t] == float(t)
    note = got["note"]
    assert [None if np.isnan(v) else int(v) for v in note.astype(np.float64)] == expect_note


def test_int_field_widened_by_another_episode_while_buffered(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=1000) as store:
        a = store.begin_episode()
        for t in range(5):
            a.add_step(x=t)  # an int column, compiled
        b = store.begin_episode()
        b.add_step(x=0.5)  # widens x to float for the whole store
        for t in range(5, 10):
            a.add_step(x=t)
        a.add_step(x=2**62)  # still an int, in range
        a.end()
        b.end()
        got = store.episode(a.id)["x"]
    assert got.dtype == np.float64
    assert got.tolist() == [float(t) for t in range(10)] + [float(2**62)]


def test_python_int_beyond_int64_falls_back_and_is_refused_or_kept(tmp_path):
    with TrajectoryStore(str(tmp_path / "s")) as store:
        with store.episode() as ep:
            for t in range(3):
                ep.add_step(x=t)
            try:
                ep.add_step(x=2**70)
            except InvalidRecordError:
                pass  # refused before it was kept: the episode goes on
            ep.add_step(x=3)
        assert store.episode(ep.id)["x"].tolist()[-1] == 3


@pytest.mark.parametrize("reward_type", [float, np.float32, np.int16, np.uint8, bool, np.float64])
def test_return_is_the_sequential_sum_across_hand_offs(tmp_path, reward_type):
    rng = np.random.default_rng(1)
    raw = rng.standard_normal(777) * 10
    rewards = [reward_type(v > 0) if reward_type is bool else reward_type(v) for v in raw]
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=100) as store:
        ep = store.begin_episode()
        total = 0.0
        for i, r in enumerate(rewards):
            ep.add_step(reward=r, truncated=i == len(rewards) - 1)
            total += float(r)
            if i in (5, 99, 100, 450):
                assert ep.return_ == total  # mid-buffer and right after a hand-off
        ep.end()
        assert ep.return_ == total
        assert ep.status == "truncated"
        row = store.episodes().to_pylist()[0]
    assert row["return"] == total and row["length"] == 777 and row["status"] == "truncated"


def test_status_and_return_when_the_last_step_was_handed_off(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=4) as store:
        ep = store.begin_episode()
        for t in range(8):  # the episode ends with an empty buffer
            ep.add_step(reward=1, terminated=t == 7, truncated=t == 7)
        ep.end()
        assert ep.status == "complete"  # terminated wins
        no_reward = store.begin_episode()
        no_reward.add_step(obs=1.0)
        assert no_reward.return_ is None
        no_reward.end()
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
    assert rows[ep.id]["return"] == 8.0 and rows[no_reward.id]["return"] is None


def test_two_stores_same_type_other_shape_keep_their_shapes(tmp_path):
    """Hand-off schemas are cached by field *and* metadata: (2, 2) and (4,) are both
    fixed_size_list<float>[4] to Arrow; each store must read back its own shape."""
    with TrajectoryStore(str(tmp_path / "a")) as a, TrajectoryStore(str(tmp_path / "b")) as b:
        for store, shape in ((a, (2, 2)), (b, (4,)), (a, (2, 2))):
            with store.episode() as ep:
                for t in range(3):
                    ep.add_step(obs=np.full(shape, t, np.float32))
        assert a.episode(ep.id)["obs"].shape == (3, 2, 2)
        ids = b.episodes().column("episode_id").to_pylist()
        assert b.episode(ids[0])["obs"].shape == (3, 4)


def test_episode_metadata_types_survive_the_typed_row(tmp_path):
    with TrajectoryStore(str(tmp_path / "s")) as store:
        with store.episode(env="Pendulum-v1", seed=3, temperature=0.5, tags=["a", "b"]) as ep:
            ep.add_step(reward=1.0)
        with store.episode(env="Pendulum-v1", seed=4.5) as ep2:  # int metadata widened to float
            ep2.add_step(reward=1.0)
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
    assert rows[ep.id]["seed"] == 3 and rows[ep.id]["tags"] == ["a", "b"] and rows[ep.id]["temperature"] == 0.5
    assert rows[ep2.id]["seed"] == 4.5 and rows[ep.id]["start_time"] is not None


NAMES = ("obs", "action", "reward", "terminated", "truncated")


def test_step_values_store_what_add_step_stores(tmp_path):
    """``add_step_values`` (the gym wrapper's path: no dict per step) against ``add_step`` with
    the same steps, layouts changing mid-episode (another dtype, a Python int where a numpy int
    was, another obs shape that cannot be stored): the same rows read back, and a bad value is
    refused with the same typed error, nothing stored for it."""
    rng = np.random.default_rng(4)
    steps = []
    for t in range(200):
        obs = rng.standard_normal(3).astype(np.float32)
        action = np.int64(t % 3) if t % 11 else t % 3  # now and then a Python int
        if t % 17 == 5:
            obs = obs.astype(obs.dtype.newbyteorder(">"))  # same values, another dtype object
        steps.append((obs, action, float(t), False, t == 199))
    bad = (np.zeros((2, 2), np.float32), 0, 0.0, False, False)  # obs of another shape
    got, errors = [], []
    for path, by_values in (("dict", False), ("values", True)):
        with TrajectoryStore(str(tmp_path / path), step_buffer=32) as store:
            with store.episode() as ep:
                for k, values in enumerate(steps):
                    if by_values:
                        ep.add_step_values(NAMES, values)
                    else:
                        ep.add_step(dict(zip(NAMES, values)))
                    if k == 100:
                        with pytest.raises((InvalidRecordError, SchemaError), match="obs") as refused:
                            if by_values:
                                ep.add_step_values(NAMES, bad)
                            else:
                                ep.add_step(dict(zip(NAMES, bad)))
                        errors.append((type(refused.value), str(refused.value)))
                assert ep.length == 200
            got.append(store.episode(ep.id))
    dict_run, values_run = got
    assert errors[0] == errors[1]
    assert dict_run.keys() == values_run.keys()
    for key in dict_run:
        np.testing.assert_array_equal(dict_run[key], values_run[key])
    np.testing.assert_array_equal(values_run["obs"], np.stack([v[0] for v in steps]).astype(np.float32))
    assert values_run["action"].tolist() == [t % 3 for t in range(200)] and values_run["truncated"][-1]


def test_step_values_take_the_compiled_path_and_fall_back_for_other_names(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=64) as store:
        ep = store.begin_episode()
        obs = np.zeros(3, np.float32)
        generic = []
        add_step = ep.add_step
        ep.add_step = lambda step: (generic.append(int(step["action"])), add_step(step))  # type: ignore[method-assign]
        for t in range(10):
            obs[0] = t  # reused by the caller: each step is copied
            ep.add_step_values(NAMES, (obs, np.int64(t), 0.5, False, False))
        # the first step registers the fields, the second compiles the layout; 3-10 skip add_step
        assert generic == [0, 1] and ep._buffer.unsealed == 8 and ep._buffer.names is NAMES
        ep.add_step_values(("obs", "action"), (obs, np.int64(10)))  # other fields: the dict path
        ep.add_step_values(NAMES[:4] + ("extra",), (obs, np.int64(11), 0.5, False, 1))
        ep.end()
        got = store.episode(ep.id)
    assert got["obs"][:, 0].tolist() == list(range(10)) + [9, 9]
    assert got["action"].tolist() == list(range(12))
    assert np.isnan(got["reward"][10]) and got["extra"][11] == 1
