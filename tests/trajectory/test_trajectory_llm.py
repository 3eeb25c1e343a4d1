"""LLM rollouts (GRPO-style): prompt ids, response ids, per-token logprobs, a group id, and
the reward filled in later with update_episodes."""

from __future__ import annotations

import numpy as np
import pytest

from persisting.trajectory import TrajectoryStore


def make_rollouts(rng: np.random.Generator, groups: int, per_group: int) -> list[dict]:
    out = []
    for g in range(groups):
        prompt = rng.integers(0, 32000, size=int(rng.integers(5, 40))).tolist()
        for _ in range(per_group):
            n = int(rng.integers(1, 200))
            out.append({
                "group_id": g,
                "prompt_ids": prompt,
                "response_ids": rng.integers(0, 32000, size=n).astype(np.int32),
                "logprobs": -rng.random(n).astype(np.float32),
            })
    return out


def test_rollouts_with_late_rewards(tmp_path):
    path = str(tmp_path / "rollouts")
    rng = np.random.default_rng(7)
    rollouts = make_rollouts(rng, groups=6, per_group=4)
    ids = []
    with TrajectoryStore(path, ragged=("response_ids", "logprobs")) as store:
        for r in rollouts:
            with store.episode(group_id=r["group_id"], model="policy-v3") as ep:
                ep.add_step(prompt_ids=r["prompt_ids"], response_ids=r["response_ids"], logprobs=r["logprobs"])
            ids.append(ep.id)
        # the reward model answers later; GRPO advantages are group-normalised rewards
        rewards = rng.random(len(rollouts))
        groups = np.array([r["group_id"] for r in rollouts])
        adv = np.empty_like(rewards)
        for g in np.unique(groups):
            m = groups == g
            adv[m] = (rewards[m] - rewards[m].mean()) / (rewards[m].std() + 1e-6)
        updated = store.update_episodes({"episode_id": ids, "reward": rewards.tolist(), "advantage": adv.tolist()})
        assert updated == len(ids)

    with TrajectoryStore(path, read_only=True) as store:
        eps = store.episodes("group_id = 2")
        assert eps.column("episode_id").to_pylist() == ids[8:12]
        assert eps.column("reward").to_pylist() == pytest.approx(rewards[8:12].tolist())
        assert set(eps.column("status").to_pylist()) == {"complete"}
        good = store.episodes("advantage > 0 AND model = 'policy-v3'")
        assert good.num_rows == int((adv > 0).sum())
        for eid, r in zip(ids, rollouts):
            got = store.episode(eid)
            assert got["prompt_ids"][0].tolist() == r["prompt_ids"]
            np.testing.assert_array_equal(got["response_ids"][0], r["response_ids"])
            assert got["response_ids"][0].dtype == np.int32
            np.testing.assert_array_equal(got["logprobs"][0], r["logprobs"])
        # a training batch: one rollout per draw, token lists ragged
        batch = store.sample_steps(16, seed=0, fields=["response_ids", "logprobs"])
        assert all(len(a) == len(b) for a, b in zip(batch["response_ids"], batch["logprobs"]))
