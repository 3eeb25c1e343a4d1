"""Minari import and export: move offline-RL datasets into and out of a TrajectoryStore.

Both sides use the layout :class:`~persisting.trajectory.gym.RecordEpisodes` writes: each step
holds ``obs`` (the observation the action was taken in), ``action``, ``reward``,
``terminated``, ``truncated``; the last step also holds ``final_obs``. Minari keeps ``T + 1``
observations per episode, which are exactly ``obs`` of every step plus that ``final_obs``.
Dict and Tuple observations map to one column per leaf (``obs/<key>``, ``obs[<i>]``) as in
:mod:`persisting.trajectory.gym`. Minari ``infos`` are not carried over.

Only this module imports minari.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer

from persisting.errors import ConfigError, NotFoundError
from persisting.trajectory.gym import flatten, unflatten
from persisting.trajectory.store import TrajectoryStore

__all__ = ["from_minari", "to_minari"]

_ENDED = ("complete", "truncated")


def to_minari(store: TrajectoryStore, dataset_id: str, *, filter: str | None = None,
              env: str | gym.Env | Any | None = None, observation_space: gym.spaces.Space | None = None,
              action_space: gym.spaces.Space | None = None, **kwargs: Any) -> minari.MinariDataset:
    """Write the store's ended episodes (``complete``/``truncated``, narrowed by the SQL
    ``filter`` on episode columns) as the Minari dataset ``dataset_id``. Minari numbers
    episodes 0, 1, 2...: the store's episodes get those numbers in ``episode_id`` order.

    ``env`` defaults to the ``env`` metadata column RecordEpisodes records; without one, pass
    ``observation_space`` and ``action_space``. ``kwargs`` go to
    ``minari.create_dataset_from_buffers`` (``algorithm_name``, ``data_format``...).
    """
    where = "status IN ('complete', 'truncated')" + (f" AND ({filter})" if filter else "")
    rows = store.episodes(where)
    if not len(rows):
        raise NotFoundError(f"trajectory store {store.path} has no ended episodes matching {where!r} to export")
    if env is None and observation_space is None and "env" in rows.column_names:
        envs = set(rows.column("env").drop_null().to_pylist())
        if len(envs) > 1:
            raise ConfigError(f"episodes come from several environments {sorted(envs)}; pass filter= or env=")
        env = envs.pop() if envs else None
    # Minari numbers a dataset's episodes 0, 1, 2... in order: the store's ids (blocks per
    # writer, interleaved by vector envs) become positions, in episode_id order
    ids = sorted(int(eid) for eid in rows.column("episode_id").to_pylist())
    buffers = [_episode_buffer(store, eid, i) for i, eid in enumerate(ids)]
    return minari.create_dataset_from_buffers(dataset_id, buffers, env=env, observation_space=observation_space,
                                              action_space=action_space, **kwargs)


def _episode_buffer(store: TrajectoryStore, episode_id: int, minari_id: int) -> EpisodeBuffer:
    steps = {k: v for k, v in store.read_episode(episode_id).items() if not _absent(v)}  # other episodes' fields
    n = len(steps["step"])
    obs_cols = {k: v for k, v in steps.items() if k == "obs" or k.startswith(("obs/", "obs["))}
    final_cols = {k: v for k, v in steps.items() if k == "final_obs" or k.startswith(("final_obs/", "final_obs["))}
    if not n or not obs_cols or "action" not in steps:
        raise ConfigError(f"episode {episode_id} has no obs/action steps; export only episodes logged as RecordEpisodes logs them")
    if not final_cols:
        raise ConfigError(f"episode {episode_id} has no final_obs on its last step, so its last observation is unknown; "
                          "narrow the export with filter=")
    observations = {}
    for key, values in obs_cols.items():
        last = final_cols.get("final_" + key)
        if last is None or (last.dtype.kind == "f" and np.isnan(last[-1]).all()):
            raise ConfigError(f"episode {episode_id}: field final_{key} is missing on its last step; narrow the export with filter=")
        observations[key] = np.concatenate([values, last[-1:]])
    obs = unflatten(observations)["obs"]
    return EpisodeBuffer(
        id=minari_id, observations=obs, actions=steps["action"],
        rewards=steps.get("reward", np.zeros(n)), terminations=steps.get("terminated", np.zeros(n, bool)),
        truncations=steps.get("truncated", np.zeros(n, bool)), infos={},
    )


def from_minari(dataset: minari.MinariDataset | str, store: TrajectoryStore, *,
                episode_indices: Sequence[int] | None = None, **metadata: Any) -> list[int]:
    """Log a Minari dataset's episodes (or those at ``episode_indices``) into ``store``; each
    episode gets metadata ``env``, ``minari_dataset``, ``minari_episode`` and ``metadata``.
    Returns the new episode ids, in order."""
    if isinstance(dataset, str):
        dataset = minari.load_dataset(dataset)
    env_spec = dataset.spec.env_spec
    base: dict[str, Any] = {"minari_dataset": dataset.spec.dataset_id}
    if env_spec is not None:
        base["env"] = env_spec.id
    base.update(metadata)
    ids = []
    for ep in dataset.iterate_episodes(episode_indices):
        n = len(ep.rewards)
        obs = flatten("obs", ep.observations)
        columns: dict[str, Any] = {k: np.asarray(v)[:n] for k, v in obs.items()}
        columns.update(action=np.asarray(ep.actions), reward=np.asarray(ep.rewards, np.float64),
                       terminated=np.asarray(ep.terminations, bool), truncated=np.asarray(ep.truncations, bool))
        with store.episode(**base, minari_episode=int(ep.id)) as handle:
            if n > 1:
                handle.add_steps({k: v[: n - 1] for k, v in columns.items()})
            if n:
                last = {k: v[n - 1] for k, v in columns.items()}
                last.update({"final_" + k: np.asarray(v)[n] for k, v in obs.items()})
                handle.add_step(last)
        ids.append(handle.id)
    return ids


def _absent(values: np.ndarray) -> bool:
    """Does a field hold no value in any step of this episode?"""
    if values.dtype == object:
        return all(v is None for v in values)
    return values.dtype.kind == "f" and bool(np.isnan(values).all()) and len(values) > 0
