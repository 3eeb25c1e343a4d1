"""``persisting index`` and index info in ``persisting inspect``, as real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from persisting.engine import Table

from .conftest import run_cli

DIM = 8
SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("cat", pa.string()), pa.field("emb", pa.list_(pa.float32(), DIM))])


def make_table(path: Path, n: int = 400) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    with Table(str(path), schema=SCHEMA) as t:
        t.append([{"id": i, "cat": "ab"[i % 2], "emb": x[i].tolist()} for i in range(n)])
    return x


def test_index_command_builds_indexes_that_inspect_reports(tmp_path: Path) -> None:
    uri = tmp_path / "store" / "vectors.lance"
    x = make_table(uri)
    out = run_cli("index", str(tmp_path / "store"), "--column", "emb", "--kind", "vector", "--metric", "cosine",
                  "--num-partitions", "4", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    [done] = json.loads(out.stdout)["done"]
    assert (done["column"], done["kind"], done["metric"], done["indexed_rows"]) == ("emb", "vector", "cosine", 400)
    assert run_cli("index", str(uri), "--column", "id", "--kind", "btree").returncode == 0

    doc = json.loads(run_cli("inspect", str(uri), "--json").stdout)
    [table] = doc["tables"]
    assert {(i["column"], i["kind"]) for i in table["indexes"]} == {("emb", "vector"), ("id", "btree")}
    text = run_cli("inspect", str(uri)).stdout
    assert "index emb_idx: vector on emb (IVF_PQ, cosine), 400 rows indexed, 0 not yet" in text
    with Table(str(uri), read_only=True) as t:
        assert t.search("emb", x[9], 1).column("id").to_pylist() == [9]


def test_index_command_bad_input(tmp_path: Path) -> None:
    uri = tmp_path / "vectors.lance"
    make_table(uri, 50)
    missing = run_cli("index", str(uri), "--column", "nope")
    assert missing.returncode == 2 and "'nope'" in missing.stderr
    not_vector = run_cli("index", str(uri), "--column", "cat", "--kind", "vector")
    assert not_vector.returncode == 1 and "ConfigError" in not_vector.stderr and "'cat'" in not_vector.stderr
    unknown = run_cli("index", str(uri), "--column", "emb", "--kind", "hash")
    assert unknown.returncode == 2 and "hash" in unknown.stderr
    with Table(str(uri), exclusive=True):  # a live exclusive writer: refused, never raced
        locked = run_cli("index", str(uri), "--column", "id", "--kind", "btree")
    assert locked.returncode == 1 and "Locked" in locked.stderr
    with Table(str(uri), read_only=True) as t:
        assert t.indexes() == [] and t.count() == 50
