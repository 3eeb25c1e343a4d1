"""A widened field (int -> float) is stored in a new column, not by rewriting the bucket."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import lance
import pyarrow.parquet as pq
import pytest

from persisting.queue import LanceBackend, PersistingBackend

ROWS = 20_000
CASES = [(LanceBackend, {}), (PersistingBackend, {"enable_wal": True})]


def _data_files(path: Path) -> set[str]:
    return {f.path for frag in lance.dataset(str(path)).get_fragments() for f in frag.data_files()}


@pytest.mark.parametrize(("cls", "options"), CASES, ids=["lance", "persisting-wal"])
def test_widening_keeps_stored_rows_and_reads_one_widened_column(tmp_path: Path, cls: type, options: dict[str, Any]) -> None:
    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        await b.put_batch([{"id": f"k{i}", "n": i} for i in range(ROWS)])
        await b.flush()
        stored = _data_files(tmp_path / "bucket_0.lance")
        await b.put({"id": "w", "n": 0.5})  # int -> float
        await b.put({"id": "i", "n": 7})  # an int after the widening is read as float too
        await b.put({"id": "none"})  # no value
        assert await b.get(4, ROWS - 1) == [{"id": f"k{ROWS - 1}", "n": float(ROWS - 1)}, {"id": "w", "n": 0.5},
                                            {"id": "i", "n": 7.0}, {"id": "none", "n": None}]
        await b.flush()
        assert stored <= _data_files(tmp_path / "bucket_0.lance")  # no stored row was rewritten
        b.close()

        again = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        rows = await again.get(ROWS + 10, 0)
        assert len(rows) == ROWS + 3 and all(isinstance(r["n"], float) for r in rows if r["n"] is not None)
        assert [r["n"] for r in rows[ROWS - 2:]] == [ROWS - 2.0, ROWS - 1.0, 0.5, 7.0, None]
        assert list(rows[0]) == ["id", "n"]  # the shadow column never shows
        await again.put({"id": "after", "n": 2.25})
        assert (await again.get(1, ROWS + 3)) == [{"id": "after", "n": 2.25}]
        again.close()

    asyncio.run(go())
    out = tmp_path / "bucket.parquet"
    res = subprocess.run([sys.executable, "-m", "persisting.cli", "export", str(tmp_path), "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    table = pq.read_table(out)
    assert str(table.schema.field("n").type) == "double" and not [c for c in table.column_names if "__as_" in c]
    assert table.column("n").to_pylist()[ROWS:] == [0.5, 7.0, None, 2.25]


def test_an_incompatible_type_is_still_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    from persisting.errors import SchemaError

    async def go() -> None:
        b = PersistingBackend(bucket_id=0, storage_path=str(tmp_path), enable_wal=True)
        await b.put({"id": "a", "n": 1})
        await b.put({"id": "b", "n": 1.5})
        with pytest.raises(SchemaError):
            await b.put({"id": "c", "n": "text"})
        assert [r["n"] for r in await b.get(10, 0)] == [1.0, 1.5]
        b.close()

    asyncio.run(go())
