"""Find the stores and tables under a directory, read-only.

A Lance table is a directory with ``_versions/``; its WAL (if any) is ``<name>.wal`` beside
``<name>.lance``. A table whose writer died before its first commit has only its WAL (every
writer's under ``<name>.wal/writers/<id>/``, or the single-writer ``<name>.wal/*.wal``): it is
listed too (``has_dataset`` False) and read by replaying its WAL in memory, read-only.

Tables are grouped by the directory that holds them, and each group is recognised by its
layout: ``chunks`` + ``checkpoints`` is a ParamStore, ``steps`` + ``episodes`` a TrajectoryStore,
``bucket_<id>`` tables a queue topic, tables with the KV chunk schema a KVCacheStore (one table
per namespace); anything else is a plain table. Pulsing keeps each bucket in its own directory
(``<topic dir>/bucket_<id>/bucket_<id>.lance``): those are grouped under the topic directory,
and by the topic each bucket records (:mod:`persisting.queue.topics`), so two topics sharing a
directory are still two stores. Kinds use the same names as the ``store`` label of the
engine's metrics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import lance

from persisting.engine.batches import decode_batch
from persisting.engine.commits import applied_lsn, writer_applied_lsn
from persisting.engine.durable import is_local
from persisting.engine.lance_io import default_wal_dir
from persisting.engine.writers import read_base, writer_wal_dirs
from persisting.engine.wal import ReplayReport, list_segments, read_frames
from persisting.kvcache.namespaces import namespace_of
from persisting.queue.topics import read_topic

__all__ = [
    "KINDS", "StoreInfo", "TableInfo", "discover", "find_tables", "group_stores", "open_table", "table_info",
    "wal_pending_rows", "wal_size",
]

KINDS = ("params", "trajectory", "kvcache", "queue", "table")
_KV_COLUMNS = {"key", "parent", "depth", "checksum", "payload"}
_SKIP_DIRS = {"_versions", "_transactions", "_deletions", "_indices", "data", "_refs"}


@dataclass(frozen=True)
class TableInfo:
    """One table as it is on disk; ``pending_rows`` are in the WAL, above the applied LSN."""

    path: str
    name: str
    wal_dir: str | None
    committed_rows: int
    pending_rows: int
    bytes_on_disk: int
    wal_bytes: int
    versions: int
    version: int
    applied_lsn: int
    last_write: float | None
    columns: tuple[str, ...]
    error: str | None = None
    has_dataset: bool = True  # False: a writer died before its first commit; rows only in its WAL
    topic: str | None = None  # a queue bucket's recorded topic

    @property
    def rows(self) -> int:
        return self.committed_rows + self.pending_rows

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "name": self.name, "has_dataset": self.has_dataset, "topic": self.topic,
            "rows": self.rows, "committed_rows": self.committed_rows,
            "pending_rows": self.pending_rows, "bytes": self.bytes_on_disk, "wal_bytes": self.wal_bytes,
            "versions": self.versions, "version": self.version, "applied_lsn": self.applied_lsn,
            "last_write": _iso(self.last_write), "error": self.error,
        }


@dataclass(frozen=True)
class StoreInfo:
    """A directory of tables recognised as one store."""

    kind: str
    path: str
    tables: tuple[TableInfo, ...] = field(default_factory=tuple)
    topic: str | None = None  # a queue store's topic

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def bytes_on_disk(self) -> int:
        return sum(t.bytes_on_disk + t.wal_bytes for t in self.tables)

    @property
    def last_write(self) -> float | None:
        times = [t.last_write for t in self.tables if t.last_write is not None]
        return max(times) if times else None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "path": self.path, "topic": self.topic, "rows": self.rows, "bytes": self.bytes_on_disk,
            "versions": sum(t.versions for t in self.tables), "last_write": _iso(self.last_write),
            "tables": [t.to_json() for t in self.tables],
        }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def is_table(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "_versions"))


def has_wal_rows(wal_dir: str) -> bool:
    """True if any writer's WAL under ``wal_dir`` holds a segment."""
    return any(list_segments(d) for _, d in writer_wal_dirs(wal_dir))


