"""Bad input raises typed errors before anything is written; nothing stored earlier is lost."""

from __future__ import annotations

import math

import numpy as np
import pytest

from persisting.errors import (
    ClosedError,
    InvalidRecordError,
    NotFoundError,
    PersistingError,
    SchemaError,
)
from persisting.trajectory import TrajectoryStore


def good(t: int) -> dict:
    return {"obs": np.full(3, t, np.float32), "action": t, "reward": 1.0}


def test_bad_input_is_refused_and_nothing_is_lost(tmp_path):
    path = str(tmp_path / "s")
    with TrajectoryStore(path, step_buffer=2) as store:
        with store.episode(env="x") as first:
            for t in range(3):
                first.add_step(good(t))
        with pytest.raises(ClosedError, match="has ended"):  # a step after end()
            first.add_step(good(3))

        ep = store.begin_episode(env="x")
        ep.add_step(good(0))
        bad_steps = [
            ({**good(1), "action": "left"}, SchemaError),              # int -> str
            ({**good(1), "obs": np.zeros(4, np.float32)}, SchemaError),  # shape changes
            ({**good(1), "obs": np.zeros(3, np.float64)}, SchemaError),  # float32 -> float64
            ({**good(1), "obs": [0.0, 1.0, 2.0]}, SchemaError),          # array -> list
            ({**good(1), "info": {"lives": 3}}, InvalidRecordError),   # dict value
            ({**good(1), "obj": np.array([object()])}, InvalidRecordError),
            ({**good(1), "step": 5}, InvalidRecordError),              # reserved name
            ({**good(1), 3: "x"}, InvalidRecordError),                 # non-str name
        ]
        for step, err in bad_steps:
            with pytest.raises(err):
                ep.add_step(step)
            assert ep.length == 1
        with pytest.raises(InvalidRecordError):
            ep.add_step([1, 2, 3])  # not a dict
        with pytest.raises(InvalidRecordError):
            ep.add_steps([good(1), good(2), 7])  # all or nothing
        with pytest.raises(SchemaError):
            ep.add_steps([good(1), good(2), {**good(3), "action": "right"}])
        with pytest.raises(InvalidRecordError):
            ep.add_steps({"action": [1, 2, 1.5j]})
        with pytest.raises(InvalidRecordError):
            ep.add_steps({"action": 3})  # a column that is no sequence
        assert ep.length == 1
        ep.add_step({**good(1), "reward": float("nan")})  # NaN rewards are stored, not refused
        ep.add_step(good(2))
        ep.end()
        with pytest.raises(InvalidRecordError):
            store.begin_episode(status="x")  # reserved metadata
        with pytest.raises(SchemaError):
            store.begin_episode(env=3)  # stored as a string
        with pytest.raises(NotFoundError) as info:
            store.episode(12345)
        assert isinstance(info.value, KeyError)
        with pytest.raises(NotFoundError):
            store.update_episodes([{"episode_id": ep.id, "score": 1.0}, {"episode_id": 999, "score": 2.0}])
        with pytest.raises(NotFoundError):
            store.sample_steps(4, fields=["nope"])

    with TrajectoryStore(path) as store:
        eps = store.episodes()
        assert eps.column("length").to_pylist() == [3, 3]
        assert "score" not in eps.column_names  # the refused update wrote nothing
        assert math.isnan(eps.column("return").to_pylist()[1])
        out = store.episode(ep.id)
        assert out["action"].tolist() == [0, 1, 2] and math.isnan(out["reward"][1])
        np.testing.assert_array_equal(out["obs"][2], np.full(3, 2, np.float32))
        assert store.episode(first.id)["action"].tolist() == [0, 1, 2]
    with pytest.raises(ClosedError):
        store.begin_episode()
    with pytest.raises(ClosedError):
        ep.add_step(good(9))
    ro = TrajectoryStore(path, read_only=True)
    with pytest.raises(PersistingError, match="read-only"):
        ro.begin_episode()
    ro.close()


POISON_NAMES = ["a.b", "_rowid", "_rowoffset", "_score", "a`b", "*", "a\x00b"]


@pytest.mark.parametrize("name", POISON_NAMES, ids=repr)
def test_field_names_lance_cannot_store_are_refused_and_nothing_is_bricked(tmp_path, name):
    """Issue 14: a step field or episode metadata named ``a.b``, ``_rowid``... was accepted,
    then the episode could never be handed to its table (close raised, every reopen raised)."""
    path = str(tmp_path / "s")
    with TrajectoryStore(path, step_buffer=2) as store:
        with store.episode(env="x") as first:
            for t in range(3):
                first.add_step(good(t))
        ep = store.begin_episode(env="x")
        ep.add_step(good(0))
        for bad in ({**good(1), name: 1.0}, {**good(1), name: np.zeros(3, np.float32)}, {**good(1), name: "s"}):
            with pytest.raises(InvalidRecordError) as info:
                ep.add_step(bad)
            assert info.value.details["field"] == name
        with pytest.raises(InvalidRecordError):
            ep.add_steps({"action": [1, 2], name: [1.0, 2.0]})
        with pytest.raises(InvalidRecordError) as info:
            store.begin_episode(**{"env": "x", name: 1})
        assert info.value.details["field"] == name
        with pytest.raises(InvalidRecordError):
            store.begin_episode(env="x", info=[{"ok": 1, "a`b": 2}])  # a struct name inside a list
        with pytest.raises(InvalidRecordError):
            ep.end(**{name: 1})
        with pytest.raises(InvalidRecordError):
            store.update_episodes([{"episode_id": ep.id, name: 1.0}])  # still open: held for its end row
        with pytest.raises(InvalidRecordError):
            store.update_episodes([{"episode_id": first.id, name: 1.0}])
        assert ep.length == 1
        ep.add_step(good(1))
        ep.end(score=2.0)
        store.update_episodes([{"episode_id": first.id, "cfg": [{"lr.base": 0.1}]}])  # dotted keys nest fine
    with TrajectoryStore(path) as store:
        eps = store.episodes()
        assert eps.column("length").to_pylist() == [3, 2]
        assert name not in eps.column_names
        assert store.episode(ep.id)["action"].tolist() == [0, 1]
        assert name not in store.episode(first.id)


def test_constructor_arguments_and_read_only_writes_are_typed(tmp_path) -> None:
    """Constructor checks raise ConfigError naming the argument (before anything is created);
    writes through a read-only handle raise ReadOnlyError; a closed store ClosedError."""
    from persisting.errors import ClosedError, ConfigError, ReadOnlyError

    for kwargs, name in (({"step_buffer": 0}, "step_buffer"), ({"step_buffer": 2.5}, "step_buffer"),
                         ({"blob_threshold": -1}, "blob_threshold"), ({"durability": "sometimes"}, "durability"),
                         ({"wal_dir": "s3://b/wal"}, "wal_dir")):
        with pytest.raises(ConfigError, match=name):
            TrajectoryStore(str(tmp_path / "never"), **kwargs)
    assert not (tmp_path / "never").exists()
    with TrajectoryStore(str(tmp_path / "s")) as store:
        with store.episode() as ep:
            ep.add_step(x=1.0)
    with TrajectoryStore(str(tmp_path / "s"), read_only=True) as reader:
        with pytest.raises(ReadOnlyError, match=f"TrajectoryStore {tmp_path / 's'} is open read-only"):
            reader.begin_episode()
    reader_closed = TrajectoryStore(str(tmp_path / "s"), read_only=True)
    reader_closed.close()
    with pytest.raises(ClosedError, match="is closed"):
        reader_closed.episodes()
