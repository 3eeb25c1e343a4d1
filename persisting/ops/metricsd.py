"""``persisting metrics serve``: a Prometheus endpoint for the stores under a directory.

A custom collector walks the directory on every scrape and reports what is on disk, read-only,
under the engine's metric names and ``store``/``table`` labels (see
:mod:`persisting.engine.metrics`), plus a ``path`` label naming the store directory:

- ``persisting_table_rows`` (gauge): rows in the table now, committed plus acknowledged in the
  WAL. It can go down (deletes, eviction, retention), so it is not a counter: the engine's
  ``persisting_records_total`` counter (records appended, exported by each writer process) is
  what ``rate()`` is taken of;
- ``persisting_buffer_size``: rows acknowledged in the WAL and not yet committed to Lance;
- ``persisting_wal_size_bytes``: bytes of WAL segments;
- ``persisting_table_bytes``, ``persisting_table_versions``, ``persisting_last_write_timestamp_seconds``.

``persisting_records_total`` (records appended) and ``persisting_flush_duration_seconds`` are
measured by the processes that append and flush; this server reads files and does neither, so
it declares those families without samples. A writer
exports its own through ``prometheus_client.start_http_server`` in its process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from persisting.ops.catalog import discover

__all__ = ["DiskCollector", "serve"]

_LABELS = ["store", "table", "path"]


class DiskCollector(Collector):
    """Reads row counts and file sizes of every table under ``root`` at scrape time."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def collect(self) -> Iterator[Metric]:
        records = GaugeMetricFamily("persisting_table_rows", "Rows in a table now: committed plus acknowledged in its WAL.", labels=_LABELS)
        buffer = GaugeMetricFamily("persisting_buffer_size", "Records acknowledged in the WAL, not yet committed to Lance.", labels=_LABELS)
        wal = GaugeMetricFamily("persisting_wal_size_bytes", "Bytes held in write-ahead log segments.", labels=_LABELS)
        size = GaugeMetricFamily("persisting_table_bytes", "Bytes of the table's Lance dataset on disk.", labels=_LABELS)
        versions = GaugeMetricFamily("persisting_table_versions", "Lance versions kept by the table.", labels=_LABELS)
        last = GaugeMetricFamily("persisting_last_write_timestamp_seconds", "Newest file modification time of the table.", labels=_LABELS)
        errors = GaugeMetricFamily("persisting_table_unreadable", "1 when the table could not be read at this scrape.", labels=_LABELS)
        appended = CounterMetricFamily(
            "persisting_records",
            "Records appended to a table (counted by writers; none are observed by this file reader).",
            labels=_LABELS,
        )
        flush = HistogramMetricFamily(
            "persisting_flush_duration_seconds",
            "Time to commit buffered records (measured by writers; none are observed by this file reader).",
            labels=_LABELS,
        )
        for store in discover(self.root):
            rel = os.path.relpath(store.path, self.root)
            for t in store.tables:
                labels = [store.kind, t.name, rel]
                records.add_metric(labels, t.rows)
                buffer.add_metric(labels, t.pending_rows)
                wal.add_metric(labels, t.wal_bytes)
                size.add_metric(labels, t.bytes_on_disk)
                versions.add_metric(labels, t.versions)
                errors.add_metric(labels, 0 if t.error is None else 1)
                if t.last_write is not None:
                    last.add_metric(labels, t.last_write)
        yield from (records, buffer, wal, size, versions, last, errors, appended, flush)


def serve(root: str, *, host: str = "127.0.0.1", port: int = 9464) -> tuple[WSGIServer, threading.Thread]:
    """Start the endpoint in a background thread; returns the server and its thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DiskCollector(root))
    return start_http_server(port, addr=host, registry=registry)
