"""Appends of known batch layouts skip evolution and reuse their serialised schema
(engine/batches.py ``KnownSchemas``): alternating layouts must still log each frame with its
own schema, so a killed writer's WAL replays every row with its values; and a layout that was
known must still be refused once it no longer fits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from persisting.engine.batches import KnownSchemas
from persisting.engine.options import TableOptions
from persisting.engine.table import Table
from persisting.errors import SchemaError

CHILD = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from persisting.engine.options import TableOptions
    from persisting.engine.table import Table
    t = Table(sys.argv[1], options=TableOptions(durability="always", flush_rows=1_000_000))
    for i in range(40):
        if i % 3 == 0:    # three layouts in turn, two with a column the others lack
            b = pa.table({"k": [i, i], "x": [float(i), -1.0]})
        elif i % 3 == 1:
            b = pa.table({"k": [i, i], "x": [float(i), -1.0], "tag": ["a", "b"]})
        else:
            b = pa.table({"k": [i, i], "v": pa.array([[i, i + 1], [0, 0]], pa.list_(pa.int32(), 2))})
        t.append(b)
    print("ready", flush=True)
    time.sleep(600)
""")


def test_alternating_layouts_replay_after_kill(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    child = subprocess.Popen([sys.executable, "-c", CHILD, uri], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    table = Table(uri)
    try:
        rows = sorted(table.scan().to_pylist(), key=lambda r: (r["k"], r.get("x") or 0))
        assert len(rows) == 80
        for i in range(40):
            first = [r for r in rows if r["k"] == i]
            assert len(first) == 2, i
            if i % 3 == 2:
                assert sorted(r["v"] for r in first) == [[0, 0], [i, i + 1]]
                assert all(r["x"] is None and r["tag"] is None for r in first)
            else:
                assert sorted(r["x"] for r in first) == [-1.0, float(i)]
                assert sorted((r["tag"] or "") for r in first) == (["a", "b"] if i % 3 == 1 else ["", ""])
    finally:
        table.close()


def test_a_known_layout_still_fails_when_the_stored_type_cannot_take_it(tmp_path: Path) -> None:
    table = Table(str(tmp_path / "t.lance"))
    try:
        table.append(pa.table({"k": pa.array([1], pa.int64())}))
        with pytest.raises(SchemaError, match="'k'"):
            table.append(pa.table({"k": ["text"]}))
        table.append(pa.table({"k": pa.array([2], pa.int64())}))  # the known layout goes on
        assert sorted(table.scan().column("k").to_pylist()) == [1, 2]
    finally:
        table.close()


def test_known_schemas_keeps_the_most_recent_layouts() -> None:
    known = KnownSchemas(size=2)
    a, b, c = (pa.schema([pa.field(n, pa.int64())]) for n in "abc")
    known.add(a)
    known.add(b)
    assert known.find(a) is not None  # moves a to the front
    known.add(c)  # evicts b, the least recent
    assert known.find(b) is None and known.find(a) is not None and known.find(c) is not None
    with_meta = pa.schema([pa.field("a", pa.int64(), metadata={"m": "1"})])
    assert known.find(with_meta) is None  # field metadata (a field's spec) is part of a layout
