"""Indexes and vector search on Table: real Lance, real processes, moto S3."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from persisting.engine import Table, TableOptions
from persisting.engine import indexes as idx
from persisting.errors import ConfigError, InvalidRecordError, NotFoundError, PersistingError

DIM = 16
SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("cat", pa.string()), pa.field("emb", pa.list_(pa.float32(), DIM))])


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((16, DIM)).astype(np.float32) * 4
    return (centres[rng.integers(0, 16, n)] + rng.standard_normal((n, DIM))).astype(np.float32)


def rows(x: np.ndarray, start: int = 0) -> pa.Table:
    n = len(x)
    return pa.table({
        "id": pa.array(np.arange(start, start + n)),
        "cat": pa.array(["even" if i % 2 == 0 else "odd" for i in range(start, start + n)]),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
    }, schema=SCHEMA)


def exact(x: np.ndarray, q: np.ndarray, k: int, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
    if metric == "l2":
        d = ((x - q) ** 2).sum(1)
    elif metric == "dot":
        d = 1 - x @ q
    else:
        d = 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    top = np.argsort(d, kind="stable")[:k]
    return top, d[top]


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(3000)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, data: np.ndarray) -> str:
    """One indexed table shared by the read-only tests (building an index is the slow part)."""
    uri = str(tmp_path_factory.mktemp("idx") / "t.lance")
    with Table(uri, schema=SCHEMA, options=TableOptions(durability="none")) as t:
        t.append(rows(data))
        t.create_index("emb", num_partitions=16)
    return uri


def test_recall_and_exact_distances_on_a_small_set(indexed: str, data: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    queries = data[rng.integers(0, len(data), 40)] + rng.standard_normal((40, DIM)).astype(np.float32) * 0.3
    with Table(indexed, read_only=True) as t:
        [info] = t.indexes()
        assert (info.column, info.kind, info.metric, info.indexed_rows, info.unindexed_rows) == ("emb", "vector", "l2", 3000, 0)
        recall = []
        for q in queries:
            got = t.search("emb", q, 10, columns=["id"])
            want, dist = exact(data, q, 10)
            recall.append(len(set(want) & set(got.column("id").to_pylist())) / 10)
            ids = np.asarray(got.column("id"))
            np.testing.assert_allclose(got.column("_distance").to_numpy(), ((data[ids] - q) ** 2).sum(1), rtol=1e-4, atol=1e-4)
    assert np.mean(recall) >= 0.9


def test_index_survives_reopen_and_a_crash_right_after_it(tmp_path: Any, data: np.ndarray) -> None:
    uri = str(tmp_path / "t.lance")
    code = textwrap.dedent(f"""
        import os, signal, numpy as np, pyarrow as pa
        from persisting.engine import Table
        schema = pa.schema([pa.field("id", pa.int64()), pa.field("emb", pa.list_(pa.float32(), {DIM}))])
        x = np.random.default_rng(0).standard_normal((600, {DIM})).astype(np.float32)
        t = Table({uri!r}, schema=schema)
        t.append([{{"id": i, "emb": x[i].tolist()}} for i in range(600)])
        t.create_index("emb", metric="cosine", num_partitions=4)
        t.create_index("id", kind="btree")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    x = np.random.default_rng(0).standard_normal((600, DIM)).astype(np.float32)
    with Table(uri) as t:
        kinds = {i.column: (i.kind, i.metric) for i in t.indexes()}
        assert kinds == {"emb": ("vector", "cosine"), "id": ("btree", None)}
        got = t.search("emb", x[7], 3)
        assert got.column("id")[0].as_py() == 7 and abs(got.column("_distance")[0].as_py()) < 1e-5
        _, want = exact(x, x[7], 3, "cosine")
        np.testing.assert_allclose(got.column("_distance").to_numpy(), want, atol=1e-4)
        assert t.scan(filter="id = 599").num_rows == 1


