"""RecordEpisodes: a gymnasium wrapper that logs every step of every episode to a TrajectoryStore.

Each step row holds ``obs`` (the observation the action was taken in), ``action``, ``reward``,
``terminated`` and ``truncated``; the last step of an episode also holds ``final_obs`` (the
observation after it), so :meth:`TrajectoryStore.sample_steps` can bootstrap from truncated
episodes. Episode metadata: ``env`` (the env id), the ``seed`` passed to ``reset`` and whatever
keyword metadata the wrapper was given. With ``info_keys`` the named ``info`` entries are logged
as ``info_<key>`` fields (new keys simply become new columns).

Only this module imports gymnasium.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, SupportsFloat

import gymnasium as gym

from persisting.errors import ClosedError
from persisting.trajectory.store import Episode, TrajectoryStore

__all__ = ["RecordEpisodes"]


class RecordEpisodes(gym.Wrapper):
    """Log ``env``'s episodes into ``store``; ``metadata`` becomes episode columns.

    An episode reset before it terminated or was truncated is ended as ``incomplete``;
    :meth:`close` ends the open episode the same way (the store stays open: the caller owns it).
    """

    def __init__(self, env: gym.Env, store: TrajectoryStore, *, info_keys: Iterable[str] = (), **metadata: Any) -> None:
        super().__init__(env)
        self.store = store
        self.info_keys = tuple(info_keys)
        spec = getattr(env, "spec", None)
        self.metadata_columns = {"env": spec.id} if spec is not None else {}
        self.metadata_columns.update(metadata)
        self.episode: Episode | None = None
        self._obs: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        self._end_open("incomplete")
        obs, info = self.env.reset(seed=seed, options=options)
        meta = dict(self.metadata_columns)
        if seed is not None:
            meta["seed"] = seed
        self.episode = self.store.begin_episode(**meta)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.episode is None:
            raise ClosedError("RecordEpisodes.step() called with no episode open; call reset() first")
        obs, reward, terminated, truncated, info = self.env.step(action)
        row: dict[str, Any] = {
            "obs": self._obs, "action": action, "reward": reward,
            "terminated": bool(terminated), "truncated": bool(truncated),
        }
        for key in self.info_keys:
            if key in info:
                row["info_" + key] = info[key]
        done = terminated or truncated
        if done:
            row["final_obs"] = obs
        self.episode.add_step(row)
        self._obs = obs
        if done:
            self.episode.end()
            self.episode = None
        return obs, reward, terminated, truncated, info

    def _end_open(self, status: str) -> None:
        if self.episode is not None:
            if self.episode.status == "open" and not self.store.closed:
                self.episode.end(status)
            self.episode = None

    def close(self) -> None:
        self._end_open("incomplete")
        super().close()
