"""Content-addressed chunk storage for checkpoint tensors.

Every tensor's raw bytes are cut into chunks of ``chunk_bytes``; a chunk's key is the xxh3-128
digest of its bytes (hex), which is also its checksum. A chunk whose key is already stored is
referenced, not written again, so unchanged tensors (frozen base weights, repeated saves) cost
nothing but a hash. Rows live in one Lance table (``chunks.lance``) through the engine's
:class:`Table` with durability ``"none"``: the fsynced commit of :meth:`ChunkTable.commit` is
the durability point, and the manifest row that references the chunks is written after it.

The table is shared: every rank of a multi-rank save (and any other writer process) appends
its own chunks. The key -> position map is the engine's :class:`RowKeys` over this process's
view; :meth:`ChunkTable.sync` moves the view to the newest version when another process
committed (the map reads only appended rows, or every key after deletes and compactions), so
dedup never trusts a chunk another process has since removed.
Two processes writing the same new chunk at once store it twice: harmless (either copy serves
a read, gc removes both once unreferenced).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from persisting.engine import RowKeys, Table, TableOptions
from persisting.engine.codec import checksum
from persisting.engine.payloads import PayloadColumn, read_into
from persisting.errors import CorruptionError, NotFoundError

__all__ = ["PAYLOADS", "SCHEMA", "ChunkTable", "PutResult"]

_BLOB = {"lance-encoding:blob": "true"}
SCHEMA = pa.schema([
    pa.field("hash", pa.string(), nullable=False),
    pa.field("nbytes", pa.int64(), nullable=False),
    pa.field("data", pa.large_binary(), metadata=_BLOB),
])
PAYLOADS = (PayloadColumn("data", "hash"),)  # the content key is the payload's checksum (hex)
_READ_BATCH_CHUNKS = 256  # chunks located and read per read_into call


@dataclass(frozen=True)
class PutResult:
    """The chunk keys of one tensor and how much of it was new."""

    hashes: tuple[str, ...]
    new_chunks: int
    new_bytes: int


def _runs(indices: list[int]) -> list[list[int]]:
    """Ascending ``indices`` split into runs of consecutive values."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class ChunkTable:
    """The ``chunks`` table plus an in-memory map from chunk key to row position."""

    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, str] | None,
        wal_dir: str | None,
        read_only: bool,
        commit_bytes: int,
    ) -> None:
        self.uri = uri
        self._table = Table(
            uri,
            options=TableOptions(
                durability="none", compact_fragments=0, flush_bytes=commit_bytes, flush_rows=1_000_000
            ),
            schema=SCHEMA,
            storage_options=storage_options,
            wal_dir=wal_dir,
            read_only=read_only,
            exclusive=False,
            follow=False,  # positions are ours to track: sync() moves the view when we choose
            store="params",
            name="chunks",
            payloads=PAYLOADS,  # new blob files are recorded from the chunk keys, not re-read
        )
        self._rows = RowKeys(self._table, "hash", values=["nbytes"])
        self._buffered: dict[str, int] = {}  # key -> size of chunks appended, not yet committed

    def sync(self) -> None:
        """Move to the newest committed version (a ~10 us check); the map follows what changed."""
        self._table.refresh()
        self._rows.sync()

    def ensure(self, keys: Iterable[str]) -> None:
        """Sync when any of ``keys`` is unknown here (another process wrote it)."""
        if any(k not in self._rows for k in keys):
            self.sync()

    def __contains__(self, key: str) -> bool:
        return key in self._rows or key in self._buffered

    def __len__(self) -> int:
        return len(self._rows)

    def size(self, key: str) -> int:
        """Stored size of chunk ``key`` (0 if unknown; reading it then raises NotFoundError)."""
        return int(self._rows.value("nbytes", key, self._buffered.get(key, 0)))

    @property
    def stored_bytes(self) -> int:
        return sum(self._rows.values("nbytes").values())

    def put(self, raw: memoryview, chunk_bytes: int) -> PutResult:
        """Append the chunks of ``raw`` not stored yet (buffered until :meth:`commit`)."""
        n = raw.nbytes
        bounds = [(o, min(o + chunk_bytes, n)) for o in range(0, n, chunk_bytes)]
        hashes = [checksum(raw[a:b]).hex() for a, b in bounds]
        new: list[int] = []
        seen: set[str] = set()
        for i, h in enumerate(hashes):
            if h not in self and h not in seen:
                new.append(i)
                seen.add(h)
        for run in _runs(new):
            # each run of consecutive new chunks is handed to Arrow as the tensor's own memory
            # (offsets over one slice of it): nothing is copied before Lance writes it
            start, end = bounds[run[0]][0], bounds[run[-1]][1]
            offsets = pa.array([bounds[i][0] - start for i in run] + [end - start], pa.int64())
            data = pa.LargeBinaryArray.from_buffers(
                pa.large_binary(), len(run), [None, offsets.buffers()[1], pa.py_buffer(raw[start:end])]
            )
            sizes = [bounds[i][1] - bounds[i][0] for i in run]
            batch = pa.RecordBatch.from_arrays(
                [pa.array([hashes[i] for i in run], pa.string()), pa.array(sizes, pa.int64()), data],
                schema=SCHEMA,
            )
            self._table.append(batch)
            for j, i in enumerate(run):
                self._buffered[hashes[i]] = sizes[j]
        return PutResult(tuple(hashes), len(new), sum(bounds[i][1] - bounds[i][0] for i in new))

    def commit(self) -> None:
        """Make every appended chunk durable (one fsynced Lance commit)."""
        self._table.flush()
        self._rows.sync()  # reads just the rows committed since (ours, and others' in between)
        self._buffered.clear()

    def abandon(self) -> None:
        """Forget the chunks appended since the last commit (a save failed): they reference the
        caller's tensors, which may change before any later commit would write them."""
        self._table.discard_pending()
        self._buffered.clear()

    def read_into(self, targets: Mapping[str, np.ndarray]) -> int:
        """Read each chunk ``key`` straight into ``targets[key]`` (a writable uint8 buffer of its
        size), verified against its checksum, chunks in parallel; return the bytes read.

        A chunk that fails its checksum raises CorruptionError (its target then holds no
        promise); a chunk no longer stored raises NotFoundError. When a read fails because
        another process deleted or compacted chunks and cleaned up the files this view points
        at, the view moves to the newest version and the failed chunks are read once more."""
        keys = list(targets)
        for key in keys:
            if key not in self._rows:
                raise NotFoundError(
                    f"chunk {key} is referenced by a checkpoint but missing from {self.uri}; "
                    "the store was modified outside ParamStore",
                    key=key,
                )
        total = 0
        for start in range(0, len(keys), _READ_BATCH_CHUNKS):
            total += self._read_batch(keys[start : start + _READ_BATCH_CHUNKS], targets)
        return total

    def _read_batch(self, keys: list[str], targets: Mapping[str, np.ndarray]) -> int:
        total = 0
        for attempt in range(2):
            results = read_into(
                self._table, "data", [self._rows.position(k) for k in keys], [targets[k] for k in keys],
                checksums=[bytes.fromhex(k) for k in keys],
            )
            total += sum(r.nbytes for r in results if r.ok)
            failed = [(k, r) for k, r in zip(keys, results) if not r.ok]
            if not failed:
                return total
            before = self._table.version
            self._table.refresh()
            if attempt or self._table.version == before:
                key, r = failed[0]
                if r.status == "corrupt":
                    raise CorruptionError(
                        f"chunk {key} in {self.uri} fails its check ({r.reason}) at {r.where}; the stored "
                        "bytes are corrupt and were not returned (restore the file or load another checkpoint)",
                        key=key, where=r.where,
                    )
                raise NotFoundError(
                    f"chunk {key} could not be read from {self.uri} ({r.reason}, {r.where}); it was "
                    "removed while it was being read (the checkpoint was deleted meanwhile): load a newer checkpoint",
                    key=key,
                )
            self._rows.sync()
            missing = [k for k, _ in failed if k not in self._rows]
            if missing:
                raise NotFoundError(
                    f"chunk {missing[0]} was removed from {self.uri} while it was being read (the "
                    "checkpoint was deleted meanwhile); load a newer checkpoint",
                    key=missing[0],
                )
            keys = [k for k, _ in failed]
        return total

    def remove_unreferenced(self, referenced: set[str]) -> tuple[int, int]:
        """Delete chunks no checkpoint references; return (chunks, bytes) removed."""
        self.sync()  # other writers' orphans too
        dead = [k for k in self._rows if k not in referenced]
        if not dead:
            return 0, 0
        dead_bytes = sum(self.size(k) for k in dead)
        self._table.delete_in("hash", dead)
        self._rows.sync()
        return len(dead), dead_bytes

    def reclaim(self, *, compact: bool) -> int:
        """Drop old versions' files and return the bytes freed on disk.

        Without ``compact`` only fragments whose every chunk was deleted go (a save's new chunks
        share fragments, so a deleted checkpoint's own chunks usually free whole fragments);
        ``compact`` also rewrites partly dead fragments, which copies their live chunks.
        """
        if compact:
            self._table.compact()
        freed = self._table.cleanup()
        self._rows.sync()
        return freed

    def close(self) -> None:
        self._table.close()
