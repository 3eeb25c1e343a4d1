"""``persisting inspect``: one store in detail, read-only.

Every table gets its schema, versions, tags, applied LSN, WAL size and indexes (kind, metric,
rows covered and not yet covered); each kind adds what
its users ask about: checkpoints (steps, tags, sizes, dedup ratio), episodes (count, status,
lengths, returns), queue buckets (records, committed, pending in the WAL, next offset) and KV
namespaces (entries, bytes, layout). KV hit/miss counts live in the serving process (its
``stats()`` and metrics), not on disk. A store on ``s3://`` is read with the storage options
it was found with; its WAL rows (object-store WAL, or a given local ``wal_dir``) are shown too.
"""

from __future__ import annotations

import os
from typing import Any

import lance
import pyarrow.compute as pc

from persisting.engine.durable import is_local
from persisting.engine.indexes import describe as describe_indexes
from persisting.ops.catalog import StoreInfo, TableInfo, open_table

__all__ = ["inspect_store"]


Options = dict[str, str] | None


def _table_detail(t: TableInfo, opts: Options) -> dict[str, Any]:
    out = t.to_json()
    if t.error is not None:
        return out
    if not t.has_dataset:  # only WAL rows: replay them in memory for the schema, change nothing
        with open_table(t, opts) as table:
            schema = table.schema
        out["schema"] = {f.name: str(f.type) for f in schema} if schema is not None else {}
        out.update(tags={}, fragments=0, version_history=[], indexes=[])
        return out
    ds = lance.dataset(t.path, storage_options=opts)
    out["schema"] = {f.name: str(f.type) for f in ds.schema}
    out["tags"] = {k: v["version"] for k, v in ds.tags.list().items()}
    out["fragments"] = len(ds.get_fragments())
    out["version_history"] = [
        {"version": v["version"], "timestamp": str(v["timestamp"])} for v in ds.versions()
    ]
    out["indexes"] = [i.to_json() for i in describe_indexes(ds)]
    return out


def _params(store: StoreInfo, opts: Options, wal_dir: str | None) -> dict[str, Any]:
    from persisting.params.store import ParamStore

    with ParamStore(store.path, read_only=True, storage_options=opts, wal_dir=wal_dir) as ps:
        infos = ps.list()
        stats = ps.stats()
    logical = sum(i.nbytes for i in infos)
    stored = int(stats["chunk_bytes_stored"])
    return {
        "checkpoints": [
            {"step": i.step, "tags": list(i.tags), "created_at": i.created_at, "bytes": i.nbytes,
             "new_bytes": i.new_bytes, "tensors": i.num_tensors, "chunks": i.num_chunks, "new_chunks": i.new_chunks}
            for i in infos
        ],
        "chunks": stats["chunks"],
        "logical_bytes": logical,
        "stored_bytes": stored,
        "dedup_ratio": round(logical / stored, 3) if stored else None,
    }


def _trajectory(store: StoreInfo, opts: Options, wal_dir: str | None) -> dict[str, Any]:
    from persisting.trajectory.store import TrajectoryStore

    with TrajectoryStore(store.path, read_only=True, storage_options=opts, wal_dir=wal_dir) as ts:
        eps = ts.episodes()
        steps = ts.num_steps()
        fields = {name: _signature(spec.signature) for name, spec in ts.fields.items()}
    out: dict[str, Any] = {"episodes": eps.num_rows, "steps": steps, "fields": fields}
    if eps.num_rows:
        status = pc.value_counts(eps.column("status")).to_pylist()
        out["status"] = {d["values"]: d["counts"] for d in status}
        for col in ("length", "return"):
            if col in eps.column_names and eps.column(col).null_count < eps.num_rows:
                mm = pc.min_max(eps.column(col)).as_py()
                out[col] = {"min": mm["min"], "max": mm["max"], "mean": pc.mean(eps.column(col)).as_py()}
    return out


def _signature(sig: Any) -> str:
    if isinstance(sig, tuple) and len(sig) == 3:
        kind, dtype, shape = sig
        return f"{kind} {dtype}{list(shape) if shape else ''}"
    return str(sig)


def _queue(store: StoreInfo, opts: Options, wal_dir: str | None) -> dict[str, Any]:
    buckets = []
    for t in sorted(store.tables, key=lambda t: _bucket_order(t.name)):
        buckets.append({
            "bucket": t.name.removeprefix("bucket_"), "records": t.rows, "committed": t.committed_rows,
            "pending_in_wal": t.pending_rows, "first_offset": 0, "next_offset": t.rows, "wal_bytes": t.wal_bytes,
        })
    return {"topic": store.topic or os.path.basename(store.path), "buckets": buckets, "records": store.rows}


def _bucket_order(name: str) -> tuple[int, str]:
    rest = name.removeprefix("bucket_")
    return (int(rest), "") if rest.isdigit() else (1 << 62, rest)


def _kvcache(store: StoreInfo, opts: Options, wal_dir: str | None) -> dict[str, Any]:
    namespaces = []
    for t in store.tables:
        ns: dict[str, Any] = {"namespace": t.name, "entries": t.rows}
        if t.error is None and t.committed_rows:
            try:
                ns.update(_namespace_detail(t.path, opts))
            except (KeyError, ValueError, TypeError, IndexError, OSError) as exc:
                ns["error"] = f"layout not understood by this version of persisting: {exc}"
        namespaces.append(ns)
    return {
        "namespaces": namespaces,
        "hit_statistics": "counted by the serving process: KVCacheStore.stats() or its Prometheus metrics",
    }


def _namespace_detail(path: str, opts: Options) -> dict[str, Any]:
    """Sizes and layout of one KV namespace from its small columns (payloads are not read)."""
    ns: dict[str, Any] = {}
    m = lance.dataset(path, storage_options=opts).to_table(columns=["nbytes", "raw_nbytes", "dtype", "shape", "token_axis", "depth"])
    ns["bytes"] = pc.sum(m.column("nbytes")).as_py()
    ns["raw_bytes"] = pc.sum(m.column("raw_nbytes")).as_py()
    ns["dtypes"] = sorted(set(m.column("dtype").to_pylist()))
    first_shape, axis = m.column("shape")[0].as_py(), m.column("token_axis")[0].as_py()
    ns["chunk_shape"] = first_shape
    ns["chunk_tokens"] = first_shape[axis] if first_shape and -len(first_shape) <= axis < len(first_shape) else None
    ns["max_depth"] = pc.max(m.column("depth")).as_py()
    return ns


_BY_KIND = {"params": _params, "trajectory": _trajectory, "queue": _queue, "kvcache": _kvcache}


def inspect_store(store: StoreInfo, *, storage_options: dict[str, str] | None = None,
                  wal_dir: str | None = None) -> dict[str, Any]:
    """A JSON-ready description of ``store``. A store on an object store (found by
    :func:`persisting.ops.remote_catalog.discover_remote`) is read with ``storage_options``,
    and ``wal_dir`` (the local WAL directory its writers were given) adds its WAL rows."""
    opts = None if is_local(store.path) else storage_options
    out = store.to_json()
    out["tables"] = [_table_detail(t, opts) for t in store.tables]
    detail = _BY_KIND.get(store.kind)
    if detail is not None:
        out[store.kind] = detail(store, opts, wal_dir if opts is not None else None)
    return out
