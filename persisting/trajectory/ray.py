"""Ray: many actors log episodes into one TrajectoryStore; ``ray.data`` reads its steps.

Writing. Every actor is a writer session of its own (:mod:`persisting.trajectory.sessions`):
it opens the store once, in the actor, and logs episodes as a single process would.
:class:`SharedStore` carries the path, the storage options and the WAL placement to the actors
(it pickles; a store does not). Two placements:

- ``wal="object"`` (an ``s3://`` store): the WALs, writer sessions and episode-id counter live
  on the object store (:mod:`persisting.trajectory.remote_sessions`), so actors run on any node
  and :meth:`SharedStore.actor_options` pins nothing. An actor that dies -- or its whole node --
  loses only steps it had not acknowledged: once its leases expire
  (``TableOptions.wal_lease_seconds``, 10 s by default) the next writer that opens the store,
  on any node, replays its WAL and marks its open episodes ``incomplete``.
- ``wal="local"`` (default): the writers find each other, reserve episode ids and recover dead
  writers through the store's ``wal_dir``, a *local* directory, so every writer must run on
  the node that holds it: :meth:`SharedStore.actor_options` pins the actors there. An actor
  that dies (``ray.kill``, a crash, the OOM killer) is recovered by the next writer that opens
  the store; steps it acknowledged stay on that node's disk if the node itself dies.

Reading. :func:`read_steps` and :func:`read_episodes` return ``ray.data.Dataset`` objects
over the store's Lance tables (``steps.lance``, and the newest revision of each episode), so
training reads them in parallel without knowing the layout. A read sees what the writers had
flushed when it was created. Steps are one row each (``episode_id``, ``step`` and the
fields); fixed-shape arrays come back as Ray tensor columns of their shape. Blob fields (arrays of at least the
store's ``blob_threshold`` bytes) are left out: read them with ``TrajectoryStore.episode``.
Storage options are passed explicitly to every read task, never taken from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import ray
import ray.data

from persisting.engine.shell import check_choice
from persisting.errors import ConfigError, NotFoundError
from persisting.trajectory.fields import CHECKSUM_SUFFIX, FieldSpec
from persisting.trajectory.reading import STATUSES, STEP_KEYS
from persisting.trajectory.store import TrajectoryStore

__all__ = ["SharedStore", "read_episodes", "read_steps", "steps_uri"]


def steps_uri(path: str) -> str:
    """The Lance dataset holding a store's steps (one row per step)."""
    return str(path).rstrip("/") + "/steps.lance"


