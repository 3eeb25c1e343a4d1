"""Table on an S3-compatible object store (moto's server), with its WAL on local disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")

from persisting.engine import Table, TableOptions
from persisting.errors import LockedError, NotFoundError, WALError

REGION = "us-east-1"
KEY_ID = SECRET = "testing"  # moto accepts any credentials; Lance's options come from tests/conftest.py


@pytest.fixture
def endpoint(s3_endpoint: str) -> str:
    return s3_endpoint  # the session's moto server (tests/conftest.py)


@pytest.fixture
def bucket(s3_bucket: str) -> str:
    return s3_bucket


def _s3(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )


def _values(table: Table, column: str = "i") -> list[Any]:
    return table.scan(columns=[column]).column(column).to_pylist()


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    listing = _s3(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_append_close_reopen_read_back(s3_options: dict[str, str], endpoint: str, bucket: str, tmp_path: os.PathLike[str]) -> None:
    uri = f"s3://{bucket}/t.lance"
    wal_dir = os.path.join(tmp_path, "wal")
    opts = s3_options
    with Table(uri, wal_dir=wal_dir, storage_options=opts, options=TableOptions(durability="batch")) as table:
        table.append([{"i": i, "s": f"row-{i}"} for i in range(10)])
        table.append([{"i": 10, "s": "row-10"}])
        assert table.count() == 11
        assert _values(table) == list(range(11))  # buffered rows are readable before flush
    assert any(k.startswith("t.lance/_versions/") for k in _keys(endpoint, bucket, "t.lance/"))
    with Table(uri, wal_dir=wal_dir, storage_options=opts) as table:
        assert table.count() == 11
        assert _values(table) == list(range(11))
        assert _values(table, "s") == [f"row-{i}" for i in range(11)]
        assert table.take([10, 0], columns=["s"]).column("s").to_pylist() == ["row-10", "row-0"]
        assert table.count(filter="i >= 5") == 6
    # a read-only open needs no WAL directory
    with Table(uri, storage_options=opts, read_only=True) as reader:
        assert _values(reader) == list(range(11))


def test_remote_writer_without_wal_dir_raises_wal_error(s3_options: dict[str, str], endpoint: str, bucket: str) -> None:
    uri = f"s3://{bucket}/nowal.lance"
    with pytest.raises(WALError) as info:
        Table(uri, storage_options=s3_options)
    assert uri in str(info.value)
    assert "wal_dir" in str(info.value)
    assert _keys(endpoint, bucket, "nowal.lance") == []


def test_two_remote_writers_share_one_table(s3_options: dict[str, str], endpoint: str, bucket: str, tmp_path: os.PathLike[str]) -> None:
    uri = f"s3://{bucket}/t.lance"
    opts = s3_options
    a = Table(uri, wal_dir=os.path.join(tmp_path, "wal-a"), storage_options=opts)
    b = Table(uri, wal_dir=os.path.join(tmp_path, "wal-b"), storage_options=opts)
    try:
        for i in range(5):
            a.append([{"i": i}])
            b.append([{"i": 100 + i}])
            a.flush()
            b.flush()
        assert sorted(_values(a)) == sorted(list(range(5)) + list(range(100, 105)))
    finally:
        a.close()
        b.close()
    with Table(uri, storage_options=opts, read_only=True) as reader:
        assert sorted(_values(reader)) == sorted(list(range(5)) + list(range(100, 105)))
    with pytest.raises(LockedError):  # an exclusive writer still refuses a second one
        with Table(uri, wal_dir=os.path.join(tmp_path, "wal-a"), storage_options=opts, exclusive=True):
            Table(uri, wal_dir=os.path.join(tmp_path, "wal-a"), storage_options=opts)


def test_versions_tags_and_checkout(s3_options: dict[str, str], endpoint: str, bucket: str, tmp_path: os.PathLike[str]) -> None:
    uri = f"s3://{bucket}/v.lance"
    opts = s3_options
    with Table(uri, wal_dir=os.path.join(tmp_path, "wal"), storage_options=opts) as table:
        table.append([{"i": 0}, {"i": 1}])
        table.flush()
        first = table.version
        table.tag("first")
        table.append([{"i": 2}])
        table.flush()
        assert table.version > first
        assert [v["version"] for v in table.versions()] == list(range(1, table.version + 1))
        assert table.tags() == {"first": first}
        with table.checkout("first") as old:
            assert old.read_only
            assert _values(old) == [0, 1]
        with table.checkout(table.version) as new:
            assert _values(new) == [0, 1, 2]
        with pytest.raises(NotFoundError):
            table.checkout(999)
        table.delete_tag("first")
        assert table.tags() == {}
        with pytest.raises(NotFoundError):
            table.delete_tag("first")
        table.tag("again", version=first)
    with Table(uri, storage_options=opts, read_only=True) as reader:
        assert reader.tags() == {"again": first}


_CRASHING_WRITER = """
import json, os, sys
from persisting.engine import Table, TableOptions
uri, wal_dir, opts, n, flush_at = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
table = Table(uri, wal_dir=wal_dir, storage_options=opts,
              options=TableOptions(durability="batch", wal_sync_interval=60.0, flush_rows=1_000_000))
