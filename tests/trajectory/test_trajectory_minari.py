"""Minari export and import round trips (CartPole logged by RecordEpisodes, Dict observations)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")
from persisting.errors import ConfigError  # noqa: E402
from persisting.trajectory import TrajectoryStore  # noqa: E402
from persisting.trajectory.gym import RecordEpisodes  # noqa: E402
from persisting.trajectory.minari import from_minari, to_minari  # noqa: E402


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def _log(store: TrajectoryStore, env: gym.Env, episodes: int) -> None:
    rec = RecordEpisodes(env, store)
    for e in range(episodes):
        rec.reset(seed=e)
        done = False
        while not done:
            _, _, te, tr, _ = rec.step(rec.action_space.sample())
            done = te or tr
    rec.close()


def test_round_trip_through_minari(tmp_path):
    with TrajectoryStore(str(tmp_path / "a")) as store:
        _log(store, gym.make("CartPole-v1", max_episode_steps=40), 6)
        rec = RecordEpisodes(gym.make("CartPole-v1"), store)
        rec.reset(seed=99)
        rec.step(0)
        rec.close()  # an incomplete episode: not exported
        ds = to_minari(store, "test/cartpole-v0", algorithm_name="random", data_format="arrow")
        ours = {int(e): store.episode(int(e)) for e in store.episodes("status != 'incomplete'").column("episode_id").to_pylist()}
    assert ds.total_episodes == 6 and ds.spec.env_spec.id == "CartPole-v1"
    loaded = minari.load_dataset("test/cartpole-v0")
    for ep, (eid, steps) in zip(loaded.iterate_episodes(), ours.items()):
        np.testing.assert_allclose(ep.observations[:-1], steps["obs"])
        np.testing.assert_allclose(ep.observations[-1], steps["final_obs"][-1])
        np.testing.assert_array_equal(ep.actions, steps["action"])
        np.testing.assert_array_equal(ep.rewards, steps["reward"])
        np.testing.assert_array_equal(ep.truncations, steps["truncated"])
    with TrajectoryStore(str(tmp_path / "b")) as back:
        ids = from_minari("test/cartpole-v0", back, source="minari")
        rows = back.episodes()
        assert rows.column("env").to_pylist() == ["CartPole-v1"] * 6 and rows.column("source").to_pylist() == ["minari"] * 6
        assert rows.column("status").to_pylist() == [("truncated" if len(s["step"]) == 40 and not s["terminated"][-1] else "complete")
                                                     for s in ours.values()]
        for new, steps in zip(ids, ours.values()):
            again = back.episode(new)
            for key in ("obs", "action", "reward", "terminated", "truncated"):
                np.testing.assert_allclose(again[key], steps[key])
            np.testing.assert_allclose(again["final_obs"][-1], steps["final_obs"][-1])
        sample = back.sample_steps(64, seed=0)
        assert sample["has_next"].all()  # final_obs made every transition complete


def test_dict_observations_and_missing_final_obs(tmp_path):
    space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,)), "vel": gym.spaces.Box(-1, 1, (1,))})
    with TrajectoryStore(str(tmp_path / "a")) as store:
        for e in range(3):
            with store.episode() as ep:
                for t in range(5):
                    last = t == 4
                    step = {"obs/pos": np.full(2, t / 10, np.float32), "obs/vel": np.full(1, e / 10, np.float32),
                            "action": np.array([t % 2], np.float32), "reward": 1.0, "terminated": last, "truncated": False}
                    if last:
                        step.update({"final_obs/pos": np.full(2, 0.5, np.float32), "final_obs/vel": np.full(1, e / 10, np.float32)})
                    ep.add_step(step)
        ds = to_minari(store, "test/dict-v0", observation_space=space, action_space=gym.spaces.Box(0, 1, (1,)), data_format="arrow")
        assert ds.total_episodes == 3
        ep = next(iter(minari.load_dataset("test/dict-v0").iterate_episodes()))
        assert ep.observations["pos"].shape == (6, 2) and ep.observations["pos"][-1].tolist() == [0.5, 0.5]
        with store.episode() as bad:
            bad.add_step(obs=np.zeros(2, np.float32), action=np.zeros(1, np.float32), reward=0.0, terminated=True, truncated=False)
        with pytest.raises(ConfigError, match="final_obs"):
            to_minari(store, "test/bad-v0", filter=f"episode_id = {bad.id}", observation_space=space,
                      action_space=gym.spaces.Discrete(2))
    with TrajectoryStore(str(tmp_path / "b")) as back:
        ids = from_minari(minari.load_dataset("test/dict-v0"), back)
        out = back.episode(ids[2])
        assert out["obs/pos"].shape == (5, 2) and out["obs/vel"][0].tolist() == pytest.approx([0.2])
        assert out["final_obs/pos"][-1].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("data_format", ["arrow", "hdf5"])
def test_export_renumbers_episodes_with_gaps(tmp_path, data_format):
    """Minari wants episodes numbered 0, 1, 2...; the store's ids have gaps (an episode left
    open in between, blocks per writer): the export renumbers them in id order."""
    pytest.importorskip("h5py") if data_format == "hdf5" else None
    with TrajectoryStore(str(tmp_path / "a")) as store:
        _log(store, gym.make("CartPole-v1", max_episode_steps=20), 1)
        rec = RecordEpisodes(gym.make("CartPole-v1"), store)
        rec.reset(seed=50)
        rec.step(0)
        rec.close()  # episode 1 stays incomplete: a gap
        _log(store, gym.make("CartPole-v1", max_episode_steps=20), 2)
        kept = store.episodes("status != 'incomplete'").column("episode_id").to_pylist()
        assert kept == [0, 2, 3]
        ds = to_minari(store, f"test/gaps-{data_format}-v0", data_format=data_format)
        lengths = [len(store.episode(i)["step"]) for i in kept]
    assert ds.total_episodes == 3
    assert [len(ep.actions) for ep in minari.load_dataset(f"test/gaps-{data_format}-v0").iterate_episodes()] == lengths