def _current_node() -> str | None:
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@dataclass(frozen=True)
class SharedStore:
    """Where one TrajectoryStore lives and how its writers open it; pass it to Ray actors.

    path: the store (local directory or ``s3://...``); storage_options: Lance's options for it
    (endpoint, credentials), handed to every actor and read task as they are.
    wal_dir: the local directory for the writers' WALs and locks, shared by every writer; it
    must be on ``node_id``'s disk. Required for a remote ``path`` with ``wal="local"``.
    node_id: the Ray node holding ``wal_dir`` (by default the node that made this object;
        None with ``wal="object"``: writers run anywhere).
    store_options: keyword arguments for ``TrajectoryStore`` (``durability``, ``step_buffer``...).
    wal: ``"local"`` or ``"object"`` (see the module docstring and ``TrajectoryStore``).
    """

    path: str
    wal_dir: str | None = None
    storage_options: Mapping[str, str] | None = None
    node_id: str | None = None
    store_options: Mapping[str, Any] = field(default_factory=dict)
    wal: str = "local"

    @classmethod
    def create(cls, path: str, *, wal_dir: str | None = None, storage_options: Mapping[str, str] | None = None,
               wal: Literal["local", "object"] = "local", **store_options: Any) -> SharedStore:
        """Describe a store for the actors: pinned to this process's Ray node with
        ``wal="local"``, placed anywhere with ``wal="object"``."""
        check_choice("wal", wal, ("local", "object"), store=f"SharedStore {path}")
        if wal == "object":
            if wal_dir is not None:
                raise ConfigError(f"SharedStore {path}: wal='object' keeps the WALs on the object store; "
                                  "drop wal_dir (or use wal='local')", argument="wal_dir")
        elif wal_dir is not None:
            wal_dir = os.path.abspath(wal_dir)
        elif "://" in str(path) and not str(path).startswith("file://"):
            raise ConfigError(f"trajectory store {path} is remote: pass wal='object' (WALs on the object store, "
                              "actors on any node) or wal_dir=, a local directory on this node that every writer "
                              "actor shares for its WALs and locks", path=str(path))
        for key in ("read_only", "wal_dir", "storage_options"):
            if key in store_options:
                raise ConfigError(f"SharedStore.create: {key!r} is not a store option here; "
                                  "pass wal_dir/storage_options as keywords and open readers with open(read_only=True)")
        node = _current_node() if wal == "local" else None
        return cls(str(path), wal_dir, dict(storage_options) if storage_options else None, node,
                   dict(store_options), wal)

    def actor_options(self) -> dict[str, Any]:
        """Options for ``Actor.options(...)`` that place a writer on the node holding ``wal_dir``
        (``{}`` with ``wal="object"``: any node will do)."""
        if self.node_id is None:
            return {}
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(self.node_id, soft=False)}

    def open(self, *, read_only: bool = False) -> TrajectoryStore:
        """Open the store in this process (call it inside the actor, once): a writer session,
        or a reader with ``read_only=True``. A writer on another node than ``node_id`` is
        refused: its WAL and locks would not be shared with the others."""
        if not read_only and self.node_id is not None:
            here = _current_node()
            if here is not None and here != self.node_id:
                raise ConfigError(
                    f"trajectory store {self.path}: this writer runs on Ray node {here}, but the store's "
                    f"wal_dir {self.wal_dir} is on node {self.node_id}; create the actor with "
                    "**shared.actor_options() so it runs there", path=self.path)
        opts = dict(self.store_options) if not read_only else {}
        return TrajectoryStore(self.path, storage_options=_opts(self.storage_options), wal_dir=self.wal_dir,
                               read_only=read_only, wal=self.wal, **opts)

    def read_steps(self, **kwargs: Any) -> ray.data.Dataset:
        """:func:`read_steps` on this store."""
        return read_steps(self.path, storage_options=self.storage_options, **kwargs)

    def read_episodes(self, **kwargs: Any) -> ray.data.Dataset:
        """:func:`read_episodes` on this store."""
        return read_episodes(self.path, storage_options=self.storage_options, **kwargs)


def _opts(options: Mapping[str, str] | None) -> dict[str, str] | None:
    return dict(options) if options else None


def _reader(path: str, storage_options: Mapping[str, str] | None) -> TrajectoryStore:
    return TrajectoryStore(path, storage_options=_opts(storage_options), read_only=True)


def _status_filter(status: str | Sequence[str] | None) -> str | None:
    if status is None:
        return None
    wanted = [status] if isinstance(status, str) else list(status)
    bad = [s for s in wanted if s not in STATUSES]
    if bad or not wanted:
        raise ConfigError(f"status {bad or wanted!r} is not one of {STATUSES}")
    return "status IN (" + ", ".join(f"'{s}'" for s in wanted) + ")"


def _and(*clauses: str | None) -> str | None:
    parts = [f"({c})" for c in clauses if c]
    return " AND ".join(parts) if parts else None


def read_episodes(path: str, *, storage_options: Mapping[str, str] | None = None, filter: str | None = None,
                  status: str | Sequence[str] | None = None) -> ray.data.Dataset:
    """One row per episode (its newest revision: id, status, length, return, times, metadata)
    as a Ray dataset. ``filter`` is SQL on the episode columns; ``status`` keeps only those."""
    with _reader(path, storage_options) as store:
        table = store.episodes(_and(filter, _status_filter(status)))
    return ray.data.from_arrow(table)


