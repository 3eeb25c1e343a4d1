"""The in-memory sampling view (persisting.trajectory.sampling): it follows other writer
processes' flushes incrementally, is rebuilt after deletes and compaction, survives reopening,
and slices never cross episodes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from persisting.engine import Table
from persisting.trajectory import TrajectoryStore
from persisting.trajectory.fields import FieldSpec
from persisting.trajectory.sampling import StepView


def _check_rows(batch: dict[str, np.ndarray]) -> None:
    """Rows written by trajectory_child.step_fields: every field agrees with (episode, step)."""
    eid, t = batch["episode_id"], batch["step"]
    np.testing.assert_array_equal(batch["obs"][..., 0], (eid * 1000 + t).astype(np.float32))
    np.testing.assert_array_equal(batch["action"], (eid + t) % 3)
    np.testing.assert_array_equal(batch["reward"], (t % 5).astype(np.float64))


def test_view_follows_two_writer_processes_while_a_third_samples(tmp_path, spawn_child):
    path = str(tmp_path / "s")
    TrajectoryStore(path).close()
    writers = [spawn_child("stream", path, "12", "40") for _ in range(2)]
    flushed: dict[int, int] = {}
    with TrajectoryStore(path, read_only=True) as reader:
        live = list(writers)
        while live:
            for w in list(live):
                line = w.stdout.readline().split()
                if not line or line[0] == "done":
                    live.remove(w)
                    continue
                eid, n = int(line[1]), int(line[2])
                flushed[eid] = n
                ep = reader.episode(eid)  # never stale beyond the writer's last flush
                assert len(ep["step"]) == n
                _check_rows(ep)
                batch = reader.sample_steps(64, seed=eid)
                _check_rows(batch)
                nxt = batch["next_obs"][batch["has_next"]]
                np.testing.assert_array_equal(nxt[:, 0], batch["obs"][batch["has_next"]][:, 0] + 1)
        for w in writers:
            assert w.wait(timeout=60) == 0, w.stderr.read()
        assert len(flushed) == 24
        assert reader.num_steps() == sum(flushed.values())
        everything = reader.sample_steps(4000, seed=1)
        _check_rows(everything)
        assert set(everything["episode_id"]) == set(flushed)
        # the view was extended with each writer's new fragments, not rebuilt per flush
        assert reader._reads.view.rebuilds <= 3, reader._reads.view.rebuilds


def test_slices_never_cross_episodes(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=5) as store:
        eps = [store.begin_episode() for _ in range(6)]
        for t in range(30):  # interleaved hand-offs: an episode's rows are not contiguous
            for k, ep in enumerate(eps):
                if t < 8 + 4 * k:
                    ep.add_step(obs=np.full(3, ep.id * 1000 + t, np.float32), action=(ep.id + t) % 3, reward=float(t % 5))
        for ep in eps:
            ep.end()
        store.flush()
        for seed in range(20):
            batch = store.sample_slices(16, 8, seed=seed)
            assert batch["obs"].shape == (16, 8, 3)
            assert (batch["episode_id"] == batch["episode_id"][:, :1]).all()
            assert (np.diff(batch["step"], axis=1) == 1).all()
            _check_rows(batch)
        with pytest.raises(Exception, match="no episode has 40 steps"):
            store.sample_slices(1, 40)


def _table_rows(eid: int, n: int) -> pa.Table:
    t = np.arange(n)
    obs = np.repeat((eid * 1000 + t).astype(np.float32)[:, None], 3, axis=1)
    return pa.table({"episode_id": np.full(n, eid), "step": t,
                     "obs": pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), 3),
                     "action": (eid + t) % 3, "reward": (t % 5).astype(np.float64)})


def test_view_rebuilt_after_delete_and_compaction(tmp_path):
    specs = {"obs": FieldSpec("obs", "fixed", "float32", (3,)), "action": FieldSpec("action", "scalar", "int"),
             "reward": FieldSpec("reward", "scalar", "float")}
    with Table(str(tmp_path / "steps.lance"), follow=False) as table:
        view = StepView()
        for eid in range(4):
            table.append(_table_rows(eid, 50))
            table.flush()
        view.refresh(table, specs)
        assert view.rebuilds == 1 and len(view.index.keys) == 200
        table.append(_table_rows(4, 20))
        table.flush()
        view.refresh(table, specs)
        assert view.rebuilds == 1 and len(view.index.keys) == 220  # appended: extended, not rebuilt

        def check() -> None:
            pos = view.index.positions
            eid, t = view.index.split(np.arange(len(pos)))
            _check_rows({"episode_id": eid, "step": t, "obs": view.gather("obs", pos),
                         "action": view.gather("action", pos), "reward": view.gather("reward", pos)})

        check()
        table.delete("episode_id = 1")
        view.refresh(table, specs)
        # the first fragment (episode 0) is unchanged: only the rows after it are read again
        assert view.rebuilds == 1 and view.partial_rebuilds == 1
        assert len(view.index.keys) == 170 and 1 not in view.index.ids
        check()
        table.compact()  # one fragment now: nothing kept, a full rebuild
        view.refresh(table, specs)
        assert view.rebuilds == 2 and len(view.index.keys) == 170
        check()
        table.append(_table_rows(9, 10))  # pending rows of this handle are in the view too
        view.refresh(table, specs)
        assert len(view.index.keys) == 180 and view.index.episode_slice(9).stop - view.index.episode_slice(9).start == 10
        check()


def test_sample_after_reopen_and_nulls_keep_their_meaning(tmp_path):
    path = str(tmp_path / "s")
    with TrajectoryStore(path) as store:
        for e in range(5):
            with store.episode() as ep:
                ep.add_steps({"obs": np.repeat((ep.id * 1000 + np.arange(30, dtype=np.float32))[:, None], 3, axis=1),
                              "action": (ep.id + np.arange(30)) % 3, "reward": (np.arange(30) % 5).astype(np.float64)})
        with store.episode() as ep:  # a later field: earlier steps read it as missing
            ep.add_step(obs=np.full(3, ep.id * 1000, np.float32), action=ep.id % 3, reward=0.0, bonus=2)
    with TrajectoryStore(path, read_only=True) as store:
        batch = store.sample_steps(500, seed=3)
        assert store._reads.view.rebuilds == 1
        _check_rows(batch)
        last = batch["episode_id"] == 5
        assert last.any() and (batch["bonus"][last] == 2).all() and np.isnan(batch["bonus"][~last]).all()
        whole = store.episode(2)
        assert len(whole["step"]) == 30 and np.isnan(whole["bonus"]).all()
        _check_rows(whole)


def test_step_buffer_keeps_values_across_known_and_new_fields(tmp_path):
    """Steps that match known fields take the columnar fast path, others the full checks;
    both share one buffer, so order, widening and missing values come out as before."""
    obs = np.zeros(3, np.float32)
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=64) as store:
        with store.episode() as ep:
            for t in range(10):
                obs[:] = t  # the caller reuses its array: each step keeps its own copy
                step = {"obs": obs, "reward": t if t < 5 else t + 0.5, "count": np.arange(2) + t}
                if t == 3:
                    step["note"] = "three"
                if t == 7:
                    del step["count"]
                if t == 9:
                    step["final_obs"] = np.full(3, 10, np.float32)
                    step["big"] = 2 ** 40
                ep.add_step(step)
        out = store.episode(ep.id)
    assert out["obs"][:, 0].tolist() == list(range(10))
    assert out["reward"].tolist() == [0, 1, 2, 3, 4, 5.5, 6.5, 7.5, 8.5, 9.5] and ep.return_ == sum(out["reward"])
    assert out["note"].tolist() == [None, None, None, "three"] + [None] * 6
    assert out["count"][7].tolist() == [0, 0] and out["count"][8].tolist() == [8, 9]
    assert np.isnan(out["final_obs"][:9]).all() and out["final_obs"][9].tolist() == [10, 10, 10]
    assert out["big"][9] == 2 ** 40 and np.isnan(out["big"][:9]).all()


def test_view_saved_by_compact_is_used_after_reopen_and_extended(tmp_path):
    path = str(tmp_path / "s")

    def add(store: TrajectoryStore, n: int) -> int:
        with store.episode() as ep:
            t = np.arange(n)
            ep.add_steps({"obs": np.repeat((ep.id * 1000 + t).astype(np.float32)[:, None], 3, axis=1),
                          "action": (ep.id + t) % 3, "reward": (t % 5).astype(np.float64)})
        return ep.id

    with TrajectoryStore(path) as store:
        for _ in range(4):
            add(store, 50)
        store.compact()
        later = add(store, 20)  # committed after the save: read from Lance on top of the saved view
    with TrajectoryStore(path, read_only=True) as store:
        batch = store.sample_steps(600, seed=0)
        assert store._reads.view.loads == 1 and store._reads.view.rebuilds == 0
        _check_rows(batch)
        assert later in set(batch["episode_id"]) and store.num_steps() == 220
        assert len(store.episode(later)["step"]) == 20
    with TrajectoryStore(path) as store:  # compaction moved rows: the saved view no longer matches
        store.compact()
        add(store, 5)
        store._steps.delete("episode_id = 0")
    with TrajectoryStore(path, read_only=True) as store:
        batch = store.sample_steps(300, seed=1)
        assert store._reads.view.loads == 0 and store._reads.view.rebuilds == 1 and 0 not in set(batch["episode_id"])
        _check_rows(batch)
