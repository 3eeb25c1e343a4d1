"""Trajectory demo: CartPole episodes logged by RecordEpisodes, reopened, queried and sampled."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np

from persisting.demos import table
from persisting.trajectory import TrajectoryStore
from persisting.trajectory.gym import RecordEpisodes


def run(root: str) -> None:
    path = os.path.join(root, "trajectories")
    rng = np.random.default_rng(0)
    produced: dict[int, list[int]] = {}
    with TrajectoryStore(path) as store:
        env = RecordEpisodes(gym.make("CartPole-v1"), store, policy="random")
        for episode in range(30):
            env.reset(seed=episode)
            actions: list[int] = []
            done = False
            while not done:
                action = int(rng.integers(2))
                actions.append(action)
                _, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
            produced[len(produced)] = actions
        env.close()
    print(f"   30 CartPole-v1 episodes logged step by step ({sum(map(len, produced.values()))} steps), store closed")
    with TrajectoryStore(path, read_only=True) as store:
        episodes = store.episodes()
        long = store.episodes("length >= 30")
        ids = episodes.column("episode_id").to_pylist()
        same = sum(
            list(store.episode(int(eid))["action"]) == produced[i] for i, eid in enumerate(ids)
        )
        batch = store.sample_steps(64, seed=1)
        slices = store.sample_slices(4, 8, seed=1)
        print(table([
            ("episodes after reopening", episodes.num_rows),
            ("actions identical to the env's", f"{same} of {len(produced)} episodes"),
            ("episodes with length >= 30 (SQL in Lance)", long.num_rows),
            ("mean return", f"{np.mean(episodes.column('return').to_numpy()):.1f}"),
            ("sample_steps(64) fields", ", ".join(sorted(batch))),
            ("sample_slices(4, 8): obs shape", tuple(slices["obs"].shape)),
            ("slices crossing an episode", int(sum(len(set(row)) > 1 for row in slices["episode_id"]))),
        ]))
