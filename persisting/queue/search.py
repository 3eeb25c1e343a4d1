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

Buckets kept on object storage (the backend's ``uri='s3://...'``: bucket ``N`` of a topic is
``<uri>/<topic>/bucket_<N>.lance``) are searched with ``storage_path`` set to that ``uri`` and
``storage_options`` to its options; rows still only in an object-store WAL are searched too.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
import pyarrow as pa

from persisting.engine import Table
from persisting.engine.durable import is_local
from persisting.engine.names import check_name
from persisting.errors import NotFoundError
from persisting.queue.topics import topic_storage_path

__all__ = ["bucket_paths", "search_topic"]


def _remote_buckets(root: str, topic: str, storage_options: dict[str, str] | None) -> dict[int, str]:
    """Bucket number -> URI of every bucket table under the object-store prefix ``root``."""
    from persisting.ops.remote_catalog import discover_remote

    try:
        stores = discover_remote(root, storage_options, wal_rows=False)
    except NotFoundError as exc:
        raise NotFoundError(f"queue topic {topic!r} has no buckets under {root}; check storage_path (the "
                            "backend's uri), the topic name and storage_options", topic=topic, path=root) from exc
    out: dict[int, str] = {}
    for store in stores:
        for t in store.tables:
            number = t.name.removeprefix("bucket_")
            if store.kind == "queue" and store.path == root and number.isdigit():
                out[int(number)] = t.path
    if not out:
        raise NotFoundError(f"{root} holds no bucket_<N>.lance tables of queue topic {topic!r}", topic=topic, path=root)
    return dict(sorted(out.items()))


def bucket_paths(storage_path: str, topic: str, *, storage_options: dict[str, str] | None = None) -> dict[int, str]:
    """Bucket number -> the ``.lance`` path of every bucket of ``topic`` (written or only logged).
    An object-store ``storage_path`` (``s3://...``) is listed with ``storage_options``."""
    storage_path = os.fspath(storage_path)
    if not is_local(storage_path):
        check_name(topic, what="topic")
        return _remote_buckets(storage_path.rstrip("/") + "/" + topic, topic, storage_options)
    root = topic_storage_path(storage_path, topic)
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
    storage_options: dict[str, str] | None = None,
) -> pa.Table:
    """The ``k`` records of ``topic`` whose ``column`` vector is nearest ``query`` (matching the
    SQL ``filter`` if given), nearest first, with ``_distance`` and ``bucket`` columns.

    Buckets that have no ``column`` yet are skipped; NotFoundError if none has it. Bad input
    (wrong dimension, a column that is not a vector, an unknown metric) raises ConfigError
    naming the column, as :meth:`Table.search` does. ``storage_path`` may be the ``s3://``
    ``uri`` the buckets were written under, read with ``storage_options``.
    """
    parts: list[pa.Table] = []
    seen = False
    opts = None if is_local(os.fspath(storage_path)) else storage_options
    for number, path in bucket_paths(storage_path, topic, storage_options=opts).items():
        with Table(path, read_only=True, store="queue", storage_options=opts) as table:
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
