"""TrajectoryStore: layout of fields, ids across reopenings, queries, sampling and updates."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from persisting.errors import NotFoundError, PersistingError
from persisting.trajectory import TrajectoryStore


def test_field_kinds_round_trip(tmp_path):
    path = str(tmp_path / "s")
    img = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    with TrajectoryStore(path, blob_threshold=4096, ragged=("tokens",)) as store:
        with store.episode(env="grid") as ep:
            for t in range(5):
                ep.add_step(
                    obs=np.full((2, 3), t, np.float64),  # fixed, 2-D
                    image=img + t,                       # blob
                    tokens=np.arange(t, dtype=np.int32),  # ragged array
                    text=f"step {t}",
                    flag=t % 2 == 0,
                    reward=t,
                )
        eid = ep.id
        kinds = {n: s.kind for n, s in store.fields.items()}
        assert kinds == {"obs": "fixed", "image": "blob", "tokens": "ragged", "text": "scalar", "flag": "scalar", "reward": "scalar"}
    with TrajectoryStore(path, read_only=True) as store:
        out = store.episode(eid)
        assert out["obs"].shape == (5, 2, 3) and out["obs"][3, 1, 2] == 3
        assert out["image"].shape == (5, 64, 64, 3) and out["image"].dtype == np.uint8
        np.testing.assert_array_equal(out["image"][4], img + 4)
        assert [t.tolist() for t in out["tokens"]] == [list(range(t)) for t in range(5)]
        assert out["text"].tolist() == [f"step {t}" for t in range(5)]
        assert out["flag"].tolist() == [True, False, True, False, True]
        assert store.episodes().column("return").to_pylist() == [10.0]


def test_torch_tensors_and_bfloat16(tmp_path):
    torch = pytest.importorskip("torch")
    with TrajectoryStore(str(tmp_path / "s")) as store:
        with store.episode() as ep:
            for t in range(3):
                ep.add_step(obs=torch.full((4,), float(t)), h=torch.ones(2, 2, dtype=torch.bfloat16) * t, action=torch.tensor(t))
        out = store.episode(ep.id)
        assert out["obs"].dtype == np.float32 and out["obs"][2].tolist() == [2.0] * 4
        assert out["action"].tolist() == [0, 1, 2]
        assert isinstance(out["h"], torch.Tensor) and out["h"].dtype == torch.bfloat16
        assert out["h"][2].float().tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_new_fields_appear_later_and_old_steps_read_null(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=2) as store:
        with store.episode() as ep:
            ep.add_step(action=1, reward=1)
            ep.add_step(action=2, reward=0.5, info_speed=3.0)   # int reward column widens to float
            ep.add_step(action=3, reward=2, info_lives=np.int64(2), obs=np.zeros(2, np.float32))
        out = store.episode(ep.id)
        assert out["reward"].tolist() == [1.0, 0.5, 2.0]
        assert np.isnan(out["info_speed"][0]) and out["info_speed"][1] == 3.0
        assert np.isnan(out["obs"][0]).all() and out["obs"][2].tolist() == [0.0, 0.0]


def test_add_steps_vectorised_and_interleaved_episodes(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=4) as store:
        a, b = store.begin_episode(env="a"), store.begin_episode(env="b")
        assert a.id != b.id
        for chunk in range(5):  # two vectorised envs, chunks interleave in the steps table
            a.add_steps({"obs": np.full((3, 2), chunk, np.float32), "action": np.arange(3) + 10 * chunk})
            b.add_steps([{"obs": np.ones(2, np.float32), "action": -chunk}] * 2)
        a.end()
        b.end(status="truncated", note="cut")
        ea, eb = store.episode(a.id), store.episode(b.id)
        assert ea["action"].tolist() == [c * 10 + i for c in range(5) for i in range(3)]
        assert ea["step"].tolist() == list(range(15))
        assert eb["action"].tolist() == [-c for c in range(5) for _ in range(2)]
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
        assert rows[b.id]["status"] == "truncated" and rows[b.id]["note"] == "cut" and rows[b.id]["length"] == 10
        sl = store.sample_slices(50, 6, seed=0)
        assert (sl["episode_id"] == sl["episode_id"][:, :1]).all() and (np.diff(sl["step"], axis=1) == 1).all()
        with pytest.raises(NotFoundError):
            store.sample_slices(1, 16)


def test_ids_never_collide_across_reopenings(tmp_path):
    path = str(tmp_path / "s")
    seen = []
    for round_ in range(3):
        with TrajectoryStore(path) as store:
            for _ in range(4):
                with store.episode(round=round_) as ep:
                    ep.add_step(action=round_)
                seen.append(ep.id)
    assert len(set(seen)) == 12
    assert seen == sorted(seen) and seen[:4] == [0, 1, 2, 3] and seen[-1] == 11  # clean closes leave no gaps
    with TrajectoryStore(path, read_only=True) as store:
        assert store.episodes().column("episode_id").to_pylist() == seen


def test_update_episodes_merges_by_id(tmp_path):
    path = str(tmp_path / "s")
    with TrajectoryStore(path) as store:
        ids = []
        for i in range(4):
            with store.episode(group=i // 2) as ep:
                ep.add_step(action=i)
            ids.append(ep.id)
        assert store.update_episodes([{"episode_id": ids[1], "score": 0.5}, {"episode_id": ids[2], "score": 2.0}]) == 2
        store.update_episodes(pa.table({"episode_id": [ids[2]], "advantage": [1.25]}))
        got = {r["episode_id"]: r for r in store.episodes().to_pylist()}
        assert got[ids[1]]["score"] == 0.5 and got[ids[0]]["score"] is None
        assert got[ids[2]]["score"] == 2.0 and got[ids[2]]["advantage"] == 1.25 and got[ids[2]]["group"] == 1
        # filters see only the newest revision of each episode
        assert store.episodes("score > 1").column("episode_id").to_pylist() == [ids[2]]
        store.update_episodes([{"episode_id": ids[2], "score": -1.0}])
        assert store.episodes("score > 1").num_rows == 0
        with pytest.raises(NotFoundError):
            store.update_episodes([{"episode_id": ids[0], "score": 9.0}, {"episode_id": 999, "score": 1.0}])
    with TrajectoryStore(path, read_only=True) as store:
        got = {r["episode_id"]: r for r in store.episodes().to_pylist()}
        assert got[ids[0]]["score"] is None and got[ids[2]]["score"] == -1.0
        assert [r["length"] for r in got.values()] == [1, 1, 1, 1]


def test_second_writer_in_process_and_reader_see_live_data(tmp_path):
    """Two writers on one path in one process (each its own session) and a reader."""
    path = str(tmp_path / "s")
    with TrajectoryStore(path) as store:
        with store.episode() as ep:
            ep.add_step(action=1)
        with TrajectoryStore(path) as other:
            with other.episode() as theirs:
                theirs.add_step(action=2)
            assert theirs.id != ep.id
            other.flush()
            assert store.episode(theirs.id)["action"].tolist() == [2]  # no reopen, no refresh
        store.sync()
        with TrajectoryStore(path, read_only=True) as reader:
            assert reader.episodes().column("episode_id").to_pylist() == sorted([ep.id, theirs.id])
            assert reader.episode(ep.id)["action"].tolist() == [1]


def test_reads_see_steps_not_yet_handed_off(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), step_buffer=1000) as store:
        ep = store.begin_episode()
        for t in range(10):
            ep.add_step(obs=np.full(2, t, np.float32))
        assert store.episode(ep.id)["obs"][:, 0].tolist() == list(range(10))
        batch = store.sample_steps(20, seed=3)
        assert not batch["has_next"][batch["step"] == 9].any()
        assert batch["has_next"][batch["step"] < 9].all()
        ok = batch["step"] < 9
        np.testing.assert_array_equal(batch["next_obs"][ok][:, 0], batch["step"][ok] + 1)


def test_compact_keeps_episodes_and_stats(tmp_path):
    with TrajectoryStore(str(tmp_path / "s"), durability="none", step_buffer=3) as store:
        ids = []
        for e in range(6):
            with store.episode() as ep:
                for t in range(7):
                    ep.add_step(obs=np.full(2, e * 10 + t, np.float32), action=t)
            ids.append(ep.id)
            store.flush()  # many small fragments
        store.compact()
        for e, eid in enumerate(ids):
            assert store.episode(eid)["obs"][:, 0].tolist() == [e * 10 + t for t in range(7)]
        stats = store.stats()
        assert stats["steps"] == 42 and stats["open_episodes"] == 0 and stats["steps_table"]["fragments"] >= 1


def test_vectorised_images_as_blobs_and_status_filtered_sampling(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
    with TrajectoryStore(str(tmp_path / "s"), blob_threshold=1024) as store:
        with store.episode() as ep:
            ep.add_steps({"image": frames, "action": np.arange(6), "reward": np.ones(6, np.float32)})
        with store.episode() as cut:
            cut.add_step(image=frames[0], action=0, reward=0.0, truncated=True)
        assert store.fields["image"].kind == "blob"
        out = store.episode(ep.id)
        np.testing.assert_array_equal(out["image"], frames)
        rows = {r["episode_id"]: r for r in store.episodes().to_pylist()}
        assert rows[ep.id]["return"] == 6.0 and rows[cut.id]["status"] == "truncated"
        picked = store.sample_episodes(1, seed=0, status=["truncated"])
        assert picked[0]["episode_id"].tolist() == [cut.id]
        with pytest.raises(PersistingError):
            store.sample_episodes(1, status=["done'; DROP"])
