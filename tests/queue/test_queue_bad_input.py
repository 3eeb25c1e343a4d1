"""Bad input: every refusal is a typed error that names what was wrong, and the bucket keeps
every record it had (in memory, on disk and in the WAL)."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any

import pytest

from persisting.errors import (
    InvalidNameError,
    InvalidRecordError,
    PersistingError,
    SchemaError,
    StorageError,
)
from persisting.queue import LanceBackend, PersistingBackend

BACKENDS = [
    pytest.param(LanceBackend, {}, id="lance"),
    pytest.param(PersistingBackend, {"enable_wal": True, "wal_sync_interval": 0}, id="persisting-wal"),
]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def good(i: int) -> dict[str, Any]:
    return {"id": f"k{i}", "seq": i, "name": f"n{i}"}


async def _reopen_rows(cls: type, path: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    b = cls(bucket_id=0, storage_path=path, **options)
    try:
        return await b.get(1000, 0)
    finally:
        b.close()


@pytest.mark.parametrize(("cls", "options"), BACKENDS)
@pytest.mark.parametrize(
    "bad",
    [["not", "a", "dict"], "text", None, 42, {}],
    ids=["list", "str", "none", "int", "empty-dict"],
)
def test_put_refuses_a_non_record(tmp_path: Path, cls: type, options: dict[str, Any], bad: object) -> None:
    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        await b.put_batch([good(0), good(1)])
        with pytest.raises(InvalidRecordError) as info:
            await b.put(bad)  # type: ignore[arg-type]
        assert "record" in str(info.value)
        assert b.total_count() == 2
        assert await b.get(10, 0) == [good(0), good(1)]
        await b.put(good(2))  # still writable
        b.close()
        assert await _reopen_rows(cls, str(tmp_path), options) == [good(0), good(1), good(2)]

    run(go())


@pytest.mark.parametrize(("cls", "options"), BACKENDS)
def test_put_batch_with_one_bad_record_writes_nothing(tmp_path: Path, cls: type, options: dict[str, Any]) -> None:
    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        await b.put(good(0))
        with pytest.raises(InvalidRecordError, match="record 2 of the batch is a str"):
            await b.put_batch([good(1), good(2), "oops", good(3)])  # type: ignore[list-item]
        with pytest.raises(InvalidRecordError, match="put_batch expects a list"):
            await b.put_batch(good(1))  # type: ignore[arg-type]
        with pytest.raises(InvalidRecordError, match="field 'blob'"):
            await b.put_batch([good(1), {"id": "x", "seq": 9, "blob": object()}])
        assert b.total_count() == 1
        await b.put_batch([])  # nothing to do
        b.close()
        assert await _reopen_rows(cls, str(tmp_path), options) == [good(0)]

    run(go())


@pytest.mark.parametrize(("cls", "options"), BACKENDS)
@pytest.mark.parametrize("flushed", [False, True], ids=["buffered", "flushed"])
def test_a_field_changing_from_string_to_int_is_refused(
    tmp_path: Path, cls: type, options: dict[str, Any], flushed: bool
) -> None:
    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        await b.put_batch([good(0), good(1)])
        if flushed:
            await b.flush()
        with pytest.raises(SchemaError) as info:
            await b.put({"id": "k2", "seq": 2, "name": 7})
        err = info.value
        assert "'name'" in str(err) and err.details["field"] == "name"
        assert "string" in err.details["stored_type"] and "int" in err.details["offered_type"]
        with pytest.raises((SchemaError, InvalidRecordError), match="'name'"):  # mixed within a batch
            await b.put_batch([good(2), {"id": "k3", "seq": 3, "name": 8}])
        with pytest.raises(SchemaError, match="'name'"):
            await b.put_batch([{"id": "k3", "seq": 3, "name": 8}, {"id": "k4", "seq": 4, "name": 9}])
        assert await b.get(10, 0) == [good(0), good(1)]
        await b.put(good(2))
        b.close()
        assert await _reopen_rows(cls, str(tmp_path), options) == [good(0), good(1), good(2)]

    run(go())


@pytest.mark.parametrize(("cls", "options"), BACKENDS)
def test_a_huge_record_is_refused(tmp_path: Path, cls: type, options: dict[str, Any]) -> None:
    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        await b.put(good(0))
        huge = {"id": "big", "seq": 1, "name": "x" * (65 * 1024 * 1024)}  # over the 64 MiB default
        with pytest.raises(InvalidRecordError, match="max_record_size=67108864"):
            await b.put(huge)
        del huge
        assert b.total_count() == 1
        b.close()
        small = cls(bucket_id=0, storage_path=str(tmp_path), max_record_size=4096, **options)
        with pytest.raises(InvalidRecordError, match="record 2 takes .* bytes, more than max_record_size=4096"):
            await small.put_batch([good(1), good(2), {"id": "b", "seq": 3, "name": "y" * 10_000}])
        with pytest.raises(InvalidRecordError, match="max_record_size=4096"):
            await small.put({"id": "b", "seq": 3, "name": "\u00e9" * 3000})  # 6,000 bytes in UTF-8
        await small.put(good(1))
        assert small.total_count() == 2
        small.close()
        assert await _reopen_rows(cls, str(tmp_path), options) == [good(0), good(1)]

    run(go())


def test_a_storage_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    for cls in (LanceBackend, PersistingBackend):
        with pytest.raises(StorageError, match="is a file, not a directory") as info:
            cls(bucket_id=0, storage_path=str(file))
        assert str(file) in str(info.value)
        with pytest.raises(StorageError, match="cannot be created") as info:
            cls(bucket_id=0, storage_path=str(file / "sub"))
        assert str(file / "sub") in str(info.value)
    assert file.read_text() == "x"


@pytest.mark.parametrize("bucket_id", ["../escape", "a/b", "", -1, None, True, 1.5])
def test_bad_bucket_ids_are_refused(tmp_path: Path, bucket_id: object) -> None:
    with pytest.raises(InvalidNameError, match="bucket_id"):
        LanceBackend(bucket_id=bucket_id, storage_path=str(tmp_path))  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (LanceBackend, {"enable_wal": True}, "unknown option.*'enable_wal'.*PersistingBackend"),
        (PersistingBackend, {"enable_wall": True}, "unknown option.*'enable_wall'"),
        (PersistingBackend, {"compression": "gzip"}, "compression='gzip' is not supported"),
        (PersistingBackend, {"enable_wal": "yes"}, "enable_wal='yes' must be True or False"),
        (PersistingBackend, {"wal_sync_interval": -1}, "wal_sync_interval=-1 must be"),
        (PersistingBackend, {"max_wal_size": 0}, "max_wal_size=0 must be an int >= 1"),
        (LanceBackend, {"flush_threshold": 0}, "flush_threshold=0 must be an int >= 1"),
        (LanceBackend, {"batch_size": 0}, "batch_size must be an int >= 1"),
    ],
)
def test_bad_options_are_refused_by_name(tmp_path: Path, cls: type, options: dict[str, Any], message: str) -> None:
    with pytest.raises(PersistingError, match=message):
        cls(bucket_id=0, storage_path=str(tmp_path), **options)


def test_bad_read_windows_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        b = LanceBackend(bucket_id=0, storage_path=str(tmp_path))
        with pytest.raises(PersistingError, match="offset must be an int >= 0"):
            await b.get(10, -1)
        with pytest.raises(PersistingError, match="limit must be an int >= 0"):
            await b.get(-5, 0)
        with pytest.raises(PersistingError, match="limit"):
            [c async for c in b.get_stream("10", 0)]  # type: ignore[arg-type]
        b.close()

    run(go())


def test_refusals_survive_pickling(tmp_path: Path) -> None:
    async def go() -> None:
        b = PersistingBackend(bucket_id=0, storage_path=str(tmp_path))
        await b.put(good(0))
        errors: list[PersistingError] = []
        for bad in ({"id": "k", "seq": 1, "name": 5}, ["x"]):
            try:
                await b.put(bad)  # type: ignore[arg-type]
            except PersistingError as caught:
                errors.append(caught)
        b.close()
        assert [type(e) for e in errors] == [SchemaError, InvalidRecordError]
        for err in errors:
            again = pickle.loads(pickle.dumps(err))
            assert type(again) is type(err) and str(again) == str(err)

    run(go())


POISON_NAMES = ["a.b", "_rowid", "_rowaddr", "_distance", "a`b", "*", "a\x00b"]


@pytest.mark.parametrize(("cls", "options"), BACKENDS)
@pytest.mark.parametrize("name", POISON_NAMES, ids=repr)
def test_a_field_name_lance_cannot_store_is_refused_at_put(
    tmp_path: Path, cls: type, options: dict[str, Any], name: str
) -> None:
    """Issue 14: such a record was acknowledged, then the flush failed and the bucket lost every
    buffered record with it (LanceBackend), or no reopen could replay the WAL (PersistingBackend)."""
    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        await b.put_batch([good(0), good(1)])
        await b.flush()
        await b.put(good(2))  # buffered
        with pytest.raises(InvalidRecordError) as info:
            await b.put({**good(3), name: 1})
        assert info.value.details["field"] == name
        with pytest.raises(InvalidRecordError):
            nested_bad = name if name in ("a`b", "*", "a\x00b") else ""  # dots, reserved names nest fine
            await b.put_batch([good(3), {**good(4), "nested": {"ok.dot": 1, "_rowid": 3, nested_bad: 2}}])
        assert b.total_count() == 3
        await b.put(good(3))
        await b.put({**good(4), "cfg": {"lr.base": 0.5}})  # dotted keys nest fine
        await b.flush()
        b.close()
        got = await _reopen_rows(cls, str(tmp_path), options)
        assert [r["seq"] for r in got] == [0, 1, 2, 3, 4] and got[4]["cfg"] == {"lr.base": 0.5}

    run(go())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0], ids=["nan", "inf", "negative"])
def test_a_bad_wal_sync_interval_is_refused_by_name(tmp_path: Path, value: float) -> None:
    from persisting.errors import ConfigError

    with pytest.raises(ConfigError, match="wal_sync_interval") as info:
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), enable_wal=True, wal_sync_interval=value)
    assert info.value.details["option"] == "wal_sync_interval"
