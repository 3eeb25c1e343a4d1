"""``persisting export``: a checkpoint to safetensors; episodes, steps or a queue topic to Parquet.

Everything is read through read-only opens, so rows still in a WAL (acknowledged, not yet
committed, or never committed because the writer died first) are exported too, and nothing in
the store changes. Tables are streamed to Parquet batch by batch (bounded memory, progress per
batch) into ``FILE.partial``, renamed over ``FILE`` only when complete: an interrupted export
never leaves a truncated file under the name asked for. A store on ``s3://`` (found by
:func:`persisting.ops.remote_catalog.discover_remote`) is read with ``storage_options``; rows in
its object-store WAL, or in the local ``wal_dir`` its writers were given, are exported too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from persisting.engine.durable import is_local
from persisting.engine.schema import conform, evolve
from persisting.errors import ConfigError
from persisting.ops.catalog import StoreInfo, TableInfo, open_table

__all__ = ["export_checkpoint", "export_parquet"]

Progressed = Callable[[int, str], None]
Options = dict[str, str] | None
_BATCH_ROWS = 65536


def _noop(rows: int, label: str) -> None:
    pass


def _remote_options(store: StoreInfo, storage_options: Options, wal_dir: str | None) -> tuple[Options, str | None]:
    """The options a store is opened with: none for a local store (its WALs are beside it)."""
    return (None, None) if is_local(store.path) else (storage_options, wal_dir)


def export_checkpoint(store: StoreInfo, step: int | None, tag: str | None, out: str, *,
                      storage_options: Options = None, wal_dir: str | None = None) -> dict[str, object]:
    """Write checkpoint ``step`` (or ``tag``; default the latest) of a params store to ``out``
    (safetensors), through ``out.partial``."""
    from persisting.params.store import ParamStore

    opts, wal_dir = _remote_options(store, storage_options, wal_dir)
    with ParamStore(store.path, read_only=True, storage_options=opts, wal_dir=wal_dir) as ps:
        info = ps.info(step, tag=tag) if (step is not None or tag is not None) else ps.latest()
        if info is None:
            raise ConfigError(f"checkpoint store {store.path} holds no checkpoint to export")
        partial = out + ".partial"
        ps.export_safetensors(info.step, partial)
    os.replace(partial, out)
    return {"step": info.step, "out": out, "bytes": os.path.getsize(out)}


def export_parquet(store: StoreInfo, out: str, *, what: str = "episodes", progress: Progressed | None = None,
                   storage_options: Options = None, wal_dir: str | None = None) -> dict[str, object]:
    """Write ``store`` to ``out``: trajectory ``episodes`` (one row per episode) or ``steps``;
    a queue topic (every bucket, with ``topic`` and ``bucket`` columns); a plain table as it is.
    ``progress(rows, label)`` is called per batch written."""
    report = progress or _noop
    opts, wal_dir = _remote_options(store, storage_options, wal_dir)
    if store.kind == "trajectory":
        if what not in ("episodes", "steps"):
            raise ConfigError(f"--what must be 'episodes' or 'steps' for a trajectory store, got {what!r}")
        if what == "steps":
            return _stream([t for t in store.tables if t.name == "steps"], out, report, opts)
        return _write_whole(_episodes(store, opts, wal_dir), out, report)
    if store.kind == "queue":
        topic = store.topic or store.path.rstrip("/").rsplit("/", 1)[-1]
        extra = {t.path: {"topic": topic, "bucket": t.name.removeprefix("bucket_")} for t in store.tables}
        return _stream(list(store.tables), out, report, opts, extra, queue=True)
    if store.kind == "table":
        return _stream([store.tables[0]], out, report, opts)
    raise ConfigError(
        f"{store.path} is a {store.kind} store: Parquet export takes episodes, a queue topic or a plain "
        "table (checkpoints export with --step N to .safetensors)")


def _stream(tables: list[TableInfo], out: str, report: Progressed, opts: Options,
            extra: dict[str, dict[str, str]] | None = None, *, queue: bool = False) -> dict[str, object]:
    """Every row of ``tables`` (one schema: theirs merged by the evolution rules) into ``out``;
    ``queue``: bucket tables, whose widened columns are read back as one column each."""
    from persisting.queue.widening import Layout

    schema: pa.Schema | None = None
    layouts: dict[str, Layout] = {}
    for info in tables:
        with open_table(info, opts) as t:
            layouts[info.path] = Layout(t.schema if queue else None)
            logical = layouts[info.path].logical if queue else t.schema
            if logical is not None:
                schema = evolve(schema, logical).schema
    if schema is None:
        schema = pa.schema([])
    names = list(extra[tables[0].path]) if extra else []
    full = pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema]
                     + [pa.field(n, pa.string()) for n in names if n not in schema.names])
    rows = 0
    partial = out + ".partial"
    try:
        with pq.ParquetWriter(partial, full) as writer:
            for info in tables:
                path = info.path
                report(0, path)
                for batch in _batches(info, opts):
                    table = conform(layouts[path].to_logical(pa.Table.from_batches([batch])), schema)
                    for name, value in (extra or {}).get(path, {}).items():
                        if name not in schema.names:
                            table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
                    writer.write_table(table.cast(full))
                    rows += table.num_rows
                    report(table.num_rows, path)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return {"rows": rows, "out": out, "bytes": os.path.getsize(out)}


def _batches(info: TableInfo, opts: Options) -> Iterator[pa.RecordBatch]:
    with open_table(info, opts) as t:
        yield from t.iter_batches(batch_rows=_BATCH_ROWS)


def _write_whole(table: pa.Table, out: str, report: Progressed) -> dict[str, object]:
    partial = out + ".partial"
    try:
        pq.write_table(table, partial)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    report(table.num_rows, out)
    return {"rows": table.num_rows, "out": out, "bytes": os.path.getsize(out)}


def _episodes(store: StoreInfo, opts: Options, wal_dir: str | None) -> pa.Table:
    from persisting.trajectory.store import TrajectoryStore

    with TrajectoryStore(store.path, read_only=True, storage_options=opts, wal_dir=wal_dir) as ts:
        return ts.episodes()
