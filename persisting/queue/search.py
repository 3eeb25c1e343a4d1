"""Nearest-neighbour search over a queue topic: every bucket, merged by distance.

A topic written by :func:`persisting.queue.write_queue` keeps bucket ``N`` in
``storage_path/<topic>/bucket_<N>/bucket_<N>.lance`` (its WAL beside it in ``bucket_<N>.wal``).
:func:`search_topic` opens each bucket read-only (no lock: live writers go on), searches it with
:meth:`persisting.engine.Table.search` -- committed rows, and rows still only in a writer's WAL,
which a read-only table replays -- and keeps the ``k`` nearest over all buckets, with a
``bucket`` column saying where each came from.

Records put through Pulsing carry plain lists of floats, which are searched exactly (no index
needed, one pass over the column). A bucket whose column was declared as fixed-size vectors can
be indexed (``persisting index PATH --column C``) while no writer holds it, and is then
searched through the index.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
import pyarrow as pa

from persisting.engine import Table
from persisting.errors import NotFoundError
from persisting.queue.topics import topic_storage_path

__all__ = ["bucket_paths", "search_topic"]


def bucket_paths(storage_path: str, topic: str) -> dict[int, str]:
    """Bucket number -> the ``.lance`` path of every bucket of ``topic`` (written or only logged)."""
    root = topic_storage_path(os.fspath(storage_path), topic)
    assert root is not None
    if not os.path.isdir(root):
        raise NotFoundError(f"queue topic {topic!r} has no directory {root}; check storage_path and the topic name",
                            topic=topic, path=root)
    out: dict[int, str] = {}
    for d in glob.glob(os.path.join(glob.escape(root), "bucket_*")):
        name = os.path.basename(d)
        number = name.removeprefix("bucket_")
        if not number.isdigit():
            continue
        table = os.path.join(d, f"{name}.lance")
        if os.path.isdir(table) or os.path.isdir(os.path.join(d, f"{name}.wal")):
            out[int(number)] = table
    return dict(sorted(out.items()))


def search_topic(
    storage_path: str,
    topic: str,
    column: str,
    query: Any,
    k: int = 10,
    *,
    filter: str | None = None,
    columns: list[str] | None = None,
    metric: str | None = None,
) -> pa.Table:
    """The ``k`` records of ``topic`` whose ``column`` vector is nearest ``query`` (matching the
    SQL ``filter`` if given), nearest first, with ``_distance`` and ``bucket`` columns.

    Buckets that have no ``column`` yet are skipped; NotFoundError if none has it. Bad input
    (wrong dimension, a column that is not a vector, an unknown metric) raises ConfigError
    naming the column, as :meth:`Table.search` does.
    """
    parts: list[pa.Table] = []
    seen = False
    for number, path in bucket_paths(storage_path, topic).items():
        with Table(path, read_only=True, store="queue") as table:
            schema = table.schema
            if schema is None or column not in schema.names:
                continue
            seen = True
            got = table.search(column, query, k, filter=filter, columns=columns, metric=metric)
        parts.append(got.append_column("bucket", pa.array([number] * got.num_rows, pa.int32())))
    if not seen:
        raise NotFoundError(f"no bucket of queue topic {topic!r} has a column {column!r}", topic=topic, column=column)
    merged = pa.concat_tables(parts, promote_options="permissive")
    order = np.argsort(merged.column("_distance").to_numpy(zero_copy_only=False), kind="stable")[:k]
    return merged.take(pa.array(order, pa.int64()))
