"""Records -> Arrow and schema evolution (persisting/engine/schema.py), alone and through Table."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from persisting.engine import Table, TableOptions
from persisting.engine.schema import conform, evolve, records_to_batch
from persisting.errors import InvalidRecordError, SchemaError


# -- records_to_batch ------------------------------------------------------------------------
def test_records_with_mixed_missing_fields_become_nullable_columns() -> None:
    batch = records_to_batch([{"a": 1, "b": "x"}, {"a": 2}, {"b": "y", "c": 1.5}])
    assert batch.num_rows == 3
    assert batch.schema.names == ["a", "b", "c"]
    assert batch.schema.field("a").type == pa.int64()
    assert batch.schema.field("b").type == pa.string()
    assert batch.schema.field("c").type == pa.float64()
    assert batch.to_pylist() == [
        {"a": 1, "b": "x", "c": None},
        {"a": 2, "b": None, "c": None},
        {"a": None, "b": "y", "c": 1.5},
    ]


def test_numpy_scalars_and_arrays_are_stored() -> None:
    batch = records_to_batch([
        {"f32": np.float32(1.5), "i64": np.int64(7), "i8": np.int8(-3), "b": np.bool_(True), "vec": np.arange(3)},
        {"f32": np.float32(2.5), "i64": np.int64(8), "i8": np.int8(4), "b": np.bool_(False), "vec": np.arange(2, dtype=np.int64)},
    ])
    assert batch.schema.field("f32").type == pa.float32()
    assert batch.schema.field("i64").type == pa.int64()
    assert batch.schema.field("i8").type == pa.int8()
    assert batch.schema.field("b").type == pa.bool_()
    assert pa.types.is_list(batch.schema.field("vec").type)
    assert batch.column("vec").to_pylist() == [[0, 1, 2], [0, 1]]
    assert batch.column("f32").to_pylist() == [1.5, 2.5]


def test_nested_lists_and_structs() -> None:
    recs = [{"m": [[1, 2], [3]], "s": {"k": 1, "v": "a"}, "t": [["a"], []]}, {"m": [], "s": None, "t": None}]
    batch = records_to_batch(recs)
    assert batch.schema.field("m").type == pa.list_(pa.list_(pa.int64()))
    assert pa.types.is_struct(batch.schema.field("s").type)
    assert batch.to_pylist() == recs


def test_all_null_field_with_no_known_type_is_left_out() -> None:
    batch = records_to_batch([{"a": 1, "n": None}, {"a": 2}])
    assert batch.schema.names == ["a"]
    known = pa.schema([("a", pa.int64()), ("n", pa.string())])
    batch = records_to_batch([{"a": 1, "n": None}], known)
    assert batch.schema.field("n").type == pa.string()


def test_records_to_batch_does_not_mutate_records() -> None:
    recs = [{"a": 1}, {"b": [1, 2]}]
    before = [dict(r) for r in recs]
    records_to_batch(recs)
    assert recs == before


@pytest.mark.parametrize(
    ("records", "index"),
    [([5], 0), ([{"a": 1}, "x"], 1), ([{"a": 1}, {"a": 2}, None], 2), ([{"a": 1}, [("a", 1)]], 1)],
)
def test_record_that_is_not_a_dict_raises_naming_its_index(records: list[Any], index: int) -> None:
    with pytest.raises(InvalidRecordError) as info:
        records_to_batch(records)
    assert info.value.index == index  # type: ignore[attr-defined]
    assert f"record {index}" in str(info.value)


@pytest.mark.parametrize("records", [{"a": 1}, "abc", b"abc", 5, None], ids=repr)
def test_records_that_are_not_a_list_raise(records: Any) -> None:
    with pytest.raises(InvalidRecordError):
        records_to_batch(records)


@pytest.mark.parametrize("key", [1, "", None, b"a"], ids=repr)
def test_bad_field_name_raises(key: Any) -> None:
    with pytest.raises(InvalidRecordError) as info:
        records_to_batch([{"ok": 1}, {key: 1}])
    assert info.value.index == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "bad",
    [object(), frozenset({1}), 1 + 2j, [object()], {"k": object()}],
    ids=["object", "frozenset", "complex", "list-of-object", "dict-of-object"],
)
def test_unsupported_value_raises_naming_field_and_index(bad: object) -> None:
    records = [{"a": 1, "f": None}, {"a": 2}, {"a": 3, "f": bad}]
    with pytest.raises(InvalidRecordError) as info:
        records_to_batch(records)
    assert info.value.field == "f"  # type: ignore[attr-defined]
    assert info.value.index == 2  # type: ignore[attr-defined]
    assert "'f'" in str(info.value)
    assert "record 2" in str(info.value)


def test_set_value_raises_naming_field_and_index() -> None:
    with pytest.raises(InvalidRecordError) as info:
        records_to_batch([{"a": 1}, {"a": 2}, {"a": 3, "tags": {"x", "y"}}])
    assert info.value.field == "tags"  # type: ignore[attr-defined]
    assert info.value.index == 2  # type: ignore[attr-defined]


def test_type_clash_between_records_names_the_clashing_record() -> None:
    with pytest.raises(InvalidRecordError) as info:
        records_to_batch([{"a": 1}, {"a": 2}, {"a": "three"}])
    assert info.value.index == 2  # type: ignore[attr-defined]


def test_float_offered_to_int_column_is_never_truncated() -> None:
    stored = pa.schema([("x", pa.int64())])
    batch = records_to_batch([{"x": 4.5}, {"x": 1}], stored)
    assert batch.column("x").to_pylist() == [4.5, 1.0]
    assert pa.types.is_floating(batch.schema.field("x").type)
    ev = evolve(stored, batch.schema)
    assert ev.schema.field("x").type == pa.float64()
    assert conform(batch, ev.schema).column("x").to_pylist() == [4.5, 1.0]


def test_float_list_offered_to_int_list_column_is_never_truncated() -> None:
    stored = pa.schema([("v", pa.list_(pa.int64()))])
    batch = records_to_batch([{"v": [1.5, 2.25]}], stored)
    assert batch.column("v").to_pylist() == [[1.5, 2.25]]


def test_values_follow_a_declared_float32_column() -> None:
    stored = pa.schema([("v", pa.float32()), ("vec", pa.list_(pa.float32()))])
    batch = records_to_batch([{"v": 0.5, "vec": [1.0, 2.0]}, {"v": 3, "vec": [4]}], stored)
    ev = evolve(stored, batch.schema)
    assert ev.schema == stored
    assert conform(batch, ev.schema).to_pylist() == [{"v": 0.5, "vec": [1.0, 2.0]}, {"v": 3.0, "vec": [4.0]}]


@pytest.mark.parametrize("stored_type", [pa.uint64(), pa.int32(), pa.uint8()], ids=str)
def test_python_int_fitting_a_declared_int_column_keeps_its_type(stored_type: pa.DataType) -> None:
    stored = pa.schema([("x", stored_type)])
    batch = records_to_batch([{"x": 5}], stored)
    assert evolve(stored, batch.schema).schema == stored


# -- evolve ----------------------------------------------------------------------------------
def _evolve(stored: pa.DataType, offered: pa.DataType) -> pa.DataType:
    return evolve(pa.schema([("x", stored)]), pa.schema([("x", offered)])).schema.field("x").type


def test_evolve_from_nothing_takes_the_offered_schema() -> None:
    offered = pa.schema([("a", pa.int64()), ("b", pa.string())])
    ev = evolve(None, offered)
    assert ev.schema == offered
    assert ev.added == ("a", "b")
    assert ev.widened == ()


def test_new_field_is_added_nullable_at_the_end() -> None:
    stored = pa.schema([pa.field("a", pa.int64(), nullable=False)], metadata={b"k": b"v"})
    offered = pa.schema([pa.field("b", pa.string(), nullable=False), pa.field("a", pa.int64(), nullable=False)])
    ev = evolve(stored, offered)
    assert ev.schema.names == ["a", "b"]
    assert ev.schema.field("b").nullable
    assert not ev.schema.field("a").nullable
    assert ev.schema.metadata == {b"k": b"v"}
    assert ev.added == ("b",)
    assert ev.widened == ()


def test_new_field_keeps_its_metadata() -> None:
    blob = pa.field("payload", pa.large_binary(), metadata={"lance-encoding:blob": "true"})
    ev = evolve(pa.schema([("a", pa.int64())]), pa.schema([blob]))
    assert ev.schema.field("payload").metadata == {b"lance-encoding:blob": b"true"}


def test_field_missing_from_offer_is_kept() -> None:
    stored = pa.schema([("a", pa.int64()), ("b", pa.string())])
    ev = evolve(stored, pa.schema([("b", pa.string())]))
    assert ev.schema == stored
    assert ev.added == ev.widened == ()


@pytest.mark.parametrize(
    ("stored", "offered", "result"),
    [
        (pa.int32(), pa.int64(), pa.int64()),
        (pa.int8(), pa.int16(), pa.int16()),
        (pa.int64(), pa.int32(), pa.int64()),
        (pa.uint8(), pa.int8(), pa.int64()),
        (pa.uint32(), pa.int64(), pa.int64()),
        (pa.int64(), pa.uint32(), pa.int64()),
        (pa.int64(), pa.float64(), pa.float64()),
        (pa.int32(), pa.float32(), pa.float64()),
        (pa.float64(), pa.int64(), pa.float64()),
        (pa.float32(), pa.int64(), pa.float32()),
        (pa.float32(), pa.float64(), pa.float64()),
        (pa.float64(), pa.float32(), pa.float64()),
        (pa.float16(), pa.float32(), pa.float32()),
        (pa.string(), pa.large_string(), pa.large_string()),
        (pa.large_string(), pa.string(), pa.large_string()),
        (pa.binary(), pa.large_binary(), pa.large_binary()),
        (pa.list_(pa.int64()), pa.list_(pa.float64()), pa.list_(pa.float64())),
        (pa.list_(pa.int32()), pa.list_(pa.int64()), pa.list_(pa.int64())),
        (pa.list_(pa.float64()), pa.list_(pa.int64()), pa.list_(pa.float64())),
        (pa.list_(pa.string()), pa.large_list(pa.string()), pa.large_list(pa.string())),
        (pa.int64(), pa.null(), pa.int64()),
        (pa.string(), pa.string(), pa.string()),
    ],
    ids=str,
)
def test_compatible_types_widen(stored: pa.DataType, offered: pa.DataType, result: pa.DataType) -> None:
    ev = evolve(pa.schema([("x", stored)]), pa.schema([("x", offered)]))
    assert ev.schema.field("x").type == result
    assert ev.widened == (("x",) if result != stored else ())
    assert ev.added == ()


@pytest.mark.parametrize(
    ("stored", "offered"),
    [
        (pa.string(), pa.int64()),
        (pa.int64(), pa.string()),
        (pa.float64(), pa.string()),
        (pa.int64(), pa.bool_()),
        (pa.string(), pa.binary()),
        (pa.list_(pa.int64()), pa.int64()),
        (pa.int64(), pa.list_(pa.int64())),
        (pa.list_(pa.string()), pa.list_(pa.int64())),
        (pa.uint64(), pa.int64()),
        (pa.struct([("a", pa.int64())]), pa.string()),
    ],
    ids=str,
)
def test_incompatible_types_raise_schema_error_naming_field_and_types(stored: pa.DataType, offered: pa.DataType) -> None:
    stored_schema = pa.schema([("id", pa.int64()), ("score", stored)])
    snapshot = pa.schema(list(stored_schema), metadata=stored_schema.metadata)
    with pytest.raises(SchemaError) as info:
        evolve(stored_schema, pa.schema([("new", pa.string()), ("score", offered)]))
    message = str(info.value)
    assert "'score'" in message
    assert str(stored) in message
    assert str(offered) in message
    assert info.value.field == "score"  # type: ignore[attr-defined]
    assert info.value.stored_type == str(stored)  # type: ignore[attr-defined]
    assert info.value.offered_type == str(offered)  # type: ignore[attr-defined]
    assert stored_schema == snapshot  # evolve changed nothing


def test_string_vs_int_message_names_field_stored_and_offered_type() -> None:
    with pytest.raises(SchemaError) as info:
        evolve(pa.schema([("name", pa.string())]), pa.schema([("name", pa.int64())]))
    assert "'name'" in str(info.value)
    assert "string" in str(info.value)
    assert "int64" in str(info.value)


def test_conform_fills_missing_columns_and_widens() -> None:
    schema = pa.schema([("a", pa.float64()), ("b", pa.large_string()), ("c", pa.int64())])
    batch = pa.record_batch({"a": pa.array([1, 2], pa.int32()), "b": pa.array(["x", "y"])})
    out = conform(batch, schema)
    assert out.schema == schema
    assert out.to_pylist() == [{"a": 1.0, "b": "x", "c": None}, {"a": 2.0, "b": "y", "c": None}]


# -- through Table on a local path -----------------------------------------------------------
@pytest.fixture
def table_uri(tmp_path: os.PathLike[str]) -> str:
    return os.path.join(tmp_path, "t.lance")


def _rows(table: Table) -> list[dict[str, Any]]:
    return table.scan().to_pylist()


@pytest.mark.parametrize("flush_first", [False, True], ids=["buffered", "flushed"])
@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ([{"name": "c", "n": 3}, 5], InvalidRecordError),
        ("not a list", InvalidRecordError),
        ([{"name": 3, "n": 3}], SchemaError),
        ([{"name": "c", "n": "three"}], SchemaError),
        ([{"name": "c", "n": 3, "extra": object()}], InvalidRecordError),
    ],
    ids=["not-a-dict", "not-a-list", "string-to-int", "int-to-string", "unsupported-value"],
)
def test_bad_input_raises_and_keeps_every_earlier_record(
    table_uri: str, bad: Any, error: type[Exception], flush_first: bool
) -> None:
    expected = [{"name": "a", "n": 1}, {"name": "b", "n": 2}]
    with Table(table_uri, options=TableOptions(durability="batch")) as table:
        table.append(expected[:1])
        if flush_first:
            table.flush()
        table.append(expected[1:])
        schema_before = table.schema
        last_lsn = table.last_lsn
        with pytest.raises(error):
            table.append(bad)
        assert table.schema == schema_before  # nothing evolved
        assert table.last_lsn == last_lsn  # nothing logged
        assert _rows(table) == expected
        table.append([{"name": "c", "n": 3}])  # the table still works
    with Table(table_uri) as again:
        assert _rows(again) == [*expected, {"name": "c", "n": 3}]
        assert again.schema.field("name").type == pa.string()


_CRASHING_WRITER = """
import os, sys
from persisting.engine import Table, TableOptions
from persisting.errors import SchemaError
table = Table(sys.argv[1], options=TableOptions(durability="always"))
table.append([{"name": "a"}])
try:
    table.append([{"name": 1}])
