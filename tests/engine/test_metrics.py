"""Prometheus collectors (persisting/engine/metrics.py) as a Table drives them."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from persisting.engine import Table, TableOptions
from persisting.engine.metrics import TableMetrics
from persisting.errors import InvalidRecordError, SchemaError


def _sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def labels() -> dict[str, str]:
    """Labels unique to one test, so tests sharing the default registry never interfere."""
    return {"store": "t", "table": f"metrics-{uuid.uuid4().hex[:12]}"}


@pytest.fixture
def table(tmp_path: os.PathLike[str], labels: dict[str, str]) -> Iterator[Table]:
    t = Table(
        os.path.join(tmp_path, "t.lance"),
        options=TableOptions(durability="batch", flush_rows=1_000_000),
        store=labels["store"],
        name=labels["table"],
    )
    try:
        yield t
    finally:
        t.close()


def test_records_total_counts_appended_records(table: Table, labels: dict[str, str]) -> None:
    before = _sample("persisting_records_total", labels)
    table.append([{"i": i} for i in range(7)])
    table.append([{"i": 7}])
    table.append([])  # nothing appended, nothing counted
    assert _sample("persisting_records_total", labels) == before + 8
    table.flush()
    table.append([{"i": i} for i in range(5)])
    assert _sample("persisting_records_total", labels) == before + 13


def test_rejected_records_are_not_counted(table: Table, labels: dict[str, str]) -> None:
    table.append([{"i": 1}])
    before = _sample("persisting_records_total", labels)
    with pytest.raises(InvalidRecordError):
        table.append([{"i": 2}, 3])
    with pytest.raises(SchemaError):
        table.append([{"i": "two"}])
    assert _sample("persisting_records_total", labels) == before
    assert _sample("persisting_buffer_size", labels) == 1


def test_buffer_size_reflects_buffered_rows(table: Table, labels: dict[str, str]) -> None:
    assert _sample("persisting_buffer_size", labels) == 0
    table.append([{"i": i} for i in range(3)])
    assert _sample("persisting_buffer_size", labels) == 3
    table.append([{"i": 3}, {"i": 4}])
    assert _sample("persisting_buffer_size", labels) == 5
    table.flush()
    assert _sample("persisting_buffer_size", labels) == 0
    table.append([{"i": 5}])
    assert _sample("persisting_buffer_size", labels) == 1


def test_flush_duration_is_observed_per_flush(table: Table, labels: dict[str, str]) -> None:
    count = "persisting_flush_duration_seconds_count"
    total = "persisting_flush_duration_seconds_sum"
    before, before_sum = _sample(count, labels), _sample(total, labels)
    table.append([{"i": 1}])
    table.flush()
    assert _sample(count, labels) == before + 1
    assert _sample(total, labels) > before_sum
    table.flush()  # empty buffer: no commit, no observation
    assert _sample(count, labels) == before + 1
    table.append([{"i": 2}])
    table.flush()
    assert _sample(count, labels) == before + 2
    assert _sample("persisting_flush_duration_seconds_bucket", {**labels, "le": "+Inf"}) == before + 2


def test_wal_size_is_positive_with_unflushed_rows(table: Table, labels: dict[str, str]) -> None:
    table.append([{"i": i, "s": "x" * 100} for i in range(50)])
    size = _sample("persisting_wal_size_bytes", labels)
    assert size > 0
    assert size == table.stats()["wal_size_bytes"]
    table.append([{"i": 50, "s": "y" * 100}])
    assert _sample("persisting_wal_size_bytes", labels) > size


@pytest.mark.parametrize("background", [False, True])
def test_auto_flush_resets_buffer_gauge(tmp_path: os.PathLike[str], labels: dict[str, str], background: bool) -> None:
    opts = TableOptions(flush_rows=4, background_flush=background)
    with Table(os.path.join(tmp_path, "t.lance"), options=opts, store=labels["store"], name=labels["table"]) as table:
        table.append([{"i": i} for i in range(3)])
        assert _sample("persisting_buffer_size", labels) == 3
        table.append([{"i": 3}])  # reaches flush_rows: committed now, or by the background thread
        if background:
            deadline = time.monotonic() + 30
            while table.stats()["flushed_rows"] < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert _sample("persisting_buffer_size", labels) == 0
        assert _sample("persisting_flush_duration_seconds_count", labels) == 1
        assert table.stats()["flushed_rows"] == 4


def test_durability_none_has_no_wal_bytes(tmp_path: os.PathLike[str], labels: dict[str, str]) -> None:
    with Table(
        os.path.join(tmp_path, "t.lance"), options=TableOptions(durability="none"), store=labels["store"], name=labels["table"]
    ) as table:
        table.append([{"i": 1}])
        assert _sample("persisting_wal_size_bytes", labels) == 0
        assert _sample("persisting_records_total", labels) == 1


def test_bytes_written_grows_on_flush(table: Table, labels: dict[str, str]) -> None:
    before = _sample("persisting_bytes_written_total", labels)
    table.append([{"i": i} for i in range(100)])
    assert _sample("persisting_bytes_written_total", labels) == before
    table.flush()
    assert _sample("persisting_bytes_written_total", labels) > before


def test_tables_are_labelled_apart(tmp_path: os.PathLike[str]) -> None:
    store = f"s-{uuid.uuid4().hex[:8]}"
    a = Table(os.path.join(tmp_path, "a.lance"), store=store, name="a")
    b = Table(os.path.join(tmp_path, "b.lance"), store=store, name="b")
    try:
        a.append([{"i": 1}, {"i": 2}])
        b.append([{"i": 1}])
        assert _sample("persisting_records_total", {"store": store, "table": "a"}) == 2
        assert _sample("persisting_records_total", {"store": store, "table": "b"}) == 1
    finally:
        a.close()
        b.close()


def test_table_name_defaults_to_the_dataset_name(tmp_path: os.PathLike[str]) -> None:
    name = f"n{uuid.uuid4().hex[:8]}"
    with Table(os.path.join(tmp_path, f"{name}.lance"), store="default-name") as table:
        assert table.name == name
        table.append([{"i": 1}])
        assert _sample("persisting_records_total", {"store": "default-name", "table": name}) == 1


def test_table_metrics_children_are_shared_per_label_pair() -> None:
    table = f"shared-{uuid.uuid4().hex[:8]}"
    m1, m2 = TableMetrics("s", table), TableMetrics("s", table)
    m1.records.inc(2)
    m2.records.inc(3)
    assert _sample("persisting_records_total", {"store": "s", "table": table}) == 5
