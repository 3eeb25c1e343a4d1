"""A TorchRL replay-buffer storage backed by a TrajectoryStore: durable across restarts.

:class:`TrajectoryStorage` is a TorchRL ``LazyTensorStorage`` (so samplers, writers,
``ReplayBuffer`` and ``TensorDictReplayBuffer`` work unchanged and sample at memory speed)
whose every write also goes to a :class:`~persisting.trajectory.TrajectoryStore` as steps of
one episode per storage session: the written leaves (nested keys joined with ``/``, as
``next/observation``) plus ``slot``, the storage index written. Reopening the store and
building the storage again replays those steps in order (a later write to a slot wins), so the
buffer comes back with the same contents; :func:`replay_buffer` also puts the writer's
cursor where it was, so new data goes on filling (or overwriting) where the last run stopped.

Writes are handed to the store's steps table at once (durable within the store's
``wal_sync_interval`` with durability ``"batch"``; :meth:`TrajectoryStorage.sync` makes them
durable now). ``rb.empty()`` is recorded too: a reopened storage starts after it.

Only this module imports torch, tensordict and torchrl.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer, TensorDictReplayBuffer

from persisting.errors import ConfigError, InvalidRecordError
from persisting.trajectory.episode import Episode
from persisting.trajectory.store import TrajectoryStore

__all__ = ["TrajectoryStorage", "replay_buffer"]

_SLOT = "slot"
_NAME_KEY = "torchrl_storage"
_RESET_KEY = "torchrl_reset"
_FIELDS_KEY = "torchrl_fields"  # the step fields one episode of this storage holds
_TENSOR = "tensor"  # the field of a storage of plain tensors


class TrajectoryStorage(LazyTensorStorage):
    """TorchRL storage of ``max_size`` items whose writes are logged to ``store``.

    ``name`` tells several buffers kept in one store apart (episode metadata
    ``torchrl_storage``). Data may be a TensorDict or a tensor; its batch dimension is the
    storage's only dimension (``ndim=1``).
    """

    def __init__(self, store: TrajectoryStore, max_size: int, *, name: str = "replay",
                 device: torch.device | str = "cpu") -> None:
        if max_size <= 0:
            raise ConfigError(f"max_size must be positive, got {max_size}")
        super().__init__(max_size, device=device)
        self.store = store
        self.name = name
        self.writes = 0  # items written over every session: the writer's cursor is writes % max_size
        self._episode: Episode | None = None
        self._restore()

    # -- writing -----------------------------------------------------------------------------
    def set(self, cursor: Any, data: Any, *, set_cursor: bool = True) -> None:
        super().set(cursor, data, set_cursor=set_cursor)
        slots = self._slots(cursor)
        columns = _columns(data, len(slots))
        columns[_SLOT] = slots
        if self._episode is None or self._episode.status != "open" or self._episode.metadata[_FIELDS_KEY] != sorted(columns):
            self.end()
            self._episode = self.store.begin_episode(**{_NAME_KEY: self.name, _FIELDS_KEY: sorted(columns)})
        self._episode.add_steps(columns)
        self._episode.flush()
        if set_cursor:
            self.writes += len(slots)

    def _slots(self, cursor: Any) -> np.ndarray:
        if isinstance(cursor, slice):
            return np.arange(*cursor.indices(self.max_size), dtype=np.int64)
        if isinstance(cursor, range):
            return np.asarray(cursor, np.int64)
        if isinstance(cursor, torch.Tensor):
            return cursor.detach().cpu().reshape(-1).numpy().astype(np.int64)
        return np.asarray(cursor, np.int64).reshape(-1)

    def _empty(self) -> None:
        super()._empty()
        self.end()
        with self.store.episode(**{_NAME_KEY: self.name, _RESET_KEY: True}):
            pass
        self.writes = 0

    def sync(self) -> None:
        """Make every write so far durable now."""
        self.store.sync()

    def end(self) -> None:
        """End this session's episode (the store also ends it when it closes)."""
        if self._episode is not None and self._episode.status == "open":
            self._episode.end("complete")
        self._episode = None

    # -- reading back ------------------------------------------------------------------------
    def _restore(self) -> None:
        """Replay this storage's earlier writes (every session since the last reset)."""
        rows = self.store.episodes()
        if _NAME_KEY not in rows.column_names:
            return
        rows = rows.filter(pc.fill_null(pc.equal(rows.column(_NAME_KEY), self.name), False))
        if not len(rows):
            return
        ids = rows.column("episode_id").to_numpy()
        if _RESET_KEY in rows.column_names:
            resets = ids[np.asarray(rows.column(_RESET_KEY).fill_null(False))]
            if len(resets):
                ids = ids[ids > resets.max()]
        fields = dict(zip(ids.tolist(), rows.column(_FIELDS_KEY).to_pylist())) if _FIELDS_KEY in rows.column_names else {}
        parts = [self.store.read_episode(int(e), fields=fields[e]) for e in sorted(ids.tolist()) if fields.get(e)]
        parts = [p for p in parts if len(p["step"])]
        if not parts:
            return
        names = [k for k in parts[0] if k not in ("episode_id", "step", _SLOT)]
        if any(sorted(p) != sorted(parts[0]) for p in parts):
            raise ConfigError(f"replay storage {self.name!r} in {self.store.path} was written with different keys "
                              "in different sessions; give each layout its own name=")
        slots = np.concatenate([p[_SLOT] for p in parts]).astype(np.int64)
        if slots.max() >= self.max_size:
            raise ConfigError(f"replay storage {self.name!r} in {self.store.path} holds slot {int(slots.max())} but "
                              f"max_size is {self.max_size}; open it with max_size >= {int(slots.max()) + 1}")
        values = {n: np.concatenate([p[n] for p in parts]) for n in names}
        self.writes = len(slots)
        # the newest write of each slot wins
        _, newest = np.unique(slots[::-1], return_index=True)
        keep = np.sort(len(slots) - 1 - newest)
        tensors = {n: torch.from_numpy(np.ascontiguousarray(v[keep])) for n, v in values.items()}
        if list(tensors) == [_TENSOR]:
            data: Any = tensors[_TENSOR]
        else:
            data = TensorDict(tensors, batch_size=[len(keep)]).unflatten_keys("/")
        super().set(torch.from_numpy(slots[keep]), data, set_cursor=False)
        self._len = min(self.writes, self.max_size)

    def resume(self, buffer: ReplayBuffer) -> ReplayBuffer:
        """Put ``buffer``'s round-robin writer where the last session left off."""
        writer = buffer._writer
        writer._cursor = self.writes % self.max_size
        writer._write_count = self.writes
        return buffer


