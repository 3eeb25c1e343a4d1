"""The write path of tensor payloads: no staging copy between the caller's memory and Lance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from persisting.engine import Table, TableOptions
from persisting.engine.schema import conform_many

_BLOB = {"lance-encoding:blob": "true"}
SCHEMA = pa.schema([pa.field("k", pa.int64()), pa.field("data", pa.large_binary(), metadata=_BLOB)])


def _batch(buf: np.ndarray, k: int) -> pa.RecordBatch:
    offsets = pa.array([0, buf.nbytes], pa.int64())
    data = pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets.buffers()[1], pa.py_buffer(buf)])
    return pa.RecordBatch.from_arrays([pa.array([k], pa.int64()), data], schema=SCHEMA)


def test_pending_payloads_are_not_concatenated_into_a_copy() -> None:
    bufs = [np.full(2 << 20, i, np.uint8) for i in range(3)]
    table = conform_many([_batch(b, i) for i, b in enumerate(bufs)], SCHEMA)
    col = table.column("data")
    assert col.num_chunks == 3
    for chunk, buf in zip(col.chunks, bufs):
        assert chunk.buffers()[2].address == buf.ctypes.data  # the caller's memory itself


def test_small_values_are_still_one_chunk_per_column() -> None:
    batches = [pa.RecordBatch.from_pylist([{"k": i, "data": b"x" * 10}], schema=SCHEMA) for i in range(50)]
    assert conform_many(batches, SCHEMA).column("data").num_chunks == 1


def test_payloads_committed_from_many_appends_read_back_exactly(tmp_path: Path) -> None:
    bufs = [np.random.default_rng(i).integers(0, 255, (1 << 20) + 17 * i, dtype=np.uint8) for i in range(5)]
    with Table(str(tmp_path / "t.lance"), options=TableOptions(durability="none"), schema=SCHEMA) as t:
        for i, b in enumerate(bufs):
            t.append(_batch(b, i))
        t.flush()
        got = t.read_blobs("data", list(range(5)))
    assert [bytes(g) for g in got] == [b.tobytes() for b in bufs]
