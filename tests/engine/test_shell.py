"""The store shell: layout, closed/read-only state and constructor checks shared by every store."""

from __future__ import annotations

import os
import pickle

import pytest

from persisting.engine.shell import StoreShell, check_choice, check_int, check_seconds, join_uri
from persisting.engine.table import Table
from persisting.errors import ClosedError, ConfigError, PersistingError, ReadOnlyError, StorageError


def test_layout_local_and_remote(tmp_path):
    s = StoreShell("TestStore", tmp_path / "store", wal_dir=tmp_path / "wal")
    assert s.table_uri("steps") == f"{tmp_path}/store/steps.lance"
    assert s.table_wal_dir("steps") == os.path.join(str(tmp_path / "wal"), "steps.wal")
    assert StoreShell("TestStore", tmp_path / "x").table_wal_dir("steps") is None
    r = StoreShell("TestStore", "s3://bucket/store/", wal_dir=str(tmp_path / "w"))
    assert r.remote and r.table_uri("chunks") == "s3://bucket/store/chunks.lance"
    assert join_uri("s3://b/p/", "t") == "s3://b/p/t"


def test_remote_writer_needs_local_wal_dir(tmp_path):
    with pytest.raises(ConfigError, match="wal_dir") as e:
        StoreShell("TestStore", "s3://bucket/store")
    assert e.value.argument == "wal_dir" and "s3://bucket/store" in str(e.value)
    StoreShell("TestStore", "s3://bucket/store", read_only=True)  # readers need no WAL directory
    with pytest.raises(ConfigError, match="local directory"):
        StoreShell("TestStore", tmp_path, wal_dir="s3://bucket/wal")
    with pytest.raises(ConfigError, match="path"):
        StoreShell("TestStore", "")


def test_closed_and_read_only_are_typed_and_name_the_store(tmp_path):
    s = StoreShell("TestStore", tmp_path, read_only=True, label="namespace m")
    s.check_open()
    with pytest.raises(ReadOnlyError, match=rf"TestStore {tmp_path} \(namespace m\) is open read-only") as e:
        s.check_writable("put")
    assert isinstance(e.value, StorageError) and isinstance(e.value, PermissionError)
    assert pickle.loads(pickle.dumps(e.value)).path == str(tmp_path)
    assert s.mark_closed() is True and s.mark_closed() is False and s.closed
    with pytest.raises(ClosedError, match="is closed"):
        s.check_open()
    with pytest.raises(ClosedError):  # closed wins over read-only
        s.check_writable()


def test_make_root_only_for_local_writers(tmp_path):
    StoreShell("TestStore", tmp_path / "r", read_only=True).make_root()
    assert not (tmp_path / "r").exists()
    StoreShell("TestStore", tmp_path / "w").make_root()
    assert (tmp_path / "w").is_dir()


@pytest.mark.parametrize(
    "call",
    [
        lambda: check_int("chunk_size", 0, store="S", minimum=1),
        lambda: check_int("chunk_size", True, store="S"),
        lambda: check_int("chunk_size", 1.5, store="S"),
        lambda: check_int("keep_last", None, store="S"),
        lambda: check_seconds("refresh_interval", -1, store="S"),
        lambda: check_seconds("refresh_interval", float("nan"), store="S"),
        lambda: check_seconds("interval", 0, store="S", positive=True),
        lambda: check_seconds("interval", "1", store="S"),
        lambda: check_choice("compression", "brotli", ("zstd", None), store="S"),
        lambda: check_choice("compression", ["zstd"], {"zstd"}, store="S"),
    ],
)
def test_argument_checks_raise_config_error_naming_the_argument(call):
    with pytest.raises(ConfigError) as e:
        call()
    assert isinstance(e.value, PersistingError) and e.value.argument in str(e.value)


def test_argument_checks_pass_good_values():
    assert check_int("n", 3, store="S", minimum=1) == 3
    assert check_int("n", None, store="S", optional=True) is None
    assert check_seconds("t", 0, store="S") == 0.0
    assert check_choice("c", None, ("zstd", None), store="S") is None


def test_table_write_on_read_only_handle_is_read_only_error(tmp_path):
    uri = str(tmp_path / "t.lance")
    with Table(uri) as t:
        t.append([{"a": 1}])
    with Table(uri, read_only=True) as r:
        with pytest.raises(ReadOnlyError, match="read-only"):
            r.append([{"a": 2}])
    with Table(uri) as t:
        assert t.count() == 1
