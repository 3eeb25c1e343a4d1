"""Exactly-once appends across retries: drop rows whose (producer, sequence) was seen.

A table opened with ``TableOptions(dedup=("producer", "seq"))`` treats those two columns as
an idempotency key: each producer numbers its records 1, 2, 3, ... and a row whose sequence
is not above the highest one seen from its producer is a retry and is dropped -- when it is
appended and when a WAL is replayed. Memory is one integer per producer. Rows without a
producer (null) are never dropped.

The highest sequence per producer survives owners: every commit of a writer carries
``persisting.seen`` (JSON ``{producer: seq}``) computed from the rows it commits, so the next
owner of that writer identity starts from the newest commit and then from the replayed frames.
A producer must send to one writer identity (e.g. one queue bucket) in sequence order.
"""

from __future__ import annotations

import json

import lance
import pyarrow as pa

from persisting.engine.commits import WRITER_KEY
from persisting.errors import ConfigError

__all__ = ["SEEN_KEY", "Dedup", "last_seen"]

SEEN_KEY = "persisting.seen"


class Dedup:
    """The highest sequence seen per producer, for one writer identity."""

    def __init__(self, columns: tuple[str, str], seen: dict[str, int] | None = None) -> None:
        self.producer, self.seq = columns
        self.seen: dict[str, int] = dict(seen or {})  # appended (logged) rows
        self.committed: dict[str, int] = dict(seen or {})  # rows in Lance commits

    def filter(self, batch: pa.RecordBatch, *, remember: bool = True) -> pa.RecordBatch:
        """``batch`` without the rows already seen (and without repeats inside it); with
        ``remember=False`` it only looks (the caller appends the result next)."""
        names = batch.schema.names
        if self.producer not in names or self.seq not in names:
            raise ConfigError(
                f"this table deduplicates on ({self.producer!r}, {self.seq!r}) but a batch has columns "
                f"{names}: give every record both fields", option="dedup",
            )
        producers = batch.column(self.producer).to_pylist()
        seqs = batch.column(self.seq).to_pylist()
        keep = []
        seen = self.seen if remember else dict(self.seen)
        for p, s in zip(producers, seqs):
            if p is None or s is None:
                keep.append(True)
                continue
            p = str(p)
            if s <= seen.get(p, 0):
                keep.append(False)
            else:
                seen[p] = int(s)
                keep.append(True)
        if all(keep):
            return batch
        return batch.filter(pa.array(keep))

    def commit_property(self, data: pa.Table) -> dict[str, str]:
        """The ``persisting.seen`` property for a commit of ``data`` (exact for its rows)."""
        if self.producer in data.column_names and self.seq in data.column_names and data.num_rows:
            grouped = data.select([self.producer, self.seq]).group_by(self.producer).aggregate([(self.seq, "max")])
            for p, s in zip(grouped.column(self.producer).to_pylist(), grouped.column(f"{self.seq}_max").to_pylist()):
                if p is not None and s is not None:
                    self.committed[str(p)] = max(self.committed.get(str(p), 0), int(s))
        return {SEEN_KEY: json.dumps(self.committed, separators=(",", ":"))}


def last_seen(ds: lance.LanceDataset | None, writer_id: str) -> dict[str, int]:
    """``persisting.seen`` of the newest commit of ``writer_id`` (empty if none is left)."""
    if ds is None:
        return {}
    for v in range(ds.version, 0, -1):
        try:
            props = getattr(ds.read_transaction(v), "transaction_properties", None) or {}
        except Exception:  # noqa: BLE001 - cleaned-up transactions end the walk
            return {}
        if props.get(WRITER_KEY, "") == writer_id and SEEN_KEY in props:
            return {str(k): int(v) for k, v in json.loads(props[SEEN_KEY]).items()}
    return {}

