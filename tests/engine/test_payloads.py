"""engine.payloads.read_into: payloads straight into caller memory, typed results."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from persisting.engine.codec import checksum, compress
from persisting.engine.options import TableOptions
from persisting.engine.payloads import ReadResult, byte_runs, read_into
from persisting.engine.table import Table

_BLOB = {"lance-encoding:blob": "true"}
SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("payload", pa.large_binary(), metadata=_BLOB),
])


def _table(uri: str, **kw: object) -> Table:
    return Table(uri, options=TableOptions(durability="none"), schema=SCHEMA, **kw)  # type: ignore[arg-type]


def _kv(n_tokens: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n_tokens)
    return torch.randn(4, 2, 4, n_tokens, 64, generator=g).to(torch.bfloat16)  # 512 B per token run


def _raw(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().view(torch.uint8).numpy().tobytes())


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[torch.Tensor]]:
    """One table with four KV chunks of 64 tokens (256 KiB each, each in its own blob file)."""
    uri = str(tmp_path_factory.mktemp("payloads") / "t.lance")
    chunks = [_kv(64 + i) [..., :64, :].contiguous() for i in range(4)]
    with _table(uri) as t:
        t.append([{"key": str(i), "payload": _raw(c)} for i, c in enumerate(chunks)])
        t.flush()
    return uri, chunks


def test_byte_runs_of_a_strided_slice_are_its_rows() -> None:
    out = np.zeros((3, 8, 16), np.float32)
    runs = byte_runs(out[:, 2:4, :])
    assert len(runs) == 3 and all(r.nbytes == 2 * 16 * 4 for r in runs)
    assert len(byte_runs(out)) == 1


def test_reads_chunks_into_strided_slices_of_one_tensor(stored: tuple[str, list[torch.Tensor]]) -> None:
    uri, chunks = stored
    with _table(uri, read_only=True) as t:
        assert all(loc is not None for loc in t.blob_locations("payload", range(4)))  # the direct path
        out = torch.zeros(4, 2, 4, 4 * 64, 64, dtype=torch.bfloat16)
        dests = [out[..., i * 64 : (i + 1) * 64, :] for i in range(4)]
        res = read_into(t, "payload", [0, 1, 2, 3], dests, checksums=[checksum(_raw(c)) for c in chunks])
    assert [r.status for r in res] == ["hit"] * 4
    assert sum(r.nbytes for r in res) == 4 * chunks[0].numel() * 2
    assert torch.equal(out, torch.cat(chunks, dim=-2))


def test_compressed_payload_and_numpy_destination(tmp_path: Path) -> None:
    arr = np.arange(100_000, dtype=np.int64)
    data = compress(memoryview(arr.view(np.uint8)), "zstd")
    with _table(str(tmp_path / "c.lance")) as t:
        t.append([{"key": "a", "payload": bytes(data)}, {"key": "b", "payload": arr.tobytes()}])
        t.flush()
        a, b = np.zeros_like(arr), np.zeros_like(arr)
        res = read_into(t, "payload", [0, 1], [a, b], checksums=[checksum(data), checksum(arr.tobytes())],
                        compressions=["zstd", None])
    assert [r.status for r in res] == ["hit", "hit"]
    assert np.array_equal(a, arr) and np.array_equal(b, arr)


def test_checksum_mismatch_is_a_corrupt_result_naming_the_file(tmp_path: Path) -> None:
    c = _kv(64)
    uri = str(tmp_path / "bad.lance")
    with _table(uri) as t:
        t.append([{"key": "0", "payload": _raw(c)}])
        t.flush()
        loc = t.blob_locations("payload", [0])[0]
        assert loc is not None
        with open(loc.path, "r+b") as f:  # flip one byte in the middle of the payload
            f.seek(loc.offset + loc.size // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
        out = torch.zeros_like(c)
        [r] = read_into(t, "payload", [0], [out], checksums=[checksum(_raw(c))])
    assert isinstance(r, ReadResult) and r.status == "corrupt" and loc.path in r.where
    assert "checksum" in r.reason and not r.ok


def test_vanished_blob_file_is_a_retryable_miss(tmp_path: Path) -> None:
    c = _kv(64)
    uri = str(tmp_path / "gone.lance")
    with _table(uri) as t:
        t.append([{"key": "0", "payload": _raw(c)}])
        t.flush()
        loc = t.blob_locations("payload", [0])[0]
        assert loc is not None
        os.remove(loc.path)  # what another writer's compaction + cleanup does to this version
        [r] = read_into(t, "payload", [0], [torch.zeros_like(c)], checksums=[checksum(_raw(c))])
    assert r.status == "miss" and r.retry and loc.path in r.where


def test_pending_rows_and_inline_blobs_use_the_table_reader(tmp_path: Path) -> None:
    small = np.arange(8, dtype=np.uint8)  # Lance keeps tiny blobs inline in its data file
    c = _kv(64)
    with _table(str(tmp_path / "p.lance")) as t:
        t.append([{"key": "s", "payload": small.tobytes()}])
        t.flush()
        t.append([{"key": "p", "payload": _raw(c)}])  # pending: not committed yet
        assert t.blob_locations("payload", [0, 1]) == [None, None]
        a, b = np.zeros(8, np.uint8), torch.zeros_like(c)
        res = read_into(t, "payload", [0, 1], [a, b[:, :, :, :, :]], checksums=[checksum(small.tobytes()), checksum(_raw(c))])
    assert [r.status for r in res] == ["hit", "hit"]
    assert np.array_equal(a, small) and torch.equal(b, c)


def test_remote_table_reads_through_lance(s3_options: dict[str, str], s3_bucket: str, tmp_path: Path) -> None:
    chunks = [_kv(64), _kv(65)[..., :64, :].contiguous()]
    uri = f"s3://{s3_bucket}/payloads.lance"
    with _table(uri, storage_options=s3_options, wal_dir=str(tmp_path / "wal")) as t:
        t.append([{"key": str(i), "payload": _raw(c)} for i, c in enumerate(chunks)])
        t.flush()
        assert t.blob_locations("payload", [0, 1]) == [None, None]
        out = torch.zeros(4, 2, 4, 128, 64, dtype=torch.bfloat16)
        res = read_into(t, "payload", [0, 1], [out[..., :64, :], out[..., 64:, :]],
                        checksums=[checksum(_raw(chunks[0])), b"\0" * 16])
    assert [r.status for r in res] == ["hit", "corrupt"]
    assert torch.equal(out[..., :64, :], chunks[0])


def test_tiny_runs_are_read_whole_and_placed_in_one_copy(tmp_path: Path) -> None:
    """Tokens on the last axis: runs of 32 bytes, read as one block, then copied into place."""
    full = np.random.default_rng(0).standard_normal((256, 32, 16)).astype(np.float32)
    parts = [np.ascontiguousarray(full[..., i * 8 : (i + 1) * 8]) for i in range(2)]
    with _table(str(tmp_path / "tiny.lance")) as t:
        t.append([{"key": str(i), "payload": p.tobytes()} for i, p in enumerate(parts)])
        t.flush()
        assert None not in t.blob_locations("payload", [0, 1])
        out = np.zeros_like(full)
        res = read_into(t, "payload", [0, 1], [out[..., :8], out[..., 8:]],
                        checksums=[checksum(p.tobytes()) for p in parts])
    assert [r.status for r in res] == ["hit", "hit"]
    assert np.array_equal(out, full)
