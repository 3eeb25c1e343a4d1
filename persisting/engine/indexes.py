"""Indexes over a Table's columns and nearest-neighbour search that sees every row.

Kinds: ``vector`` (Lance IVF_PQ by default, or any IVF index type given as ``index_type``) on a
fixed-size float column (``pa.list_(pa.float32(), D)``), ``btree`` (range and point lookups) and
``bitmap`` (few distinct values) on scalar columns. Every index is one Lance commit, named
``<column>_idx``, so it survives reopening and crashes like any commit and works on ``s3://``.

An indexed search re-ranks ``k * refine_factor`` (default :data:`REFINE_FACTOR`) candidates by
exact distance, so the ``_distance`` it returns is exact and merges with the exact parts.

Search covers every row, whatever the index has seen: Lance's ``nearest`` searches the indexed
fragments through the index and the fragments appended since by exact (flat) search, and the
rows still in the writer's buffer are searched here exactly with numpy; the parts are merged by
``_distance``. Distances are Lance's: squared L2 for ``l2``, ``1 - cos`` for ``cosine`` and
``1 - dot`` for ``dot``. A variable-length float list column (what undeclared lists of floats
become) is searched exactly, row by row, without an index.

Maintenance policy: a commit that leaves more than :data:`OPTIMIZE_FRACTION` of an index's rows
unindexed (and at least :data:`OPTIMIZE_MIN_ROWS` of them) folds them into the index
(``optimize_indices``, incremental: no retraining). ``Table.compact()`` keeps indexes (Lance
remaps them) and then optimises. Rebuild with ``create_index`` again after the data drifted far
from what an IVF index was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from persisting.engine.lance_io import is_blob
from persisting.errors import ConfigError, NotFoundError

__all__ = [
    "KINDS",
    "METRICS",
    "OPTIMIZE_FRACTION",
    "OPTIMIZE_MIN_ROWS",
    "IndexInfo",
    "IndexPlan",
    "build",
    "describe",
    "needs_optimize",
    "optimize",
    "plan_index",
    "search",
]

KINDS = ("vector", "btree", "bitmap")
METRICS = ("l2", "cosine", "dot")
VECTOR_TYPES = ("IVF_PQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ", "IVF_SQ", "IVF_FLAT")
OPTIMIZE_FRACTION = 0.1  # unindexed rows, as a fraction of indexed rows, that trigger optimisation
OPTIMIZE_MIN_ROWS = 10_000  # ...but never for fewer rows than this: exact search over them is cheap
REFINE_FACTOR = 5  # an indexed search re-ranks k * this candidates by exact distance (recall ~0.99)
_TUNING = ("index_type", "num_partitions", "num_sub_vectors", "m", "ef_construction", "sample_rate", "max_iters")
_LANCE_KIND = {"BTree": "btree", "Bitmap": "bitmap"}


@dataclass(frozen=True)
class IndexPlan:
    """A checked request for an index: what :func:`build` gives Lance."""

    column: str
    kind: str
    metric: str | None
    lance_args: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return f"{self.column}_idx"


@dataclass(frozen=True)
class IndexInfo:
    """One index: its column, kind, metric and how many committed rows it covers."""

    name: str
    column: str
    kind: str
    index_type: str
    metric: str | None
    indexed_rows: int
    unindexed_rows: int

    @property
    def coverage(self) -> float:
        """Fraction of committed rows the index covers (the rest is searched exactly)."""
        total = self.indexed_rows + self.unindexed_rows
        return 1.0 if total == 0 else self.indexed_rows / total

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "column": self.column, "kind": self.kind, "index_type": self.index_type,
                "metric": self.metric, "indexed_rows": self.indexed_rows, "unindexed_rows": self.unindexed_rows,
                "coverage": round(self.coverage, 4)}


def _field(schema: pa.Schema | None, column: str, uri: str) -> pa.Field:
    i = -1 if schema is None else schema.get_field_index(column)
    if i < 0:
        names = [] if schema is None else schema.names
        raise NotFoundError(f"table {uri} has no column {column!r}; it has {names}", column=column)
    assert schema is not None
    return schema.field(i)


def _vector_shape(field: pa.Field, uri: str) -> tuple[int | None, pa.DataType]:
    """(dimension or None for variable-length lists, value type) of a column holding vectors."""
    t = field.type
    if isinstance(t, (pa.FixedSizeListType, pa.ListType, pa.LargeListType)) and (
        pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)
    ):
        return (t.list_size if isinstance(t, pa.FixedSizeListType) else None), t.value_type
    raise ConfigError(
        f"column {field.name!r} of table {uri} is {t}, not a vector of numbers: vector search and vector "
        "indexes need a list of floats per row (declare it as pa.list_(pa.float32(), D))",
        column=field.name, type=str(t),
    )


def _check_metric(metric: str, column: str) -> str:
    m = str(metric).lower()
    if m not in METRICS:
        raise ConfigError(f"unknown metric {metric!r} for column {column!r}; use one of {list(METRICS)}",
                          column=column, metric=metric)
    return m


def plan_index(
    schema: pa.Schema | None, column: str, kind: str, metric: str, tuning: dict[str, Any], uri: str
) -> IndexPlan:
    """Check an index request against the table's schema; raise before anything is touched."""
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r} for column {column!r}; use one of {list(KINDS)}",
                          column=column, kind=kind)
    field = _field(schema, column, uri)
    unknown = sorted(set(tuning) - set(_TUNING))
    if unknown or (kind != "vector" and tuning):
        raise ConfigError(
            f"unknown index option {(unknown or sorted(tuning))[0]!r} for column {column!r}; a vector index "
            f"takes {list(_TUNING)}, btree and bitmap take none", column=column,
        )
    if kind != "vector":
        t = field.type
        if pa.types.is_nested(t) or pa.types.is_large_binary(t) or pa.types.is_binary(t):
            raise ConfigError(f"column {column!r} of table {uri} is {t}: a {kind} index needs a scalar column "
                              "(numbers, strings, booleans, timestamps)", column=column, type=str(t))
        return IndexPlan(column, kind, None, ())
    m = _check_metric(metric, column)
    dim, value_type = _vector_shape(field, uri)
    if dim is None or not pa.types.is_floating(value_type):
        raise ConfigError(
            f"column {column!r} of table {uri} is {field.type}: a vector index needs a fixed-size float "
            "column; declare it when opening the table, e.g. schema=pa.schema([pa.field("
            f"{column!r}, pa.list_(pa.float32(), D))]) (exact search works without an index)",
            column=column, type=str(field.type),
        )
    args = dict(tuning)
    index_type = str(args.pop("index_type", "IVF_PQ")).upper()
    if index_type not in VECTOR_TYPES:
        raise ConfigError(f"unknown vector index_type {index_type!r} for column {column!r}; use one of "
                          f"{list(VECTOR_TYPES)}", column=column)
    if "num_sub_vectors" not in args and "PQ" in index_type:
        # 2 values per PQ code: measured recall@10 0.998 at refine 5 on 200k clustered 64-d vectors,
        # where 4 per code gave 0.89 (benchmarks/search.py)
        args["num_sub_vectors"] = next(s for s in (dim // 2, dim // 4, dim, 1) if s >= 1 and dim % s == 0)
    args.update(index_type=index_type, metric=m)
    return IndexPlan(column, "vector", m, tuple(sorted(args.items())))


def build(ds: lance.LanceDataset, plan: IndexPlan) -> None:
    """Create (or replace) the index ``plan`` describes: one Lance commit."""
    if plan.kind == "vector":
        args = dict(plan.lance_args)
        if "num_partitions" not in args:
            # ~sqrt(rows) lists, at least 1, and at least 256 rows to train each (Lance's floor:
            # it trains fewer lists than asked, with a warning, below that)
            rows = ds.count_rows()
            args["num_partitions"] = max(1, min(int(rows**0.5), rows // 256, 4096))
        index_type = args.pop("index_type")
        ds.create_index(plan.column, index_type, name=plan.name, replace=True, **args)
    else:
        ds.create_scalar_index(plan.column, plan.kind.upper(), name=plan.name, replace=True)


def describe(ds: lance.LanceDataset | None) -> list[IndexInfo]:
    """Every index of ``ds`` with the committed rows it covers and those it does not yet."""
    if ds is None:
        return []
    described = ds.describe_indices()
    if not described:
        return []
    rows = {f.fragment_id: f.count_rows() for f in ds.get_fragments()}
    out = []
    for d in described:
        covered: set[int] = set()
        for segment in d.segments:
            covered.update(segment.fragment_ids or ())
        indexed = sum(n for f, n in rows.items() if f in covered)
        lance_type = str(d.index_type)
        kind = _LANCE_KIND.get(lance_type, "vector" if lance_type.upper().startswith("IVF") else lance_type.lower())
        metric = (d.details or {}).get("metric_type")
        out.append(IndexInfo(
            name=str(d.name), column=str(d.field_names[0]), kind=kind, index_type=lance_type,
            metric=str(metric).lower() if kind == "vector" and metric else None,
            indexed_rows=indexed, unindexed_rows=sum(rows.values()) - indexed,
        ))
    return out


def needs_optimize(ds: lance.LanceDataset | None) -> bool:
    """True when some index leaves more rows unindexed than the policy allows (see module doc)."""
    if ds is None or not ds.describe_indices():
        return False
    return any(
        i.unindexed_rows >= OPTIMIZE_MIN_ROWS and i.unindexed_rows > OPTIMIZE_FRACTION * max(i.indexed_rows, 1)
        for i in describe(ds)
    )


def optimize(ds: lance.LanceDataset) -> None:
    """Fold unindexed fragments into every index (incremental; one Lance commit)."""
    if ds.describe_indices():
        ds.optimize.optimize_indices()


# -- search -----------------------------------------------------------------------------------
def search(
    ds: lance.LanceDataset | None,
    pending: lance.LanceDataset | pa.Table | None,
    schema: pa.Schema | None,
    column: str,
    query: Any,
    k: int,
    *,
    filter: str | None,
    columns: Sequence[str] | None,
    metric: str | None,
    nprobes: int | None,
    refine_factor: int | None,
    uri: str,
) -> pa.Table:
    """The ``k`` rows nearest ``query`` in ``column`` among committed (``ds``) and pending rows,
    nearest first, with ``_distance``. ``pending`` is a dataset when a filter applies."""
    field = _field(schema, column, uri)
    dim, value_type = _vector_shape(field, uri)
    q = _query_vector(query, column, dim, value_type)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive int for the search of column {column!r}, got {k!r}", column=column)
    assert schema is not None
    names = list(columns) if columns is not None else [f.name for f in schema if not is_blob(f)]
    for c in names:
        _field(schema, c, uri)
    target = pa.schema([schema.field(c) for c in names] + [pa.field("_distance", pa.float32())])
    index_metric = _vector_index_metric(ds, column)
    m = _check_metric(metric, column) if metric is not None else (index_metric or "l2")
    parts: list[pa.Table] = []
    if ds is not None and column in ds.schema.names:
        if isinstance(ds.schema.field(column).type, pa.FixedSizeListType):
            nearest: dict[str, Any] = {"column": column, "q": q, "k": int(k), "metric": m}
            if nprobes is not None:
                nearest["nprobes"] = int(nprobes)
            if refine_factor is not None or index_metric is not None:
                nearest["refine_factor"] = int(REFINE_FACTOR if refine_factor is None else refine_factor)
            cols = [c for c in names if c in ds.schema.names] + ["_distance"]
            got = ds.to_table(columns=cols, nearest=nearest, filter=filter, prefilter=filter is not None)
            parts.append(got)
        else:
            parts.append(_exact(ds.to_table(columns=_with(names, column, ds.schema), filter=filter),
                                column, q, int(k), m, uri))
    if pending is not None:
        rows = pending.to_table(filter=filter) if isinstance(pending, lance.LanceDataset) else pending
        if rows.num_rows:
            parts.append(_exact(rows, column, q, int(k), m, uri))
    if not parts:
        return target.empty_table()
    merged = pa.concat_tables([_conform(p, target) for p in parts])
    order = np.argsort(merged.column("_distance").to_numpy(zero_copy_only=False), kind="stable")[: int(k)]
    return merged.take(pa.array(order, pa.int64()))


def _vector_index_metric(ds: lance.LanceDataset | None, column: str) -> str | None:
    """The metric of the vector index on ``column`` (None without one); cheaper than describe()."""
    for d in ds.describe_indices() if ds is not None else ():
        if list(d.field_names) == [column] and str(d.index_type).upper().startswith("IVF"):
            return str((d.details or {}).get("metric_type", "l2")).lower()
    return None


def _with(names: list[str], column: str, schema: pa.Schema) -> list[str]:
    return [c for c in dict.fromkeys([*names, column]) if c in schema.names]


def _conform(t: pa.Table, target: pa.Schema) -> pa.Table:
    cols = []
    for f in target:
        if f.name in t.column_names:
            col = t.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(t.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=target)


def _query_vector(query: Any, column: str, dim: int | None, value_type: pa.DataType) -> np.ndarray:
    dtype = np.float64 if pa.types.is_float64(value_type) else np.float32
    try:
        q = np.asarray(query, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"query for column {column!r} is not a vector of numbers: {exc}", column=column) from None
    if q.ndim != 1 or q.size == 0 or (dim is not None and q.size != dim):
        raise ConfigError(
            f"query for column {column!r} has shape {list(q.shape)}; the column holds vectors of "
            f"{dim if dim is not None else 'some'} values: pass one 1-D vector of that length",
            column=column, dimension=dim, offered=list(q.shape),
        )
    if not np.all(np.isfinite(q)):
        raise ConfigError(f"query for column {column!r} holds NaN or infinity", column=column)
    return q


def _exact(rows: pa.Table, column: str, q: np.ndarray, k: int, metric: str, uri: str) -> pa.Table:
    """Exact nearest rows of ``rows`` by numpy, with ``_distance`` as Lance computes it."""
    col = rows.column(column).combine_chunks()
    valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if not valid.all():
        rows, col = rows.filter(pa.array(valid)), col.filter(pa.array(valid))
    if len(col) == 0:
        return rows.append_column("_distance", pa.array([], pa.float32()))
    if isinstance(col.type, pa.FixedSizeListType):
        flat = col.flatten()
    else:
        lengths = np.asarray(col.value_lengths().to_numpy(zero_copy_only=False))
        if not (lengths == q.size).all():
            bad = int(np.argmax(lengths != q.size))
            raise ConfigError(
                f"column {column!r} of table {uri} holds a vector of {int(lengths[bad])} values where the query "
                f"has {q.size}: vectors searched together must have one length (declare it as "
                f"pa.list_(pa.float32(), {q.size}))", column=column, dimension=int(lengths[bad]), offered=q.size,
            )
        flat = col.flatten()
    v = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=q.dtype).reshape(len(col), q.size)
    d = _distances(v, q, metric)
    keep = np.argpartition(d, k - 1)[:k] if len(d) > k else np.arange(len(d))
    out = rows.take(pa.array(keep, pa.int64()))
    return out.append_column("_distance", pa.array(d[keep].astype(np.float32)))


def _distances(v: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        diff = v - q
        return np.einsum("ij,ij->i", diff, diff)
    dots = v @ q
    if metric == "dot":
        return 1.0 - dots
    norms = np.linalg.norm(v, axis=1) * np.linalg.norm(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, 1.0 - dots / norms, 1.0)
