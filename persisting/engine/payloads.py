"""Tensor payloads read straight into the caller's memory.

One convention for every payload column (KV chunks, checkpoint chunks): the stored bytes are
the C-order bytes of a tensor, optionally compressed by :mod:`~persisting.engine.codec`, with
an xxh3-128 checksum over the bytes as stored. :func:`read_into` reads payloads by row position
into destination buffers -- numpy arrays, CPU torch tensors (bfloat16 too), strided views
included -- verifies each checksum and returns one typed :class:`ReadResult` per payload.

Local committed payloads are read from Lance's blob files directly (``os.preadv``, one iovec
per contiguous run of the destination, so a KV chunk lands in its strided slice of the result
with no staging copy), several payloads at once on a small thread pool (file reads and xxh3
release the GIL). Remote tables, pending rows and blobs Lance keeps inline go through the
table's blob reader instead. A blob file that vanished (another writer's cleanup removed the
version this handle still reads) is a ``miss`` with ``retry=True``: refresh and read again.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xxhash

from persisting.engine.codec import decompress
from persisting.errors import ConfigError, CorruptionError, NotFoundError, PersistingError

if TYPE_CHECKING:
    from persisting.engine.reads import BlobLocation, TableReads

__all__ = ["CHECKSUM_SUFFIX", "PayloadColumn", "ReadResult", "byte_runs", "payload_columns", "payload_matches", "read_into"]

CHECKSUM_SUFFIX = "__xxh3"  # a payload column X with no declared checksum column is checked against X__xxh3

Status = Literal["hit", "miss", "corrupt"]
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
_MIN_RUN = 4096  # below this a scattered read costs more than one read and a copy
_THREADS = max(2, min(8, 2 * (os.cpu_count() or 1)))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


@dataclass(frozen=True)
class ReadResult:
    """What reading one payload did: ``hit`` (destination filled, checksum matched), ``miss``
    (nothing there), ``corrupt`` (the bytes failed their checksum or size and were not kept as
    data). ``retry``: the view may be stale (a file vanished under another writer's cleanup);
    refresh the table and read again before calling it lost or damaged. ``where`` names the
    file or row."""

    status: Status
    nbytes: int
    where: str
    reason: str = ""
    retry: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "hit"


@dataclass(frozen=True)
class PayloadColumn:
    """A payload column and the column holding its checksum (see :func:`payload_matches`)."""

    payload: str
    checksum: str


def payload_matches(stored: Any, digest: Any) -> bool:
    """The one checksum rule for every payload: the xxh3-128 of the bytes as stored (after any
    compression) equals ``digest``, kept as 16 raw bytes or as their 32-character hex (a
    content key). A missing digest never matches."""
    if digest is None:
        return False
    got = xxhash.xxh3_128_digest(stored)
    if isinstance(digest, str):
        return got.hex() == digest
    return got == bytes(digest)


def payload_columns(names: Sequence[str], declared: Sequence[PayloadColumn] = ()) -> list[PayloadColumn]:
    """The payload columns of a table with columns ``names``: the ``declared`` pairs present,
    then every ``X`` that has an ``X__xxh3`` column."""
    present = set(names)
    out = [d for d in declared if d.payload in present and d.checksum in present]
    taken = {d.payload for d in out}
    out += [PayloadColumn(c.removesuffix(CHECKSUM_SUFFIX), c) for c in names
            if c.endswith(CHECKSUM_SUFFIX) and c.removesuffix(CHECKSUM_SUFFIX) in present - taken]
    return out


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="persisting-payload")
        return _pool


def _as_array(dest: Any) -> np.ndarray:
    """A numpy array over the destination's memory (same strides, an integer dtype of the same
    item size for torch tensors, so bfloat16 and float8 need no numpy support)."""
    if type(dest).__module__.startswith("torch") and "torch" in sys.modules:
        import torch

        t = dest.detach()
        if t.device.type != "cpu":
            raise ConfigError(f"read_into needs CPU destinations, got a tensor on {t.device}", option="destinations")
        proxy = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}[t.element_size()]
        return t.view(proxy).numpy()
    if isinstance(dest, np.ndarray):
        return dest
    return np.frombuffer(dest, np.uint8)  # bytearray, memoryview, any writable buffer


def byte_runs(dest: Any) -> list[memoryview]:
    """The destination's memory as contiguous byte runs in C order (one run when it is
    contiguous; one per slice of the leading dimensions when it is a strided view)."""
    return _runs(_as_array(dest))


def _runs(arr: np.ndarray) -> list[memoryview]:
    if not arr.flags.writeable:
        raise ConfigError("read_into destination is read-only; pass writable memory", option="destinations")
    if arr.size == 0:
        return []
    shape, strides, block = list(arr.shape), list(arr.strides), arr.itemsize
    while shape and (shape[-1] == 1 or strides[-1] == block):
        block *= shape.pop()
        strides.pop()
    if any(s < 0 for s in strides):
        raise ConfigError("read_into destination has negative strides; pass a view with positive strides",
                          option="destinations")
    offsets = np.zeros(1, np.int64)
    for n, s in zip(shape, strides):
        offsets = (offsets[:, None] + np.arange(n, dtype=np.int64) * s).reshape(-1)
    span = int(offsets[-1]) + block if len(offsets) else block
    base = memoryview((ctypes.c_char * span).from_address(arr.__array_interface__["data"][0])).cast("B")
    return [base[o : o + block] for o in offsets.tolist()]


def read_into(
    table: TableReads,
    column: str,
    positions: Sequence[int],
    destinations: Sequence[Any],
    *,
    checksums: Sequence[bytes | None],
    compressions: Sequence[str | None] | None = None,
) -> list[ReadResult]:
    """Read the payloads of ``column`` at ``positions`` into ``destinations`` (one each, sized
    as the decompressed payload), verify ``checksums`` (xxh3-128 of the stored bytes) and say
    per payload what happened. A destination whose result is not a hit holds no promise."""
    n = len(positions)
    if not (len(destinations) == len(checksums) == n) or (compressions is not None and len(compressions) != n):
        raise ConfigError("read_into: positions, destinations, checksums and compressions differ in length",
                          option="destinations")
    comps = list(compressions) if compressions is not None else [None] * n
    arrays = [_as_array(d) for d in destinations]
    runs = [_runs(a) for a in arrays]
    try:
        locations = table.blob_locations(column, positions)
    except PersistingError as exc:
        # a data file of this view is gone or damaged: stale after another writer's cleanup,
        # or damage; the caller refreshes and asks again, and judges damage on the newest view
        status: Status = "corrupt" if isinstance(exc, CorruptionError) else "miss"
        where = f"table {table.uri} column {column!r}"
        return [ReadResult(status, 0, where, str(exc), retry=True) for _ in positions]
    results: list[ReadResult | None] = [None] * n
    direct = [i for i in range(n) if locations[i] is not None]
    if len(direct) > 1:
        futures = {i: _executor().submit(_read_file, locations[i], arrays[i], runs[i], checksums[i], comps[i])
                   for i in direct}
        for i, fut in futures.items():
            results[i] = fut.result()
    for i in direct if len(direct) == 1 else ():
        results[i] = _read_file(locations[i], arrays[i], runs[i], checksums[i], comps[i])  # type: ignore[arg-type]
    table.metrics.bytes_read.inc(sum(r.nbytes for r in results if r is not None and r.ok))
    rest = [i for i in range(n) if locations[i] is None]
    if rest:
        for i, r in zip(rest, _read_through_table(table, column, [positions[i] for i in rest],
                                                  [arrays[i] for i in rest], [runs[i] for i in rest],
                                                  [checksums[i] for i in rest],
                                                  [comps[i] for i in rest])):
            results[i] = r
    return results  # type: ignore[return-value]


def _read_file(loc: BlobLocation, arr: np.ndarray, runs: list[memoryview], expected: bytes | None,
               compression: str | None) -> ReadResult:
    """One payload from its blob file: scattered into ``runs`` when stored raw, else read
    whole, checked, decompressed and copied."""
    want = sum(r.nbytes for r in runs)
    where = f"{loc.path} at {loc.offset}"
    if compression is None and loc.size != want:
        return ReadResult("corrupt", 0, where, f"holds {loc.size} bytes, the destination needs {want}")
    try:
        fd = os.open(loc.path, os.O_RDONLY)
    except FileNotFoundError:
        return ReadResult("miss", 0, loc.path, "blob file is gone (the version was cleaned up)", retry=True)
    except OSError as exc:
        return ReadResult("miss", 0, loc.path, f"cannot open: {exc}")
    try:
        scattered = compression is None and (len(runs) == 1 or runs[0].nbytes >= _MIN_RUN)
        targets = runs if scattered else [memoryview(bytearray(loc.size))]
        got = _preadv_all(fd, targets, loc.offset)
    except OSError as exc:
        return ReadResult("corrupt", 0, where, f"read failed: {exc}")
    finally:
        os.close(fd)
    if got != loc.size:
        return ReadResult("corrupt", got, where, f"file ends after {got} of {loc.size} bytes")
    return _check_and_place(targets, arr, scattered, expected, compression, where, got)


def _check_and_place(targets: list[memoryview], arr: np.ndarray, scattered: bool,
                     expected: bytes | None, compression: str | None, where: str, nbytes: int) -> ReadResult:
    if expected is not None:
        h = xxhash.xxh3_128()
        for t in targets:
            h.update(t)
        if h.digest() != bytes(expected):
            return ReadResult("corrupt", nbytes, where, "xxh3-128 checksum mismatch: the stored bytes are corrupt")
    if scattered:
        return ReadResult("hit", nbytes, where)
    want = arr.nbytes
    try:
        raw = memoryview(decompress(targets[0], compression, raw_nbytes=want)).cast("B")
    except Exception as exc:  # noqa: BLE001 - any codec failure means damaged bytes
        return ReadResult("corrupt", nbytes, where, f"cannot decompress ({compression}): {exc}")
    if raw.nbytes != want:
        return ReadResult("corrupt", nbytes, where, f"holds {raw.nbytes} bytes, the destination needs {want}")
    np.copyto(arr, np.frombuffer(raw, arr.dtype).reshape(arr.shape), casting="no")
    return ReadResult("hit", nbytes, where)


def _preadv_all(fd: int, runs: list[memoryview], offset: int) -> int:
    """Fill ``runs`` from ``fd`` at ``offset`` (short reads resumed); the bytes read."""
    total, i, skip = 0, 0, 0
    while i < len(runs):
        batch = [runs[i][skip:]] + runs[i + 1 : i + _IOV_MAX]
        n = os.preadv(fd, batch, offset + total)
        if n == 0:
            break
        total += n
        while n > 0 and i < len(runs):
            left = runs[i].nbytes - skip
            if n >= left:
                n -= left
                i, skip = i + 1, 0
            else:
                skip += n
                n = 0
    return total


def _read_through_table(table: TableReads, column: str, positions: list[int], arrays: list[np.ndarray],
                        runs: list[list[memoryview]],
                        checksums: list[bytes | None], comps: list[str | None]) -> list[ReadResult]:
    """The slow path: Lance's blob reader (remote tables, pending rows, inline blobs)."""
    where = f"table {table.uri} column {column!r}"
    try:
        values = table.read_blobs(column, positions)
    except CorruptionError as exc:
        return [ReadResult("corrupt", 0, where, str(exc))] * len(positions)
    except NotFoundError as exc:
        return [ReadResult("miss", 0, where, str(exc), retry=True)] * len(positions)
    except PersistingError as exc:
        return [ReadResult("miss", 0, where, str(exc), retry=True)] * len(positions)
    out = []
    for p, v, a, r, c, comp in zip(positions, values, arrays, runs, checksums, comps):
        at = f"{where} row {p}"
        if v is None:
            out.append(ReadResult("miss", 0, at, "no payload stored"))
            continue
        data = memoryview(v).cast("B")
        if comp is None and data.nbytes != sum(x.nbytes for x in r):
            out.append(ReadResult("corrupt", data.nbytes, at,
                                  f"holds {data.nbytes} bytes, the destination needs {sum(x.nbytes for x in r)}"))
            continue
        res = _check_and_place([data], a, False, c, comp, at, data.nbytes)
        out.append(res)
    return out