def test_appended_and_buffered_rows_are_found_and_folded_in(tmp_path: Any, data: np.ndarray) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri, schema=SCHEMA) as t:
        t.append(rows(data[:2000]))
        t.create_index("emb", num_partitions=8)
        t.append(rows(data[2000:2500], 2000))
        t.flush()  # committed after the index: searched exactly by Lance
        t.append(rows(data[2500:], 2500))  # still buffered: searched exactly here
        [info] = t.indexes()
        assert (info.indexed_rows, info.unindexed_rows) == (2000, 500)
        for i in (10, 2100, 2900):
            got = t.search("emb", data[i], 1)
            assert got.column("id").to_pylist() == [i]
            assert got.column("_distance")[0].as_py() == pytest.approx(0.0, abs=1e-5)
        got = t.search("emb", data[2900], 10, columns=["id", "cat"])
        assert got.column_names == ["id", "cat", "_distance"]
        assert got.column("_distance").to_pylist() == sorted(got.column("_distance").to_pylist())
        t.optimize_indexes()  # commits the buffer first, then folds both batches in
        [info] = t.indexes()
        assert (info.indexed_rows, info.unindexed_rows) == (3000, 0)
        t.compact()
        [info] = t.indexes()
        assert info.unindexed_rows == 0 and t.search("emb", data[2900], 1).column("id").to_pylist() == [2900]


def test_commits_fold_new_rows_in_by_policy(tmp_path: Any, data: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx, "OPTIMIZE_MIN_ROWS", 100)
    with Table(str(tmp_path / "t.lance"), schema=SCHEMA) as t:
        t.append(rows(data[:1000]))
        t.create_index("emb", num_partitions=4)
        t.append(rows(data[1000:1050], 1000))
        t.flush()  # 50 new rows: under the policy's minimum, left to exact search
        assert t.indexes()[0].unindexed_rows == 50
        t.append(rows(data[1050:1300], 1050))
        t.flush()  # 300 unindexed > 10% of 1000 and >= 100: folded in by the commit
        assert t.indexes()[0].unindexed_rows == 0


def test_filter_applies_to_committed_and_buffered_rows(indexed: str, data: np.ndarray, tmp_path: Any) -> None:
    with Table(indexed, read_only=True) as t:
        got = t.search("emb", data[3], 10, filter="cat = 'odd' AND id < 1000")
        assert got.num_rows == 10 and all(i % 2 == 1 and i < 1000 for i in got.column("id").to_pylist())
        mask = (np.arange(3000) % 2 == 1) & (np.arange(3000) < 1000)
        want, _ = exact(data[mask], data[3], 10)
        assert len(set(np.flatnonzero(mask)[want]) & set(got.column("id").to_pylist())) >= 8
    with Table(str(tmp_path / "b.lance"), schema=SCHEMA) as t:
        t.append(rows(data[:50]))  # all buffered
        got = t.search("emb", data[4], 5, filter="cat = 'even'")
        assert got.column("id").to_pylist()[0] == 4 and all(i % 2 == 0 for i in got.column("id").to_pylist())
        with pytest.raises(ConfigError, match="filter"):
            t.search("emb", data[4], 5, filter="cat = = 1")


def test_scalar_indexes_and_replacing_one(tmp_path: Any, data: np.ndarray) -> None:
    with Table(str(tmp_path / "t.lance"), schema=SCHEMA) as t:
        t.append(rows(data[:500]))
        t.create_index("id", kind="btree")
        t.create_index("cat", kind="bitmap")
        assert {(i.column, i.kind) for i in t.indexes()} == {("id", "btree"), ("cat", "bitmap")}
        assert t.scan(filter="id = 42", columns=["id"]).to_pylist() == [{"id": 42}]
        assert t.count("cat = 'odd'") == 250
        t.create_index("id", kind="bitmap")  # replaces the column's index, never a second one
        assert sorted((i.column, i.kind) for i in t.indexes()) == [("cat", "bitmap"), ("id", "bitmap")]