except SchemaError:
    pass
else:
    os._exit(3)
os._exit(0)  # die without flush or close: the next writer replays the WAL
"""


def test_bad_input_is_not_logged_for_recovery(table_uri: str) -> None:
    """A refused record must not reach the WAL, or the replay after a crash would trip on it."""
    # a fresh interpreter, not fork: Lance is not fork-safe
    proc = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, table_uri], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    with Table(table_uri) as again:
        assert _rows(again) == [{"name": "a"}]


def test_float_offered_to_int_column_through_table_stays_exact(table_uri: str) -> None:
    with Table(table_uri) as table:
        table.append([{"x": 1}, {"x": 2}])
        table.flush()
        table.append([{"x": 4.5}])
        assert table.scan().column("x").to_pylist() == [1.0, 2.0, 4.5]
    with Table(table_uri) as again:
        assert again.schema.field("x").type == pa.float64()
        assert again.scan().column("x").to_pylist() == [1.0, 2.0, 4.5]


def test_int_offered_to_float_column_through_table_stays_float(table_uri: str) -> None:
    with Table(table_uri) as table:
        table.append([{"x": 0.5}])
        table.flush()
        table.append([{"x": 3}])
    with Table(table_uri) as again:
        assert again.schema.field("x").type == pa.float64()
        assert again.scan().column("x").to_pylist() == [0.5, 3.0]


def test_python_int_into_declared_uint64_column_through_table(table_uri: str) -> None:
    with Table(table_uri, schema=pa.schema([("x", pa.uint64())])) as table:
        table.append([{"x": 5}])
        assert table.schema.field("x").type == pa.uint64()
        assert table.scan().column("x").to_pylist() == [5]


def test_new_field_through_table_reads_null_for_old_rows(table_uri: str) -> None:
    with Table(table_uri) as table:
        table.append([{"a": 1}])
        table.flush()
        table.append([{"a": 2, "b": "new"}])
        table.flush()
        table.append([{"a": 3, "c": [1.5]}])
    with Table(table_uri) as again:
        assert _rows(again) == [
            {"a": 1, "b": None, "c": None},
            {"a": 2, "b": "new", "c": None},
            {"a": 3, "b": None, "c": [1.5]},
        ]


def test_conform_many_equals_conform_per_batch_with_one_chunk_per_column() -> None:
    from persisting.engine.schema import conform_many

    batches = [
        pa.RecordBatch.from_pydict({"a": pa.array([1, 2], pa.int32())}),
        pa.RecordBatch.from_pydict({"b": ["x"]}),
        pa.RecordBatch.from_pydict({"b": ["y", None], "a": pa.array([3, 4], pa.int64())}),
        pa.RecordBatch.from_pydict({"c": [1.5]}),
    ]
    schema = pa.schema([("a", pa.float64()), ("b", pa.large_string()), ("c", pa.float64()), ("d", pa.int64())])
    got = conform_many(batches, schema)
    assert got.equals(pa.concat_tables([conform(b, schema) for b in batches]))
    assert all(col.num_chunks == 1 for col in got.columns)


def test_a_wide_table_built_one_column_at_a_time_commits_fast(tmp_path) -> None:
    """Issue 14 finding 9: every pending batch was conformed to the whole schema and handed to
    Lance as batches x columns tiny arrays, so committing (at flush, close or the replay of a
    reopen) 2,000 one-column appends took 122 s (now under 1 s), and each append scanned the
    schema's names (2,000 appends: 13 s -> 0.7 s)."""
    import time

    uri = str(tmp_path / "wide.lance")
    t = Table(uri, options=TableOptions(durability="batch", flush_rows=1_000_000, compact_fragments=0))
    start = time.perf_counter()
    for i in range(1000):
        t.append([{f"c{i}": i}])
    appended = time.perf_counter() - start
    start = time.perf_counter()
    t.close()  # one commit of 1,000 batches, as a reopen's replay does
    committed = time.perf_counter() - start
    with Table(uri, options=TableOptions(durability="batch", compact_fragments=0)) as again:
        assert again.count() == 1000 and len(again.schema) == 1000
        assert again.scan(columns=["c999"], filter="c999 IS NOT NULL").to_pylist() == [{"c999": 999}]
    assert appended < 5 and committed < 8, (appended, committed)
