"""RecordEpisodes: a gymnasium wrapper that logs every step of every episode to a TrajectoryStore.

Each step row holds ``obs`` (the observation the action was taken in), ``action``, ``reward``,
``terminated`` and ``truncated``; the last step of an episode also holds ``final_obs`` (the
observation after it), so :meth:`TrajectoryStore.sample_steps` can bootstrap from truncated
episodes. Episode metadata: ``env`` (the env id), the ``seed`` passed to ``reset`` and whatever
keyword metadata the wrapper was given. With ``info_keys`` the named ``info`` entries are logged
as ``info_<key>`` fields (new keys simply become new columns).

Observations from ``Dict`` and ``Tuple`` spaces (nested too) are stored one column per leaf:
``obs/<key>`` for a dict entry, ``obs[<i>]`` for a tuple position (``obs/pos``, ``obs[0]``,
``obs/sensors[1]``), so each leaf keeps its own dtype and shape and outside readers see plain
columns. :func:`unflatten` turns what the store returns (``episode(id)``, ``sample_steps``...)
back into nested dicts and tuples with the steps on axis 0.

Only this module imports gymnasium.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from persisting.errors import ClosedError, InvalidRecordError
from persisting.trajectory.store import Episode, TrajectoryStore

__all__ = ["RecordEpisodes", "flatten", "unflatten"]

_STEP_FIELDS = ("obs", "action", "reward", "terminated", "truncated")


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
        prev = self._obs
        done = terminated or truncated
        if not done and not self.info_keys and type(prev) is np.ndarray:  # the common step: no dict
            self.episode.add_step_values(_STEP_FIELDS, (prev, action, reward, bool(terminated), bool(truncated)))
            self._obs = obs
            return obs, reward, terminated, truncated, info
        if type(prev) is not np.ndarray and isinstance(prev, (Mapping, tuple)):
            row: dict[str, Any] = flatten("obs", prev)
            row.update(action=action, reward=reward, terminated=bool(terminated), truncated=bool(truncated))
        else:  # the common case: one dict literal, no flattening
            row = {"obs": prev, "action": action, "reward": reward, "terminated": bool(terminated), "truncated": bool(truncated)}
        if self.info_keys:
            for key in self.info_keys:
                if key in info:
                    row["info_" + key] = info[key]
        if done:
            row.update(flatten("final_obs", obs))
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


_PART = re.compile(r"/([^/\[\]]+)|\[(\d+)\]")


def flatten(name: str, value: Any) -> dict[str, Any]:
    """``{name: value}``, or one entry per leaf of a dict / tuple ``value``: ``name/key``, ``name[i]``."""
    if not isinstance(value, (Mapping, tuple)):
        return {name: value}
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, Mapping):
            for k, item in v.items():
                if not isinstance(k, str) or not k or "/" in k or "[" in k or "]" in k:
                    raise InvalidRecordError(
                        f"field {prefix!r}: dict key {k!r} cannot name a column; use non-empty str keys "
                        "without '/', '[' or ']'", field=prefix)
                walk(f"{prefix}/{k}", item)
        elif isinstance(v, tuple):
            for i, item in enumerate(v):
                walk(f"{prefix}[{i}]", item)
        else:
            out[prefix] = v

    walk(name, value)
    return out


def unflatten(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Nest columns named by :func:`flatten` (``obs/pos``, ``obs[0]``) back into dicts and tuples;
    other columns are returned as they are. The caller's mapping is not modified."""
    root: dict[str, Any] = {}
    tuples: set[int] = set()  # ids of dicts that stand for tuples (keys are positions)
    for key, value in columns.items():
        base = re.split(r"[/\[]", key, maxsplit=1)[0]
        rest = key[len(base):]
        parts = _PART.findall(rest)
        if not base or not parts or "".join(f"/{k}" if k else f"[{i}]" for k, i in parts) != rest:
            root[key] = value
            continue
        node, name = root, base
        for k, i in parts:
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
                if i:
                    tuples.add(id(child))
            node, name = child, (k if k else int(i))
        node[name] = value

    def build(v: Any) -> Any:
        if isinstance(v, dict) and id(v) in tuples:
            return tuple(build(v[i]) for i in sorted(v))
        if isinstance(v, dict):
            return {k: build(x) for k, x in v.items()}
        return v

    return {k: build(v) for k, v in root.items()}
