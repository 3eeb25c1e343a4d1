"""RecordVectorEpisodes: N sub-environments logged at once, in every autoreset mode; each
logged episode is checked against a replay of CartPole from its seed and actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from persisting.trajectory import TrajectoryStore
from persisting.trajectory.vector import RecordVectorEpisodes

N = 3


def _replay(seed: int, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    env = gym.make("CartPole-v1", max_episode_steps=30)
    obs, _ = env.reset(seed=seed)
    seen = []
    for a in actions:
        seen.append(obs)
        obs, *_ = env.step(int(a))
    return np.stack(seen), obs


@pytest.mark.parametrize(("mode", "vectorization"), [
    (AutoresetMode.NEXT_STEP, "sync"), (AutoresetMode.SAME_STEP, "sync"), (AutoresetMode.DISABLED, "sync"),
    (AutoresetMode.NEXT_STEP, "async"),  # sub-envs in spawned processes: the wrapper sees the same API
])
def test_vector_env_logs_every_sub_env(tmp_path, mode, vectorization):
    env = gym.make_vec("CartPole-v1", num_envs=N, vectorization_mode=vectorization,
                       vector_kwargs={"autoreset_mode": mode, **({"context": "spawn"} if vectorization == "async" else {})},
                       max_episode_steps=30)
    rng = np.random.default_rng(0)
    with TrajectoryStore(str(tmp_path / "s")) as store:
        rec = RecordVectorEpisodes(env, store, run="test")
        rec.reset(seed=10)
        for _ in range(100):
            _, _, te, tr, _ = rec.step(rng.integers(0, 2, N))
            if mode is AutoresetMode.DISABLED and (te | tr).any():
                rec.reset(options={"reset_mask": te | tr})
        rec.close()
        rows = store.episodes()
        ended = rows.filter(np.asarray(rows.column("status").to_numpy(zero_copy_only=False) != "incomplete"))
        assert len(ended) >= N and set(rows.column("vector_index").to_pylist()) == set(range(N))
        assert set(rows.column("run").to_pylist()) == {"test"} and set(rows.column("env").to_pylist()) == {"CartPole-v1"}
        first = rows.filter(np.asarray(rows.column("seed").is_valid()))
        assert sorted(first.column("seed").to_pylist()) == [10, 11, 12]
        total = 0
        for row in rows.to_pylist():
            steps = store.episode(row["episode_id"])
            total += len(steps["step"])
            if row["seed"] is not None and row["status"] != "incomplete":
                obs, last = _replay(row["seed"], steps["action"])  # seeded first episodes replay exactly
                np.testing.assert_allclose(steps["obs"], obs, rtol=1e-6)
                np.testing.assert_allclose(steps["final_obs"][-1], last, rtol=1e-6)
            if row["status"] != "incomplete":
                assert steps["terminated"][-1] or steps["truncated"][-1]
                assert not np.isnan(steps["final_obs"][-1]).any()
                # consecutive observations chain: every step's obs follows from the previous step
                assert len(steps["step"]) == row["length"] <= 30
        # NEXT_STEP spends one step of each sub-env on every reset: those are not logged
        assert total <= 100 * N and total >= 100 * N - (len(rows) if mode is AutoresetMode.NEXT_STEP else 0) - N * 30
