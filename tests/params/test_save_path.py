"""The save path: chunks go from the caller's tensors to Lance without staging copies, blob
files are recorded from the chunk keys, and one save is one chunk commit plus its manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from persisting.engine import integrity
from persisting.ops.verify import verify
from persisting.params import ParamStore
from persisting.params.chunks import ChunkTable

CHUNK = 1 << 20


@pytest.fixture()
def chunks(tmp_path: Path) -> Iterator[ChunkTable]:
    t = ChunkTable(str(tmp_path / "chunks.lance"), storage_options=None, wal_dir=str(tmp_path / "wal"),
                   read_only=False, commit_bytes=1 << 30)
    yield t
    t.close()


def test_a_partly_stored_tensor_appends_its_new_chunks_without_copying_them(chunks: ChunkTable) -> None:
    base = np.random.default_rng(0).integers(0, 255, 8 * CHUNK, dtype=np.uint8)
    chunks.put(memoryview(base[: 4 * CHUNK]), CHUNK)
    chunks.commit()
    before = pa.total_allocated_bytes()
    put = chunks.put(memoryview(base), CHUNK)  # chunks 0-3 stored, 4-7 new
    grew = pa.total_allocated_bytes() - before
    assert (put.new_chunks, put.new_bytes) == (4, 4 * CHUNK)
    assert grew < CHUNK, f"{grew} bytes allocated for 4 MiB of new chunks: they were copied"
    chunks.commit()
    out = {h: np.empty(CHUNK, np.uint8) for h in put.hashes}
    chunks.read_into(out)
    assert np.array_equal(np.concatenate([out[h] for h in put.hashes]), base)


def test_interleaved_new_chunks_read_back_exactly(chunks: ChunkTable) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, 6 * CHUNK + 123, dtype=np.uint8)
    chunks.put(memoryview(a), CHUNK)
    chunks.commit()
    b = a.copy()
    b[CHUNK + 5] ^= 1  # chunk 1 new
    b[3 * CHUNK + 7] ^= 1  # chunk 3 new
    b[-1] ^= 1  # the short last chunk new
    put = chunks.put(memoryview(b), CHUNK)
    assert put.new_chunks == 3
    chunks.commit()
    sizes = [min(CHUNK, b.nbytes - i * CHUNK) for i in range(len(put.hashes))]
    out = {h: np.empty(n, np.uint8) for h, n in zip(put.hashes, sizes)}
    chunks.read_into(out)
    assert np.array_equal(np.concatenate([out[h] for h in put.hashes]), b)


def test_a_save_is_one_chunk_commit_recorded_from_its_chunk_keys(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    state = {f"w{i}": torch.randn(512, 1024) for i in range(6)}  # 12 MiB in 2 MiB tensors
    with ParamStore(str(tmp_path / "s")) as store:
        store.save(state, step=1)
        state["w0"].add_(1)
        store.save(state, step=2)
        loaded = store.load(step=2)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    root = str(tmp_path / "s" / "chunks.lance")
    versions = os.listdir(os.path.join(root, "_versions"))
    assert len([v for v in versions if v.endswith(".manifest")]) == 2  # one commit per save
    recorded = integrity.load(root) or {}
    blobs = [r for r in recorded if r.endswith(".blob")]
    assert len(blobs) == 2 and all(recorded[r][1].startswith("seg:") for r in blobs)
    assert not [f for f in verify(str(tmp_path)).findings if f.severity == "problem"]
    # a flipped byte in a chunk's blob file is found by verify, named by file
    path = os.path.join(root, blobs[0])
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    found = [f for f in verify(str(tmp_path)).findings if f.severity == "problem"]
    assert any(f.path == path for f in found), json.dumps([f.path for f in found])
