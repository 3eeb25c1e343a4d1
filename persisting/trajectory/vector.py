"""RecordVectorEpisodes: log every sub-environment of a gymnasium vector env at once.

Each sub-environment's episodes become episodes of the store, with the same step layout as
:class:`~persisting.trajectory.gym.RecordEpisodes` (``obs``, ``action``, ``reward``,
``terminated``, ``truncated``, ``final_obs`` on the last step; Dict/Tuple observations one
column per leaf) and metadata ``env``, ``vector_index`` (the sub-environment), ``seed`` (when
``reset`` was given one) and the wrapper's keyword metadata.

All three gymnasium autoreset modes are followed:

- ``NEXT_STEP`` (the default): the step after an episode ends resets that sub-environment and
  returns its first observation; that step is not logged (its action was ignored).
- ``SAME_STEP``: the ending step already returns the next episode's first observation; the
  last observation of the ended one comes from ``info["final_obs"]``.
- ``DISABLED``: an ended sub-environment stays without an episode until ``reset`` (with
  ``options={"reset_mask": ...}``) starts its next one.

Only this module (and gym.py) imports gymnasium.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from persisting.errors import ClosedError
from persisting.trajectory.episode import Episode
from persisting.trajectory.gym import flatten
from persisting.trajectory.store import TrajectoryStore

__all__ = ["RecordVectorEpisodes"]


class RecordVectorEpisodes(gym.vector.VectorWrapper):
    """Log ``env``'s sub-environments' episodes into ``store`` (the caller owns the store).

    Episodes still open at :meth:`reset` (for the sub-environments it resets) or at
    :meth:`close` end as ``incomplete``.
    """

    def __init__(self, env: gym.vector.VectorEnv, store: TrajectoryStore, *, info_keys: tuple[str, ...] = (),
                 **metadata: Any) -> None:
        super().__init__(env)
        self.store = store
        self.info_keys = tuple(info_keys)
        self.mode = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))
        spec = getattr(env, "spec", None)
        self.metadata_columns: dict[str, Any] = {"env": spec.id} if spec is not None else {}
        self.metadata_columns.update(metadata)
        self.episodes: list[Episode | None] = [None] * env.num_envs
        self._obs: dict[str, np.ndarray] = {}
        self._resetting = np.zeros(env.num_envs, np.bool_)  # NEXT_STEP: this step resets them

    def _begin(self, i: int, seed: int | None) -> None:
        meta = {**self.metadata_columns, "vector_index": i}
        if seed is not None:
            meta["seed"] = seed
        self.episodes[i] = self.store.begin_episode(**meta)

    def _end(self, i: int, status: str | None = None) -> None:
        ep = self.episodes[i]
        if ep is not None and ep.status == "open" and not self.store.closed:
            ep.end(status)
        self.episodes[i] = None

    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        n = self.num_envs
        mask = np.ones(n, np.bool_) if not options or "reset_mask" not in options else np.asarray(options["reset_mask"])
        seeds = seed if isinstance(seed, list) else [None if seed is None else seed + i for i in range(n)]
        flat = flatten("obs", obs)
        for i in np.flatnonzero(mask):
            self._end(int(i), "incomplete")
            self._begin(int(i), seeds[i])
        if self._obs and not mask.all():
            for k, v in flat.items():
                kept = self._obs[k].copy()
                kept[mask] = np.asarray(v)[mask]
                flat[k] = kept
        self._obs = {k: np.array(v) for k, v in flat.items()}
        self._resetting[mask] = False
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        if not self._obs:
            raise ClosedError("RecordVectorEpisodes.step() called before reset()")
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        flat = {k: np.asarray(v) for k, v in flatten("obs", obs).items()}
        final = None
        if self.mode is AutoresetMode.SAME_STEP and "final_obs" in info:
            final = info["final_obs"]
        acts = np.asarray(actions) if not isinstance(actions, (dict, tuple)) else None
        action_cols = flatten("action", actions) if acts is None else {"action": acts}
        for i in range(self.num_envs):
            if self._resetting[i]:  # NEXT_STEP: this step reset the sub-env, its action was ignored
                self._resetting[i] = False
                self._begin(i, None)
                continue
            ep = self.episodes[i]
            if ep is None:  # DISABLED mode, ended and not reset yet
                continue
            row: dict[str, Any] = {k: v[i] for k, v in self._obs.items()}
            row.update({k: np.asarray(v)[i] for k, v in action_cols.items()})
            row.update(reward=float(rewards[i]), terminated=bool(terminated[i]), truncated=bool(truncated[i]))
            for key in self.info_keys:
                if key in info and info.get("_" + key, np.ones(self.num_envs, np.bool_))[i]:
                    row["info_" + key] = info[key][i]
            done = bool(terminated[i] or truncated[i])
            if done:
                last = final[i] if final is not None else _index(obs, i)
                row.update(flatten("final_obs", last))
            ep.add_step(row)
            if done:
                self._end(i)
                if self.mode is AutoresetMode.SAME_STEP:
                    self._begin(i, None)
                elif self.mode is AutoresetMode.NEXT_STEP:
                    self._resetting[i] = True
        self._obs = {k: v.copy() for k, v in flat.items()}
        return obs, rewards, terminated, truncated, info

    def close(self) -> None:
        for i in range(self.num_envs):
            self._end(i, "incomplete")
        super().close()


def _index(obs: Any, i: int) -> Any:
    """Sub-environment ``i``'s part of a batched observation (dicts and tuples leaf by leaf)."""
    if isinstance(obs, dict):
        return {k: _index(v, i) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_index(v, i) for v in obs)
    return np.asarray(obs)[i]