def _wal_only(wal_dir: str) -> str | None:
    """The table path of a WAL directory whose dataset was never committed, else None."""
    path = wal_dir.removesuffix(".wal") + ".lance"
    return path if not is_table(path) and has_wal_rows(wal_dir) else None


def find_tables(root: str) -> list[str]:
    """Every Lance table at or under ``root``, sorted: directories with ``_versions/``, and
    tables that exist only as a WAL (``<name>.wal`` with segments, no ``<name>.lance`` yet)."""
    root = os.path.abspath(root)
    if is_table(root):
        return [root]
    if root.endswith((".lance", ".wal")) and os.path.isdir(root.removesuffix(".lance").removesuffix(".wal") + ".wal"):
        only = _wal_only(root.removesuffix(".lance").removesuffix(".wal") + ".wal")
        if only is not None:
            return [only]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if is_table(full):
                found.append(full)
            elif d.endswith(".wal"):
                only = _wal_only(full)
                if only is not None:
                    found.append(only)
            elif d not in _SKIP_DIRS:
                keep.append(d)
        dirnames[:] = keep
    return sorted(found)


def _tree_size(path: str) -> tuple[int, float | None]:
    total, newest = 0, None
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue  # removed by a live writer
            total += st.st_size
            newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
    return total, newest


def wal_size(wal_dir: str | None) -> tuple[int, float | None]:
    """Bytes of every writer's WAL segments under a table's ``wal_dir``, and the newest one's time."""
    total, newest = 0, None
    for _, d in writer_wal_dirs(wal_dir) if wal_dir is not None and os.path.isdir(wal_dir) else ():
        for _, seg in list_segments(d):
            try:
                st = os.stat(seg)
            except FileNotFoundError:
                continue  # dropped by a live writer's commit
            total += st.st_size
            newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
    return total, newest


def open_table(t: TableInfo, storage_options: dict[str, str] | None = None) -> Any:
    """``t`` opened read-only (no lock, nothing written): committed rows, and rows still only in
    a writer's WAL replayed in memory -- its local WAL (``t.wal_dir``) and, on ``s3://``, the
    object-store WAL beside the dataset. Returns a :class:`persisting.engine.Table`."""
    from persisting.engine.remote_wal import remote_wal_uri
    from persisting.engine.table import Table

    remote = not is_local(t.path)
    both = remote and t.wal_dir is not None and t.path.startswith(("s3://", "s3a://"))
    return Table(t.path, read_only=True, storage_options=storage_options if remote else None, wal_dir=t.wal_dir,
                 wal_uri=remote_wal_uri(t.path) if both else None)


def wal_pending_rows(wal_dir: str, after_lsn: int) -> int:
    """Rows in WAL frames above ``after_lsn`` (point-in-time, read-only)."""
    rows = 0
    for frame in read_frames(wal_dir, after_lsn=after_lsn, report=ReplayReport()):
        rows += decode_batch(frame.payload, where=f"{wal_dir} frame lsn {frame.lsn}").num_rows
    return rows


