"""RecordEpisodes on gymnasium CartPole-v1: what the env produced is what the store returns."""

from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from persisting.errors import ClosedError
from persisting.trajectory import TrajectoryStore
from persisting.trajectory.gym import RecordEpisodes


def run_random(env: gym.Env, episodes: int, seed: int) -> list[dict[str, list]]:
    """Seeded random policy; returns what the environment produced, episode by episode."""
    rng = np.random.default_rng(seed)
    log = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        rec: dict[str, list] = {"obs": [], "actions": [], "rewards": [], "terminated": [], "truncated": []}
        done = False
        while not done:
            action = int(rng.integers(env.action_space.n))
            rec["obs"].append(obs)
            nxt, reward, terminated, truncated, _ = env.step(action)
            rec["actions"].append(action)
            rec["rewards"].append(float(reward))
            rec["terminated"].append(terminated)
            rec["truncated"].append(truncated)
            obs, done = nxt, terminated or truncated
        rec["final_obs"] = obs
        log.append(rec)
    return log


def test_cartpole_50_episodes_survive_reopen(tmp_path):
    path = str(tmp_path / "cartpole")
    with TrajectoryStore(path) as store:
        env = RecordEpisodes(gym.make("CartPole-v1"), store, policy="random")
        produced = run_random(env, 50, seed=100)
        env.close()

    with TrajectoryStore(path, read_only=True) as store:
        eps = store.episodes()
        assert eps.num_rows == 50
        assert set(eps.column("status").to_pylist()) <= {"complete", "truncated"}
        assert eps.column("env").to_pylist() == ["CartPole-v1"] * 50
        assert eps.column("seed").to_pylist() == list(range(100, 150))
        for row, rec in zip(eps.to_pylist(), produced):
            assert row["length"] == len(rec["actions"])
            assert row["return"] == pytest.approx(sum(rec["rewards"]))
            ep = store.episode(row["episode_id"])
            assert ep["action"].tolist() == rec["actions"]
            assert ep["step"].tolist() == list(range(len(rec["actions"])))
            np.testing.assert_array_equal(ep["obs"], np.stack(rec["obs"]))
            assert ep["obs"].dtype == np.float32
            assert ep["reward"].tolist() == rec["rewards"]
            assert ep["terminated"].tolist() == rec["terminated"]
            np.testing.assert_array_equal(ep["final_obs"][-1], rec["final_obs"])
        # SQL pushdown on episode columns
        best = max(sum(r["rewards"]) for r in produced)
        top = store.episodes(filter=f"`return` >= {best} AND env = 'CartPole-v1'")
        assert top.num_rows >= 1 and min(top.column("return").to_pylist()) == best

        # transitions: next_obs is the env's next observation, or its final one
        total = sum(len(r["actions"]) for r in produced)
        batch = store.sample_steps(256, seed=0)
        assert batch["obs"].shape == (256, 4) and batch["next_obs"].shape == (256, 4)
        assert batch["has_next"].all()
        by_id = {row["episode_id"]: rec for row, rec in zip(eps.to_pylist(), produced)}
        for i in range(256):
            rec, t = by_id[int(batch["episode_id"][i])], int(batch["step"][i])
            np.testing.assert_array_equal(batch["obs"][i], rec["obs"][t])
            expect = rec["obs"][t + 1] if t + 1 < len(rec["obs"]) else rec["final_obs"]
            np.testing.assert_array_equal(batch["next_obs"][i], expect)
        assert store.num_steps() == total

        # slices never cross an episode boundary
        sl = store.sample_slices(64, 8, seed=1)
        assert sl["obs"].shape == (64, 8, 4)
        assert (sl["episode_id"] == sl["episode_id"][:, :1]).all()
        assert (np.diff(sl["step"], axis=1) == 1).all()

        picked = store.sample_episodes(5, seed=2)
        assert len({int(p["episode_id"][0]) for p in picked}) == 5


def test_reset_mid_episode_marks_incomplete_and_step_before_reset_is_refused(tmp_path):
    with TrajectoryStore(str(tmp_path / "s")) as store:
        env = RecordEpisodes(gym.make("CartPole-v1"), store)
        with pytest.raises(ClosedError):
            env.step(0)
        env.reset(seed=1)
        env.step(0)
        env.step(1)
        env.reset(seed=2)  # abandons the first episode
        env.close()
        eps = store.episodes()
        assert eps.column("status").to_pylist() == ["incomplete", "incomplete"]
        assert eps.column("length").to_pylist() == [2, 0]


class DictObsEnv(gym.Env):
    """A tiny env whose observations come from a nested Dict space (Box, Discrete, Tuple)."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({
            "pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            "mode": gym.spaces.Discrete(3),
            "sensors": gym.spaces.Tuple((gym.spaces.Box(0, 255, (2, 2), np.uint8), gym.spaces.Discrete(4))),
        })
        self.action_space = gym.spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):  # type: ignore[no-untyped-def]
        self._t += 1
        return self.observation_space.sample(), float(action), self._t >= 7, False, {}


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    """``a``: nested obs with steps on axis 0 (from the store); ``b``: the env's per-step obs."""
    if isinstance(b[0], dict):
        assert isinstance(a, dict) and set(a) == set(b[0])
        for k in a:
            _same(a[k], [x[k] for x in b])
    elif isinstance(b[0], tuple):
        assert isinstance(a, tuple) and len(a) == len(b[0])
        for i in range(len(a)):
            _same(a[i], [x[i] for x in b])
    else:
        expected = np.stack([np.asarray(x) for x in b])
        assert a.dtype != object and a.shape == expected.shape
        np.testing.assert_array_equal(a, expected)


@pytest.mark.parametrize("make", [DictObsEnv, lambda: gym.make("Blackjack-v1")], ids=["dict", "tuple"])
def test_dict_and_tuple_observation_spaces_round_trip(tmp_path, make) -> None:  # type: ignore[no-untyped-def]
    from persisting.trajectory.gym import unflatten

    path = str(tmp_path / "runs")
    seen: list[list] = []
    with TrajectoryStore(path) as store:
        env = RecordEpisodes(make(), store)
        env.action_space.seed(0)
        for e in range(3):
            obs, _ = env.reset(seed=e)
            steps, done = [obs], False
            while not done:
                obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
                steps.append(obs)
                done = terminated or truncated
            seen.append(steps)
        ids = store.episodes().column("episode_id").to_pylist()
    with TrajectoryStore(path, read_only=True) as store:
        for eid, steps in zip(ids, seen):
            ep = unflatten(store.episode(eid))
            _same(ep["obs"], steps[:-1])
            last = unflatten({k: v[-1:] for k, v in store.episode(eid).items() if k.startswith("final_obs")})
            _same(last["final_obs"], steps[-1:])
