"""Field names Lance cannot commit or query are refused at the door (issue 14, finding 1).

Before: a record with a field ``a.b``, ``_rowid``, a backtick... was acknowledged by
``Table.append``, then every commit failed (close raised StorageError) and every reopen
replayed the poisoned frame and failed again, ``recovery="salvage"`` included. Now the name is
refused with InvalidRecordError before anything is logged or buffered, whatever the rows came
as (dicts, Arrow batch or table, nested structs), and a WAL from an older version that holds
such a frame opens in salvage mode, which reports the frame.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pytest

from persisting.engine.commits import LSN_KEY

from persisting.engine import Table, TableOptions
from persisting.engine.batches import encode_batch
from persisting.engine.names import RESERVED_COLUMNS, field_name_problem
from persisting.engine.wal import WAL
from persisting.errors import InvalidRecordError

# every name Lance 14.0.2 refuses at commit, mangles (NUL), or commits but cannot read back
POISON = ["a.b", "x.y.z", "", "a`b", "*", "a\x00b", *sorted(RESERVED_COLUMNS)]
NESTED_POISON = ["", "a`b", "*", "a\x00b"]
# names Lance stores and queries fine: they must keep working
FINE = ["a b", "a-b", "a/b", "é", "a'b", 'a"b', "a,b", "a[0]", "A", "1a", "_rowid2", "_fragid", "$a", "a\nb"]


def options(**kw: Any) -> TableOptions:
    return TableOptions(durability="always", flush_rows=1_000_000, compact_fragments=0, **kw)


def rows(t: Table) -> list[dict[str, Any]]:
    return t.scan().to_pylist()


@pytest.mark.parametrize("name", POISON, ids=repr)
@pytest.mark.parametrize("form", ["dicts", "batch", "table"])
def test_a_poison_name_is_refused_and_the_table_keeps_working(tmp_path: Path, name: str, form: str) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri, options=options()) as t:
        t.append([{"k": 1}])
        t.flush()
        t.append([{"k": 2}])  # buffered and logged, not committed
        bad: Any = [{"k": 3, name: 4}]
        if form != "dicts":
            table = pa.Table.from_arrays([pa.array([3]), pa.array([4])], names=["k", name])
            bad = table if form == "table" else table.to_batches()[0]
        with pytest.raises(InvalidRecordError) as info:
            t.append(bad)
        assert repr(name) in str(info.value) or name.split("\x00")[0] in str(info.value)
        assert info.value.field == name
        t.append([{"k": 5}])
    with Table(uri, options=options()) as t:  # reopen: nothing poisoned the WAL
        assert [r["k"] for r in rows(t)] == [1, 2, 5]
        assert t.recovery_report.lost == []
        assert name not in (t.schema.names if t.schema is not None else [])


@pytest.mark.parametrize("name", NESTED_POISON, ids=repr)
def test_a_poison_name_inside_a_struct_or_list_is_refused(tmp_path: Path, name: str) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri, options=options()) as t:
        t.append([{"k": 1}])
        for value in ({name: 1}, [{name: 1}], {"s": [{name: 1}]}):
            with pytest.raises(InvalidRecordError) as info:
                t.append([{"k": 2, "info": value}])
            assert info.value.field.startswith("info -> ")
        t.append([{"k": 3}])
    with Table(uri, options=options()) as t:
        assert [r["k"] for r in rows(t)] == [1, 3]


def test_a_duplicate_column_is_refused(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri, options=options()) as t:
        t.append([{"k": 1}])
        with pytest.raises(InvalidRecordError, match="twice"):
            t.append(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["x", "x"]))
    with Table(uri, options=options()) as t:
        assert rows(t) == [{"k": 1}]


@pytest.mark.parametrize("name", FINE, ids=repr)
def test_names_lance_handles_are_stored_projected_and_filtered(tmp_path: Path, name: str) -> None:
    uri = str(tmp_path / "t.lance")
    quoted = "`" + name + "`"
    with Table(uri, options=options()) as t:
        t.append([{"k": 1}])
        t.flush()
        t.append([{"k": 2, name: 7}])  # a new column on a committed table (add_columns)
    with Table(uri, options=options()) as t:
        assert rows(t) == [{"k": 1, name: None}, {"k": 2, name: 7}]
        assert t.scan(columns=[name], filter=f"{quoted} = 7").to_pylist() == [{name: 7}]


def test_dotted_keys_are_supported_inside_a_struct(tmp_path: Path) -> None:
    """Lance refuses '.' only in top-level names: nested dotted keys (and reserved names) work,
    with the path quoted in filters."""
    uri = str(tmp_path / "t.lance")
    with Table(uri, options=options()) as t:
        t.append([{"k": 1, "cfg": {"lr.base": 0.1, "_rowid": 5}}])
        t.append([{"k": 2, "cfg": {"lr.base": 0.2, "_rowid": 6}}])
    with Table(uri, options=options()) as t:
        assert [r["cfg"] for r in rows(t)] == [{"lr.base": 0.1, "_rowid": 5}, {"lr.base": 0.2, "_rowid": 6}]
        assert [r["k"] for r in t.scan(filter="cfg.`lr.base` > 0.15").to_pylist()] == [2]


def test_the_refusal_explains_the_dot_and_survives_pickling(tmp_path: Path) -> None:
    with Table(str(tmp_path / "t.lance"), options=options()) as t:
        with pytest.raises(InvalidRecordError) as info:
            t.append([{"a.b": 1}])
    err = pickle.loads(pickle.dumps(info.value))
    assert "'.'" in str(err) and "nest it" in str(err) and err.field == "a.b"


def test_the_rule_matches_what_lance_does(tmp_path: Path) -> None:
    """The names we refuse at the top level are exactly those Lance refuses, mangles or cannot
    read back; the names we allow round-trip through write, projection and a quoted filter."""
    def lance_ok(name: str) -> bool:
        path = str(tmp_path / f"probe{len(os.listdir(tmp_path))}.lance")
        try:
            ds = lance.write_dataset(pa.table({"k": [1], name: [2]}), path)
            got = ds.to_table(columns=[name], filter="`" + name + "` = 2")
            lance.write_dataset(pa.table({"k": [3], name: [4]}), path, mode="append")
        except (OSError, ValueError):
            return False
        return got.column_names == [name] and got.num_rows == 1
    for name in ["a.b", "", "a`b", "*", "a\x00b", "_rowid", "_rowaddr", "_rowoffset", *FINE]:
        assert (field_name_problem(name, top_level=True) is None) == lance_ok(name), name


def _old_wal_with(uri: str, frames: list[pa.RecordBatch]) -> None:
    """Write frames into the table's WAL as a version that did not check names would have."""
    # the single-writer layout of that version: Lance holds LSN 1, frames 2.. in t.wal/
    lance.write_dataset(pa.table({"k": [1]}), uri, data_storage_version="2.2", transaction_properties={LSN_KEY: "1"})
    wal_dir, next_lsn = uri.removesuffix(".lance") + ".wal", 2
    os.makedirs(wal_dir)
    wal = WAL(wal_dir, next_lsn=next_lsn, sync="always", sync_interval=0.0, sync_bytes=None,
              max_segment_size=1 << 20)
    for batch in frames:
        wal.append(encode_batch(batch))
    wal.close()


