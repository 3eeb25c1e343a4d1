"""Episode: the writing handle of one open episode of a TrajectoryStore.

Steps are checked and copied when added (so a bad step raises at once and the caller may reuse
its arrays), held until ``step_buffer`` of them gather, then handed to the store's steps table
in one append. The episode's own row is written lazily: an "open" row before the first
hand-off, a final row at :meth:`Episode.end`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from persisting.errors import ClosedError, InvalidRecordError
from persisting.trajectory.buffer import StepBuffer
from persisting.trajectory.schema import ENDED_STATUSES

if TYPE_CHECKING:
    from persisting.trajectory.writing import EpisodeWriter

__all__ = ["Episode", "rows_of"]




class Episode:
    """An open episode: add steps, then :meth:`end` it (or use it as a context manager)."""

    def __init__(self, writer: EpisodeWriter, episode_id: int, metadata: dict[str, Any], start: datetime) -> None:
        self._writer = writer
        self.id = episode_id
        self.metadata = metadata
        self.start_time = start
        self.status = "open"
        self.length = 0
        self._return: float | None = None
        self._buffer = StepBuffer(writer.step_buffer)
        self._last_truncated = False
        self._last_terminated = False
        self._announced = False  # has the "open" row been written?
        self._row_parts: tuple[Any, ...] | None = None  # the writer's cache of this episode's row columns

    @property
    def episode_id(self) -> int:
        return self.id

    @property
    def pending_steps(self) -> int:
        """Steps added but not yet handed to the steps table."""
        return len(self._buffer)

    @property
    def return_(self) -> float | None:
        """Sum of the ``reward`` field over the steps so far (None without rewards)."""
        return self._buffer.running_sum("reward", self._return)

    def _check_open(self) -> None:
        if self.status != "open":
            raise ClosedError(
                f"episode {self.id} has ended (status {self.status!r}); steps cannot be added to it. "
                "Begin a new one with store.episode(...) or store.begin_episode(...)",
                episode_id=self.id,
            )

    def add_step(self, fields: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Add one step: ``add_step(obs=..., action=..., reward=..., terminated=..., truncated=...,
        **extra)`` or ``add_step({...})``. A bad value raises before the step is kept."""
        if fields is None:
            step: Mapping[str, Any] = kwargs
        elif type(fields) is dict or isinstance(fields, Mapping):
            step = {**fields, **kwargs} if kwargs else fields
        else:
            raise InvalidRecordError(f"a step is a dict of field -> value, not a {type(fields).__name__}")
        writer = self._writer
        buffer = self._buffer
        with writer.lock:
            writer.check_writable()
            if self.status != "open":
                self._check_open()
            fields_ = writer.fields
            if not buffer.store(step, fields_.version) and not buffer.add_fast(step, fields_.version) \
                    and not buffer.add_known(step, fields_.sigs, fields_.specs, blob_threshold=fields_.blob_threshold,
                                             ragged=fields_.ragged, version=fields_.version):
                self._add_checked([step])
                return
            self.length += 1  # the return and last flags are read from the buffer at hand-off
            if buffer.n >= writer.step_buffer:
                self._flush(announce=True)

    def add_step_values(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        """``add_step(dict(zip(names, values)))`` without the dict: for wrappers that log the
        same fields every step (:class:`~persisting.trajectory.gym.RecordEpisodes`). Once a
        step of this exact layout was stored, the next ones go straight to the buffer's
        compiled store function; anything else takes :meth:`add_step`'s checks."""
        writer = self._writer
        buffer = self._buffer
        with writer.lock:
            writer.check_writable()
            if self.status != "open":
                self._check_open()
            held = buffer.names
            if held is names or (held == names and held is not None):
                buffer.names = names  # the caller's tuple: an identity test from now on
                if buffer.store_values(values, writer.fields.version):
                    self.length += 1
                    if buffer.n >= writer.step_buffer:
                        self._flush(announce=True)
                    return
            self.add_step(dict(zip(names, values)))

    def add_steps(self, batch: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        """Add several steps at once: a list of step dicts, or a dict of columns whose values
        have the steps along the first axis (vectorised code). All or nothing.

        A dict of numeric numpy arrays / tensors is converted column by column and handed
        to the table at once (the fast path for bulk writes); anything else goes step by step.
        """
        if isinstance(batch, Mapping):
            with self._writer.lock:
                self._writer.check_writable()
                self._check_open()
                stacked = self._writer.fields.check_stacked(batch)
                if stacked is not None:
                    self._add_stacked(batch, stacked)
                    return
        self._add(rows_of(batch))

    def _add_stacked(self, batch: Mapping[str, Any], n: int) -> None:
        self._flush(announce=True)
        if not self._announced:
            self._writer.append_episode_row(self, rev=0, end=None)
            self._announced = True
        self._writer.write_stacked(self.id, self.length, n, batch)
        self.length += n
        reward = batch.get("reward")
        if reward is not None and self._writer.fields.specs["reward"].kind == "scalar":
            self._return = (self._return or 0.0) + float(np.asarray(reward, dtype=np.float64).sum())
        for key in ("truncated", "terminated"):
            if key in batch:
                setattr(self, "_last_" + key, bool(np.asarray(batch[key])[-1]))

    def _add(self, rows: list[Mapping[str, Any]]) -> None:
        with self._writer.lock:
            self._writer.check_writable()
            self._check_open()
            self._add_checked(rows)

    def _add_checked(self, rows: list[Mapping[str, Any]]) -> None:
        with self._writer.lock:
            normalized = self._writer.fields.normalize_steps(rows)
            self.length += len(normalized)
            self._buffer.add_rows(normalized, self._writer.fields.specs)
            if len(self._buffer) >= self._writer.step_buffer:
                self.flush()

    def flush(self) -> None:
        """Hand buffered steps to the steps table: from now on they are acknowledged."""
        self._flush(announce=True)

    def _flush(self, *, announce: bool) -> None:
        writer = self._writer
        with writer.lock:
            buffer = self._buffer
            n = buffer.n
            if n:
                ret = buffer.running_sum("reward", self._return)  # once: the open row needs it too
                if announce and not self._announced:
                    writer.append_episode_row(self, rev=0, end=None, ret=ret)
                    self._announced = True
                self._return = ret
                self._last_truncated = bool(buffer.last("truncated") or False)
                self._last_terminated = bool(buffer.last("terminated") or False)
                fields, arrays = buffer.take(writer.fields.specs)
                writer.append_steps(self.id, self.length - n, n, fields, arrays)

    def end(self, status: str | None = None, **metadata: Any) -> None:
        """Finish the episode. ``status`` defaults to ``"truncated"`` when the last step was
        truncated and not terminated, else ``"complete"``; ``metadata`` is merged in."""
        if status is not None and status not in ENDED_STATUSES:
            raise InvalidRecordError(f"status {status!r} is not one of {ENDED_STATUSES}")
        with self._writer.lock:
            self._check_open()
            self._writer.check_writable()
            extra = self._writer.check_metadata(metadata)
            # An episode that ends before its first hand-off skips the "open" row: steps, then
            # the final row. Should a crash fall between the two, reopening still finds the
            # steps and marks them an incomplete episode (without its metadata).
            self._flush(announce=False)
            if status is None:
                status = "truncated" if self._last_truncated and not self._last_terminated else "complete"
            final = {**self.metadata, **extra}
            self._writer.append_episode_row(self, rev=1 if self._announced else 0, end=datetime.now(timezone.utc),
                                            status=status, metadata=final)
            self.metadata, self.status = final, status
            self._writer.ended(self)

    def __enter__(self) -> Episode:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.status == "open" and not self._writer.closed:
            self.end("incomplete" if exc_type is not None else None)

    def __repr__(self) -> str:
        return f"Episode(id={self.id}, status={self.status!r}, length={self.length})"


def rows_of(batch: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if isinstance(batch, Mapping):
        unsized = [k for k, v in batch.items() if not hasattr(v, "__len__") or isinstance(v, (str, bytes))]
        if unsized:
            raise InvalidRecordError(f"add_steps: column(s) {unsized} hold no sequence; each needs one value per step")
        lengths = {k: len(v) for k, v in batch.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidRecordError(f"add_steps: columns have different lengths {lengths}; each needs one value per step")
        n = next(iter(lengths.values()), 0)
        return [{k: v[i] for k, v in batch.items()} for i in range(n)]
    if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence):
        raise InvalidRecordError(f"add_steps takes a list of step dicts or a dict of columns, not a {type(batch).__name__}")
    for i, row in enumerate(batch):
        if not isinstance(row, Mapping):
            raise InvalidRecordError(f"step {i} is a {type(row).__name__}, not a dict of field -> value", index=i)
    return list(batch)