def test_undeclared_float_lists_are_searched_exactly(tmp_path: Any) -> None:
    with Table(str(tmp_path / "t.lance")) as t:
        t.append([{"k": i, "v": [float(i), 0.0, 1.0]} for i in range(20)])
        t.flush()
        t.append([{"k": 100, "v": [7.2, 0.0, 1.0]}])
        got = t.search("v", [7.0, 0.0, 1.0], 2, columns=["k"])
        assert got.column("k").to_pylist() == [7, 100]
        with pytest.raises(ConfigError, match="'v'.*declare") as e:
            t.create_index("v")
        assert e.value.details["column"] == "v"


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda t, q: t.search("emb", q[:5]), ConfigError, "'emb'.*16"),
        (lambda t, q: t.search("emb", [[1.0] * DIM] * 2), ConfigError, "'emb'"),
        (lambda t, q: t.search("emb", ["a"] * DIM), ConfigError, "'emb'"),
        (lambda t, q: t.search("cat", q), ConfigError, "'cat'.*not a vector"),
        (lambda t, q: t.search("nope", q), NotFoundError, "'nope'"),
        (lambda t, q: t.search("emb", q, 0), ConfigError, "k must"),
        (lambda t, q: t.search("emb", q, metric="hamming"), ConfigError, "metric 'hamming'.*'emb'"),
        (lambda t, q: t.create_index("emb", metric="hamming"), ConfigError, "metric 'hamming'.*'emb'"),
        (lambda t, q: t.create_index("emb", kind="hash"), ConfigError, "kind 'hash'.*'emb'"),
        (lambda t, q: t.create_index("nope"), NotFoundError, "'nope'"),
        (lambda t, q: t.create_index("cat"), ConfigError, "'cat'.*not a vector"),
        (lambda t, q: t.create_index("emb", kind="btree"), ConfigError, "'emb'.*scalar"),
        (lambda t, q: t.create_index("emb", nlist=4), ConfigError, "'nlist'.*'emb'"),
        (lambda t, q: t.create_index("emb", index_type="LSH"), ConfigError, "'LSH'.*'emb'"),
        (lambda t, q: t.append([{"id": 1, "emb": [1.0] * 3}]), InvalidRecordError, "'emb'.*16.*3"),
        (lambda t, q: t.append(pa.table({"emb": pa.array([[1.0] * 15], pa.list_(pa.float64()))})), InvalidRecordError, "'emb'"),
    ],
)
def test_bad_input_is_refused_naming_the_column_and_touches_nothing(
    tmp_path: Any, data: np.ndarray, call: Any, error: type[PersistingError], words: str
) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri, schema=SCHEMA) as t:
        t.append(rows(data[:300]))
        t.flush()
        t.append(rows(data[300:310], 300))  # buffered rows must stay buffered
        before = (t.version, t.count(), t.stats()["buffered_rows"], t.indexes())
        with pytest.raises(error, match=words):
            call(t, data[0])
        assert (t.version, t.count(), t.stats()["buffered_rows"], t.indexes()) == before
    with Table(uri) as t:
        assert t.count() == 310


def _appender(uri: str, start: int, batches: int) -> None:
    x = clustered(batches * 50, seed=9)
    with Table(uri, schema=SCHEMA) as t:
        for b in range(batches):
            t.append(rows(x[b * 50:(b + 1) * 50], start + b * 50))
            t.flush()


def test_one_process_appends_while_another_searches(tmp_path: Any, data: np.ndarray) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri, schema=SCHEMA) as t:
        t.append(rows(data[:1000]))
        t.create_index("emb", num_partitions=4)
    child = mp.get_context("spawn").Process(target=_appender, args=(uri, 10_000, 20))
    child.start()
    searches = 0
    with Table(uri, read_only=True) as reader:
        while child.is_alive() or searches == 0:
            got = reader.search("emb", data[1], 5)
            assert got.column("id")[0].as_py() == 1
            searches += 1
        child.join(60)
        assert child.exitcode == 0
        last = clustered(1000, seed=9)[999]
        got = reader.search("emb", last, 1)
        assert got.column("id").to_pylist() == [10_999]
        assert reader.indexes()[0].indexed_rows + reader.indexes()[0].unindexed_rows == 2000
    assert searches > 1


def test_index_and_search_on_s3(s3_options: dict[str, str], s3_bucket: str, tmp_path: Any, data: np.ndarray) -> None:
    uri = f"s3://{s3_bucket}/vectors.lance"
    wal = str(tmp_path / "wal")
    with Table(uri, schema=SCHEMA, storage_options=s3_options, wal_dir=wal) as t:
        t.append(rows(data[:800]))
        t.create_index("emb", num_partitions=4)
        t.create_index("id", kind="btree")
        t.append(rows(data[800:900], 800))
        assert t.search("emb", data[850], 1).column("id").to_pylist() == [850]
    with Table(uri, storage_options=s3_options, read_only=True) as t:
        assert {i.column for i in t.indexes()} == {"emb", "id"}
        assert t.search("emb", data[850], 1).column("id").to_pylist() == [850]
        assert t.search("emb", data[12], 1).column("id").to_pylist() == [12]
