"""``persisting export``: a checkpoint to safetensors; episodes, steps or a queue topic to Parquet.

Everything is read through read-only opens, so rows still in a WAL (acknowledged, not yet
committed, or never committed because the writer died first) are exported too, and nothing in
the store changes. Tables are streamed to Parquet batch by batch (bounded memory, progress per
batch) into ``FILE.partial``, renamed over ``FILE`` only when complete: an interrupted export
never leaves a truncated file under the name asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from persisting.engine.schema import conform, evolve
from persisting.engine.table import Table
from persisting.errors import ConfigError
from persisting.ops.catalog import StoreInfo

__all__ = ["export_checkpoint", "export_parquet"]

Progressed = Callable[[int, str], None]
_BATCH_ROWS = 65536


def _noop(rows: int, label: str) -> None:
    pass


def export_checkpoint(store: StoreInfo, step: int | None, tag: str | None, out: str) -> dict[str, object]:
    from persisting.params.store import ParamStore

    with ParamStore(store.path, read_only=True) as ps:
        info = ps.info(step, tag=tag) if (step is not None or tag is not None) else ps.latest()
        if info is None:
            raise ConfigError(f"checkpoint store {store.path} holds no checkpoint to export")
        partial = out + ".partial"
        ps.export_safetensors(info.step, partial)
    os.replace(partial, out)
    return {"step": info.step, "out": out, "bytes": os.path.getsize(out)}


def export_parquet(store: StoreInfo, out: str, *, what: str = "episodes",
                   progress: Progressed | None = None) -> dict[str, object]:
    """Write ``store`` to ``out``: trajectory ``episodes`` (one row per episode) or ``steps``;
    a queue topic (every bucket, with ``topic`` and ``bucket`` columns); a plain table as it is.
    ``progress(rows, label)`` is called per batch written."""
    report = progress or _noop
    if store.kind == "trajectory":
        if what not in ("episodes", "steps"):
            raise ConfigError(f"--what must be 'episodes' or 'steps' for a trajectory store, got {what!r}")
        if what == "steps":
            return _stream([os.path.join(store.path, "steps.lance")], out, report)
        return _write_whole(_episodes(store), out, report)
    if store.kind == "queue":
        topic = store.topic or os.path.basename(store.path)
        extra = {t.path: {"topic": topic, "bucket": t.name.removeprefix("bucket_")} for t in store.tables}
        return _stream([t.path for t in store.tables], out, report, extra, queue=True)
    if store.kind == "table":
        return _stream([store.tables[0].path], out, report)
    raise ConfigError(
        f"{store.path} is a {store.kind} store: Parquet export takes episodes, a queue topic or a plain "
        "table (checkpoints export with --step N to .safetensors)")


def _stream(paths: list[str], out: str, report: Progressed,
            extra: dict[str, dict[str, str]] | None = None, *, queue: bool = False) -> dict[str, object]:
    """Every row of ``paths`` (one schema: theirs merged by the evolution rules) into ``out``;
    ``queue``: bucket tables, whose widened columns are read back as one column each."""
    from persisting.queue.widening import Layout

    schema: pa.Schema | None = None
    layouts: dict[str, Layout] = {}
    for path in paths:
        with Table(path, read_only=True) as t:
            layouts[path] = Layout(t.schema if queue else None)
            logical = layouts[path].logical if queue else t.schema
            if logical is not None:
                schema = evolve(schema, logical).schema
    if schema is None:
        schema = pa.schema([])
    names = list(extra[paths[0]]) if extra else []
    full = pa.schema([pa.field(f.name, f.type, f.nullable) for f in schema]
                     + [pa.field(n, pa.string()) for n in names if n not in schema.names])
    rows = 0
    partial = out + ".partial"
    try:
        with pq.ParquetWriter(partial, full) as writer:
            for path in paths:
                report(0, path)
                for batch in _batches(path):
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


def _batches(path: str) -> Iterator[pa.RecordBatch]:
    with Table(path, read_only=True) as t:
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


def _episodes(store: StoreInfo) -> pa.Table:
    from persisting.trajectory.store import TrajectoryStore

    with TrajectoryStore(store.path, read_only=True) as ts:
        return ts.episodes()
