"""Prometheus collectors shared by every store, labelled by store and table.

They live in prometheus_client's default registry, so one ``start_http_server`` in a process
exports every store that process has open. ``persisting metrics serve PATH`` is the
out-of-process view: it reads the stores under PATH from disk on every scrape.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BUFFER_SIZE",
    "BYTES_READ",
    "BYTES_WRITTEN",
    "FLUSH_DURATION",
    "RECORDS_TOTAL",
    "WAL_SIZE",
    "TableMetrics",
]

_LABELS = ("store", "table")

RECORDS_TOTAL = Counter("persisting_records", "Records appended to a table.", _LABELS)
BUFFER_SIZE = Gauge("persisting_buffer_size", "Records buffered in memory, not yet committed to Lance.", _LABELS)
FLUSH_DURATION = Histogram(
    "persisting_flush_duration_seconds",
    "Time to commit buffered records to Lance and make them durable.",
    _LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WAL_SIZE = Gauge("persisting_wal_size_bytes", "Bytes held in write-ahead log segments.", _LABELS)
BYTES_WRITTEN = Counter("persisting_bytes_written", "Bytes of data committed to Lance.", _LABELS)
BYTES_READ = Counter("persisting_bytes_read", "Bytes of payload read back.", _LABELS)


class TableMetrics:
    """The children of each collector for one (store, table) pair."""

    def __init__(self, store: str, table: str) -> None:
        self.records = RECORDS_TOTAL.labels(store, table)
        self.buffer = BUFFER_SIZE.labels(store, table)
        self.flush = FLUSH_DURATION.labels(store, table)
        self.wal_size = WAL_SIZE.labels(store, table)
        self.bytes_written = BYTES_WRITTEN.labels(store, table)
        self.bytes_read = BYTES_READ.labels(store, table)