for i in range(n):
    table.append([{"i": i, "payload": "p" * (i % 7)}])
    if i + 1 == flush_at:
        table.flush()
print(json.dumps({"last_lsn": table.last_lsn, "applied": table.applied_lsn}), flush=True)
os._exit(0)  # a crash: no flush, no close, no WAL sync, no lock release
"""


def _crash_writer(uri: str, wal_dir: str, opts: dict[str, str], n: int, flush_at: int) -> dict[str, int]:
    # a fresh interpreter (spawn-like), never fork: Lance is not fork-safe
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, uri, wal_dir, json.dumps(opts), str(n), str(flush_at)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flush_at", [0, 15], ids=["never-flushed", "half-flushed"])
def test_crash_without_close_recovers_every_record_exactly_once(s3_options: dict[str, str], 
    endpoint: str, bucket: str, tmp_path: os.PathLike[str], flush_at: int
) -> None:
    uri = f"s3://{bucket}/crash.lance"
    wal_dir = os.path.join(tmp_path, "wal")
    opts = s3_options
    n = 40
    state = _crash_writer(uri, wal_dir, opts, n, flush_at)
    assert state["last_lsn"] >= n
    if flush_at:
        with Table(uri, storage_options=opts, read_only=True) as before:
            assert before.count() == flush_at  # only the flushed part reached S3
    else:
        assert _keys(endpoint, bucket, "crash.lance") == []  # every row is only in the local WAL
    assert any(name.endswith(".wal") for d in os.listdir(os.path.join(wal_dir, "writers"))
               for name in os.listdir(os.path.join(wal_dir, "writers", d)))

    with Table(uri, wal_dir=wal_dir, storage_options=opts) as table:
        assert table.count() == n
        assert _values(table) == list(range(n))
        assert os.listdir(os.path.join(wal_dir, "writers")) == [table.writer_wal_dir.rsplit("/", 1)[1]]
        assert table.stats()["buffered_rows"] == 0
        assert table.recovery_report.last_lsn == state["last_lsn"]
    # the recovered rows are in S3 itself, not just in a local buffer
    with Table(uri, storage_options=opts, read_only=True) as reader:
        assert _values(reader) == list(range(n))
        assert reader.scan(columns=["payload"]).column("payload").to_pylist() == ["p" * (i % 7) for i in range(n)]
    # a second reopen replays nothing again: exactly once
    with Table(uri, wal_dir=wal_dir, storage_options=opts) as table:
        assert _values(table) == list(range(n))
        table.append([{"i": n, "payload": ""}])
    with Table(uri, storage_options=opts, read_only=True) as reader:
        assert _values(reader) == list(range(n + 1))


def test_two_crashes_in_a_row_lose_and_duplicate_nothing(s3_options: dict[str, str], endpoint: str, bucket: str, tmp_path: os.PathLike[str]) -> None:
    uri = f"s3://{bucket}/twice.lance"
    wal_dir = os.path.join(tmp_path, "wal")
    opts = s3_options
    _crash_writer(uri, wal_dir, opts, 10, 0)
    # the second writer recovers the first one's rows, appends its own, and crashes too
    _crash_writer(uri, wal_dir, opts, 10, 5)
    with Table(uri, wal_dir=wal_dir, storage_options=opts) as table:
        assert _values(table) == list(range(10)) + list(range(10))
