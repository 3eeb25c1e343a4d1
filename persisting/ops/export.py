"""``persisting export``: a checkpoint to safetensors; episodes, steps or a queue topic to Parquet.

Everything is read through read-only opens, so rows still in a WAL (acknowledged, not yet
committed) are exported too, and nothing on disk changes.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from persisting.engine.table import Table
from persisting.errors import ConfigError
from persisting.ops.catalog import StoreInfo

__all__ = ["export_checkpoint", "export_parquet"]


def export_checkpoint(store: StoreInfo, step: int | None, tag: str | None, out: str) -> dict[str, object]:
    from persisting.params.store import ParamStore

    with ParamStore(store.path, read_only=True) as ps:
        info = ps.info(step, tag=tag) if (step is not None or tag is not None) else ps.latest()
        if info is None:
            raise ConfigError(f"checkpoint store {store.path} holds no checkpoint to export")
        ps.export_safetensors(info.step, out)
    return {"step": info.step, "out": out, "bytes": os.path.getsize(out)}


def export_parquet(store: StoreInfo, out: str, *, what: str = "episodes") -> dict[str, object]:
    """Write ``store`` to ``out``: trajectory ``episodes`` (one row per episode) or ``steps``;
    a queue topic (every bucket, with a ``bucket`` column); a plain table as it is."""
    if store.kind == "trajectory":
        table = _trajectory(store, what)
    elif store.kind == "queue":
        table = _queue(store)
    elif store.kind == "table":
        table = _read(store.tables[0].path)
    else:
        raise ConfigError(
            f"{store.path} is a {store.kind} store: Parquet export takes episodes, a queue topic or a plain "
            "table (checkpoints export with --step N to .safetensors)")
    pq.write_table(table, out)
    return {"rows": table.num_rows, "out": out, "bytes": os.path.getsize(out)}


def _read(path: str) -> pa.Table:
    with Table(path, read_only=True) as t:
        return t.scan()


def _trajectory(store: StoreInfo, what: str) -> pa.Table:
    if what == "steps":
        return _read(os.path.join(store.path, "steps.lance"))
    if what != "episodes":
        raise ConfigError(f"--what must be 'episodes' or 'steps' for a trajectory store, got {what!r}")
    from persisting.trajectory.store import TrajectoryStore

    with TrajectoryStore(store.path, read_only=True) as ts:
        return ts.episodes()


def _queue(store: StoreInfo) -> pa.Table:
    parts = []
    for t in store.tables:
        rows = _read(t.path)
        bucket = t.name.removeprefix("bucket_")
        parts.append(rows.append_column("bucket", pa.array([bucket] * rows.num_rows, pa.string())))
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="default")