def _batch(**cols: list[Any]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(cols)


@pytest.mark.parametrize("poison_last", [False, True], ids=["poison-then-good", "poison-last"])
def test_an_old_wal_with_a_poison_frame_needs_salvage_which_reports_it(tmp_path: Path, poison_last: bool) -> None:
    uri = str(tmp_path / "t.lance")
    frames = [_batch(k=[2]), _batch(**{"k": [3], "a.b": [9]})]
    if not poison_last:
        frames.append(_batch(k=[4]))
    _old_wal_with(uri, frames)
    with pytest.raises(InvalidRecordError, match="salvage") as info:
        Table(uri, options=options())
    assert info.value.field == "a.b" and info.value.lsn == 3
    with pytest.raises(InvalidRecordError, match="salvage"):  # refusing changed nothing
        Table(uri, options=options())
    with Table(uri, options=options(recovery="salvage")) as t:
        lost = t.recovery_report.lost
        assert len(lost) == 1 and "lsn 3" in lost[0].reason and "a.b" in lost[0].reason
        assert [r["k"] for r in rows(t)] == ([1, 2] if poison_last else [1, 2, 4])
        t.append([{"k": 5}])
    with Table(uri, options=options()) as t:  # the frame is applied-as-lost: point_in_time opens
        assert [r["k"] for r in rows(t)] == ([1, 2, 5] if poison_last else [1, 2, 4, 5])
        assert t.recovery_report.lost == []


def test_an_old_wal_whose_first_frames_are_poison_salvages_into_a_new_table(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    wal_dir = str(tmp_path / "t.wal")
    os.makedirs(wal_dir)
    wal = WAL(wal_dir, next_lsn=1, sync="always", sync_interval=0.0, sync_bytes=None, max_segment_size=1 << 20)
    wal.append(encode_batch(_batch(**{"k": [1], "_rowid": [1]})))
    wal.append(encode_batch(_batch(k=[2])))
    wal.close()
    with pytest.raises(InvalidRecordError, match="salvage"):
        Table(uri, wal_dir=wal_dir, options=options())
    with Table(uri, wal_dir=wal_dir, options=options(recovery="salvage")) as t:
        assert rows(t) == [{"k": None}, {"k": 2}][1:]
        assert len(t.recovery_report.lost) == 1
    with Table(uri, wal_dir=wal_dir, options=options()) as t:
        assert rows(t) == [{"k": 2}]
