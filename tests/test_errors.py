"""The exception hierarchy (persisting/errors.py) and the typed errors the engine raises."""

from __future__ import annotations

import copy
import os
import pickle

import pytest

from persisting import errors
from persisting.engine import Table, TableOptions
from persisting.errors import (
    ClosedError,
    CorruptionError,
    InvalidNameError,
    InvalidRecordError,
    LockedError,
    NotFoundError,
    PersistingError,
    SchemaError,
    StorageError,
    WALError,
)

ALL_ERRORS = [getattr(errors, name) for name in errors.__all__]


# -- the hierarchy ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_public_error_is_a_persisting_error(cls: type[Exception]) -> None:
    assert issubclass(cls, PersistingError)
    assert issubclass(cls, Exception)


def test_all_lists_every_error_class_in_the_module() -> None:
    defined = {
        name for name, obj in vars(errors).items()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (NotFoundError, KeyError),
        (SchemaError, ValueError),
        (InvalidNameError, ValueError),
        (InvalidRecordError, TypeError),
        (ClosedError, ValueError),
        (StorageError, OSError),
        (CorruptionError, WALError),
    ],
    ids=lambda x: x.__name__,
)
def test_errors_are_also_the_builtin_a_caller_catches(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("boom")


def test_not_found_is_caught_by_except_keyerror() -> None:
    try:
        raise NotFoundError("no key 'abc' in store s; list() shows what exists", key="abc")
    except KeyError as exc:
        assert exc.key == "abc"  # type: ignore[attr-defined]
    else:  # pragma: no cover
        pytest.fail("NotFoundError was not caught as KeyError")


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_str_is_the_plain_message(cls: type[PersistingError]) -> None:
    assert str(cls("msg")) == "msg"
    assert str(cls("a 'quoted' message")) == "a 'quoted' message"


def test_str_of_not_found_is_not_repr_quoted() -> None:
    # KeyError.__str__ would give "'msg'"; the message must read as written
    assert str(NotFoundError("msg")) == "msg"
    assert repr(NotFoundError("msg")) == "NotFoundError('msg')"


def test_details_become_attributes() -> None:
    exc = CorruptionError("bad frame in /x at 12", path="/x", offset=12)
    assert exc.message == "bad frame in /x at 12"
    assert exc.details == {"path": "/x", "offset": 12}
    assert exc.path == "/x"  # type: ignore[attr-defined]
    assert exc.offset == 12  # type: ignore[attr-defined]


# -- pickling (errors cross Pulsing actors and processes) --------------------------------------
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_survives_pickle(cls: type[PersistingError], protocol: int) -> None:
    exc = cls("something failed at /x offset 12; do this", path="/x", offset=12, names=["a", "b"])
    back = pickle.loads(pickle.dumps(exc, protocol=protocol))
    assert type(back) is cls
    assert str(back) == str(exc)
    assert back.message == exc.message
    assert back.details == {"path": "/x", "offset": 12, "names": ["a", "b"]}
    assert back.path == "/x"  # type: ignore[attr-defined]
    assert back.offset == 12  # type: ignore[attr-defined]
    assert back.args == exc.args


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_error_without_details_survives_pickle(cls: type[PersistingError]) -> None:
    back = pickle.loads(pickle.dumps(cls("only a message")))
    assert type(back) is cls
    assert str(back) == "only a message"
    assert back.details == {}


def test_corruption_error_offset_survives_pickle() -> None:
    back = pickle.loads(pickle.dumps(CorruptionError("...", path="/x", offset=12)))
    assert back.offset == 12
    assert back.path == "/x"
    assert isinstance(back, WALError)


def test_pickled_error_can_still_be_caught_as_builtin() -> None:
    back = pickle.loads(pickle.dumps(NotFoundError("missing", key="k")))
    with pytest.raises(KeyError):
        raise back


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_survives_copy(cls: type[PersistingError]) -> None:
    exc = cls("msg", where="w")
    for clone in (copy.copy(exc), copy.deepcopy(exc)):
        assert type(clone) is cls
        assert str(clone) == "msg"
        assert clone.where == "w"  # type: ignore[attr-defined]


# -- typed errors raised by a Table on a local path -------------------------------------------
def _scan_values(table: Table, column: str) -> list[object]:
    return table.scan(columns=[column]).column(column).to_pylist()


def test_closed_table_raises_closed_error(tmp_path: os.PathLike[str]) -> None:
    uri = os.path.join(tmp_path, "t.lance")
    table = Table(uri)
    table.append([{"i": 1}])
    table.close()
    assert table.closed
    table.close()  # idempotent
    for op in (
        lambda: table.append([{"i": 2}]),
        table.flush,
        table.scan,
        table.count,
        lambda: table.take([0]),
        table.versions,
        table.tags,
        table.sync,
        lambda: table.checkout(1),
    ):
        with pytest.raises(ClosedError) as info:
            op()
        assert uri in str(info.value)
    with Table(uri) as again:
        assert _scan_values(again, "i") == [1]


def test_second_writer_of_an_exclusive_table_gets_locked_error_naming_the_lock(tmp_path: os.PathLike[str]) -> None:
    uri = os.path.join(tmp_path, "t.lance")
    with Table(uri, exclusive=True) as first:
        first.append([{"i": 1}])
        with pytest.raises(LockedError) as info:
            Table(uri)  # a shared writer is refused by an exclusive one, and the reverse
        with pytest.raises(LockedError):
            Table(uri, exclusive=True)
        lock_path = os.path.join(tmp_path, "t.wal", "LOCK")
        assert info.value.path == lock_path  # type: ignore[attr-defined]
        assert lock_path in str(info.value)
        assert "read_only" in str(info.value)
        # the refused open did not disturb the writer
        first.append([{"i": 2}])
        assert _scan_values(first, "i") == [1, 2]
    # once the writer closed, a new writer gets the lock
    with Table(uri) as second:
        assert _scan_values(second, "i") == [1, 2]


def test_read_only_open_sees_flushed_rows_and_rows_only_in_the_writers_wal(tmp_path: os.PathLike[str]) -> None:
    uri = os.path.join(tmp_path, "t.lance")
    writer = Table(uri, options=TableOptions(durability="batch", flush_rows=1_000_000))
    try:
        writer.append([{"i": 0, "s": "flushed"}, {"i": 1, "s": "flushed"}])
        writer.flush()
        writer.append([{"i": 2, "s": "wal"}])
        writer.append([{"i": 3, "s": "wal"}])
        assert writer.stats()["buffered_rows"] == 2
        reader = Table(uri, read_only=True)  # while the writer holds the lock
        try:
            assert reader.read_only
            assert reader.count() == 4
            assert _scan_values(reader, "i") == [0, 1, 2, 3]
            assert _scan_values(reader, "s") == ["flushed", "flushed", "wal", "wal"]
            with pytest.raises(StorageError):
                reader.append([{"i": 4}])
        finally:
            reader.close()
        # the reader neither took the lock nor consumed the writer's WAL
        writer.append([{"i": 4, "s": "wal"}])
        assert _scan_values(writer, "i") == [0, 1, 2, 3, 4]
    finally:
        writer.close()
    with Table(uri, read_only=True) as reader:
        assert _scan_values(reader, "i") == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("read_only", [False, True])
def test_path_that_is_a_file_raises_storage_error(tmp_path: os.PathLike[str], read_only: bool) -> None:
    path = os.path.join(tmp_path, "t.lance")
    with open(path, "w") as f:
        f.write("not a dataset")
    with pytest.raises(StorageError) as info:
        Table(path, read_only=read_only)
    assert path in str(info.value)
    with open(path) as f:
        assert f.read() == "not a dataset"
    # a refused open leaves no lock behind: trying again is refused the same way, not LockedError
    with pytest.raises(StorageError):
        Table(path, read_only=read_only)