class _Shape:
    """A ``map_batches`` function (Arrow batches) turning fixed-shape fields, stored as
    flattened fixed-size lists, into Ray tensor columns of their shape."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ray.data.extensions import ArrowTensorArray

        for name, shape in self.shapes.items():
            if name not in batch.column_names:
                continue
            col = batch.column(name).combine_chunks()
            if col.null_count or not pa.types.is_fixed_size_list(col.type):
                continue  # some steps lack this field: it stays a list column with nulls
            values = col.flatten().to_numpy(zero_copy_only=False).reshape((len(col), *shape))
            batch = batch.set_column(batch.column_names.index(name), name, ArrowTensorArray.from_numpy(values))
        return batch


def _step_columns(path: str, fields: dict[str, FieldSpec], columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return list(STEP_KEYS) + [n for n, s in fields.items() if s.kind != "blob"]
    unknown = [c for c in columns if c not in fields and c not in STEP_KEYS]
    if unknown:
        raise NotFoundError(f"trajectory store {path} has no step field(s) {unknown}; it has {sorted(fields)}",
                            path=path)
    blobs = [c for c in columns if c in fields and fields[c].kind == "blob"]
    if blobs:
        raise ConfigError(f"step field(s) {blobs} of {path} are stored as tensor blobs, which ray.data cannot "
                          "decode; read them with TrajectoryStore.episode(id, fields=...)")
    return list(columns)


def _fragments(uri: str, storage_options: Mapping[str, str] | None) -> int:
    import lance

    try:
        return max(1, len(lance.dataset(uri, storage_options=_opts(storage_options)).get_fragments()))
    except ValueError:
        return 1  # no steps table: read_lance below says so


def read_steps(path: str, *, storage_options: Mapping[str, str] | None = None, columns: Sequence[str] | None = None,
               filter: str | None = None, status: str | Sequence[str] | None = None,
               **read_args: Any) -> ray.data.Dataset:
    """Every flushed step of the store as a Ray dataset, one row per step.

    columns: step fields to read (``episode_id`` and ``step`` always exist; default: every
        field except blobs). filter: SQL on the step columns, pushed down to Lance
        (``"episode_id >= 100 AND reward > 0"``). status: only steps of episodes whose newest
        state is one of these (``"complete"``, ``("complete", "truncated")``); the episodes are
        read first, so an ended episode read here has all its steps.
    read_args: passed to ``ray.data.read_lance`` (``concurrency``, ``override_num_blocks``...).
    Fixed-shape array fields come back as Ray tensor columns of their shape (numpy batches:
    ``(rows, *shape)`` arrays); a field some steps lack stays a flat list column with nulls.
    """
    for bad in ("uri", "storage_options", "scanner_options"):
        if bad in read_args:
            raise ConfigError(f"read_steps sets {bad!r} itself; pass storage_options= or columns=/filter=")
    with _reader(path, storage_options) as store:
        where = filter
        if status is not None:
            ids = store.episodes(_status_filter(status)).column("episode_id").to_pylist()
            where = _and(filter, "episode_id IN (" + ", ".join(str(int(i)) for i in ids) + ")" if ids else "false")
        fields = store.fields
    cols = _step_columns(path, fields, columns)
    cols = [c for c in cols if not c.endswith(CHECKSUM_SUFFIX)]
    scanner: dict[str, Any] = {"columns": cols}
    if where:
        scanner["filter"] = where  # through scanner_options: read_lance's filter= is deprecated
    if "override_num_blocks" not in read_args:
        # at most one block per fragment: Ray 2.60 otherwise splits each fragment's output
        # into small blocks (to reach 200) and then runs the map step below as one task per
        # block, not fused with the read: 20,000 steps in 25 fragments took 3.3-12 s instead
        # of 0.14 s (benchmarks/RESULTS.md). 200 caps the tasks as Ray's default does.
        read_args["override_num_blocks"] = min(200, _fragments(steps_uri(path), storage_options))
    try:
        ds = ray.data.read_lance(steps_uri(path), storage_options=_opts(storage_options), scanner_options=scanner,
                                 **read_args)
    except ValueError as exc:
        if "not found" not in str(exc).lower():
            raise
        raise NotFoundError(f"trajectory store {path} has no steps table ({steps_uri(path)}): the store does not "
                            "exist or no writer flushed a step yet; check the path and storage_options",
                            path=path) from exc
    shapes = {n: fields[n].shape for n in cols if n in fields and fields[n].kind == "fixed"}
    if shapes or where:
        # also with a filter alone: Ray 2.60 answers count() of a bare read from the fragments'
        # row counts, ignoring the filter; a map step makes it count the rows read
        ds = ds.map_batches(_Shape(shapes), batch_format="pyarrow", zero_copy_batch=True)
    return ds