def replay_buffer(store: TrajectoryStore, max_size: int, *, name: str = "replay", tensordict: bool = True,
                  **kwargs: Any) -> ReplayBuffer:
    """A (TensorDict)ReplayBuffer on a :class:`TrajectoryStorage` of ``store``, its writer
    resumed where the last session left off. ``kwargs`` go to the buffer (``batch_size``,
    ``sampler``...)."""
    storage = TrajectoryStorage(store, max_size, name=name)
    cls = TensorDictReplayBuffer if tensordict else ReplayBuffer
    buffer = cls(storage=storage, **kwargs)
    return storage.resume(buffer)


def _columns(data: Any, n: int) -> dict[str, Any]:
    """Numpy columns (steps on axis 0) of a TensorDict / tensor written to ``n`` slots."""
    if isinstance(data, TensorDictBase):
        flat = data.flatten_keys("/")
        items = [(k if isinstance(k, str) else "/".join(k), v) for k, v in flat.items(include_nested=True, leaves_only=True)]
    elif isinstance(data, torch.Tensor):
        items = [(_TENSOR, data)]
    else:
        raise InvalidRecordError(f"TrajectoryStorage stores TensorDicts or tensors, not {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in items:
        value = value.detach().cpu()
        if n == 1 and (value.dim() == 0 or value.shape[0] != 1):
            value = value.unsqueeze(0)  # one item written at an int cursor: no batch dimension
        try:
            out[key] = value.numpy()
        except TypeError:  # bfloat16: no numpy dtype; the store keeps tensors as blobs
            out[key] = list(value)
    return out