def table_info(path: str, *, wal_rows: bool = True) -> TableInfo:
    """What is on disk for one table, without opening it for writing or changing a file."""
    path = os.path.abspath(path)
    name = os.path.basename(path).removesuffix(".lance")
    wal_dir = default_wal_dir(path)
    wal_dir_or_none = wal_dir if os.path.isdir(wal_dir) else None
    size, mtime = _tree_size(path)
    wals = writer_wal_dirs(wal_dir) if wal_dir_or_none is not None else []
    wal_bytes, wal_mtime = wal_size(wal_dir_or_none)
    mtime = wal_mtime if mtime is None else max(mtime, wal_mtime or mtime)
    committed = pending = versions = version = lsn = 0
    columns: tuple[str, ...] = ()
    error = None
    topic = read_topic(wal_dir) if wal_dir_or_none is not None and name.startswith("bucket_") else None
    if not is_table(path):
        try:
            pending, columns = _replayed(path)
        except BaseException as exc:  # noqa: BLE001 - kept in TableInfo.error, as for a damaged dataset
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            error = f"{type(exc).__name__}: {exc}"
        return TableInfo(path, name, wal_dir_or_none, 0, pending, size, wal_bytes, 0, 0, 0, mtime, columns, error,
                         has_dataset=False, topic=topic)
    try:
        ds = lance.dataset(path)
        committed = ds.count_rows()
        versions = len(ds.versions())
        version = ds.version
        lsn = applied_lsn(ds)
        columns = tuple(ds.schema.names)
        if wal_rows and wal_bytes:
            for wid, d in wals:
                floor = read_base(d) if wid else (0, 0)
                pending += wal_pending_rows(d, writer_applied_lsn(ds, wid, *floor))
    except BaseException as exc:  # noqa: BLE001 - kept in TableInfo.error, shown by ls and exported as unreadable
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit; a Rust panic in a damaged file is an error like any
        error = f"{type(exc).__name__}: {exc}"
    return TableInfo(path, name, wal_dir_or_none, committed, pending, size, wal_bytes, versions, version, lsn,
                     mtime, columns, error, topic=topic)


def _replayed(path: str) -> tuple[int, tuple[str, ...]]:
    """Rows and columns of a table that exists only as WALs, replayed in memory (read-only)."""
    from persisting.engine.table import Table

    with Table(path, read_only=True) as t:
        return t.count(), tuple(t.schema.names) if t.schema is not None else ()


def _kind(names: set[str], tables: list[TableInfo]) -> str:
    if {"chunks", "checkpoints"} <= names:
        return "params"
    if {"steps", "episodes"} <= names:
        return "trajectory"
    if all(n.startswith("bucket_") for n in names):
        return "queue"
    if all(_KV_COLUMNS <= set(t.columns) for t in tables):
        return "kvcache"
    return "table"


def _group_dir(path: str) -> str:
    """The directory a table is grouped by: its own, or for Pulsing's ``<topic dir>/bucket_N/
    bucket_N.lance`` layout the topic directory."""
    directory = os.path.dirname(path)
    name = os.path.basename(path).removesuffix(".lance")
    if name.startswith("bucket_") and os.path.basename(directory) == name:
        return os.path.dirname(directory)
    return directory


def discover(root: str, *, wal_rows: bool = True) -> list[StoreInfo]:
    """The stores under ``root``, each with its tables; a lone table is a store of kind ``table``."""
    root = os.path.abspath(root)
    return group_stores([table_info(path, wal_rows=wal_rows) for path in find_tables(root)])


def group_stores(infos: list[TableInfo]) -> list[StoreInfo]:
    """Tables grouped into stores by the directory (or object-store prefix) that holds them."""
    by_dir: dict[str, list[TableInfo]] = {}
    for info in infos:
        by_dir.setdefault(_group_dir(info.path), []).append(info)
    stores: list[StoreInfo] = []
    for directory, tables in sorted(by_dir.items()):
        kind = _kind({t.name for t in tables}, tables)
        if kind == "table":
            stores.extend(StoreInfo("table", t.path, (t,)) for t in tables)
        elif kind == "queue":
            by_topic: dict[str | None, list[TableInfo]] = {}
            for t in tables:
                by_topic.setdefault(t.topic, []).append(t)
            for topic, group in sorted(by_topic.items(), key=lambda kv: kv[0] or ""):
                stores.append(StoreInfo("queue", directory, tuple(group), topic=topic or os.path.basename(directory)))
        elif kind == "kvcache":  # tables are named by the encoded namespace: show it as given
            stores.append(StoreInfo(kind, directory, tuple(replace(t, name=namespace_of(t.name)) for t in tables)))
        else:
            stores.append(StoreInfo(kind, directory, tuple(tables)))
    return stores


def iter_tables(stores: list[StoreInfo]) -> Iterator[tuple[StoreInfo, TableInfo]]:
    for s in stores:
        for t in s.tables:
            yield s, t
